"""The hub's behaviour over the in-memory transport, on asyncio and trio."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

import roomcast
import roomcast.config
from roomcast import (
    BackendError,
    ConnectionClosed,
    DefaultAuthorizer,
    Handshake,
    HeartbeatPolicy,
    History,
    Hub,
    HubNotRunning,
    Principal,
    RateLimit,
    RoomcastError,
    RoomOptions,
)
from roomcast.backends import BackendStatus, ChannelKind, HistoryResult, Publication
from roomcast.backends.memory import MemoryBackend
from roomcast.testing import ManualClock, MemoryTransport, TestClient, memory_transport_pair
from roomcast.wire import StreamPosition

pytestmark = pytest.mark.anyio


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def hub(clock: ManualClock) -> AsyncIterator[Hub]:
    async with Hub(
        clock=clock,
        authorizer=DefaultAuthorizer(publish=["chat"]),
        namespaces={"team": RoomOptions(history=History(size=100, ttl=600))},
    ) as hub:
        yield hub


class UserAuthenticator:
    """Takes the user id from the ``x-user`` header."""

    async def authenticate(self, handshake: Handshake, token: str | None) -> Principal:
        return Principal(handshake.header("x-user"))


def as_user(user: str) -> Handshake:
    return Handshake(headers=(("x-user", user),))


# ----------------------------------------------------------------------------- connection


async def test_ack_carries_client_id_heartbeat_and_protocol(hub: Hub) -> None:
    async with TestClient(hub) as client:
        payload = client.ack["payload"]
        assert payload["clientId"] == client.client_id
        assert payload["heartbeatMs"] == 30_000
        assert payload["protocol"] == "roomcast.v1"
        assert payload["userId"] is None


async def test_an_idle_connection_is_one_coroutine_frame_of_roomcast(hub: Hub) -> None:
    transport, end = memory_transport_pair()
    serving = hub.serve(transport)
    package = os.path.dirname(roomcast.__file__) + os.sep

    async def run() -> None:
        await serving

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        with anyio.fail_after(5):
            assert json.loads(await end.receive())["type"] == "connection.ack"
        await anyio.wait_all_tasks_blocked()
        # The chain of coroutines the idle connection waits in, outermost first.
        names = []
        awaiting: Any = serving
        while inspect.iscoroutine(awaiting):
            code = awaiting.cr_code
            if code.co_filename.startswith(package) and not code.co_filename.endswith(
                "testing.py"  # the transport's own receive()
            ):
                names.append(code.co_name)
            awaiting = awaiting.cr_await
        assert names == ["serve"]
        await end.close()


async def test_serve_refuses_connections_after_shutdown(clock: ManualClock) -> None:
    hub = Hub(clock=clock)
    async with hub:
        pass
    client = TestClient(hub)
    with pytest.raises(ConnectionClosed) as info:
        async with client:
            pass
    assert info.value.code == 1001


# ----------------------------------------------------------------------------- rooms


async def test_publish_reaches_exactly_the_members(hub: Hub) -> None:
    async with TestClient(hub) as member, TestClient(hub) as other:
        await member.subscribe("room:a")
        await other.subscribe("room:b")
        await hub.publish("room:a", "note.added", {"n": 1})
        event = await member.receive_event("note.added")
        assert event["room"] == "room:a"
        assert event["payload"] == {"n": 1}
        assert other.drain() == []


async def test_one_publish_to_several_rooms_shares_one_id(hub: Hub) -> None:
    async with TestClient(hub) as a, TestClient(hub) as b:
        await a.subscribe("room:a")
        await b.subscribe("room:b")
        message_id = await hub.publish(["room:a", "room:b"], "note.added", {"n": 1})
        first = await a.receive_event()
        second = await b.receive_event()
        assert first["id"] == second["id"] == message_id
        assert (first["room"], second["room"]) == ("room:a", "room:b")


async def test_every_member_gets_the_same_frame_text(hub: Hub) -> None:
    async with TestClient(hub) as a, TestClient(hub) as b:
        await a.subscribe("room:a")
        await b.subscribe("room:a")
        await hub.publish("room:a", "note.added", {"text": "héllo"})
        assert a.end.receive_nowait() == b.end.receive_nowait()


async def test_exclude_skips_the_named_clients(hub: Hub) -> None:
    async with TestClient(hub) as a, TestClient(hub) as b:
        await a.subscribe("room:a")
        await b.subscribe("room:a")
        await hub.publish("room:a", "note.added", None, exclude=[a.client_id])
        assert (await b.receive_event())["type"] == "note.added"
        assert a.drain() == []


async def test_unsubscribe_stops_delivery_and_removes_empty_room(hub: Hub) -> None:
    async with TestClient(hub) as client:
        await client.subscribe("room:a")
        assert hub.stats().members == {"room:a": 1}
        assert await client.unsubscribe("room:a") == {"room:a": {"ok": True}}
        assert hub.stats().rooms == 0
        await hub.publish("room:a", "note.added")
        assert client.drain() == []


async def test_unsubscribe_from_a_room_not_joined_is_not_found(hub: Hub) -> None:
    async with TestClient(hub) as client:
        result = await client.unsubscribe("room:a")
        assert result["room:a"]["error"]["code"] == "not_found"


async def test_another_users_room_is_forbidden(clock: ManualClock) -> None:
    async with Hub(clock=clock, authenticator=UserAuthenticator()) as hub:
        async with TestClient(hub, handshake=as_user("u1")) as client:
            result = await client.subscribe("user:u1", "user:u2")
            assert result["user:u1"] == {"ok": True}
            assert result["user:u2"]["error"]["code"] == "forbidden"


async def test_rooms_per_connection_are_limited(clock: ManualClock) -> None:
    async with Hub(clock=clock, max_rooms_per_connection=2) as hub, TestClient(hub) as client:
        await client.subscribe("r:1", "r:2")
        result = await client.subscribe("r:3")
        assert result["r:3"]["error"]["code"] == "limit_exceeded"


async def test_disconnect_removes_every_membership(hub: Hub) -> None:
    async with TestClient(hub) as client:
        await client.subscribe("room:a", "room:b", "team:t1")
        assert hub.stats().rooms == 3
    assert hub.stats().rooms == 0
    assert hub.stats().clients == 0


async def test_vanished_client_is_removed(hub: Hub) -> None:
    async with TestClient(hub) as client:
        await client.subscribe("room:a")
        client.abort()
        with anyio.fail_after(5):
            while hub.stats().clients:
                await anyio.sleep(0.01)
    assert hub.stats().rooms == 0


class GatedBackend(MemoryBackend):
    """Subscribing to a room named ``*slow`` waits for ``gate``; live channels are tracked."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = anyio.Event()
        self.live: set[tuple[str, str]] = set()

    async def subscribe(self, kind: str, key: str) -> None:
        if key.endswith("slow"):
            await self.gate.wait()
        self.live.add((kind, key))

    async def unsubscribe(self, kind: str, key: str) -> None:
        self.live.remove((kind, key))


