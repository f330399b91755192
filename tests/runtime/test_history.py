"""History for clients without a position: the last N with the join, and the history request."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest

from roomcast import (
    BackendError,
    History,
    Hub,
    HubNotRunning,
    Principal,
    RateLimit,
    RoomOptions,
)
from roomcast.auth import Action
from roomcast.backends import HistoryResult
from roomcast.backends.memory import MemoryBackend
from roomcast.testing import TestClient
from roomcast.wire import StreamPosition

pytestmark = pytest.mark.anyio

NAMESPACES = {
    "team": RoomOptions(history=History(size=5, ttl=600)),
    "chat": RoomOptions(),
}


class RecordingAuthorizer:
    """Allows every room but ``team:secret``; records each question."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    async def authorize(self, principal: Principal, action: Action, room: str) -> bool:
        self.asked.append((action, room))
        return room != "team:secret"


class FailingHistoryBackend(MemoryBackend):
    """A memory backend whose history reads fail while ``down``."""

    down = False

    async def history(
        self,
        room: str,
        since: StreamPosition | None,
        history: History,
        *,
        limit: int | None = None,
    ) -> HistoryResult:
        if self.down:
            raise BackendError("Redis did not answer within 5 s")
        return await super().history(room, since, history, limit=limit)


@pytest.fixture
def authorizer() -> RecordingAuthorizer:
    return RecordingAuthorizer()


@pytest.fixture
async def hub(authorizer: RecordingAuthorizer) -> AsyncIterator[Hub]:
    async with Hub(authorizer=authorizer, namespaces=NAMESPACES) as hub:
        yield hub


async def publish(hub: Hub, room: str, count: int, start: int = 0) -> None:
    for n in range(start, start + count):
        await hub.publish(room, "seq.item", n, user_id="u1")


