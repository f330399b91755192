"""Protocol pings written in place (``try_ping``) by the websockets and aiohttp transports.

Over real sockets on 127.0.0.1: the ping goes out at once and ``on_pong`` runs on
its pong; the transport declines, writing nothing, where a frame could not be
written in place either (a full write buffer, a fragmented message, a closing
handshake, a ``websockets`` without the internals), and a closed transport
raises ``ConnectionClosed``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from roomcast import ConnectionClosed, PingableTransport, TryPingTransport
from roomcast.aiohttp import AiohttpTransport
from roomcast.websockets import WebSocketsTransport

from .contract.transports import (
    TRANSPORT_KINDS,
    WEBSOCKETS_WRITES_IN_PLACE,
    TransportKind,
    aiohttp_accepted,
    websockets_accepted,
)

pytestmark = pytest.mark.anyio

TIMEOUT = 10

#: The kinds that write pings in place on the installed framework.
IN_PLACE = [
    kind.param()
    for kind in TRANSPORT_KINDS
    if kind.name == "aiohttp" or (kind.name == "websockets" and WEBSOCKETS_WRITES_IN_PLACE)
]
needs_in_place_websockets = pytest.mark.skipif(
    not WEBSOCKETS_WRITES_IN_PLACE, reason="websockets writes in place from 17.4"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def no_pong() -> None:
    raise AssertionError("on_pong ran for a ping that was not sent")


def pending(transport: Any) -> int:
    """Pings the transport's connection waits a pong for."""
    if isinstance(transport, WebSocketsTransport):
        connection = transport._connection
        pings: dict[bytes, Any] | None = getattr(connection, "pending_pings", None)
        if pings is None:  # called pong_waiters before websockets 16.0
            pings = getattr(connection, "pong_waiters")  # noqa: B009 - absent from 17.4's types
        return len(pings)
    assert isinstance(transport, AiohttpTransport)
    return len(transport._pings)


def fill_write_buffer(transport: Any) -> int:
    """Write in place until the transport declines (its write buffer is above the high-water mark).

    Returns how many frames it wrote.
    """
    written = 0
    while transport.try_send(f"{written:06d}" + "y" * 16384):
        written += 1
        # The kernel's socket buffers hold a few MiB; past them, asyncio's must fill.
        assert written < 2000
    return written


@pytest.mark.parametrize(
    "kind", [kind.param() for kind in TRANSPORT_KINDS if kind.backend == "asyncio"]
)
async def test_the_transports_that_ping_also_ping_in_place(kind: TransportKind) -> None:
    with anyio.fail_after(TIMEOUT):
        async with kind.accepted() as (_, transport):
            assert isinstance(transport, TryPingTransport) is kind.pingable
            assert isinstance(transport, PingableTransport) is kind.pingable


@pytest.mark.parametrize("kind", IN_PLACE)
async def test_try_ping_writes_a_ping_and_on_pong_runs_when_its_pong_arrives(
    kind: TransportKind,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with kind.accepted() as (client, transport):
            assert isinstance(transport, TryPingTransport)
            ponged = anyio.Event()
            assert transport.try_ping(ponged.set) is True
            assert pending(transport) == 1
            async with anyio.create_task_group() as tg:
                # The client answers pings while it reads; aiohttp's pongs arrive
                # through receive(), which the hub always runs.
                tg.start_soon(client.recv)
                tg.start_soon(transport.receive)
                await ponged.wait()
                tg.cancel_scope.cancel()
            assert pending(transport) == 0


@pytest.mark.parametrize("kind", IN_PLACE)
async def test_a_pong_for_a_later_ping_answers_the_earlier_one_too(kind: TransportKind) -> None:
    with anyio.fail_after(TIMEOUT):
        async with kind.accepted() as (client, transport):
            assert isinstance(transport, TryPingTransport)
            first, second = anyio.Event(), anyio.Event()
            assert transport.try_ping(first.set)
            assert transport.try_ping(second.set)
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.recv)
                tg.start_soon(transport.receive)
                await first.wait()
                await second.wait()
                tg.cancel_scope.cancel()


