"""Client over an EagerTransport: sends start in place; only a send that waits uses the writer."""

from __future__ import annotations

import inspect
from collections.abc import Coroutine
from typing import Any

import anyio
import pytest

from roomcast import Handshake, Principal
from roomcast.peer import Client, ClientId, QueueLimits
from roomcast.transport import EagerTransport

pytestmark = pytest.mark.anyio


class FakeEagerTransport:
    """Sends finish in place unless ``gate`` is set; then the rest waits for it."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.gate: anyio.Event | None = None
        self.rests: list[Coroutine[Any, Any, None]] = []

    @property
    def handshake(self) -> Handshake:
        return Handshake()

    @property
    def eager(self) -> bool:
        return True

    async def receive(self) -> str | bytes:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    def try_send(self, frame: str) -> bool:
        return False

    async def send(self, frames: list[str]) -> None:
        self.sent.extend(frames)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass

    def begin_send(self, frame: str) -> Coroutine[Any, Any, None] | None:
        if self.gate is None:
            self.sent.append(frame)
            return None
        rest = self._finish(frame, self.gate)
        self.rests.append(rest)
        return rest

    async def _finish(self, frame: str, gate: anyio.Event) -> None:
        await gate.wait()
        self.sent.append(frame)


def make_client(transport: FakeEagerTransport) -> Client:
    return Client(ClientId("n.c"), transport, Principal(None), limits=QueueLimits(max_frames=8))


async def test_fake_is_an_eager_transport() -> None:
    assert isinstance(FakeEagerTransport(), EagerTransport)


async def test_a_send_that_finishes_in_place_needs_no_writer() -> None:
    transport = FakeEagerTransport()
    client = make_client(transport)
    async with anyio.create_task_group() as tg:
        client.attach(tg, tg.cancel_scope)
        assert client.deliver("a")
        assert client.deliver("b")
        assert transport.sent == ["a", "b"]
        assert client.direct
        assert client.queued == 0
        tg.cancel_scope.cancel()


async def test_frames_queue_behind_a_send_that_waits_and_keep_their_order() -> None:
    transport = FakeEagerTransport()
    client = make_client(transport)
    gate = transport.gate = anyio.Event()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as reader_scope:
                client.attach(tg, reader_scope)
                assert client.deliver("a")
                assert not client.direct
                transport.gate = None
                assert client.deliver("b")
                assert client.deliver("c")
                assert client.queued == 2
                await anyio.sleep(0.01)
                assert transport.sent == []
                gate.set()
                while client.queued or len(transport.sent) < 3:
                    await anyio.sleep(0.01)
                assert transport.sent == ["a", "b", "c"]
                while not client.direct:
                    await anyio.sleep(0.01)
                assert client.deliver("d")
                assert transport.sent == ["a", "b", "c", "d"]
                reader_scope.cancel()


async def test_closing_without_flush_abandons_a_send_that_waits() -> None:
    transport = FakeEagerTransport()
    client = make_client(transport)
    transport.gate = anyio.Event()
    # Not attached yet: the rest waits for a writer that has not started.
    assert client.deliver("a")
    client.close(4009, "slow consumer", flush=False)
    assert inspect.getcoroutinestate(transport.rests[0]) == inspect.CORO_CLOSED
    assert transport.sent == []


async def test_closing_without_flush_cancels_a_send_the_writer_awaits() -> None:
    transport = FakeEagerTransport()
    client = make_client(transport)
    transport.gate = anyio.Event()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as reader_scope:
                client.attach(tg, reader_scope)
                assert client.deliver("a")
                await anyio.sleep(0.01)  # the writer is now awaiting the rest
                client.close(4009, "slow consumer", flush=False)
                await anyio.sleep_forever()  # the close cancels the reader
    assert inspect.getcoroutinestate(transport.rests[0]) == inspect.CORO_CLOSED
    assert transport.sent == []
    assert client.close_code == 4009


async def test_a_send_waiting_before_attach_is_flushed_when_closing_with_flush() -> None:
    transport = FakeEagerTransport()
    client = make_client(transport)
    gate = transport.gate = anyio.Event()
    assert client.deliver("a")  # the rest waits for a writer that has not started
    client.close(1001, "going away")  # with flush, before the connection is attached
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as reader_scope:
                client.attach(tg, reader_scope)
                gate.set()
                await anyio.sleep_forever()  # the writer cancels the reader once flushed
    assert transport.sent == ["a"]
    assert inspect.getcoroutinestate(transport.rests[0]) == inspect.CORO_CLOSED


async def test_closing_again_without_flush_abandons_what_was_being_flushed() -> None:
    transport = FakeEagerTransport()
    client = make_client(transport)
    transport.gate = anyio.Event()
    assert client.deliver("a")
    transport.gate = None
    assert client.deliver("b")  # queued behind the send in flight
    client.close(1001, "going away")
    client.close(1001, "going away")  # a second flushing close changes nothing
    assert client.queued == 1
    assert inspect.getcoroutinestate(transport.rests[0]) == inspect.CORO_CREATED
    client.close(1000, "", flush=False)  # the connection's end: nothing more goes out
    assert client.close_code == 1001  # the first close still names the code
    assert client.queued == 0
    assert inspect.getcoroutinestate(transport.rests[0]) == inspect.CORO_CLOSED
    assert transport.sent == []
