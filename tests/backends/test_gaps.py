"""Gaps are never silent: a node that misses a history room's message fills it or says so.

Each test runs on the memory backend and on Redis, through a backend that drops
chosen publications before the hub sees them, as a lost pub/sub message would.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import redis

from roomcast import History, Hub, Publication, RoomOptions
from roomcast.backends import Backend, ChannelKind, Delivery, HistoryResult
from roomcast.backends.memory import MemoryBackend
from roomcast.backends.redis import RedisBackend
from roomcast.membership import Room
from roomcast.testing import TestClient
from roomcast.wire import StreamPosition

from .conftest import REDIS_URL
from .proxy import proxy_to

pytestmark = pytest.mark.anyio

TIMEOUT = 10
ROOM = "team:g"


def dropping(deliver: Delivery, drop: set[int]) -> Delivery:
    """A delivery that loses the room publications whose offsets are in ``drop``, once each."""

    def deliver_unless_dropped(kind: ChannelKind, key: str, publication: Publication) -> None:
        if kind == "room" and publication.offset in drop:
            drop.discard(publication.offset)
            return
        deliver(kind, key, publication)

    return deliver_unless_dropped


class DroppingMemoryBackend(MemoryBackend):
    """A memory backend that loses chosen publications on their way to the hub."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        super().__init__() if clock is None else super().__init__(clock=clock)
        self.drop: set[int] = set()

    async def start(self, deliver: Delivery) -> None:
        await super().start(dropping(deliver, self.drop))


class DroppingRedisBackend(RedisBackend):
    """A Redis backend that loses chosen publications on their way to the hub."""

    drop: set[int]

    async def start(self, deliver: Delivery) -> None:
        self.drop = set()
        await super().start(dropping(deliver, self.drop))


Dropping = DroppingMemoryBackend | DroppingRedisBackend


@pytest.fixture(params=["memory", "redis"])
def make_backend(request: pytest.FixtureRequest) -> Iterator[Callable[[], Dropping]]:
    if request.param == "memory":
        yield DroppingMemoryBackend
    else:
        prefix: str = request.getfixturevalue("prefix")
        yield lambda: DroppingRedisBackend(REDIS_URL, prefix=prefix)


def drops(hub: Hub) -> set[int]:
    backend = hub._backend
    assert isinstance(backend, DroppingMemoryBackend | DroppingRedisBackend)
    return backend.drop


@asynccontextmanager
async def member_of(
    backend: Backend, *, size: int = 100, position_check: float = 3600
) -> AsyncIterator[tuple[Hub, TestClient]]:
    """A hub on ``backend`` and one client in ``ROOM``, a history room of ``size`` messages."""
    namespaces = {"team": RoomOptions(history=History(size=size, ttl=600))}
    async with (
        Hub(backend=backend, namespaces=namespaces, position_check=position_check) as hub,
        anyio.create_task_group() as tasks,
        TestClient(hub, task_group=tasks, timeout=TIMEOUT) as client,
    ):
        await client.subscribe(ROOM)
        yield hub, client


async def offsets(client: TestClient, count: int) -> list[int]:
    return [(await client.receive_event())["offset"] for _ in range(count)]


async def nothing_more(client: TestClient) -> None:
    await anyio.sleep(0.2)
    assert client.drain() == []


async def test_a_lost_publication_is_filled_from_history_before_the_next(
    make_backend: Callable[[], Dropping],
) -> None:
    async with member_of(make_backend()) as (hub, client):
        drops(hub).add(2)
        for n in range(5):
            await hub.publish(ROOM, "seq.item", n)
        got = [await client.receive_event() for _ in range(5)]
        assert [event["offset"] for event in got] == [1, 2, 3, 4, 5]
        assert [event["payload"] for event in got] == [0, 1, 2, 3, 4]
        await nothing_more(client)
        assert (hub.stats().gaps, hub.stats().resets) == (1, 0)


async def test_live_publications_held_during_a_fill_follow_it_once_in_order(
    make_backend: Callable[[], Dropping],
) -> None:
    async with member_of(make_backend()) as (hub, client):
        backend = hub._backend
        release = anyio.Event()
        read = backend.history

        async def slow_history(
            room: str, since: StreamPosition | None, history: History, *, limit: int | None = None
        ) -> HistoryResult:
            await release.wait()
            return await read(room, since, history, limit=limit)

        await hub.publish(ROOM, "seq.item", 0)
        assert await offsets(client, 1) == [1]
        backend.history = slow_history  # type: ignore[method-assign]
        drops(hub).add(2)
        await hub.publish(ROOM, "seq.item", 1)  # lost
        await hub.publish(ROOM, "seq.item", 2)  # reveals the gap: the fill waits
        await anyio.sleep(0.1)
        for n in range(3, 6):  # arrive while the fill waits
            await hub.publish(ROOM, "seq.item", n)
        await anyio.sleep(0.1)
        assert client.drain() == [], "delivered past a gap"
        release.set()
        assert await offsets(client, 5) == [2, 3, 4, 5, 6]
        await nothing_more(client)