async def finish_the_slow_subscription(hub: Hub, backend: GatedBackend, slow: TestClient) -> None:
    """Let ``room:slow``'s subscription complete; its member then gets the room's messages."""
    backend.gate.set()
    with anyio.fail_after(5):
        while ("room", "room:slow") not in backend.live:
            await anyio.sleep(0.01)
    await hub.publish("room:slow", "chat.message", {"n": 1})
    assert (await slow.receive_event("chat.message"))["payload"] == {"n": 1}


async def test_a_join_to_a_live_room_does_not_wait_for_another_rooms_subscription(
    clock: ManualClock,
) -> None:
    backend = GatedBackend()
    async with Hub(clock=clock, backend=backend) as hub, anyio.create_task_group() as tg:
        async with TestClient(hub) as first, TestClient(hub) as slow, TestClient(hub) as second:
            await first.subscribe("room:a")
            tg.start_soon(slow.subscribe, "room:slow")  # holds the backend for a while
            await anyio.wait_all_tasks_blocked()
            with anyio.fail_after(5):
                assert (await second.subscribe("room:a"))["room:a"]["ok"] is True
            await finish_the_slow_subscription(hub, backend, slow)
        # Every room subscription went with its last member.
        assert {key for kind, key in backend.live if kind == "room"} == set()


