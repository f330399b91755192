"""The client's streams: replays larger than a buffer, unread streams, errors in the block.

Against real hubs over loopback: a history replay larger than ``buffer_size``
arrives whole, a stream the application never reads does not hold the others
back, a reader waiting on a full stream notices the connection closing, and an
exception raised inside ``async with connect(...)`` leaves it as itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

import roomcast.client
from adapters.contract.servers import KINDS, Served
from roomcast import CloseCode, Hub, PermissionDenied
from roomcast.client import Event, PresenceChange, Received, Recovery, StateChange

from .conftest import TIMEOUT, fast_backoff, hub_kwargs, token

pytestmark = pytest.mark.anyio

TRIO_KIND = next(kind for kind in KINDS if kind.hub_backend == "trio")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def publish(served: Served, room: str, first: int, count: int) -> None:
    async def run(hub: Hub) -> None:
        for number in range(first, first + count):
            await hub.publish(room, "tick.sent", {"n": number})

    await served.run(run)


async def events_of(stream: AsyncIterator[Received], count: int) -> list[Received]:
    """The next ``count`` items that are not presence changes."""
    items: list[Received] = []
    with anyio.fail_after(TIMEOUT):
        while len(items) < count:
            item = await anext(stream)
            if not isinstance(item, PresenceChange):
                items.append(item)
    return items


@pytest.mark.parametrize("iterated", [False, True], ids=["alone", "connection-iterated"])
async def test_a_history_replay_larger_than_the_buffer_arrives_whole(iterated: bool) -> None:
    # buffer_size 10, history 300: the replay is delivered before subscribe() returns.
    async with KINDS[0].start(hub_kwargs()) as served:
        await publish(served, "team:t1", 0, 400)
        conn = roomcast.client.connect(
            served.url, token=token("u1"), buffer_size=10, request_timeout=5
        )
        async with conn:
            if iterated:
                # Read, the connection takes the events of rooms whose subscription is not.
                aiter(conn)
            with anyio.fail_after(TIMEOUT):
                sub = await conn.subscribe("team:t1", history=300)
            stream = conn if iterated else sub
            items = await events_of(stream, 300)
            assert [item.payload["n"] for item in items if isinstance(item, Event)] == list(
                range(100, 400)
            )
            # Past the join, each stream is back to its size.
            assert sub._buffer.capacity == conn._stream.capacity == 10
            await publish(served, "team:t1", 400, 1)
            (live,) = await events_of(stream, 1)
            assert isinstance(live, Event)
            assert live.payload == {"n": 400}


async def test_room_less_events_nobody_reads_do_not_stall_the_subscriptions() -> None:
    async with KINDS[0].start(hub_kwargs()) as served:
        conn = roomcast.client.connect(served.url, token=token("u1"), buffer_size=10)
        async with conn:
            sub = await conn.subscribe("chat:x")

            async def notify(hub: Hub) -> None:
                for number in range(25):
                    await hub.send_to_user("u1", "note.sent", {"n": number})

            await served.run(notify)
            await publish(served, "chat:x", 0, 1)
            (item,) = await events_of(sub, 1)
            assert isinstance(item, Event)
            assert item.type == "tick.sent"
            assert conn.unclaimed == 25
            assert conn.state == "connected"
            # Once the connection is iterated, room-less events reach it.
            stream = aiter(conn)
            await served.run(lambda hub: hub.send_to_user("u1", "note.sent", {"n": 25}))
            with anyio.fail_after(TIMEOUT):
                note = await anext(stream)
            while isinstance(note, PresenceChange):
                note = await anext(stream)
            assert isinstance(note, Event)
            assert note.payload == {"n": 25}
            assert conn.unclaimed == 25


async def test_a_reader_waiting_on_a_full_stream_notices_the_close_and_recovers() -> None:
    # The application reads nothing while 12 events and a close arrive: the client
    # reconnects anyway, then every event reaches it once, in order, with a Recovery.
    changes: list[StateChange] = []
    async with KINDS[0].start(hub_kwargs()) as served:
        conn = roomcast.client.connect(
            served.url, token=token("u1"), buffer_size=5, backoff=fast_backoff()
        )
        conn.on_state_change(changes.append)
        async with conn:
            sub = await conn.subscribe("team:t1")
            await publish(served, "team:t1", 0, 12)
            await anyio.sleep(0.3)  # the reader waits on the full subscription
            await served.run(disconnect)
            with anyio.fail_after(TIMEOUT):
                while not [change for change in changes if change.state == "disconnected"]:
                    await anyio.sleep(0.01)
            await publish(served, "team:t1", 12, 3)
            items = await events_of(sub, 16)
        events = [item for item in items if isinstance(item, Event)]
        assert [event.payload["n"] for event in events] == list(range(15))
        notices = [item for item in items if isinstance(item, Recovery)]
        assert len(notices) == 1
        assert notices[0].recovered is True
    lost = next(change for change in changes if change.state == "disconnected")
    assert lost.code == CloseCode.GOING_AWAY


async def disconnect(hub: Hub) -> int:
    return hub.disconnect_user("u1", CloseCode.GOING_AWAY, "bye")


async def an_error_in_the_block(url: str) -> None:
    with pytest.raises(PermissionDenied):
        async with roomcast.client.connect(url, token=token("u1")) as conn:
            await conn.subscribe("secret:s1")
    with pytest.raises(ValueError, match="application error"):
        async with roomcast.client.connect(url, token=token("u1")) as conn:
            await conn.subscribe("chat:a")
            raise ValueError("application error")
    # Cancelled from outside, the block ends quietly, and the client closes.
    with anyio.move_on_after(0.3) as scope:
        async with roomcast.client.connect(url, token=token("u1")) as conn:
            await conn.subscribe("chat:a")
            await anyio.sleep(TIMEOUT)
    assert scope.cancelled_caught
    assert conn.state == "closed"


async def test_an_exception_in_the_block_propagates_as_itself() -> None:
    async with KINDS[0].start(hub_kwargs()) as served:
        await an_error_in_the_block(served.url)


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_an_exception_in_the_block_propagates_as_itself_on_trio(anyio_backend: str) -> None:
    async with TRIO_KIND.start(hub_kwargs()) as served:
        await an_error_in_the_block(served.url)
