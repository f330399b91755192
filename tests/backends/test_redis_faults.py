"""RedisBackend survives its broker: a cut or black-holed link, a stopped or restarted Redis.

Faults are made by a TCP proxy the tests own (``proxy.py``) or by killing a
``redis-server`` the test started itself (``conftest.RedisServer``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any

import anyio
import pytest

from roomcast import (
    BackendError,
    History,
    Hub,
    RoomOptions,
    StreamPosition,
)
from roomcast.backends.redis import RedisBackend

from .conftest import REDIS_URL, RedisServer, connect, hubs_on
from .proxy import proxy_to
from .test_redis_backend import Inbox, item, started

pytestmark = pytest.mark.anyio

TIMEOUT = 10
HISTORY = History(size=100, ttl=600)
REDIS_PORT = int(REDIS_URL.rsplit(":", 1)[1].split("/", 1)[0])
#: Short timeouts and pauses, so that faults are found and repaired quickly.
FAST: dict[str, Any] = {"publish_timeout": 1, "reconnect_delay": 0.05, "max_reconnect_delay": 0.2}


class Resyncs:
    """Counts the calls of the resync callback, as the hub would register it."""

    def __init__(self, backend: RedisBackend) -> None:
        self.calls = 0
        backend.on_resync(self)

    def __call__(self) -> None:
        self.calls += 1


async def until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(TIMEOUT):
        while not condition():
            await anyio.sleep(0.01)


async def delivered_again(
    publisher: RedisBackend, inbox: Inbox, rooms: tuple[str, ...], n: int
) -> None:
    """Publish ``item(room, n)`` to each room until every one has arrived."""
    wanted = {(room, item(room, n).id) for room in rooms}
    with anyio.fail_after(TIMEOUT):
        while not wanted <= {(key, publication.id) for _, key, publication in inbox.got}:
            for room in rooms:
                await publisher.publish("room", room, item(room, n), None)
            await anyio.sleep(0.05)


# ----------------------------------------------------------------------------- a cut link


async def test_status_shows_a_cut_link_and_resync_is_called_once_it_is_back(prefix: str) -> None:
    async with proxy_to(REDIS_PORT) as proxy:
        backend = RedisBackend(
            f"redis://127.0.0.1:{proxy.port}/0",
            prefix=prefix,
            **FAST,
        )
        resyncs = Resyncs(backend)
        publisher = RedisBackend(REDIS_URL, prefix=prefix)
        async with started(backend) as inbox, started(publisher):
            rooms = ("room:a", "room:b")
            for room in rooms:
                await backend.subscribe("room", room)
            status = backend.status()
            assert (status.connected, status.reconnects, status.last_error) == (True, 0, None)

            proxy.refusing = True
            proxy.cut()
            await until(lambda: not backend.status().connected)
            await anyio.sleep(0.3)  # a few refused attempts, backing off
            down = backend.status()
            assert down.reconnects == 0
            assert down.last_error is not None
            assert resyncs.calls == 0

            proxy.refusing = False
            await until(lambda: backend.status().connected and resyncs.calls > 0)
            up = backend.status()
            assert up.reconnects == 1
            assert up.last_error == down.last_error
            assert resyncs.calls == 1
            await delivered_again(publisher, inbox, rooms, 2)
            await anyio.sleep(0.2)
            assert resyncs.calls == 1


async def test_status_is_connected_only_when_every_shard_is(prefix: str) -> None:
    async with proxy_to(REDIS_PORT) as proxy:
        backend = RedisBackend(
            shards=[REDIS_URL, f"redis://127.0.0.1:{proxy.port}/1"],
            prefix=prefix,
            **FAST,
        )
        async with started(backend):
            assert backend.status().connected
            proxy.refusing = True
            proxy.cut()
            await until(lambda: not backend.status().connected)
            assert backend._shards[0].connected.is_set()  # the other shard stays up
            proxy.refusing = False
            await until(lambda: backend.status().connected)
            assert backend.status().reconnects == 1


# ----------------------------------------------------------------------------- a black hole


async def test_a_black_holed_pubsub_connection_is_found_by_the_probe(prefix: str) -> None:
    async with proxy_to(REDIS_PORT) as proxy:
        backend = RedisBackend(
            f"redis://127.0.0.1:{proxy.port}/0",
            prefix=prefix,
            **FAST,
            probe_interval=0.2,
            probe_timeout=0.5,
        )
        resyncs = Resyncs(backend)
        publisher = RedisBackend(REDIS_URL, prefix=prefix)
        async with started(backend) as inbox, started(publisher):
            await backend.subscribe("room", "room:a")
            await until(lambda: backend.status().lag is not None)
            lag = backend.status().lag
            assert lag is not None
            assert 0 < lag < 0.5

            # Black-hole the pub/sub connection only: commands go on working.
            pubsub = backend._shards[0].pubsub
            assert pubsub is not None
            assert pubsub.connection is not None
            writer = pubsub.connection._writer
            assert writer is not None
            proxy.stall(writer.get_extra_info("sockname")[1])
            stalled_at = time.monotonic()
            await publisher.publish("room", "room:a", item("room:a", 1), None)
            await until(lambda: backend.status().reconnects == 1)
            # Found within one interval and one timeout (and a little scheduling).
            assert time.monotonic() - stalled_at < 0.2 + 0.5 + 0.5
            assert "probe" in (backend.status().last_error or "")
            await until(lambda: resyncs.calls == 1)
            await delivered_again(publisher, inbox, ("room:a",), 2)
            assert backend.status().connected


# ----------------------------------------------------------------------------- Redis stopped


async def test_a_publish_while_redis_is_stopped_fails_within_publish_timeout(
    prefix: str, redis_server: RedisServer
) -> None:
    timeout = 0.5
    backend = RedisBackend(
        redis_server.url, prefix=prefix, publish_timeout=timeout, reconnect_delay=0.05
    )
    async with started(backend):
        await backend.publish("room", "team:a", item("team:a", 1), HISTORY)
        redis_server.kill()
        failed: list[float] = []

        async def publish(n: int) -> None:
            began = time.monotonic()
            with pytest.raises(BackendError):
                await backend.publish(
                    "room", "team:a", item("team:a", n), HISTORY if n % 2 else None
                )
            failed.append(time.monotonic() - began)

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tasks:
                for n in range(50):
                    tasks.start_soon(publish, n)
        assert len(failed) == 50
        assert max(failed) < timeout + 0.5
        await until(lambda: not backend.status().connected)

        redis_server.start()
        with anyio.fail_after(TIMEOUT):
            while True:
                try:
                    await backend.publish("room", "team:a", item("team:a", 99), HISTORY)
                    break
                except BackendError:
                    await anyio.sleep(0.05)


# ----------------------------------------------------------------------------- Redis restarted


def restartable_hubs(url: str, prefix: str, count: int) -> AbstractAsyncContextManager[list[Hub]]:
    return hubs_on(
        lambda: RedisBackend(url, prefix=prefix, **FAST),
        count,
        {"team": RoomOptions(history=HISTORY)},
    )


async def test_redis_restarted_the_hubs_resync_tell_their_members_and_keep_serving(
    prefix: str, redis_server: RedisServer
) -> None:
    room = "team:t"
    async with (
        restartable_hubs(redis_server.url, prefix, 2) as hubs,
        anyio.create_task_group() as tasks,
        AsyncExitStack() as stack,
    ):
        backends: list[RedisBackend] = []
        for hub in hubs:
            assert isinstance(hub._backend, RedisBackend)
            backends.append(hub._backend)
        resynced = [0, 0]
        for n, backend in enumerate(backends):
            hub_callback = getattr(backend, "_resync", None)

            def counting(
                n: int = n, hub_callback: Callable[[], None] | None = hub_callback
            ) -> None:
                resynced[n] += 1
                if hub_callback is not None:
                    hub_callback()

            backend.on_resync(counting)
        members = []
        for n, hub in enumerate([*hubs, *hubs]):
            member = await stack.enter_async_context(connect(hub, f"u{n}", tasks))
            await member.subscribe(room)
            members.append(member)

        before = [await hubs[n % 2].publish(room, "seq.item", {"n": n}) for n in range(10)]
        for member in members:
            got = [await member.receive_event("seq.item") for _ in before]
            assert [e["id"] for e in got] == before
            assert [e["offset"] for e in got] == list(range(1, 11))
        old = got[-1]
        old_position = (old["offset"], old["epoch"])

        redis_server.kill()
        with pytest.raises(BackendError):  # served locally meanwhile, never a hang
            await hubs[0].publish(room, "seq.item", {"n": -1})
        redis_server.start()  # same port, empty: a new epoch
        await until(lambda: resynced == [1, 1])
        for backend in backends:
            assert backend.status().connected
            assert backend.status().reconnects == 1

        after = [await hubs[n % 2].publish(room, "seq.item", {"n": n}) for n in range(10, 20)]
        for member in members:
            got = [await member.receive_event("seq.item") for _ in after]
            assert [e["id"] for e in got] == after, "subscriptions are back, in order, once"
            assert [e["offset"] for e in got] == list(range(1, 11))
            assert {e["epoch"] for e in got} != {old_position[1]}
        found = await backends[1].history(room, StreamPosition(*old_position), HISTORY)
        assert not found.recovered
        assert found.publications == ()
        await anyio.sleep(0.2)
        for member in members:
            left = member.drain()
            assert [f for f in left if f.get("type") == "seq.item"] == []
            # Every member was told that what it had is gone (Redis lost the room).
            resets = [f for f in left if f.get("type") == "room.reset"]
            assert len(resets) == 1, "each member of a history room is told of the restart once"
            assert resets[0]["room"] == room
            assert resets[0]["payload"]["recovered"] is False
            assert resets[0]["payload"]["epoch"] != old_position[1]