@pytest.mark.parametrize("kind", IN_PLACE)
async def test_try_ping_declines_above_the_high_water_mark(kind: TransportKind) -> None:
    with anyio.fail_after(TIMEOUT):
        async with kind.accepted(max_queue=1) as (client, transport):
            assert isinstance(transport, TryPingTransport)
            client.transport.pause_reading()
            written = fill_write_buffer(transport)
            assert transport.try_ping(no_pong) is False
            assert pending(transport) == 0
            client.transport.resume_reading()
            for _ in range(written):
                await client.recv()
            # Drained: the next ping goes out in place.
            assert transport.try_ping(lambda: None) is True


@needs_in_place_websockets
async def test_websockets_try_ping_declines_during_a_fragmented_message() -> None:
    with anyio.fail_after(TIMEOUT):
        async with websockets_accepted() as (client, transport):
            connection = transport._connection
            more = anyio.Event()

            async def fragments() -> AsyncIterator[str]:
                yield "first half, "
                await more.wait()
                yield "second half"

            async with anyio.create_task_group() as tg:
                tg.start_soon(connection.send, fragments())
                await anyio.wait_all_tasks_blocked()
                assert connection.send_in_progress is not None
                assert transport.try_ping(no_pong) is False
                assert pending(transport) == 0
                more.set()
            assert await client.recv() == "first half, second half"
            # The message is whole: pings go out in place again.
            assert transport.try_ping(lambda: None) is True


async def test_websockets_try_ping_declines_while_closing_and_raises_once_closed() -> None:
    with anyio.fail_after(TIMEOUT):
        async with websockets_accepted() as (client, transport):
            client.transport.pause_reading()  # the close frame stays unanswered
            async with anyio.create_task_group() as tg:
                tg.start_soon(transport.close, 1000)
                await anyio.wait_all_tasks_blocked()
                # Closing: nothing may follow the close frame.
                assert transport.try_ping(no_pong) is False
                assert pending(transport) == 0
                client.transport.resume_reading()
            with pytest.raises(ConnectionClosed):
                transport.try_ping(no_pong)


async def test_aiohttp_try_ping_raises_once_the_closing_handshake_has_begun() -> None:
    with anyio.fail_after(TIMEOUT):
        async with aiohttp_accepted() as (client, transport):
            client.transport.pause_reading()
            async with anyio.create_task_group() as tg:
                tg.start_soon(transport.close, 1000)
                await anyio.wait_all_tasks_blocked()
                with pytest.raises(ConnectionClosed):
                    transport.try_ping(no_pong)
                assert pending(transport) == 0
                client.transport.resume_reading()
            with pytest.raises(ConnectionClosed):
                transport.try_ping(no_pong)


async def test_websockets_before_17_4_declines_and_ping_still_works() -> None:
    # As with a websockets older than 17.4: nothing is written in place.
    with anyio.fail_after(TIMEOUT):
        async with websockets_accepted(through_send=True) as (client, transport):
            assert transport.try_ping(no_pong) is False
            assert pending(transport) == 0
            ponged = anyio.Event()
            await transport.ping(ponged.set)
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.recv)
                await ponged.wait()
                tg.cancel_scope.cancel()


@needs_in_place_websockets
async def test_websockets_without_pending_pings_declines() -> None:
    # As with a websockets that renamed it (before 16.0 it was pong_waiters).
    with anyio.fail_after(TIMEOUT):
        async with websockets_accepted() as (_, transport):
            connection = transport._connection
            kept = connection.pending_pings
            del connection.pending_pings
            try:
                assert transport.try_ping(no_pong) is False
            finally:
                connection.pending_pings = kept
            assert kept == {}


@needs_in_place_websockets
async def test_websockets_a_failed_write_ends_the_connection_with_1006(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with websockets_accepted() as (_, transport):
            connection = transport._connection

            def broken(data: Any) -> None:
                raise OSError("the socket is gone")

            monkeypatch.setattr(connection.transport, "write", broken)
            with pytest.raises(ConnectionClosed) as excinfo:
                transport.try_ping(no_pong)
            assert excinfo.value.code == 1006
            await connection.wait_closed()
            assert isinstance(connection.connection_exc, OSError)
            assert pending(transport) == 0  # its future ended with the connection: no pong
            await anyio.lowlevel.checkpoint()  # done callbacks run: no_pong must not


@pytest.mark.parametrize("kind", IN_PLACE)
async def test_try_ping_on_a_closed_transport_raises_connection_closed(
    kind: TransportKind,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with kind.accepted() as (_, transport):
            assert isinstance(transport, TryPingTransport)
            await transport.close(1000)
            with pytest.raises(ConnectionClosed):
                transport.try_ping(no_pong)
