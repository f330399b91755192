"""Each adapter's transport over a real socket, handed to the test as a hub gets it.

A `TransportKind` serves one framework on 127.0.0.1 with an ephemeral port,
connects a ``websockets`` client and yields the client with the server side's
transport; the connection lives until the test is done with it. Kinds run in
the test's own event loop: hypercorn on trio, every other on asyncio.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import anyio
import pytest
from aiohttp import web
from packaging.version import Version
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websockets_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as websockets_serve

from roomcast.aiohttp import AiohttpTransport
from roomcast.starlette import StarletteTransport
from roomcast.transport import Transport
from roomcast.websockets import WebSocketsTransport

from ..asgi import Client, connect, serving

__all__ = [
    "MAX_SIZE",
    "TRANSPORT_KINDS",
    "TransportKind",
    "aiohttp_accepted",
    "aiohttp_running",
    "starlette_accepted",
    "websockets_accepted",
]

#: The largest message, in bytes, every kind's server side takes.
MAX_SIZE = 65536

T = TypeVar("T")
C = TypeVar("C")


class Handover(Generic[T]):
    """Hands the server side's transport to the test, and keeps the connection until it is done."""

    def __init__(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[T](1)
        self._release = anyio.Event()

    async def hand(self, transport: T) -> None:
        """In the server's handler: pass ``transport`` on, and wait until the test is done."""
        with self._send:
            await self._send.send(transport)
        await self._release.wait()

    @asynccontextmanager
    async def taken(self, client: C) -> AsyncIterator[tuple[C, T]]:
        """In the test: ``client`` and the transport the handler passed on."""
        with self._receive:
            transport = await self._receive.receive()
        try:
            yield client, transport
        finally:
            self._release.set()


@asynccontextmanager
async def websockets_accepted(
    path: str = "/", *, through_send: bool = False, **client_kwargs: Any
) -> AsyncIterator[tuple[ClientConnection, WebSocketsTransport]]:
    """A ``websockets`` server's transport and its client.

    ``through_send``: the transport writes nothing in place, as it does with a
    ``websockets`` older than 17.4; every frame goes through ``Connection.send()``.
    """
    handover = Handover[WebSocketsTransport]()

    async def handle(connection: ServerConnection) -> None:
        transport = WebSocketsTransport(connection)
        if through_send:
            transport._in_place = False
        await handover.hand(transport)

    async with (
        websockets_serve(handle, "127.0.0.1", 0, compression=None, max_size=MAX_SIZE) as server,
        websockets_connect(
            f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}{path}", **client_kwargs
        ) as client,
        handover.taken(client) as accepted,
    ):
        yield accepted


@asynccontextmanager
async def aiohttp_running(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on an ephemeral port; yield its ``ws://`` base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"ws://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def aiohttp_accepted(
    path: str = "/ws", *, compress: bool = False, flush_delay: float = 0.0, **client_kwargs: Any
) -> AsyncIterator[tuple[ClientConnection, AiohttpTransport]]:
    """An aiohttp ``WebSocketResponse``'s transport and its client."""
    handover = Handover[AiohttpTransport]()

    async def handle(request: web.Request) -> web.StreamResponse:
        ws: web.WebSocketResponse = web.WebSocketResponse(
            max_msg_size=MAX_SIZE + 1, compress=compress, autoping=False
        )
        await ws.prepare(request)
        transport = AiohttpTransport(request, ws, flush_delay=flush_delay)
        await handover.hand(transport)
        await transport.close(1001)
        return ws

    app = web.Application()
    app.router.add_get("/{path:.*}", handle)
    async with (
        aiohttp_running(app) as base,
        websockets_connect(base + path, **client_kwargs) as client,
        handover.taken(client) as accepted,
    ):
        yield accepted


