"""A server restarted in the middle of a stream: the client reconnects and catches up.

The server is the ``websockets`` adapter, stopped as a deployment stops it (the hub
closes its clients with 1001) and started again on the same port. With the Redis
backend a second node keeps publishing while the server is down, and the room's
history outlives the restart: the client must receive every message exactly once,
in order. With the memory backend the history dies with the server: the client is
told ``recovered: false``.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import anyio
import pytest
import redis
from anyio.abc import TaskGroup, TaskStatus

import roomcast.client
import roomcast.websockets
from roomcast import Hub, MemoryBackend
from roomcast.backends import Backend
from roomcast.backends.redis import RedisBackend
from roomcast.client import Event, PresenceChange, Received, Recovery, Subscription

from .conftest import TIMEOUT, fast_backoff, hub_kwargs, token

pytestmark = pytest.mark.anyio

REDIS_URL = "redis://127.0.0.1:6379/0"
#: Messages published in the test; the server restarts after a third of them.
MESSAGES = 300


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # RedisBackend and the websockets server run on asyncio


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"roomcast-test-{secrets.token_hex(6)}"
    yield name
    with redis.Redis.from_url(REDIS_URL, socket_timeout=5) as client:
        keys = list(client.scan_iter(match=f"{name}:*", count=1000))
        if keys:
            client.delete(*keys)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def server(hub: Hub, port: int) -> AsyncIterator[Hub]:
    """``hub`` served on ``port`` until the block ends, then stopped as on SIGTERM."""
    ws_server = await roomcast.websockets.serve(hub, "127.0.0.1", port, close_timeout=1.0)
    async with hub:
        try:
            yield hub
        finally:
            await hub.aclose()  # clients get 1001
            ws_server.close()
            await ws_server.wait_closed()


class Restartable:
    """A server on a fixed port that the test stops and starts again, from any task."""

    def __init__(self, tasks: TaskGroup, port: int, backend: Callable[[], Backend]) -> None:
        self.tasks = tasks
        self.port = port
        self.backend = backend
        self.hub: Hub | None = None
        self._stop = anyio.Event()
        self._stopped = anyio.Event()

    async def start(self) -> Hub:
        self._stop, self._stopped = anyio.Event(), anyio.Event()
        hub = Hub(**hub_kwargs(backend=self.backend()))
        await self.tasks.start(self._serve, hub)
        self.hub = hub
        return hub

    async def _serve(self, hub: Hub, *, task_status: TaskStatus[None]) -> None:
        try:
            async with server(hub, self.port):
                task_status.started()
                await self._stop.wait()
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        self._stop.set()
        await self._stopped.wait()


async def collect(
    sub: Subscription, events: list[Event], notices: list[Recovery], count: int
) -> None:
    item: Received
    async for item in sub:
        if isinstance(item, Event):
            events.append(item)
            if len(events) == count:
                return
        elif isinstance(item, Recovery):
            notices.append(item)


async def next_item(sub: Subscription) -> Received:
    """The next item that is not a presence change."""
    with anyio.fail_after(TIMEOUT):
        while True:
            item = await anext(sub)
            if not isinstance(item, PresenceChange):
                return item


async def test_after_a_restart_a_redis_history_room_gets_every_message_once_in_order(
    prefix: str,
) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    events: list[Event] = []
    notices: list[Recovery] = []
    states: list[str] = []

    def backend() -> RedisBackend:
        return RedisBackend(REDIS_URL, prefix=prefix)

    with anyio.fail_after(TIMEOUT * 2):
        # The publishing node stays up throughout; only the client's server restarts.
        async with Hub(**hub_kwargs(backend=backend())) as publisher:
            async with anyio.create_task_group() as servers:
                node = Restartable(servers, port, backend)
                await node.start()
                conn = roomcast.client.connect(url, token=token("u1"), backoff=fast_backoff())
                conn.on_state_change(lambda change: states.append(change.state))
                async with conn, anyio.create_task_group() as tasks:
                    sub = await conn.subscribe("team:t1", history=10)
                    tasks.start_soon(collect, sub, events, notices, MESSAGES)
                    for number in range(MESSAGES):
                        await publisher.publish("team:t1", "tick.sent", {"n": number})
                        if number == MESSAGES // 3:
                            await node.stop()
                        elif number == MESSAGES // 2:
                            # Down for the publishes in between; a new server, same port.
                            await node.start()
                        await anyio.sleep(0.002)
                await node.stop()
    assert [event.payload["n"] for event in events] == list(range(MESSAGES))
    offsets = [event.offset for event in events]
    first = offsets[0]
    assert first is not None
    assert offsets == list(range(first, first + MESSAGES))
    assert len({event.id for event in events}) == MESSAGES
    assert len(notices) == 1
    assert notices[0].recovered is True
    assert "disconnected" in states
    assert states[-1] == "closed"


async def test_after_a_restart_on_the_memory_backend_the_client_is_told_recovered_false() -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    with anyio.fail_after(TIMEOUT * 2):
        async with anyio.create_task_group() as servers:
            node = Restartable(servers, port, MemoryBackend)
            first = await node.start()
            async with roomcast.client.connect(url, token=token("u1"), backoff=fast_backoff()) as c:
                sub = await c.subscribe("team:t1", history=10)
                for number in range(5):
                    await first.publish("team:t1", "tick.sent", {"n": number})
                seen = [await next_item(sub) for _ in range(5)]
                assert all(isinstance(item, Event) for item in seen)
                old = sub.position
                assert old is not None
                assert old.offset == 5
                await node.stop()
                second = await node.start()
                notice = await next_item(sub)
                assert isinstance(notice, Recovery)
                assert notice.room == "team:t1"
                assert notice.recovered is False
                assert notice.epoch != old.epoch
                await second.publish("team:t1", "tick.sent", {"n": 5})
                after = await next_item(sub)
                assert isinstance(after, Event)
                assert after.payload == {"n": 5}
                assert after.epoch == notice.epoch
            await node.stop()