async def test_a_gap_history_cannot_fill_is_told_with_room_reset(
    make_backend: Callable[[], Dropping],
) -> None:
    async with member_of(make_backend(), size=2) as (hub, client):
        await hub.publish(ROOM, "seq.item", 0)
        first = await client.receive_event()
        drops(hub).update({2, 3, 4})
        for n in range(1, 5):
            await hub.publish(ROOM, "seq.item", n)
        reset = await client.receive_event("room.reset")
        assert reset == {
            "type": "room.reset",
            "room": ROOM,
            "payload": {"recovered": False, "offset": 4, "epoch": first["epoch"]},
        }
        assert await offsets(client, 1) == [5]
        await nothing_more(client)
        assert (hub.stats().gaps, hub.stats().resets) == (1, 1)


async def test_a_lost_last_publication_is_found_by_the_periodic_check(
    make_backend: Callable[[], Dropping],
) -> None:
    async with member_of(make_backend(), position_check=0.1) as (hub, client):
        await hub.publish(ROOM, "seq.item", 0)
        drops(hub).add(2)
        await hub.publish(ROOM, "seq.item", 1)  # the last one, lost: nothing follows
        with anyio.fail_after(2):
            assert await offsets(client, 2) == [1, 2]
        await nothing_more(client)


async def test_a_backend_resync_checks_every_history_room_at_once(
    make_backend: Callable[[], Dropping],
) -> None:
    async with member_of(make_backend()) as (hub, client):
        await hub.publish(ROOM, "seq.item", 0)
        drops(hub).add(2)
        await hub.publish(ROOM, "seq.item", 1)
        assert await offsets(client, 1) == [1]
        await anyio.sleep(0.1)
        assert client.drain() == []
        hub._backend._resynced()  # as after a reconnection to the broker
        with anyio.fail_after(2):
            assert await offsets(client, 1) == [2]


async def test_a_new_epoch_in_memory_is_told_then_delivered() -> None:
    now = [0.0]
    backend = DroppingMemoryBackend(clock=lambda: now[0])
    async with member_of(backend) as (hub, client):
        await hub.publish(ROOM, "seq.item", 0)
        old = (await client.receive_event())["epoch"]
        now[0] += backend.position_ttl + 601  # the room's stream and position are forgotten
        await hub.publish(ROOM, "seq.item", 1)
        reset = await client.receive_event("room.reset")
        event = await client.receive_event()
        assert event["epoch"] != old
        assert reset["payload"] == {"recovered": False, "offset": 0, "epoch": event["epoch"]}
        assert (event["offset"], event["payload"]) == (1, 1)


async def test_a_new_epoch_on_redis_is_told_then_delivered(prefix: str) -> None:
    async with member_of(DroppingRedisBackend(REDIS_URL, prefix=prefix)) as (hub, client):
        await hub.publish(ROOM, "seq.item", 0)
        await hub.publish(ROOM, "seq.item", 1)
        old = (await client.receive_event())["epoch"]
        await client.receive_event()
        with redis.Redis.from_url(REDIS_URL, socket_timeout=5) as direct:
            assert direct.delete(f"{prefix}:position:{ROOM}", f"{prefix}:stream:{ROOM}") == 2
        await hub.publish(ROOM, "seq.item", 2)
        reset = await client.receive_event("room.reset")
        event = await client.receive_event()
        assert event["epoch"] != old
        assert reset["payload"] == {"recovered": False, "offset": 0, "epoch": event["epoch"]}
        assert (event["offset"], event["payload"]) == (1, 2)
        await nothing_more(client)


async def test_rooms_without_history_are_not_checked(
    make_backend: Callable[[], Dropping],
) -> None:
    async with member_of(make_backend(), position_check=0.05) as (hub, client):
        await client.subscribe("chat:c")
        for n in range(3):
            await hub.publish("chat:c", "seq.item", n)
        got = [await client.receive_event() for _ in range(3)]
        assert all("offset" not in event for event in got)
        await anyio.sleep(0.2)
        assert hub.stats().gaps == 0


def test_room_reset_is_valid_json_of_the_documented_shape() -> None:
    from roomcast.wire import encode_room_reset

    frame = json.loads(encode_room_reset("team:t1", 41, "8f2c"))
    assert frame == {
        "type": "room.reset",
        "room": "team:t1",
        "payload": {"recovered": False, "offset": 41, "epoch": "8f2c"},
    }


