"""A server restarted in the middle of a stream: the client reconnects and catches up.

Behind every adapter kind of the contract suite. Each server is stopped as a
deployment stops it (the hub closes its clients with 1001) and a new one is
started; the client keeps one URL, a TCP relay on a fixed port that forwards to
whichever server runs (and drops connections while none does), since a kind
picks its own port. With the Redis backend a second node keeps publishing while
the server is down, and the room's history outlives the restart: the client must
receive every message exactly once, in order (the kinds whose hub runs on
asyncio: ``RedisBackend`` is asyncio-only). With the memory backend the history
dies with the server: the client is told ``recovered: false``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest
import redis
from anyio.abc import SocketAttribute, SocketStream, TaskGroup, TaskStatus

import roomcast.client
from adapters.contract.servers import KINDS, Served, ServerKind
from roomcast import Hub
from roomcast.backends.redis import RedisBackend
from roomcast.client import Event, PresenceChange, Received, Recovery, Subscription

from .conftest import TIMEOUT, fast_backoff, hub_kwargs, token

pytestmark = pytest.mark.anyio

REDIS_URL = "redis://127.0.0.1:6379/0"
#: Messages published in the test; the server restarts after a third of them.
MESSAGES = 300
#: The kinds whose hub can use ``RedisBackend`` (asyncio only).
ASYNCIO_KINDS = [kind for kind in KINDS if kind.hub_backend == "asyncio"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the relay, the publishing node and RedisBackend run on asyncio


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"roomcast-test-{secrets.token_hex(6)}"
    yield name
    with redis.Redis.from_url(REDIS_URL, socket_timeout=5) as client:
        keys = list(client.scan_iter(match=f"{name}:*", count=1000))
        if keys:
            client.delete(*keys)


class Relay:
    """A TCP relay on 127.0.0.1 to the current server's port; drops connections while none."""

    def __init__(self) -> None:
        self.port = 0
        self.target: int | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def serve(self, *, task_status: TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(SocketAttribute.local_port)
        async with listener:
            task_status.started()
            await listener.serve(self._relay)

    async def _relay(self, client: SocketStream) -> None:
        async with client:
            if self.target is None:
                return
            try:
                upstream = await anyio.connect_tcp("127.0.0.1", self.target)
            except OSError:
                return
            async with upstream, anyio.create_task_group() as pumps:
                pumps.start_soon(self._pump, client, upstream, pumps)
                pumps.start_soon(self._pump, upstream, client, pumps)

    @staticmethod
    async def _pump(source: SocketStream, sink: SocketStream, pumps: TaskGroup) -> None:
        try:
            async for chunk in source:
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            pumps.cancel_scope.cancel()  # one side ended: end both


class Restartable:
    """A server of one kind that the test stops and starts again, behind a relay."""

    def __init__(
        self,
        tasks: TaskGroup,
        kind: ServerKind,
        relay: Relay,
        kwargs: Callable[[], Mapping[str, Any]],
    ) -> None:
        self.tasks = tasks
        self.kind = kind
        self.relay = relay
        self.kwargs = kwargs
        self._stop = anyio.Event()
        self._stopped = anyio.Event()

    async def start(self) -> Served:
        self._stop, self._stopped = anyio.Event(), anyio.Event()
        served: Served = await self.tasks.start(self._serve)
        self.relay.target = urlsplit(served.url).port
        return served

    async def _serve(self, *, task_status: TaskStatus[Served]) -> None:
        try:
            async with self.kind.start(self.kwargs()) as served:
                task_status.started(served)
                await self._stop.wait()
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        self.relay.target = None
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


@pytest.mark.parametrize("kind", [kind.param() for kind in ASYNCIO_KINDS])
async def test_after_a_restart_a_redis_history_room_gets_every_message_once_in_order(
    prefix: str, kind: ServerKind
) -> None:
    events: list[Event] = []
    notices: list[Recovery] = []
    states: list[str] = []

    def kwargs() -> Mapping[str, Any]:
        return hub_kwargs(backend=RedisBackend(REDIS_URL, prefix=prefix))

    relay = Relay()
    with anyio.fail_after(TIMEOUT * 3):
        # The publishing node stays up throughout; only the client's server restarts.
        async with Hub(**hub_kwargs(backend=RedisBackend(REDIS_URL, prefix=prefix))) as publisher:
            async with anyio.create_task_group() as servers:
                await servers.start(relay.serve)
                node = Restartable(servers, kind, relay, kwargs)
                await node.start()
                conn = roomcast.client.connect(relay.url, token=token("u1"), backoff=fast_backoff())
                conn.on_state_change(lambda change: states.append(change.state))
                async with conn, anyio.create_task_group() as tasks:
                    sub = await conn.subscribe("team:t1", history=10)
                    tasks.start_soon(collect, sub, events, notices, MESSAGES)
                    for number in range(MESSAGES):
                        await publisher.publish("team:t1", "tick.sent", {"n": number})
                        if number == MESSAGES // 3:
                            await node.stop()
                        elif number == MESSAGES // 2:
                            # Down for the publishes in between; a new server.
                            await node.start()
                        await anyio.sleep(0.002)
                await node.stop()
                servers.cancel_scope.cancel()  # the relay
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


async def publish(served: Served, number: int) -> None:
    async def run(hub: Hub) -> None:
        await hub.publish("team:t1", "tick.sent", {"n": number})

    await served.run(run)


@pytest.mark.parametrize("kind", [kind.param() for kind in KINDS])
async def test_after_a_restart_on_the_memory_backend_the_client_is_told_recovered_false(
    kind: ServerKind,
) -> None:
    relay = Relay()
    with anyio.fail_after(TIMEOUT * 3):
        async with anyio.create_task_group() as servers:
            await servers.start(relay.serve)
            node = Restartable(servers, kind, relay, hub_kwargs)
            first = await node.start()
            conn = roomcast.client.connect(relay.url, token=token("u1"), backoff=fast_backoff())
            async with conn:
                sub = await conn.subscribe("team:t1", history=10)
                for number in range(5):
                    await publish(first, number)
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
                await publish(second, 5)
                after = await next_item(sub)
                assert isinstance(after, Event)
                assert after.payload == {"n": 5}
                assert after.epoch == notice.epoch
            await node.stop()
            servers.cancel_scope.cancel()  # the relay