async def test_a_join_to_a_new_room_does_not_wait_for_another_new_rooms_subscription(
    clock: ManualClock,
) -> None:
    backend = GatedBackend()
    async with Hub(clock=clock, backend=backend) as hub, anyio.create_task_group() as tg:
        async with TestClient(hub) as slow, TestClient(hub) as other:
            tg.start_soon(slow.subscribe, "room:slow")  # its backend subscribe hangs
            await anyio.wait_all_tasks_blocked()
            with anyio.fail_after(5):
                assert (await other.subscribe("room:b"))["room:b"]["ok"] is True
            assert ("room", "room:b") in backend.live
            assert ("room", "room:slow") not in backend.live
            await finish_the_slow_subscription(hub, backend, slow)
        assert {key for kind, key in backend.live if kind == "room"} == set()


# ----------------------------------------------------------------------------- client publish


async def test_client_publish_is_denied_by_default(hub: Hub) -> None:
    async with TestClient(hub) as client:
        await client.subscribe("room:a")
        reply = await client.publish("room:a", "note.added", {})
        assert reply["ok"] is False
        assert reply["error"]["code"] == "forbidden"


async def test_client_publish_excludes_the_sender(hub: Hub) -> None:
    async with TestClient(hub) as sender, TestClient(hub) as reader:
        await sender.subscribe("chat:general")
        await reader.subscribe("chat:general")
        reply = await sender.publish("chat:general", "chat.message", {"text": "hi"})
        assert reply["ok"] is True
        event = await reader.receive_event("chat.message")
        assert event["id"] == reply["payload"]["id"]
        assert sender.drain() == []


async def test_authorizer_function_decides_publish(clock: ManualClock) -> None:
    def rules(principal: Principal, action: str, room: str) -> bool:
        return action != "publish" or room == "open:1"

    async with Hub(clock=clock, authorizer=rules) as hub, TestClient(hub) as client:
        assert (await client.publish("open:1", "x.y"))["ok"] is True
        assert (await client.publish("open:2", "x.y"))["ok"] is False


# ----------------------------------------------------------------------------- bad input


async def test_bad_request_is_answered_in_band_and_connection_stays(hub: Hub) -> None:
    async with TestClient(hub) as client:
        await client.end.send("{not json")
        error = await client.receive()
        assert error["type"] == "error"
        assert error["payload"]["code"] == "bad_request"
        assert (await client.request({"action": "ping"}))["type"] == "pong"


async def test_bad_request_with_ref_gets_a_failed_reply(hub: Hub) -> None:
    async with TestClient(hub) as client:
        reply = await client.request({"action": "subscribe", "rooms": ["bad room!"]})
        assert reply["ok"] is False
        assert reply["error"]["code"] == "bad_request"


async def test_repeated_bad_requests_close_with_1008(clock: ManualClock) -> None:
    async with Hub(clock=clock, bad_request_limit=3) as hub, TestClient(hub) as client:
        for _ in range(4):
            await client.end.send("[]")
        assert await client.wait_closed() == 1008
        assert hub.stats().bad_requests == 4


async def test_binary_frame_is_a_bad_request(hub: Hub) -> None:
    async with TestClient(hub) as client:
        await client.end.send(b'{"action":"ping"}')
        assert (await client.receive())["payload"]["code"] == "bad_request"


# ----------------------------------------------------------------------------- rate limit


async def test_rate_limit_answers_with_retry_after(clock: ManualClock) -> None:
    limit = RateLimit(rate=60, period=60, burst=2, strikes=5)
    async with Hub(clock=clock, rate_limit=limit) as hub, TestClient(hub) as client:
        assert (await client.request({"action": "ping"}))["type"] == "pong"
        assert (await client.request({"action": "ping"}))["type"] == "pong"
        refused = await client.request({"action": "ping"})
        assert refused["error"]["code"] == "rate_limited"
        assert refused["error"]["retryAfterMs"] == 1000
        await clock.advance(1)
        assert (await client.request({"action": "ping"}))["type"] == "pong"
        assert hub.stats().rate_limited == 1


async def test_sustained_abuse_closes_with_4029(clock: ManualClock) -> None:
    limit = RateLimit(rate=60, period=60, burst=1, strikes=3)
    async with Hub(clock=clock, rate_limit=limit) as hub, TestClient(hub) as client:
        for _ in range(10):
            try:
                await client.send_json({"action": "ping"})
            except ConnectionClosed:
                break
        assert await client.wait_closed() == 4029


# ----------------------------------------------------------------------------- targeting


