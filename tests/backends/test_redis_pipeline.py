"""RedisBackend's publishes waiting at once go out as one pipeline: in order, each its own reply."""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import redis

from roomcast import BackendError, History, Publication, StreamPosition
from roomcast.backends import _redis_pipeline
from roomcast.backends.redis import RedisBackend

from .conftest import REDIS_URL
from .proxy import proxy_to
from .test_redis_backend import item, started

pytestmark = pytest.mark.anyio

TIMEOUT = 10
HISTORY = History(size=1000, ttl=600)
REDIS_PORT = int(REDIS_URL.rsplit(":", 1)[1].split("/", 1)[0])
ROOMS = ("team:a", "team:b", "team:c")


class RoundTrips:
    """Counts the pipelines, and the commands in each, every writer of the test sends."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        pipeline = _redis_pipeline.Writer._pipeline

        async def counted(writer: _redis_pipeline.Writer, commands: list[Any]) -> list[Any]:
            self.sizes.append(len(commands))
            return await pipeline(writer, commands)

        monkeypatch.setattr(_redis_pipeline.Writer, "_pipeline", counted)


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> RoundTrips:
    """The round trips of every writer of the test."""
    return RoundTrips(monkeypatch)


async def publish_all(
    backend: RedisBackend, numbers: range
) -> tuple[list[int], dict[int, Publication]]:
    """Publish ``item(room, n)`` for each ``n`` at once, to the rooms in turn.

    Returns the numbers in the order they were issued, and each one's result.
    """
    issued: list[int] = []
    results: dict[int, Publication] = {}

    async def publish(n: int) -> None:
        room = ROOMS[n % len(ROOMS)]
        issued.append(n)
        results[n] = await backend.publish("room", room, item(room, n), HISTORY)

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tasks:
            for n in numbers:
                tasks.start_soon(publish, n)
    return issued, results


def in_issue_order(issued: list[int], results: dict[int, Publication]) -> dict[str, list[int]]:
    """Each room's offsets, in the order its publishes were issued."""
    return {
        room: [results[n].offset or 0 for n in issued if ROOMS[n % len(ROOMS)] == room]
        for room in ROOMS
    }


async def stored(backend: RedisBackend, room: str, epoch: str) -> dict[int, str]:
    """Offset -> message id of everything the room's history holds."""
    found = await backend.history(room, StreamPosition(0, epoch), HISTORY)
    assert found.recovered
    return {publication.offset or 0: publication.id for publication in found.publications}


async def test_concurrent_publishes_keep_per_room_order_and_each_gets_its_own_offset(
    prefix: str, trips: RoundTrips
) -> None:
    backend = RedisBackend(REDIS_URL, prefix=prefix)
    async with started(backend):
        issued, results = await publish_all(backend, range(50))
        assert sorted(issued) == list(range(50))
        for room, offsets in in_issue_order(issued, results).items():
            # Offsets follow the order the publishes were issued in, with no gap.
            assert offsets == list(range(1, len(offsets) + 1))
            in_room = [n for n in issued if ROOMS[n % len(ROOMS)] == room]
            (epoch,) = {results[n].epoch for n in in_room}
            assert epoch is not None
            # Each caller got the offset of its own message.
            history = await stored(backend, room, epoch)
            assert {results[n].offset: item(room, n).id for n in in_room} == history
    # They went out together: far fewer round trips than publishes.
    assert sum(trips.sizes) == 50
    assert len(trips.sizes) < 25


async def test_plain_and_history_publishes_share_the_pipeline_in_order(prefix: str) -> None:
    backend = RedisBackend(REDIS_URL, prefix=prefix)
    async with started(backend) as inbox:
        await backend.subscribe("room", "team:a")

        async def publish(n: int) -> None:
            await backend.publish("room", "team:a", item("team:a", n), HISTORY if n % 2 else None)

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tasks:
                for n in range(20):
                    tasks.start_soon(publish, n)
        await inbox.wait_for(20)
        assert [publication.id for _, _, publication in inbox.got] == [
            item("team:a", n).id for n in range(20)
        ]


