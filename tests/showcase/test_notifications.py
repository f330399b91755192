"""Who the issue tracker notifies: an assignee at creation, the newly mentioned on an edit."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from .tracker import TIMEOUT, Peer, running


@pytest.fixture
def anyio_backend() -> str:
    """The example runs on uvicorn (asyncio); its clients here run on asyncio too."""
    return "asyncio"


async def notifications(peer: Peer) -> list[dict[str, Any]]:
    """The notifications ``peer`` has been sent so far (their payloads)."""
    return [
        frame["payload"]["notification"]
        for frame in await peer.drain()
        if frame["type"] == "notification.created"
    ]


@pytest.mark.anyio
async def test_creating_an_issue_for_someone_else_notifies_them_but_not_the_creator() -> None:
    with anyio.fail_after(TIMEOUT):
        async with running() as tracker:
            alice, bob = await tracker.login("alice"), await tracker.login("bob")
            async with tracker.connect(bob) as to_bob, tracker.connect(alice) as to_alice:
                await to_bob.subscribe("user:bob")
                await to_alice.subscribe("user:alice")
                path = "/api/v1/teams/t1/issues"
                status, issue = await tracker.api(
                    "POST", path, {"title": "Crash on save", "assignee": "bob"}, alice
                )
                assert status == 201
                event = await to_bob.next("notification.created")
                status, own = await tracker.api(
                    "POST", path, {"title": "Mine", "assignee": "alice"}, alice
                )
                assert status == 201
                # Bob is told once; alice is not told that she assigned herself.
                to_bob_later = await notifications(to_bob)
                to_alice_later = await notifications(to_alice)
            assert (event["room"], event["userId"]) == ("user:bob", "alice")
            note = event["payload"]["notification"]
            assert (note["kind"], note["issueId"], note["actor"], note["title"]) == (
                "assigned",
                issue["id"],
                "alice",
                "Crash on save",
            )
            assert (to_bob_later, to_alice_later) == ([], [])
            status, kept = await tracker.api("GET", "/api/v1/notifications", token=bob)
            assert (status, [n["id"] for n in kept]) == (200, [note["id"]])
            status, kept = await tracker.api("GET", "/api/v1/notifications", token=alice)
            assert (status, kept, own["assignee"]) == (200, [], "alice")


@pytest.mark.anyio
async def test_an_edit_notifies_only_those_it_mentions_for_the_first_time() -> None:
    with anyio.fail_after(TIMEOUT):
        async with running() as tracker:
            alice, bob, dana = [await tracker.login(user) for user in ("alice", "bob", "dana")]
            issue_id = await tracker.create_issue(alice)
            async with (
                tracker.connect(bob) as to_bob,
                tracker.connect(dana) as to_dana,
                tracker.connect(alice) as to_alice,
            ):
                await to_bob.subscribe("user:bob")
                await to_dana.subscribe("user:dana")
                await to_alice.subscribe("user:alice")
                status, comment = await tracker.api(
                    "POST", f"/api/v1/issues/{issue_id}/comments", {"body": "@bob look"}, alice
                )
                assert status == 201
                first = await to_bob.next("notification.created")
                path = f"/api/v1/comments/{comment['id']}"
                edit = "@bob look, and @dana too (@alice, @carol: not you)"
                status, edited = await tracker.api("PATCH", path, {"body": edit}, alice)
                assert (status, edited["body"]) == (200, edit)
                mentioned = await to_dana.next("notification.created")
                # Bob was named before the edit: he is not told again. Alice wrote it.
                to_bob_later = await notifications(to_bob)
                to_alice_later = await notifications(to_alice)
            assert first["payload"]["notification"]["kind"] == "mentioned"
            assert (mentioned["room"], mentioned["userId"]) == ("user:dana", "alice")
            note = mentioned["payload"]["notification"]
            assert (note["kind"], note["issueId"], note["actor"]) == (
                "mentioned",
                issue_id,
                "alice",
            )
            assert (to_bob_later, to_alice_later) == ([], [])