async def test_send_to_user_reaches_every_connection_of_the_user(clock: ManualClock) -> None:
    async with Hub(clock=clock, authenticator=UserAuthenticator()) as hub:
        async with (
            TestClient(hub, handshake=as_user("u1")) as tab1,
            TestClient(hub, handshake=as_user("u1")) as tab2,
            TestClient(hub, handshake=as_user("u2")) as stranger,
        ):
            await hub.send_to_user("u1", "notification", {"text": "hi"})
            for tab in (tab1, tab2):
                event = await tab.receive_event("notification")
                assert event["room"] is None
                assert event["payload"] == {"text": "hi"}
            assert stranger.drain() == []
            assert tab1.drain() == tab2.drain() == []


async def test_send_to_client_reaches_only_that_connection(hub: Hub) -> None:
    async with TestClient(hub) as a, TestClient(hub) as b:
        await hub.send_to_client(a.client_id, "hello", 1)
        assert (await a.receive_event("hello"))["payload"] == 1
        assert b.drain() == []


async def test_disconnect_user_closes_their_connections(clock: ManualClock) -> None:
    async with Hub(clock=clock, authenticator=UserAuthenticator()) as hub:
        async with TestClient(hub, handshake=as_user("u1")) as client:
            assert hub.disconnect_user("u1", 4001, "revoked") == 1
            assert await client.wait_closed() == 4001


# ----------------------------------------------------------------------------- server API checks


async def test_publish_rejects_bad_arguments(hub: Hub) -> None:
    with pytest.raises(ValueError, match="room"):
        await hub.publish("bad room", "a.b")
    with pytest.raises(ValueError, match="reserved"):
        await hub.publish("room:a", "reply")
    with pytest.raises(ValueError, match="JSON"):
        await hub.publish("room:a", "a.b", {"x": float("nan")})
    with pytest.raises(ValueError, match="JSON"):
        await hub.publish("room:a", "a.b", object())


SENDS = {
    "publish": lambda hub: hub.publish("chat:general", "chat.message", {"text": "hi"}),
    "send_to_user": lambda hub: hub.send_to_user("u1", "notification", {}),
    "send_to_client": lambda hub: hub.send_to_client("abc.def", "notification", {}),
}


@pytest.mark.parametrize("send", list(SENDS))
async def test_sending_on_a_hub_that_was_never_started_raises(send: str) -> None:
    hub = Hub()
    with pytest.raises(HubNotRunning, match="async with hub") as caught:
        await SENDS[send](hub)
    assert isinstance(caught.value, RoomcastError)
    assert isinstance(caught.value, RuntimeError)
    assert f"Hub.{send}()" in str(caught.value)


@pytest.mark.parametrize("send", list(SENDS))
async def test_sending_on_a_closed_hub_raises(send: str) -> None:
    async with Hub() as hub:
        await SENDS[send](hub)  # running: accepted
    with pytest.raises(HubNotRunning, match="shut down"):
        await SENDS[send](hub)


def test_hub_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="max_queue"):
        Hub(max_queue=0)
    with pytest.raises(ValueError, match="slow_consumer"):
        Hub(slow_consumer="block")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="close_timeout"):
        Hub(close_timeout=0)
    with pytest.raises(TypeError, match="RoomOptions"):
        Hub(namespaces={"team": {"history": 1}})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"History\.size"):
        History(size=0, ttl=1)


# ----------------------------------------------------------------------------- ordering


async def test_concurrent_publishers_keep_one_order_per_room(hub: Hub) -> None:
    async with TestClient(hub) as a, TestClient(hub) as b:
        await a.subscribe("team:t1")
        await b.subscribe("team:t1")

        async def publisher(name: str) -> None:
            for n in range(50):
                await hub.publish("team:t1", "seq.item", {"p": name, "n": n})
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            for name in "xyz":
                tg.start_soon(publisher, name)
        seen_a = [e for e in a.drain() if e["type"] == "seq.item"]
        seen_b = [e for e in b.drain() if e["type"] == "seq.item"]
        assert len(seen_a) == 150
        assert [e["id"] for e in seen_a] == [e["id"] for e in seen_b]
        assert [e["offset"] for e in seen_a] == list(range(1, 151))
        for name in "xyz":
            assert [e["payload"]["n"] for e in seen_a if e["payload"]["p"] == name] == list(
                range(50)
            )


