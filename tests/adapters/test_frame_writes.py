"""Frames built once and written together, on the ``websockets`` and aiohttp adapters.

Over real sockets on 127.0.0.1: what reaches the server's asyncio transport (each
``write`` recorded as it is made) and what the client decodes. Every case where the
``websockets`` adapter must leave framing or writing to the library is here too.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Generator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websockets_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as websockets_serve
from websockets.exceptions import ConnectionClosed as WebSocketsClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import CLOSING, OPEN
from websockets.typing import Subprotocol

import roomcast.aiohttp
import roomcast.websockets
from roomcast import ConnectionClosed, Hub
from roomcast._asyncio import Batch, batch_for
from roomcast._writes import text_frame
from roomcast.aiohttp import AiohttpTransport
from roomcast.config import MAX_FLUSH_DELAY, check_flush_delay
from roomcast.websockets import WebSocketsTransport

from .contract.frames import next_frame, request
from .contract.transports import Handover, aiohttp_accepted, aiohttp_running

pytestmark = pytest.mark.anyio

TIMEOUT = 10
# Payload sizes at the edges of RFC 6455's three length encodings.
EDGE_SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70000]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # both adapters run on asyncio only


def edge_frames() -> list[str]:
    # Two-byte characters: a frame's length is counted in bytes, not characters.
    return ["é" * (size // 2) + "x" * (size % 2) for size in EDGE_SIZES]


class Writes:
    """Records each ``write`` made to an asyncio transport, then makes it."""

    def __init__(self, socket: Any) -> None:
        self.calls: list[bytes] = []
        write = socket.write

        def recording(data: bytes) -> None:
            self.calls.append(data)
            write(data)

        socket.write = recording


def written(transport: WebSocketsTransport | AiohttpTransport) -> Writes:
    """Start recording the writes to ``transport``'s socket."""
    if isinstance(transport, WebSocketsTransport):
        return Writes(transport._connection.transport)
    return Writes(transport._request.transport)


async def next_iteration() -> None:
    """Let the event loop run what is ready now, and what that schedules at once."""
    for _ in range(3):
        await asyncio.sleep(0)


@asynccontextmanager
async def websockets_accepted(
    *, flush_delay: float = 0.0, wrap: Any = None, **server_kwargs: Any
) -> AsyncIterator[tuple[ClientConnection, WebSocketsTransport]]:
    """A ``websockets`` server's transport and its client (``server_kwargs`` for ``serve``).

    ``wrap(connection)``, when given, makes the transport.
    """
    handover = Handover[WebSocketsTransport]()

    async def handle(connection: ServerConnection) -> None:
        if wrap is not None:
            await handover.hand(wrap(connection))
        else:
            await handover.hand(WebSocketsTransport(connection, flush_delay=flush_delay))

    server_kwargs.setdefault("compression", None)
    async with (
        websockets_serve(handle, "127.0.0.1", 0, **server_kwargs) as server,
        websockets_connect(
            f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/", max_size=None
        ) as client,
        handover.taken(client) as accepted,
    ):
        yield accepted


KINDS = [
    pytest.param(websockets_accepted, id="websockets"),
    pytest.param(aiohttp_accepted, id="aiohttp"),
]


# ----------------------------------------------------------------------------- the frame


@pytest.mark.parametrize("size", EDGE_SIZES)
def test_text_frame_is_the_frame_websockets_serializes_for_a_server(size: int) -> None:
    text = "é" * (size // 2) + "x" * (size % 2)
    expected = Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])
    assert text_frame(text) == expected