def events(frames: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [frame for frame in frames if frame.get("type") == "seq.item"]


# ----------------------------------------------------------------------------- join with history


async def test_a_join_with_history_replays_the_last_messages_before_the_reply(hub: Hub) -> None:
    await publish(hub, "team:t1", 4)
    async with TestClient(hub) as client:
        result = await client.subscribe("team:t1", history={"team:t1": 2})
        replayed = events(client.drain())
        assert [event["offset"] for event in replayed] == [3, 4]
        assert [event["payload"] for event in replayed] == [2, 3]
        room = result["team:t1"]
        assert room == {"ok": True, "offset": 4, "epoch": replayed[0]["epoch"]}
        await publish(hub, "team:t1", 1, start=4)
        live = await client.receive_event("seq.item")
        assert (live["offset"], live["payload"]) == (5, 4)


async def test_a_join_asking_for_more_than_is_kept_gets_what_is_kept(hub: Hub) -> None:
    await publish(hub, "team:t1", 8)
    async with TestClient(hub) as client:
        result = await client.subscribe("team:t1", history={"team:t1": 10_000})
        assert [event["offset"] for event in events(client.drain())] == [4, 5, 6, 7, 8]
        assert result["team:t1"]["offset"] == 8
        assert "recovered" not in result["team:t1"]


async def test_history_is_ignored_for_a_room_without_history(hub: Hub) -> None:
    async with TestClient(hub) as member:
        await member.subscribe("chat:c1")
        await publish(hub, "chat:c1", 3)
        async with TestClient(hub) as client:
            result = await client.subscribe("chat:c1", history={"chat:c1": 3})
            assert result == {"chat:c1": {"ok": True}}
            assert events(client.drain()) == []


async def test_history_and_since_apply_to_their_own_rooms_only(hub: Hub) -> None:
    await publish(hub, "team:a", 3)
    await publish(hub, "team:b", 3)
    await publish(hub, "team:c", 3)
    async with TestClient(hub) as first:
        epoch = (await first.subscribe("team:b"))["team:b"]["epoch"]
    async with TestClient(hub) as client:
        result = await client.subscribe(
            "team:a",
            "team:b",
            "team:c",
            since={"team:b": {"offset": 2, "epoch": epoch}},
            history={"team:a": 1},
        )
        got = [(event["room"], event["offset"]) for event in events(client.drain())]
        assert got == [("team:a", 3), ("team:b", 3)]
        assert "recovered" not in result["team:a"]
        assert result["team:b"]["recovered"] is True
        assert result["team:c"] == {"ok": True, "offset": 3, "epoch": result["team:c"]["epoch"]}


async def test_a_room_already_joined_is_granted_again_without_replay(hub: Hub) -> None:
    await publish(hub, "team:t1", 3)
    async with TestClient(hub) as client:
        await client.subscribe("team:t1", history={"team:t1": 3})
        assert len(events(client.drain())) == 3
        again = await client.subscribe("team:t1", history={"team:t1": 3})
        assert again["team:t1"]["offset"] == 3
        assert events(client.drain()) == []


async def test_a_join_with_history_to_a_refused_room_replays_nothing(hub: Hub) -> None:
    await publish(hub, "team:secret", 3)
    async with TestClient(hub) as client:
        result = await client.subscribe("team:secret", history={"team:secret": 3})
        assert result["team:secret"]["error"]["code"] == "forbidden"
        assert events(client.drain()) == []


async def test_a_bad_history_in_subscribe_is_a_bad_request_and_joins_nothing(hub: Hub) -> None:
    async with TestClient(hub) as client:
        reply = await client.request(
            {
                "action": "subscribe",
                "rooms": ["team:t1"],
                "since": {"team:t1": {"offset": 0, "epoch": "e"}},
                "history": {"team:t1": 5},
            }
        )
        assert reply["ok"] is False
        assert reply["error"]["code"] == "bad_request"
        assert "both 'since' and 'history'" in reply["error"]["message"]
        assert hub.stats().rooms == 0


# ----------------------------------------------------------------------------- history request


async def test_history_returns_what_members_received_and_the_position(hub: Hub) -> None:
    async with TestClient(hub) as member, TestClient(hub) as reader:
        await member.subscribe("team:t1")
        await publish(hub, "team:t1", 4)
        received = [await member.receive_event("seq.item") for _ in range(4)]
        reply = await reader.history("team:t1", limit=3)
        assert reply["ok"] is True
        assert reply["payload"] == {
            "room": "team:t1",
            "publications": received[1:],
            "offset": 4,
            "epoch": received[0]["epoch"],
        }
        # Reading does not join: nothing live reaches the reader.
        await publish(hub, "team:t1", 1, start=4)
        await member.receive_event("seq.item")
        assert events((await reader.request({"action": "ping"}), *reader.drain())) == []
        assert hub.stats().members == {"team:t1": 1}


async def test_history_without_a_limit_returns_every_kept_message(hub: Hub) -> None:
    await publish(hub, "team:t1", 7)
    async with TestClient(hub) as client:
        payload = (await client.history("team:t1"))["payload"]
        assert [event["offset"] for event in payload["publications"]] == [3, 4, 5, 6, 7]
        assert "recovered" not in payload


async def test_history_of_a_room_nobody_published_to_is_empty_with_its_epoch(hub: Hub) -> None:
    async with TestClient(hub) as client:
        payload = (await client.history("team:new", limit=5))["payload"]
        assert (payload["publications"], payload["offset"]) == ([], 0)
        await publish(hub, "team:new", 1)
        first = (await client.history("team:new", limit=5))["payload"]["publications"][0]
        # The epoch read before the first message is the one it carries.
        assert first["epoch"] == payload["epoch"]


async def test_history_pages_forward_after_a_position(hub: Hub) -> None:
    await publish(hub, "team:t1", 5)
    async with TestClient(hub) as client:
        epoch = (await client.history("team:t1", limit=1))["payload"]["epoch"]
        pages: list[list[int]] = []
        since = {"offset": 1, "epoch": epoch}
        while True:
            payload = (await client.history("team:t1", limit=2, since=since))["payload"]
            assert (payload["recovered"], payload["offset"]) == (True, 5)
            if not payload["publications"]:
                break
            pages.append([event["offset"] for event in payload["publications"]])
            since = {"offset": pages[-1][-1], "epoch": epoch}
        assert pages == [[2, 3], [4, 5]]


@pytest.mark.parametrize("since", [{"offset": 1, "epoch": "another"}, "pruned"])
async def test_history_after_a_position_that_cannot_be_recovered_is_empty(
    hub: Hub, since: Any
) -> None:
    await publish(hub, "team:t1", 8)  # size 5: offsets 1 to 3 are pruned
    async with TestClient(hub) as client:
        epoch = (await client.history("team:t1", limit=1))["payload"]["epoch"]
        if since == "pruned":
            since = {"offset": 1, "epoch": epoch}
        payload = (await client.history("team:t1", limit=2, since=since))["payload"]
        assert (payload["recovered"], payload["publications"], payload["offset"]) == (False, [], 8)


async def test_history_leaves_out_ephemeral_messages(hub: Hub) -> None:
    await publish(hub, "team:t1", 2)
    await hub.publish("team:t1", "seq.item", "typing", ephemeral=True)
    async with TestClient(hub) as client:
        payload = (await client.history("team:t1"))["payload"]
        assert [event["payload"] for event in payload["publications"]] == [0, 1]


async def test_history_is_authorized_as_subscribe(
    hub: Hub, authorizer: RecordingAuthorizer
) -> None:
    await publish(hub, "team:secret", 2)
    async with TestClient(hub) as client:
        reply = await client.history("team:secret", limit=5)
        assert (reply["ok"], reply["error"]["code"]) == (False, "forbidden")
        assert "payload" not in reply
        assert ("subscribe", "team:secret") in authorizer.asked
        assert (await client.history("team:t1"))["ok"] is True
        assert ("subscribe", "team:t1") in authorizer.asked


async def test_history_of_a_room_without_history_is_not_found(hub: Hub) -> None:
    async with TestClient(hub) as client:
        reply = await client.history("chat:c1", limit=5)
        assert (reply["ok"], reply["error"]["code"]) == (False, "not_found")
        assert reply["error"]["message"] == "this room keeps no history"


async def test_a_malformed_history_request_is_a_bad_request(hub: Hub) -> None:
    async with TestClient(hub) as client:
        reply = await client.request({"action": "history", "room": "team:t1", "limit": True})
        assert (reply["ok"], reply["error"]["code"]) == (False, "bad_request")
        assert reply["error"]["message"] == "'limit' must be an integer"
        assert hub.stats().bad_requests == 1


async def test_history_requests_count_against_the_rate_limit() -> None:
    limit = RateLimit(rate=60, period=60, burst=2, strikes=5)
    async with (
        Hub(rate_limit=limit, namespaces=NAMESPACES) as hub,
        TestClient(hub) as client,
    ):
        for _ in range(2):
            assert (await client.history("team:t1"))["ok"] is True
        refused = await client.history("team:t1")
        assert refused["error"]["code"] == "rate_limited"
        assert refused["error"]["retryAfterMs"] > 0
        assert hub.stats().rate_limited == 1


async def test_history_the_backend_fails_is_internal_with_retry_after() -> None:
    backend = FailingHistoryBackend()
    async with Hub(backend=backend, namespaces=NAMESPACES) as hub, TestClient(hub) as client:
        await publish(hub, "team:t1", 2)
        backend.down = True
        reply = await client.history("team:t1", limit=5)
        assert (reply["ok"], reply["error"]["code"]) == (False, "internal")
        assert reply["error"]["retryAfterMs"] == 1000
        backend.down = False
        assert len((await client.history("team:t1", limit=5))["payload"]["publications"]) == 2
        assert hub.stats().clients == 1


# ----------------------------------------------------------------------------- Hub.history


async def test_hub_history_reads_the_last_messages_and_pages(hub: Hub) -> None:
    await publish(hub, "team:t1", 4)
    last = await hub.history("team:t1", limit=2)
    assert [p.payload_json for p in last.publications] == ["2", "3"]
    assert [p.offset for p in last.publications] == [3, 4]
    assert (last.recovered, last.position.offset) == (True, 4)
    every = await hub.history("team:t1")
    assert [p.offset for p in every.publications] == [1, 2, 3, 4]
    page = await hub.history("team:t1", limit=1, since=StreamPosition(2, last.position.epoch))
    assert (page.recovered, [p.offset for p in page.publications]) == (True, [3])
    lost = await hub.history("team:t1", since=StreamPosition(2, "another"))
    assert (lost.recovered, lost.publications) == (False, ())


@pytest.mark.parametrize(
    ("room", "limit", "message"),
    [
        ("chat:c1", None, "keeps no history"),
        ("team:t1", 0, "limit"),
        ("team:t1", True, "limit"),
        ("bad room", None, "room"),
    ],
)
async def test_hub_history_refuses_what_it_cannot_read(
    hub: Hub, room: str, limit: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await hub.history(room, limit=limit)


async def test_hub_history_needs_a_running_hub() -> None:
    hub = Hub(namespaces=NAMESPACES)
    with pytest.raises(HubNotRunning):
        await hub.history("team:t1")