class ResettingTransport:
    """A memory transport whose ``try_send`` raises once ``reset`` is set, as a reset socket's."""

    def __init__(self, inner: MemoryTransport) -> None:
        self.inner = inner
        self.reset = False

    @property
    def handshake(self) -> Handshake:
        return self.inner.handshake

    async def receive(self) -> str | bytes:
        return await self.inner.receive()

    def try_send(self, frame: str) -> bool:
        if self.reset:
            raise ConnectionClosed.from_code(1006)
        return self.inner.try_send(frame)

    async def send(self, frames: list[str]) -> None:
        await self.inner.send(frames)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.inner.close(code, reason)


async def test_a_transport_reset_mid_fan_out_drops_only_that_client(clock: ManualClock) -> None:
    async with Hub(clock=clock) as hub, anyio.create_task_group() as tg:
        async with TestClient(hub) as before, TestClient(hub) as after:
            inner, end = memory_transport_pair()
            transport = ResettingTransport(inner)
            served = anyio.Event()

            async def serve() -> None:
                await hub.serve(transport)
                served.set()

            tg.start_soon(serve)
            with anyio.fail_after(5):
                assert json.loads(await end.receive())["type"] == "connection.ack"
                await before.subscribe("room:a")
                await end.send(json.dumps({"action": "subscribe", "rooms": ["room:a"]}))
                assert json.loads(await end.receive())["type"] == "reply"
                await after.subscribe("room:a")
            transport.reset = True  # the middle member of three
            await hub.publish("room:a", "chat.message", {"n": 1})
            assert (await before.receive_event("chat.message"))["payload"] == {"n": 1}
            assert (await after.receive_event("chat.message"))["payload"] == {"n": 1}
            with anyio.fail_after(5):
                await served.wait()
            await end.close()
            assert hub.running
            stats = hub.stats()
            assert (stats.dropped, stats.clients, stats.members) == (1, 2, {"room:a": 2})
            await hub.publish("room:a", "chat.message", {"n": 2})
            assert (await after.receive_event("chat.message"))["payload"] == {"n": 2}


# ----------------------------------------------------------------------------- slow consumers


async def test_stalled_client_is_disconnected_and_others_keep_receiving(clock: ManualClock) -> None:
    async with Hub(clock=clock, max_queue=5) as hub:
        async with TestClient(hub, buffer=2) as stalled, TestClient(hub) as healthy:
            await stalled.subscribe("room:a")
            await healthy.subscribe("room:a")
            with anyio.fail_after(2):
                for n in range(50):
                    await hub.publish("room:a", "seq.item", n)
            # The publisher finished without waiting for the stalled client...
            assert [e["payload"] for e in healthy.drain()] == list(range(50))
            assert await stalled.wait_closed() == 4009
        stats = hub.stats()
        assert stats.slow_consumer_disconnects == 1
        assert stats.dropped > 0


async def test_drop_oldest_sends_a_gap_notice(clock: ManualClock) -> None:
    async with Hub(clock=clock, max_queue=3, slow_consumer="drop_oldest") as hub:
        async with TestClient(hub, buffer=1) as slow:
            await slow.subscribe("room:a")
            for n in range(10):
                await hub.publish("room:a", "seq.item", n)
            frames: list[dict[str, Any]] = []
            while len(frames) < 5:
                frames.append(await slow.receive())
            assert frames[0]["payload"] == 0
            gap = frames[1]
            assert gap["type"] == "gap"
            assert gap["payload"] == {"dropped": 6, "rooms": ["room:a"]}
            assert [f["payload"] for f in frames[2:]] == [7, 8, 9]
            assert hub.stats().dropped == 6


# ----------------------------------------------------------------------------- shutdown


async def test_shutdown_flushes_queued_frames_then_closes_1001(clock: ManualClock) -> None:
    hub = Hub(clock=clock, max_queue=100)
    async with hub, TestClient(hub, buffer=2) as client:
        await client.subscribe("room:a")
        for n in range(20):
            await hub.publish("room:a", "seq.item", n)
        received: list[Any] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.aclose)
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    received.append(json.loads(await client.end.receive())["payload"])
        assert received == list(range(20))
        assert info.value.code == 1001


# ----------------------------------------------------------------------------- heartbeat


