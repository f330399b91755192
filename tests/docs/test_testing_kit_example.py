"""How an application tests its real-time flows with roomcast.testing (shown in the docs)."""

from __future__ import annotations

# --8<-- [start:imports]
import pytest

from roomcast import DefaultAuthorizer, Handshake, History, Hub, Principal, RoomOptions
from roomcast.testing import ManualClock, TestClient

pytestmark = pytest.mark.anyio  # every test here runs on an event loop (anyio's plugin)

# --8<-- [end:imports]


# --8<-- [start:app]
class HeaderAuthenticator:
    """The app's own scheme: a trusted proxy puts the user id in ``x-user``."""

    async def authenticate(self, handshake: Handshake, token: str | None) -> Principal:
        return Principal(handshake.header("x-user"))


def make_hub(clock: ManualClock | None = None) -> Hub:
    return Hub(
        authenticator=HeaderAuthenticator(),
        authorizer=DefaultAuthorizer(publish=["issue"]),
        namespaces={"team": RoomOptions(history=History(size=100, ttl=600))},
        clock=clock,
    )


async def on_issue_created(hub: Hub, team: str, issue_id: str, author: str) -> None:
    """What the app's request handler does after saving an issue."""
    await hub.publish(f"team:{team}", "issue.created", {"id": issue_id}, user_id=author)
    await hub.send_to_user(author, "notification", {"text": f"{issue_id} created"})


# --8<-- [end:app]


# --8<-- [start:tests]
def as_user(user_id: str) -> Handshake:
    return Handshake(headers=(("x-user", user_id),))


async def test_team_members_see_new_issues() -> None:
    async with make_hub() as hub, TestClient(hub, handshake=as_user("u1")) as alice:
        await alice.subscribe("team:t1")
        await on_issue_created(hub, "t1", "i42", author="u2")
        event = await alice.receive_event("issue.created")
        assert event["payload"] == {"id": "i42"}
        assert event["userId"] == "u2"


async def test_the_author_is_notified_on_every_tab() -> None:
    async with make_hub() as hub:
        async with (
            TestClient(hub, handshake=as_user("u2")) as tab1,
            TestClient(hub, handshake=as_user("u2")) as tab2,
        ):
            await on_issue_created(hub, "t1", "i42", author="u2")
            for tab in (tab1, tab2):
                note = await tab.receive_event("notification")
                assert note["payload"] == {"text": "i42 created"}


async def test_a_silent_client_is_dropped_after_the_heartbeat_timeout() -> None:
    clock = ManualClock()
    async with make_hub(clock) as hub, TestClient(hub, handshake=as_user("u1")) as client:
        await clock.advance(60)  # no pong: the default timeout is 60 s
        assert await client.wait_closed() == 1011


# --8<-- [end:tests]