@asynccontextmanager
async def starlette_accepted(
    path: str = "/ws", **client_kwargs: Any
) -> AsyncIterator[tuple[Client, StarletteTransport]]:
    """A Starlette ``WebSocket``'s transport, under uvicorn on asyncio or hypercorn on trio."""
    handover = Handover[StarletteTransport]()

    async def handle(websocket: WebSocket) -> None:
        await websocket.accept()
        await handover.hand(StarletteTransport(websocket, max_message_size=MAX_SIZE))

    app = Starlette(
        routes=[WebSocketRoute("/ws", handle), WebSocketRoute("/ws/{rest:path}", handle)]
    )
    async with (
        serving(app) as base,
        connect(base + path, **client_kwargs) as client,
        handover.taken(client) as accepted,
    ):
        yield accepted


def _buffer_of(socket: Any, held: int = 0) -> tuple[int, int]:
    """An asyncio transport's write buffer, with ``held`` bytes not yet written to it.

    Its size (with what the roomcast transport holds for it) and its high-water mark.
    """
    assert socket is not None
    return socket.get_write_buffer_size() + held, socket.get_write_buffer_limits()[1]


@dataclass(frozen=True)
class TransportKind:
    """One adapter's transport on one server, and what it does where adapters may differ.

    Attributes:
        name: the test id.
        accepted: connects a client; yields it and the server side's transport.
        backend: the anyio backend the server and the test run on.
        pingable: whether the transport sends protocol pings.
        writes_in_place: whether ``try_send`` writes without waiting (else it declines).
        peer_close: what ``receive`` reports when the peer closes with a code:
            ``"code"``, that code and reason; ``"lost"``, 1006 (the server does not say).
        vanished_code: the code ``receive`` reports when the peer's socket is reset.
        write_buffer: for a transport that writes in place, the size (with the
            frames it holds to write together) and the high-water mark of its
            server-side socket's write buffer.
    """

    name: str
    accepted: Callable[..., AbstractAsyncContextManager[tuple[Any, Transport]]]
    backend: Literal["asyncio", "trio"]
    pingable: bool
    writes_in_place: bool
    peer_close: Literal["code", "lost"]
    vanished_code: int
    write_buffer: Callable[[Any], tuple[int, int]] | None = None

    def param(self) -> Any:
        """This kind as a pytest parameter."""
        return pytest.param(self, id=self.name)


#: Whether the installed ``websockets`` has every internal the adapter's in-place writes
#: need (17.4 and later; see roomcast.websockets._INTERNALS).
WEBSOCKETS_WRITES_IN_PLACE = Version(importlib.metadata.version("websockets")) >= Version("17.4")

TRANSPORT_KINDS: list[TransportKind] = [
    TransportKind(
        "websockets",
        websockets_accepted,
        "asyncio",
        pingable=True,
        writes_in_place=WEBSOCKETS_WRITES_IN_PLACE,
        peer_close="code",
        vanished_code=1006,
        write_buffer=(
            (lambda transport: _buffer_of(transport._connection.transport, transport._held_size))
            if WEBSOCKETS_WRITES_IN_PLACE
            else None
        ),
    ),
    # The same adapter where it cannot write in place: on every version, the fallback.
    TransportKind(
        "websockets-through-send",
        functools.partial(websockets_accepted, through_send=True),
        "asyncio",
        pingable=True,
        writes_in_place=False,
        peer_close="code",
        vanished_code=1006,
    ),
    TransportKind(
        "aiohttp",
        aiohttp_accepted,
        "asyncio",
        pingable=True,
        writes_in_place=True,
        peer_close="code",
        vanished_code=1006,
        write_buffer=lambda transport: _buffer_of(
            transport._request.transport, transport._held_size
        ),
    ),
    TransportKind(
        "starlette-uvicorn",
        starlette_accepted,
        "asyncio",
        pingable=False,
        writes_in_place=False,
        peer_close="code",
        # uvicorn reports a connection lost after the handshake as 1005 (no code).
        vanished_code=1005,
    ),
    TransportKind(
        "starlette-hypercorn-trio",
        starlette_accepted,
        "trio",
        pingable=False,
        writes_in_place=False,
        # hypercorn reports every closed stream as 1006, whatever the peer sent.
        peer_close="lost",
        vanished_code=1006,
    ),
]