async def test_silent_client_is_closed_after_the_timeout(clock: ManualClock) -> None:
    policy = HeartbeatPolicy(interval=10, timeout=20, jitter=0)
    async with Hub(clock=clock, heartbeat=policy) as hub, TestClient(hub) as client:
        await client.subscribe("room:a")
        await clock.advance(10)
        assert (await client.receive())["type"] == "ping"
        await clock.advance(10)
        assert await client.wait_closed() == 1011
        with anyio.fail_after(5):
            while hub.stats().clients:
                await anyio.sleep(0.01)
        assert hub.stats().heartbeat_timeouts == 1
        assert hub.stats().rooms == 0


async def test_client_answering_pings_stays_connected(clock: ManualClock) -> None:
    policy = HeartbeatPolicy(interval=10, timeout=20, jitter=0)
    async with Hub(clock=clock, heartbeat=policy) as hub, TestClient(hub) as client:
        for _ in range(10):
            await clock.advance(10)
            assert (await client.receive())["type"] == "ping"
            await client.send_json({"action": "pong"})
        assert hub.stats().clients == 1
        assert hub.stats().heartbeat_timeouts == 0


# ----------------------------------------------------------------------------- history


async def test_recovery_replays_exactly_the_missed_messages(hub: Hub) -> None:
    async with TestClient(hub) as client:
        result = await client.subscribe("team:t1")
        epoch = result["team:t1"]["epoch"]
        await hub.publish("team:t1", "seq.item", 1)
        last = await client.receive_event()
    for n in range(2, 5):
        await hub.publish("team:t1", "seq.item", n)
    async with TestClient(hub) as client:
        since = {"team:t1": {"offset": last["offset"], "epoch": epoch}}
        result = await client.subscribe("team:t1", since=since)
        assert result["team:t1"]["recovered"] is True
        await hub.publish("team:t1", "seq.item", 5)
        replay = [e["payload"] for e in client.drain() if e.get("type") == "seq.item"]
        assert replay == [2, 3, 4, 5]


async def test_ephemeral_messages_are_not_stored(hub: Hub) -> None:
    async with TestClient(hub) as client:
        epoch = (await client.subscribe("team:t1"))["team:t1"]["epoch"]
        await hub.publish("team:t1", "typing", {}, ephemeral=True)
        event = await client.receive_event("typing")
        assert "offset" not in event
    async with TestClient(hub) as client:
        result = await client.subscribe("team:t1", since={"team:t1": {"offset": 0, "epoch": epoch}})
        assert result["team:t1"]["recovered"] is True
        assert client.drain() == []


async def test_recovery_fails_whole_when_history_was_pruned(clock: ManualClock) -> None:
    options = RoomOptions(history=History(size=3, ttl=600))
    async with Hub(clock=clock, namespaces={"team": options}) as hub:
        async with TestClient(hub) as client:
            epoch = (await client.subscribe("team:t1"))["team:t1"]["epoch"]
        for n in range(5):
            await hub.publish("team:t1", "seq.item", n)
        async with TestClient(hub) as client:
            result = await client.subscribe(
                "team:t1", since={"team:t1": {"offset": 0, "epoch": epoch}}
            )
            assert result["team:t1"]["recovered"] is False
            assert result["team:t1"]["offset"] == 5
            assert client.drain() == []


async def test_recovery_fails_for_another_epoch(hub: Hub) -> None:
    await hub.publish("team:t1", "seq.item", 1)
    async with TestClient(hub) as client:
        result = await client.subscribe("team:t1", since={"team:t1": {"offset": 0, "epoch": "old"}})
        assert result["team:t1"]["recovered"] is False
        assert client.drain() == []


async def test_recovery_fails_after_the_ttl(clock: ManualClock) -> None:
    options = RoomOptions(history=History(size=10, ttl=60))
    async with Hub(clock=clock, namespaces={"team": options}) as hub:
        async with TestClient(hub) as client:
            epoch = (await client.subscribe("team:t1"))["team:t1"]["epoch"]
        await hub.publish("team:t1", "seq.item", 1)
        await clock.advance(61)
        async with TestClient(hub) as client:
            result = await client.subscribe(
                "team:t1", since={"team:t1": {"offset": 0, "epoch": epoch}}
            )
            assert result["team:t1"]["recovered"] is False
            assert client.drain() == []