@given(st.text(st.characters(codec="utf-8")))
def test_text_frame_parses_back_to_its_text(text: str) -> None:
    buffer = bytearray(text_frame(text))

    def read_exact(n: int) -> Generator[None, None, bytes]:
        piece = bytes(buffer[:n])
        del buffer[:n]
        return piece
        yield  # a generator, as the library's parser expects

    # Parsed by the library's own reader, as a client reads it (RFC 6455 section 5.2).
    parser = Frame.parse(read_exact, mask=False)
    with pytest.raises(StopIteration) as done:
        next(parser)
    frame: Frame = done.value.value
    assert (frame.opcode, frame.fin, bytes(frame.data).decode()) == (Opcode.TEXT, True, text)
    assert not buffer


def test_text_frame_refuses_a_lone_surrogate() -> None:
    with pytest.raises(UnicodeEncodeError):
        text_frame("\ud800")


# ----------------------------------------------------------------------------- frame once


@pytest.mark.parametrize("accepted", KINDS)
async def test_one_publication_is_one_bytes_object_written_to_every_member(accepted: Any) -> None:
    frame = '{"type":"news","payload":"é"}'
    with anyio.fail_after(TIMEOUT):
        async with accepted() as (first, one), accepted() as (second, two):
            writes = [written(one), written(two)]
            assert one.try_send(frame)
            assert two.try_send(frame)
            assert await first.recv() == frame
            assert await second.recv() == frame
            [data], [same] = (record.calls for record in writes)
            assert data is same
            assert data == text_frame(frame)


@pytest.mark.parametrize("accepted", KINDS)
async def test_the_bytes_on_the_wire_are_valid_frames_of_every_length_encoding(
    accepted: Any,
) -> None:
    frames = edge_frames()
    with anyio.fail_after(TIMEOUT):
        # The client checks every frame strictly: header, length and UTF-8.
        async with accepted(max_size=None) as (client, transport):
            for frame in frames:
                assert transport.try_send(frame)
                assert await client.recv() == frame
            await transport.send(frames)
            assert [await client.recv() for _ in frames] == frames


# ----------------------------------------------------------------------------- coalesced


@pytest.mark.parametrize("accepted", KINDS)
async def test_frames_taken_in_one_loop_iteration_leave_in_one_write(accepted: Any) -> None:
    with anyio.fail_after(TIMEOUT):
        async with accepted() as (client, transport):
            writes = written(transport)
            for frame in ("1", "2", "3"):
                assert transport.try_send(frame)
            assert writes.calls == []  # held until the end of the iteration
            assert [await client.recv() for _ in range(3)] == ["1", "2", "3"]
            assert writes.calls == [text_frame("1") + text_frame("2") + text_frame("3")]


@pytest.mark.parametrize("accepted", KINDS)
async def test_what_is_held_goes_before_a_batch_sent_later(accepted: Any) -> None:
    with anyio.fail_after(TIMEOUT):
        async with accepted() as (client, transport):
            writes = written(transport)
            assert transport.try_send("held")
            await transport.send(["queued", "last"])
            assert [await client.recv() for _ in range(3)] == ["held", "queued", "last"]
            assert writes.calls == [text_frame("held") + text_frame("queued") + text_frame("last")]


@pytest.mark.parametrize("accepted", KINDS)
async def test_what_is_held_goes_before_the_close_frame(accepted: Any) -> None:
    with anyio.fail_after(TIMEOUT):
        async with accepted() as (client, transport):
            assert transport.try_send("a")
            assert transport.try_send("b")
            await transport.close(4000, "bye")
            assert [await client.recv() for _ in range(2)] == ["a", "b"]
            with pytest.raises(WebSocketsClosed) as excinfo:
                await client.recv()
            assert excinfo.value.rcvd is not None
            assert excinfo.value.rcvd.code == 4000


