"""Heartbeat pings: written in place when nothing is queued, else by the client's writer."""

from __future__ import annotations

import json
from collections.abc import Callable

import anyio
import pytest

from roomcast import (
    ConnectionClosed,
    Handshake,
    HeartbeatPolicy,
    Hub,
    PingableTransport,
    Principal,
    TryPingTransport,
)
from roomcast.peer import Client, ClientId, QueueLimits
from roomcast.protocol import CLOSE_ABNORMAL
from roomcast.testing import ClientEnd, ManualClock, MemoryTransport, memory_transport_pair

pytestmark = pytest.mark.anyio

OnPong = Callable[[], object]


class PingTransport:
    """A pingable transport that records how each ping went out: in place or awaited.

    ``in_place`` is what ``try_ping`` answers; ``closed`` makes every write raise
    ``ConnectionClosed``, as a reset socket's does. ``sent`` records frames and
    pings in the order they left (``"ping:in-place"``, ``"ping:awaited"``).
    """

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.pongs: list[OnPong] = []
        self.in_place = True
        self.closed = False
        self.accept_frames = True

    @property
    def handshake(self) -> Handshake:
        return Handshake()

    async def receive(self) -> str | bytes:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    def try_send(self, frame: str) -> bool:
        if self.closed:
            raise ConnectionClosed.from_code(1006)
        if not self.accept_frames:
            return False
        self.sent.append(frame)
        return True

    async def send(self, frames: list[str]) -> None:
        if self.closed:
            raise ConnectionClosed.from_code(1006)
        self.sent.extend(frames)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass

    async def ping(self, on_pong: OnPong) -> None:
        if self.closed:
            raise ConnectionClosed.from_code(1006)
        self.sent.append("ping:awaited")
        self.pongs.append(on_pong)

    def try_ping(self, on_pong: OnPong) -> bool:
        if self.closed:
            raise ConnectionClosed.from_code(1006)
        if not self.in_place:
            return False
        self.sent.append("ping:in-place")
        self.pongs.append(on_pong)
        return True


class AwaitOnlyPingTransport(PingTransport):
    """A `PingableTransport` without ``try_ping``: every ping goes through the writer."""

    try_ping = None  # type: ignore[assignment]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def make_client(transport: PingTransport) -> Client:
    return Client(ClientId("n.c"), transport, Principal(None), limits=QueueLimits(max_frames=8))


def test_the_fakes_are_the_transports_they_stand_for() -> None:
    assert isinstance(PingTransport(), TryPingTransport)
    assert isinstance(AwaitOnlyPingTransport(), PingableTransport)
    assert not isinstance(AwaitOnlyPingTransport(), TryPingTransport)


async def test_an_idle_client_is_pinged_in_place_without_a_writer() -> None:
    transport = PingTransport()
    client = make_client(transport)
    ponged: list[int] = []
    async with anyio.create_task_group() as tg:
        client.attach(tg, tg.cancel_scope)
        client.request_ping(lambda: ponged.append(1))
        assert transport.sent == ["ping:in-place"]
        assert client.direct
        await anyio.wait_all_tasks_blocked()
        assert not client._writing  # no task was started for it
        transport.pongs[0]()
        assert ponged == [1]
        tg.cancel_scope.cancel()


async def test_a_ping_waits_behind_queued_frames_and_goes_through_the_writer() -> None:
    transport = PingTransport()
    transport.accept_frames = False
    client = make_client(transport)
    async with anyio.create_task_group() as tg:
        assert client.deliver("a")  # queued: the transport declined it
        assert not client.direct
        client.request_ping(lambda: None)
        client.attach(tg, tg.cancel_scope)
        await anyio.wait_all_tasks_blocked()
        assert transport.sent == ["a", "ping:awaited"]
        tg.cancel_scope.cancel()


async def test_a_ping_the_transport_declines_goes_through_the_writer() -> None:
    transport = PingTransport()
    transport.in_place = False
    client = make_client(transport)
    async with anyio.create_task_group() as tg:
        client.attach(tg, tg.cancel_scope)
        client.request_ping(lambda: None)
        assert not client.direct
        await anyio.wait_all_tasks_blocked()
        assert transport.sent == ["ping:awaited"]
        assert len(transport.pongs) == 1
        tg.cancel_scope.cancel()


async def test_a_transport_without_try_ping_is_pinged_by_the_writer() -> None:
    transport = AwaitOnlyPingTransport()
    client = make_client(transport)
    assert client.pingable
    async with anyio.create_task_group() as tg:
        client.attach(tg, tg.cancel_scope)
        client.request_ping(lambda: None)
        await anyio.wait_all_tasks_blocked()
        assert transport.sent == ["ping:awaited"]
        tg.cancel_scope.cancel()


