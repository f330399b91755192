"""The client's API against real hubs behind every adapter, over loopback."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

import roomcast.client
from adapters.contract.servers import KINDS, ServerKind
from roomcast import (
    AuthenticationError,
    Hub,
    LocalProtocolError,
    PermissionDenied,
    RateLimit,
    RateLimited,
    ServerError,
)
from roomcast.client import Event, HistoryPage, Member, PresenceChange, Received, Subscription
from roomcast.wire import StreamPosition

from .conftest import (
    HAS_WEBSOCKETS_TRIO,
    TIMEOUT,
    fast_backoff,
    hub_kwargs,
    needs_websockets_trio,
    token,
)

pytestmark = pytest.mark.anyio

TRIO_KIND = next(kind for kind in KINDS if kind.hub_backend == "trio")


@pytest.fixture(params=[kind.param() for kind in KINDS])
def kind(request: pytest.FixtureRequest) -> ServerKind:
    server_kind: ServerKind = request.param
    return server_kind


@pytest.fixture
def anyio_backend() -> str:
    # Servers on the test's loop run on asyncio; the trio client has its own test.
    return "asyncio"


async def publish(hub: Hub, room: str, count: int, type_: str = "item.added") -> None:
    for number in range(count):
        await hub.publish(room, type_, {"n": number})


async def next_event(stream: AsyncIterator[Received]) -> Event:
    """The next application event, skipping presence changes."""
    with anyio.fail_after(TIMEOUT):
        async for item in stream:
            if isinstance(item, Event):
                return item
            assert isinstance(item, PresenceChange), item
    raise AssertionError("the stream ended")


async def the_flow(url: str, served_publish: Any) -> None:
    """Subscribe with history, publish, presence, history, unsubscribe."""
    await served_publish("team:t1", 5)
    async with roomcast.client.connect(url, token=token("u1"), backoff=fast_backoff()) as a:
        async with roomcast.client.connect(url, token=token("u2"), backoff=fast_backoff()) as b:
            sub = await a.subscribe("team:t1", history=3)
            assert a.state == "connected"
            assert a.user_id == "u1"
            replayed = [await next_event(sub) for _ in range(3)]
            assert [event.offset for event in replayed] == [3, 4, 5]
            assert [event.payload for event in replayed] == [{"n": 2}, {"n": 3}, {"n": 4}]
            assert sub.position is not None
            assert sub.position.offset == 5
            await b.subscribe("team:t1")
            message_id = await b.publish("team:t1", "note.added", {"text": "hi"})
            live = await next_event(sub)
            assert live.type == "note.added"
            assert live.id == message_id
            assert live.user_id == "u2"
            assert live.room == "team:t1"
            assert live.offset == 6
            assert live.epoch == replayed[0].epoch
            assert live.payload == {"text": "hi"}
            assert live.timestamp > 0
            members = await a.presence("team:t1")
            assert all(isinstance(member, Member) for member in members)
            assert sorted(str(member.user_id) for member in members) == ["u1", "u2"]
            page = await a.history("team:t1", limit=2)
            assert isinstance(page, HistoryPage)
            assert [event.offset for event in page.publications] == [5, 6]
            assert page.offset == 6
            assert page.recovered is None
            after = await b.history("team:t1", since=StreamPosition(4, page.epoch))
            assert [event.offset for event in after.publications] == [5, 6]
            assert after.recovered is True
            await sub.unsubscribe()
            assert not sub.active
            assert "team:t1" not in a.subscriptions
            with anyio.fail_after(TIMEOUT):
                rest = [item async for item in sub]
            assert all(isinstance(item, PresenceChange) for item in rest)
    final: str = a.state
    assert final == "closed"
    assert a.error is None


async def test_subscribe_publish_presence_history_unsubscribe(kind: ServerKind) -> None:
    async with kind.start(hub_kwargs()) as served:

        async def served_publish(room: str, count: int) -> None:
            await served.run(lambda hub: publish(hub, room, count))

        await the_flow(served.url, served_publish)


@needs_websockets_trio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_the_client_runs_on_trio(anyio_backend: str) -> None:
    async with TRIO_KIND.start(hub_kwargs()) as served:

        async def served_publish(room: str, count: int) -> None:
            await served.run(lambda hub: publish(hub, room, count))

        await the_flow(served.url, served_publish)


def without_websockets_trio(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``websockets.trio`` unimportable, as before websockets 17.0."""
    for name in [name for name in sys.modules if name.startswith("websockets.trio")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "websockets.trio", None)


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_on_trio_without_websockets_trio_entering_names_the_version_needed(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_websockets_trio(monkeypatch)
    conn = roomcast.client.connect("ws://127.0.0.1:9/ws", token=token("u1"))
    with pytest.raises(ImportError, match=r"on trio needs websockets 17\.0 or later") as caught:
        async with conn:
            raise AssertionError("entered")  # pragma: no cover
    assert "run the client on asyncio" in str(caught.value)
    assert isinstance(caught.value.__cause__, ImportError)


async def test_on_asyncio_without_websockets_trio_the_client_connects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    without_websockets_trio(monkeypatch)
    async with KINDS[0].start(hub_kwargs()) as served:
        async with roomcast.client.connect(served.url, token=token("u1")) as conn:
            await conn.wait_state("connected")


@pytest.mark.skipif(HAS_WEBSOCKETS_TRIO, reason="this websockets has its trio client")
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_on_trio_with_a_websockets_before_17_entering_names_the_version_needed(
    anyio_backend: str,
) -> None:
    with pytest.raises(ImportError, match=r"on trio needs websockets 17\.0 or later"):
        async with roomcast.client.connect("ws://127.0.0.1:9/ws", token=token("u1")):
            raise AssertionError("entered")  # pragma: no cover


async def test_room_less_events_go_to_the_connection_stream(kind: ServerKind) -> None:
    async with kind.start(hub_kwargs()) as served:
        async with roomcast.client.connect(served.url, token=token("u1")) as conn:
            await conn.wait_state("connected")
            received: list[Event] = []

            async def read() -> None:
                received.append(await next_event(conn))

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(read)
                # A room-less event reaches the connection's stream once the stream is
                # read (before that it is counted in `unclaimed`): send until one is.
                with anyio.fail_after(TIMEOUT):
                    while not received:
                        await served.run(
                            lambda hub: hub.send_to_user("u1", "notice.sent", {"hello": 1})
                        )
                        await anyio.sleep(0.05)
            event = received[0]
            assert event.room is None
            assert event.type == "notice.sent"
            assert event.payload == {"hello": 1}


async def test_the_connection_stream_gets_every_room_once_iterated() -> None:
    async with KINDS[0].start(hub_kwargs()) as served:
        async with roomcast.client.connect(served.url, token=token("u1")) as conn:
            stream = aiter(conn)
            first = await conn.subscribe("chat:a")
            second = await conn.subscribe("chat:b")
            await served.run(lambda hub: publish(hub, "chat:a", 1, "a.sent"))
            await served.run(lambda hub: publish(hub, "chat:b", 1, "b.sent"))
            assert [(await next_event(stream)).type for _ in range(2)] == ["a.sent", "b.sent"]
            # Neither subscription is iterated: the connection took the events.
            assert len(first._buffer) == len(second._buffer) == 0


async def test_refusals_are_roomcast_exceptions() -> None:
    async with KINDS[0].start(hub_kwargs(rate_limit=RateLimit(rate=3, period=60, burst=3))) as s:
        async with roomcast.client.connect(s.url, token=token("u1")) as conn:
            with pytest.raises(PermissionDenied):
                await conn.subscribe("secret:s1")
            assert "secret:s1" not in conn.subscriptions
            with pytest.raises(ServerError) as caught:
                await conn.presence("chat:a")
            assert caught.value.code == "not_found"
            with pytest.raises(ServerError) as caught:
                await conn.history("chat:a")
            assert caught.value.code == "not_found"
            with pytest.raises(RateLimited) as limited:
                await conn.publish("chat:a", "note.added")
            assert limited.value.retry_after > 0


async def test_bad_arguments_raise_before_anything_is_sent() -> None:
    # No server at all: a request that reached the network would time out instead.
    conn = roomcast.client.connect("ws://127.0.0.1:9/ws", request_timeout=0.5)
    async with conn:
        with pytest.raises(LocalProtocolError):
            await conn.subscribe("bad room")
        with pytest.raises(LocalProtocolError):
            await conn.publish("chat:a", "presence.join")
        with pytest.raises(LocalProtocolError):
            await conn.publish("chat:a", "reply")
        with pytest.raises(LocalProtocolError):
            await conn.publish("chat:a", "note.added", "x" * 70_000)
        with pytest.raises(LocalProtocolError):
            await conn.publish("chat:a", "note.added", float("nan"))
        with pytest.raises(ValueError, match="history"):
            await conn.subscribe("team:t1", history=0)
        with pytest.raises(ValueError, match="limit"):
            await conn.history("team:t1", limit=10_001)

    async def provider() -> str:
        return "t"

    with pytest.raises(ValueError, match="not both"):
        roomcast.client.connect("ws://x/ws", token="a", token_provider=provider)
    with pytest.raises(ValueError, match="token"):
        roomcast.client.connect("ws://x/ws", token="")


async def test_a_request_waits_for_the_connection_then_times_out() -> None:
    conn = roomcast.client.connect("ws://127.0.0.1:9/ws", request_timeout=0.3)
    async with conn:
        with anyio.fail_after(TIMEOUT), pytest.raises(roomcast.RequestTimeout):
            await conn.publish("chat:a", "note.added")
        assert conn.state in ("connecting", "disconnected")


async def test_subscribing_twice_to_a_room_is_refused_locally() -> None:
    async with KINDS[0].start(hub_kwargs()) as served:
        async with roomcast.client.connect(served.url, token=token("u1")) as conn:
            sub = await conn.subscribe("chat:a")
            assert isinstance(sub, Subscription)
            with pytest.raises(ValueError, match="subscribed already"):
                await conn.subscribe("chat:a")


async def test_a_refused_token_closes_the_client_with_an_authentication_error() -> None:
    async with KINDS[0].start(hub_kwargs()) as served:
        async with roomcast.client.connect(served.url, token="not-a-jwt") as conn:
            with anyio.fail_after(TIMEOUT):
                assert await conn.wait_state("closed") == "closed"
            assert isinstance(conn.error, AuthenticationError)
            with pytest.raises(AuthenticationError):
                await conn.subscribe("chat:a")
            with pytest.raises(AuthenticationError):
                await anext(aiter(conn))