async def test_a_bounded_queue_makes_publishers_wait_and_loses_nothing(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_redis_pipeline, "QUEUE_SIZE", 3)
    backend = RedisBackend(REDIS_URL, prefix=prefix)
    async with started(backend):
        queue = backend._writers[0]._queue
        waited: list[int] = []
        finished = anyio.Event()

        async def watch() -> None:
            # Sampled while the publishes queue: never more than 3 held, the rest wait.
            while not finished.is_set():
                stats = queue.statistics()
                assert stats.current_buffer_used <= 3
                waited.append(stats.tasks_waiting_send)
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(watch)
            issued, results = await publish_all(backend, range(30))
            finished.set()
        for offsets in in_issue_order(issued, results).values():
            assert offsets == list(range(1, len(offsets) + 1))
        assert max(waited) >= 20


async def test_a_cut_link_fails_every_waiting_publish_within_publish_timeout(
    prefix: str, trips: RoundTrips
) -> None:
    timeout = 1.0
    async with proxy_to(REDIS_PORT) as proxy:
        backend = RedisBackend(
            f"redis://127.0.0.1:{proxy.port}/0",
            prefix=prefix,
            publish_timeout=timeout,
            reconnect_delay=0.05,
        )
        async with started(backend):
            await backend.publish("room", "team:a", item("team:a", 0), HISTORY)
            proxy.stalled = True
            failed: list[float] = []

            async def publish(n: int) -> None:
                began = time.monotonic()
                with pytest.raises(BackendError):
                    await backend.publish("room", ROOMS[n % 3], item(ROOMS[n % 3], n), HISTORY)
                failed.append(time.monotonic() - began)

            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(publish, 1)
                    await anyio.sleep(0.1)  # its round trip hangs: the next ones queue
                    for n in range(2, 21):
                        tasks.start_soon(publish, n)
                    await anyio.sleep(0.1)
                    proxy.refusing = True
                    proxy.cut()
            assert len(failed) == 20
            assert max(failed) < timeout + 0.5
            # The stalled round trip carried one publish; the rest waited in the queue.
            assert trips.sizes == [1, 1, 19]

            proxy.stalled = proxy.refusing = False
            with anyio.fail_after(TIMEOUT):
                while True:
                    try:
                        done = await backend.publish("room", "team:a", item("team:a", 99), HISTORY)
                        break
                    except BackendError:
                        await anyio.sleep(0.05)
            assert done.offset is not None
            assert done.offset >= 2


async def test_a_flushed_script_is_loaded_again_inside_a_pipeline(prefix: str) -> None:
    backend = RedisBackend(REDIS_URL, prefix=prefix)
    async with started(backend):
        first = await backend.publish("room", "team:a", item("team:a", 0), HISTORY)
        with redis.Redis.from_url(REDIS_URL) as client:
            client.script_flush()
        issued, results = await publish_all(backend, range(3, 30))
        for room, offsets in in_issue_order(issued, results).items():
            start = 2 if room == "team:a" else 1  # team:a had one before the flush
            assert offsets == list(range(start, len(offsets) + start))
        assert {results[n].epoch for n in issued if n % 3 == 0} == {first.epoch}


async def test_a_cancelled_publisher_does_not_disturb_the_others(
    prefix: str, trips: RoundTrips
) -> None:
    backend = RedisBackend(REDIS_URL, prefix=prefix)
    async with started(backend):
        results: dict[int, Publication] = {}
        cancelled: list[int] = []

        async def publish(n: int, scope: anyio.CancelScope) -> None:
            with scope:
                results[n] = await backend.publish("room", "team:a", item("team:a", n), HISTORY)
            if scope.cancel_called:
                cancelled.append(n)

        scopes = [anyio.CancelScope() for _ in range(30)]
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tasks:
                for n, scope in enumerate(scopes):
                    tasks.start_soon(publish, n, scope)
                await anyio.lowlevel.checkpoint()  # every publish is queued, none sent yet
                for n in range(0, 30, 4):
                    scopes[n].cancel()
        assert sorted(cancelled) == list(range(0, 30, 4))
        kept = sorted(results)
        assert kept == [n for n in range(30) if n % 4]
        offsets = [results[n].offset or 0 for n in kept]
        assert offsets == sorted(set(offsets))  # issue order, one offset each
        epoch = results[kept[0]].epoch
        assert epoch is not None
        history = await stored(backend, "team:a", epoch)
        assert all(history[results[n].offset or 0] == item("team:a", n).id for n in kept)
        # A publish cancelled while it waited in the queue was never sent.
        assert sum(trips.sizes) < 30