async def test_a_closed_transport_closes_the_client_1006_as_a_failed_write_does() -> None:
    transport = PingTransport()
    transport.closed = True
    client = make_client(transport)
    async with anyio.create_task_group() as tg:
        client.attach(tg, tg.cancel_scope)
        client.request_ping(lambda: None)
        assert client.close_code == CLOSE_ABNORMAL
        assert transport.pongs == []
        await anyio.wait_all_tasks_blocked()
        assert not client._writing
        # Closed: the next ping is not even offered to the transport.
        transport.closed = False
        client.request_ping(lambda: None)
        assert transport.sent == []


class BuggyPingTransport(PingTransport):
    """A transport whose ``try_ping`` has a bug."""

    def try_ping(self, on_pong: OnPong) -> bool:
        raise RuntimeError("bug")


async def test_a_transport_bug_in_try_ping_closes_the_client_1011_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = make_client(BuggyPingTransport())
    async with anyio.create_task_group() as tg:
        client.attach(tg, tg.cancel_scope)
        client.request_ping(lambda: None)  # does not raise
        assert (client.close_code, client.close_reason) == (1011, "internal error")
    assert "ping of connection n.c failed" in caplog.text


async def test_a_closing_client_is_not_pinged() -> None:
    transport = PingTransport()
    client = make_client(transport)
    async with anyio.create_task_group() as tg:
        client.attach(tg, tg.cancel_scope)
        client.close(1000, "bye")
        client.request_ping(lambda: None)
        await anyio.wait_all_tasks_blocked()
        assert transport.sent == []


# ----------------------------------------------------------------------------- through a hub


class HubPingTransport(PingTransport):
    """`PingTransport` for the ping side, an in-memory connection for everything else."""

    def __init__(self, memory: MemoryTransport) -> None:
        super().__init__()
        self.memory = memory

    @property
    def handshake(self) -> Handshake:
        return self.memory.handshake

    async def receive(self) -> str | bytes:
        return await self.memory.receive()

    def try_send(self, frame: str) -> bool:
        return self.memory.try_send(frame)

    async def send(self, frames: list[str]) -> None:
        await self.memory.send(frames)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.memory.close(code, reason)


async def connected(hub: Hub, tg: anyio.abc.TaskGroup) -> tuple[HubPingTransport, ClientEnd]:
    memory, end = memory_transport_pair()
    transport = HubPingTransport(memory)
    tg.start_soon(hub.serve, transport)
    assert json.loads(await end.receive())["type"] == "connection.ack"
    return transport, end


async def test_the_hub_pings_an_idle_connection_in_place_and_a_pong_keeps_it(
    clock: ManualClock,
) -> None:
    policy = HeartbeatPolicy(interval=10, timeout=20, jitter=0)
    async with Hub(clock=clock, heartbeat=policy) as hub, anyio.create_task_group() as tg:
        transport, end = await connected(hub, tg)
        for round_ in range(1, 6):
            await clock.advance(10)
            assert transport.sent == ["ping:in-place"] * round_
            transport.pongs[-1]()
        assert end.receive_nowait() is None  # no application ping frame either
        assert hub.stats().clients == 1
        assert hub.stats().heartbeat_timeouts == 0
        await end.close()


async def test_a_pong_that_never_arrives_closes_the_connection_with_1011(
    clock: ManualClock,
) -> None:
    policy = HeartbeatPolicy(interval=10, timeout=20, jitter=0)
    async with Hub(clock=clock, heartbeat=policy) as hub, anyio.create_task_group() as tg:
        transport, end = await connected(hub, tg)
        await clock.advance(10)
        assert transport.sent == ["ping:in-place"]
        await clock.advance(10)
        with anyio.fail_after(5):
            with pytest.raises(ConnectionClosed) as info:
                await end.receive()
        assert (info.value.code, info.value.reason) == (1011, "heartbeat timeout")
        assert hub.stats().heartbeat_timeouts == 1
        await end.close()


async def test_the_hub_falls_back_to_the_writer_when_the_transport_declines(
    clock: ManualClock,
) -> None:
    policy = HeartbeatPolicy(interval=10, timeout=20, jitter=0)
    async with Hub(clock=clock, heartbeat=policy) as hub, anyio.create_task_group() as tg:
        transport, end = await connected(hub, tg)
        transport.in_place = False
        for round_ in range(1, 4):
            await clock.advance(10)
            await anyio.wait_all_tasks_blocked()
            assert transport.sent == ["ping:awaited"] * round_
            transport.pongs[-1]()
        assert hub.stats().heartbeat_timeouts == 0
        await end.close()