async def test_presence_lists_members_and_announces_joins(clock: ManualClock) -> None:
    options = RoomOptions(presence=True)
    async with (
        Hub(clock=clock, authenticator=UserAuthenticator(), namespaces={"doc": options}) as hub,
        TestClient(hub, handshake=as_user("u1")) as a,
    ):
        await a.subscribe("doc:d1")
        async with TestClient(hub, handshake=as_user("u2")) as b:
            await b.subscribe("doc:d1")
            own = await a.receive_event("presence.join")
            assert own["payload"]["userId"] == "u1"
            joined = await a.receive_event("presence.join")
            assert joined["payload"]["userId"] == "u2"
            reply = await a.request({"action": "presence", "room": "doc:d1"})
            assert sorted(m["userId"] for m in reply["payload"]["members"]) == ["u1", "u2"]
        left = await a.receive_event("presence.leave")
        assert left["payload"]["userId"] == "u2"


async def test_presence_is_not_found_where_it_is_off(hub: Hub) -> None:
    async with TestClient(hub) as client:
        reply = await client.request({"action": "presence", "room": "room:a"})
        assert reply["error"]["code"] == "not_found"


async def test_client_types_limit_what_clients_may_publish_and_force_ephemeral(
    clock: ManualClock,
) -> None:
    options = RoomOptions(
        history=History(size=10, ttl=60), client_types=frozenset({"typing"}), client_ephemeral=True
    )
    async with (
        Hub(
            clock=clock, authorizer=DefaultAuthorizer(publish=["doc"]), namespaces={"doc": options}
        ) as hub,
        TestClient(hub) as writer,
        TestClient(hub) as reader,
    ):
        await writer.subscribe("doc:d1")
        await reader.subscribe("doc:d1")
        forged = await writer.publish("doc:d1", "comment.created", {})
        assert forged["error"]["code"] == "forbidden"
        assert (await writer.publish("doc:d1", "typing", {}))["ok"] is True
        typing = await reader.receive_event("typing")
        assert "offset" not in typing  # never stored, though the client did not ask


def test_client_types_are_validated() -> None:
    with pytest.raises(ValueError, match="reserved"):
        RoomOptions(client_types=frozenset({"reply"}))
    with pytest.raises(TypeError, match="collection"):
        RoomOptions(client_types="typing")  # type: ignore[arg-type]


async def test_cancelled_connection_task_still_leaves_every_room(hub: Hub) -> None:
    client = TestClient(hub)
    async with anyio.create_task_group() as tg:
        tg.start_soon(hub.serve, client.transport)
        assert (await client.receive())["type"] == "connection.ack"
        await client.subscribe("room:a", "team:t1")
        assert hub.stats().rooms == 2
        tg.cancel_scope.cancel()  # the adapter's task is cancelled mid-connection
    assert (hub.stats().clients, hub.stats().rooms) == (0, 0)
    assert await client.wait_closed() == 1001
    await client.end.close()


# ----------------------------------------------------------------------------- gaps, backend status


async def test_stats_show_the_memory_backend_connected(hub: Hub) -> None:
    status = hub.stats().backend
    assert status == BackendStatus(connected=True, reconnects=0, last_error=None, lag=None)
    assert (hub.stats().gaps, hub.stats().resets) == (0, 0)


class FailingBackend(MemoryBackend):
    """A backend whose broker link is down, as a broker backend would report it."""

    def status(self) -> BackendStatus:
        return BackendStatus(
            connected=False, reconnects=3, last_error="connection refused", lag=None
        )


async def test_stats_show_a_backend_that_reports_a_failure(clock: ManualClock) -> None:
    async with Hub(clock=clock, backend=FailingBackend()) as hub:
        status = hub.stats().backend
        assert not status.connected
        assert (status.reconnects, status.last_error) == (3, "connection refused")


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), "15"])
def test_position_check_must_be_a_positive_number_of_seconds(value: Any) -> None:
    with pytest.raises(ValueError, match="position_check"):
        Hub(position_check=value)


def test_position_check_defaults_to_at_most_thirty_seconds() -> None:
    default = inspect.signature(Hub).parameters["position_check"].default
    assert default == roomcast.config.DEFAULT_POSITION_CHECK
    assert 0 < default <= 30