class LateMemoryBackend(MemoryBackend):
    """A memory backend whose publications reach the hub only when released, like pub/sub lag."""

    def __init__(self) -> None:
        super().__init__()
        self.late: list[tuple[ChannelKind, str, Publication]] | None = None
        self._to_hub: Delivery | None = None

    async def start(self, deliver: Delivery) -> None:
        self._to_hub = deliver

        def maybe_late(kind: ChannelKind, key: str, publication: Publication) -> None:
            if self.late is not None and kind == "room":
                self.late.append((kind, key, publication))
            else:
                deliver(kind, key, publication)

        await super().start(maybe_late)

    def release(self) -> None:
        late, self.late = self.late or [], None
        assert self._to_hub is not None
        for kind, key, publication in late:
            self._to_hub(kind, key, publication)


@pytest.mark.parametrize("with_since", [True, False])
async def test_a_join_that_reads_history_ahead_of_live_messages_gets_each_once(
    with_since: bool,
) -> None:
    backend = LateMemoryBackend()
    async with member_of(backend) as (hub, first), TestClient(hub, timeout=TIMEOUT) as second:
        await hub.publish(ROOM, "seq.item", 0)
        seen = await first.receive_event()
        backend.late = []  # published, in history, not yet here
        await hub.publish(ROOM, "seq.item", 1)
        await hub.publish(ROOM, "seq.item", 2)
        since = {ROOM: {"offset": seen["offset"], "epoch": seen["epoch"]}} if with_since else None
        result = (await second.subscribe(ROOM, since=since))[ROOM]
        assert result["offset"] == 1, "the position this node's members are at"
        backend.release()
        for client in (first, second):
            assert await offsets(client, 2) == [2, 3]
            await nothing_more(client)
        assert hub.stats().gaps == 0


# The pure decision, on the room object alone.


def positioned(offset: int, epoch: str) -> Room[Any]:
    room: Room[Any] = Room(ROOM, RoomOptions(history=History(size=10, ttl=60)))
    room.advance(offset, epoch)
    return room


def test_a_room_without_a_position_delivers_whatever_comes_first() -> None:
    room: Room[Any] = Room(ROOM, RoomOptions())
    assert room.next_offset == -1
    assert room.out_of_line(7, "e1", "p7") == "deliver"


def test_a_repeat_or_a_message_of_the_epoch_left_is_dropped() -> None:
    room = positioned(5, "e1")
    assert room.out_of_line(5, "e1", "p5") == ""
    assert room.out_of_line(3, "e1", "p3") == ""
    room.advance(1, "e2")
    assert room.out_of_line(9, "e1", "old") == ""
    assert room.filling is None


def test_a_gap_or_a_new_epoch_holds_the_message_and_everything_after_it() -> None:
    for offset, epoch in ((7, "e1"), (1, "e2")):
        room = positioned(5, "e1")
        assert room.out_of_line(offset, epoch, "first") == "gap"
        assert (room.next_offset, room.filling) == (-1, ["first"])
        assert room.out_of_line(offset + 1, epoch, "second") == ""
        assert room.filling == ["first", "second"]


def test_a_join_reading_ahead_of_the_room_is_capped_at_the_room() -> None:
    room: Room[Any] = Room(ROOM, RoomOptions())
    assert room.align(4, "e1") is None
    assert (room.offset, room.epoch, room.next_offset) == (4, "e1", 5)
    assert room.align(6, "e1") == 4
    assert room.align(4, "e1") is None
    assert room.align(9, "e2") is None


async def test_messages_published_while_a_node_is_cut_off_from_redis_reach_its_members(
    prefix: str,
) -> None:
    namespaces = {"team": RoomOptions(history=History(size=100, ttl=600))}
    port = int(REDIS_URL.rsplit(":", 1)[1].split("/", 1)[0])
    async with proxy_to(port) as proxy:
        cut_off = RedisBackend(
            f"redis://127.0.0.1:{proxy.port}/0",
            prefix=prefix,
            publish_timeout=0.5,
            reconnect_delay=0.05,
            max_reconnect_delay=0.2,
        )
        async with (
            Hub(backend=cut_off, namespaces=namespaces, position_check=0.3) as node,
            Hub(backend=RedisBackend(REDIS_URL, prefix=prefix), namespaces=namespaces) as other,
            anyio.create_task_group() as tasks,
            TestClient(node, task_group=tasks, timeout=TIMEOUT) as client,
        ):
            await client.subscribe(ROOM)
            await other.publish(ROOM, "seq.item", 0)
            assert await offsets(client, 1) == [1]
            proxy.refusing = True
            proxy.cut()
            for n in (1, 2):  # published while the node hears nothing
                await other.publish(ROOM, "seq.item", n)
            await anyio.sleep(0.5)
            proxy.refusing = False
            with anyio.fail_after(TIMEOUT):
                assert await offsets(client, 2) == [2, 3]
            await other.publish(ROOM, "seq.item", 3)
            assert await offsets(client, 1) == [4]
            await nothing_more(client)