@pytest.mark.parametrize("accepted", KINDS)
async def test_frames_held_past_the_high_water_mark_are_written_at_once(accepted: Any) -> None:
    with anyio.fail_after(TIMEOUT):
        async with accepted() as (client, transport):
            writes = written(transport)
            socket = (
                transport._connection.transport
                if isinstance(transport, WebSocketsTransport)
                else transport._request.transport
            )
            high = socket.get_write_buffer_limits()[1]
            big = "x" * (high // 2 + 1)
            assert transport.try_send(big)
            assert writes.calls == []
            assert transport.try_send(big)  # past the mark: held no longer
            assert writes.calls == [text_frame(big) * 2]
            assert transport._held_size == 0
            assert [await client.recv() for _ in range(2)] == [big, big]


@pytest.mark.parametrize("accepted", KINDS)
async def test_flush_delay_holds_frames_past_the_loop_iteration(accepted: Any) -> None:
    with anyio.fail_after(TIMEOUT):
        async with accepted(flush_delay=0.05) as (client, transport):
            writes = written(transport)
            assert transport.try_send("1")
            await next_iteration()
            assert transport.try_send("2")
            await next_iteration()
            assert writes.calls == []
            assert [await client.recv() for _ in range(2)] == ["1", "2"]
            assert writes.calls == [text_frame("1") + text_frame("2")]


async def start_closing(transport: WebSocketsTransport | AiohttpTransport) -> None:
    """The framework starts a closing handshake (code 4001) without the adapter."""
    if isinstance(transport, WebSocketsTransport):
        connection = transport._connection
        connection.protocol.send_close(4001, "gone")
        connection.send_data()
    else:
        ws = transport._ws
        ws._set_closed()  # aiohttp's close() marks it first, then writes
        assert ws._writer is not None
        await ws._writer.close(4001, b"gone")


async def close_frame_first(
    client: ClientConnection, transport: WebSocketsTransport | AiohttpTransport
) -> None:
    """The client's next read is the close frame (4001) of `start_closing`: no message."""
    if isinstance(transport, AiohttpTransport):
        while client.protocol.state is OPEN:  # until the client reads the close frame
            await anyio.sleep(0.01)
        socket = transport._request.transport
        assert socket is not None
        socket.abort()  # nobody reads the client's answer
    with pytest.raises(WebSocketsClosed) as excinfo:
        await client.recv()
    assert excinfo.value.rcvd is not None
    assert excinfo.value.rcvd.code == 4001


@pytest.mark.parametrize("accepted", KINDS)
async def test_frames_held_for_a_connection_that_closes_first_are_dropped(accepted: Any) -> None:
    with anyio.fail_after(TIMEOUT):
        async with accepted() as (client, transport):
            writes = written(transport)
            assert transport.try_send("late")
            # The framework starts a closing handshake before the batch flushes.
            await start_closing(transport)
            await next_iteration()
            assert all(text_frame("late") not in data for data in writes.calls)
            await close_frame_first(client, transport)


@pytest.mark.parametrize("accepted", KINDS)
async def test_the_same_publication_behind_held_frames_is_held_without_the_checks(
    accepted: Any,
) -> None:
    publication, other = '{"seq":1}', '{"seq":2}'
    with anyio.fail_after(TIMEOUT):
        async with accepted() as (first, one), accepted() as (_, two):
            writes = written(one)
            assert one.try_send("earlier")
            assert two.try_send(publication)  # the batch frames the publication
            await start_closing(one)
            # Held frames and the batch's publication: an append, no check made...
            assert one.try_send(publication)
            # ...while another text on the closing connection is checked and refused
            # (websockets: not now; aiohttp: closed).
            try:
                taken = one.try_send(other)
            except ConnectionClosed:
                taken = False
            assert not taken
            await next_iteration()
            # The flush drops what the closing connection held.
            assert all(b"earlier" not in data and b"seq" not in data for data in writes.calls)
            await close_frame_first(first, one)


@pytest.mark.parametrize("accepted", KINDS)
async def test_a_failed_write_of_held_frames_ends_that_connection_only(accepted: Any) -> None:
    with anyio.fail_after(TIMEOUT):
        async with accepted() as (first, one), accepted() as (second, two):
            socket = (
                one._connection.transport
                if isinstance(one, WebSocketsTransport)
                else one._request.transport
            )

            def broken(data: bytes) -> None:
                raise RuntimeError("the socket is gone")

            socket.write = broken  # type: ignore[method-assign]
            assert one.try_send("lost")
            assert two.try_send("kept")
            assert await second.recv() == "kept"
            with pytest.raises(WebSocketsClosed):
                await first.recv()
            assert socket.is_closing()


# ----------------------------------------------------------------------------- websockets


async def test_with_permessage_deflate_websockets_builds_and_compresses_the_frames() -> None:
    with anyio.fail_after(TIMEOUT):
        async with websockets_accepted(compression="deflate") as (client, transport):
            assert transport._connection.protocol.extensions
            writes = written(transport)
            assert transport.try_send("zip" * 100)
            assert transport._held_size == 0
            assert await client.recv() == "zip" * 100
            [data] = writes.calls
            assert data[0] == 0xC1  # FIN, RSV1 (compressed), text


async def test_nothing_is_written_into_a_fragmented_message_in_progress() -> None:
    release = asyncio.Event()

    async def fragments() -> AsyncIterator[str]:
        yield "frag"
        await release.wait()
        yield "ment"

    with anyio.fail_after(TIMEOUT):
        async with websockets_accepted() as (client, transport):
            connection = transport._connection
            async with anyio.create_task_group() as tg:
                tg.start_soon(connection.send, fragments())
                while connection.send_in_progress is None:
                    await asyncio.sleep(0)
                assert not transport.try_send("between")
                tg.start_soon(transport.send, ["after"])
                await next_iteration()
                release.set()
            assert await client.recv() == "fragment"
            assert await client.recv() == "after"


async def test_bytes_of_the_librarys_own_waiting_go_first_and_it_frames_the_next() -> None:
    with anyio.fail_after(TIMEOUT):
        async with websockets_accepted() as (client, transport):
            writes = written(transport)
            connection = transport._connection
            assert transport.try_send("held")
            # A pong the library has built but not written yet (no await since).
            connection.protocol.send_pong(b"p")
            assert transport.try_send("next")
            assert connection.protocol.writes == []
            pong = Frame(Opcode.PONG, b"p").serialize(mask=False, extensions=[])
            assert writes.calls == [text_frame("held"), pong, text_frame("next")]
            assert [await client.recv() for _ in range(2)] == ["held", "next"]


async def test_a_closing_connection_takes_nothing_and_a_closed_one_raises() -> None:
    with anyio.fail_after(TIMEOUT):
        async with websockets_accepted() as (_, transport):
            connection = transport._connection
            connection.protocol.send_close(1000)
            connection.send_data()
            assert connection.protocol.state is CLOSING
            assert not transport.try_send("closing")
            await transport.close()
            with pytest.raises(ConnectionClosed):
                transport.try_send("closed")


async def test_a_paused_connection_takes_nothing() -> None:
    with anyio.fail_after(TIMEOUT):
        async with websockets_accepted() as (client, transport):
            connection = transport._connection
            connection.pause_writing()
            assert not transport.try_send("paused")
            connection.resume_writing()
            assert transport.try_send("resumed")
            assert await client.recv() == "resumed"


def without_send_in_progress(connection: ServerConnection) -> WebSocketsTransport:
    """The transport, made as it is with a websockets older than 16.0."""
    in_progress = connection.send_in_progress
    del connection.send_in_progress
    try:
        return WebSocketsTransport(connection)
    finally:
        connection.send_in_progress = in_progress  # the library itself still needs it


async def test_without_the_internals_every_frame_goes_through_connection_send() -> None:
    with anyio.fail_after(TIMEOUT):
        async with websockets_accepted(wrap=without_send_in_progress) as (client, transport):
            assert not transport._in_place
            assert not transport.try_send("declined")
            await transport.send(["1", "2"])
            assert [await client.recv() for _ in range(2)] == ["1", "2"]


async def test_without_set_connection_exc_every_frame_goes_through_connection_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(roomcast.websockets, "_RECORDS_WRITE_ERRORS", False)  # before 17.4
    with anyio.fail_after(TIMEOUT):
        async with websockets_accepted() as (client, transport):
            assert not transport.try_send("declined")
            await transport.send(["1"])
            assert await client.recv() == "1"


# ----------------------------------------------------------------------------- the batch


async def test_one_batch_per_loop_and_delay() -> None:
    assert batch_for(0.0) is batch_for(0.0)
    assert batch_for(0.01) is not batch_for(0.0)
    assert batch_for(0.01).delay == 0.01


async def test_a_failing_connection_does_not_keep_the_batch_from_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flushed: list[str] = []

    class Failing:
        def _flush_held(self) -> None:
            raise RuntimeError("boom")

    class Fine:
        def _flush_held(self) -> None:
            flushed.append("fine")

    batch = Batch(asyncio.get_running_loop(), 0.0)
    batch.add(Failing())
    batch.add(Fine())
    await next_iteration()
    assert flushed == ["fine"]
    assert "writing held frames failed" in caplog.text


@pytest.mark.parametrize(
    "delay", [-0.001, math.inf, math.nan, MAX_FLUSH_DELAY + 0.001, True, "0.01", None]
)
def test_flush_delay_out_of_range_is_refused(delay: Any) -> None:
    with pytest.raises(ValueError, match="flush_delay"):
        check_flush_delay(delay)
    with pytest.raises(ValueError, match="flush_delay"):
        Hub(flush_delay=delay)


@pytest.mark.parametrize("delay", [0, 0.0, 0.005, MAX_FLUSH_DELAY])
def test_flush_delay_in_range_is_the_hubs(delay: float) -> None:
    assert Hub(flush_delay=delay).flush_delay == delay
    assert Hub().flush_delay == 0.0


async def test_a_transport_refuses_a_bad_flush_delay() -> None:
    refused: list[Exception] = []

    async def handle(connection: ServerConnection) -> None:
        try:
            WebSocketsTransport(connection, flush_delay=-1.0)
        except ValueError as exc:
            refused.append(exc)

    with anyio.fail_after(TIMEOUT):
        async with websockets_serve(handle, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            async with websockets_connect(f"ws://127.0.0.1:{port}/") as client:
                with pytest.raises(WebSocketsClosed):
                    await client.recv()
    assert len(refused) == 1
    assert "flush_delay" in str(refused[0])


# ----------------------------------------------------------------------------- through a hub


@asynccontextmanager
async def hub_served(adapter: str, hub: Hub) -> AsyncIterator[str]:
    """``hub`` mounted on ``adapter``'s server; yield the URL to connect to."""
    if adapter == "websockets":
        async with await roomcast.websockets.serve(hub, "127.0.0.1", 0) as server:
            yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    else:
        app = web.Application()
        app.router.add_get("/ws", roomcast.aiohttp.handler(hub))
        async with aiohttp_running(app) as base:
            yield base + "/ws"


@pytest.mark.parametrize("adapter", ["websockets", "aiohttp"])
async def test_the_hub_gives_its_flush_delay_to_the_adapters_transports(adapter: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            Hub(flush_delay=0.02) as hub,
            hub_served(adapter, hub) as url,
            websockets_connect(url, subprotocols=[Subprotocol("roomcast.v1")]) as client,
        ):
            await next_frame(client, "connection.ack")
            await request(client, {"action": "subscribe", "rooms": ["news"], "ref": 1})
            [member] = hub._clients.values()
            assert isinstance(member.transport, WebSocketsTransport | AiohttpTransport)
            assert member.transport._batch.delay == 0.02
            await hub.publish("news", "news.item", {"n": 1})
            await hub.publish("news", "news.item", {"n": 2})
            items = [await next_frame(client, "news.item") for _ in range(2)]
            assert [item["payload"]["n"] for item in items] == [1, 2]