@pytest.mark.parametrize("type_", ["room.reset", "roomcast.disconnect"])
async def test_the_server_s_own_notices_cannot_be_published(hub: Hub, type_: str) -> None:
    with pytest.raises(ValueError, match="reserved"):
        await hub.publish("team:t1", type_)
    with pytest.raises(ValueError, match="reserved"):
        await hub.send_to_user("u1", type_)
    async with TestClient(hub) as client:
        reply = await client.request(
            {"action": "publish", "room": "chat:c", "type": type_, "payload": None}
        )
        assert reply["ok"] is False
        assert reply["error"]["code"] == "bad_request"


class ReadCountingBackend(MemoryBackend):
    """Counts history reads (the position checks among them)."""

    reads = 0

    async def history(
        self,
        room: str,
        since: StreamPosition | None,
        history: History,
        *,
        limit: int | None = None,
    ) -> HistoryResult:
        self.reads += 1
        return await super().history(room, since, history, limit=limit)


async def test_a_position_check_runs_on_the_hub_clock_and_finds_nothing_when_nothing_was_lost(
    clock: ManualClock,
) -> None:
    namespaces = {"team": RoomOptions(history=History(size=10, ttl=600))}
    backend = ReadCountingBackend(clock=clock.now)
    async with Hub(clock=clock, backend=backend, namespaces=namespaces, position_check=5) as hub:
        async with TestClient(hub) as client:
            await client.subscribe("team:t1")
            await hub.publish("team:t1", "a.b", 1)
            assert (await client.receive_event())["offset"] == 1
            reads = backend.reads
            await clock.advance(4)
            assert backend.reads == reads
            await clock.advance(2)
            assert backend.reads == reads + 1
            await clock.advance(6)
            assert backend.reads == reads + 2
            assert [frame for frame in client.drain() if frame["type"] != "ping"] == []
            assert hub.stats().gaps == 0


class UnreachableBackend(MemoryBackend):
    """A backend whose broker stopped answering after the hub started."""

    down = False

    async def publish(
        self, kind: ChannelKind, key: str, publication: Publication, history: History | None
    ) -> Publication:
        if self.down:
            raise BackendError("Redis failed: ConnectionError: connection refused")
        return await super().publish(kind, key, publication, history)

    async def subscribe(self, kind: ChannelKind, key: str) -> None:
        if self.down:
            raise BackendError("Redis did not answer within 5 s")
        await super().subscribe(kind, key)


async def test_a_request_the_backend_fails_is_answered_and_the_connection_stays_open(
    clock: ManualClock,
) -> None:
    backend = UnreachableBackend()
    authorizer = DefaultAuthorizer(publish=["chat"])
    async with Hub(clock=clock, backend=backend, authorizer=authorizer) as hub:
        async with TestClient(hub) as client:
            await client.subscribe("chat:a")
            backend.down = True
            for reply in (
                await client.publish("chat:a", "msg", "while down"),
                await client.request({"action": "subscribe", "rooms": ["chat:b"]}),
            ):
                assert reply["ok"] is False
                assert reply["error"]["code"] == "internal"
                assert reply["error"]["retryAfterMs"] == 1000
            backend.down = False
            # Still connected and served: the same requests succeed once it is back.
            assert (await client.publish("chat:a", "msg", "back"))["ok"] is True
            await client.subscribe("chat:b")  # raises unless granted
            assert hub.stats().clients == 1


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("authenticator", "authenticator must be an Authenticator, not int"),
        ("backend", "backend must be a Backend, not int"),
        ("namespaces", "namespaces must be a mapping of namespace to RoomOptions, not int"),
        ("default_room_options", "default_room_options must be a RoomOptions, not int"),
        ("rate_limit", "rate_limit must be a RateLimit, not int"),
        ("token_sources", "token_sources must be a TokenSources, not int"),
        ("limits", "limits must be a ConnectionLimits, not int"),
        ("clock", "clock must be a Clock, not int"),
        ("allowed_origins", "allowed_origins must be a collection of origins, not int"),
    ],
)
def test_an_object_option_of_the_wrong_kind_is_refused_by_name(option: str, message: str) -> None:
    options: dict[str, Any] = {option: 3}
    with pytest.raises(TypeError, match=message):
        Hub(**options)


def test_allowed_origins_given_as_one_string_or_bytes_is_refused() -> None:
    for one in ("https://app.example", b"https://app.example"):
        with pytest.raises(TypeError, match="must be a collection of origins, not"):
            Hub(allowed_origins=one)  # type: ignore[arg-type]
