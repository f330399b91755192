"""ASGI servers on an ephemeral port of 127.0.0.1, and the ``websockets`` client for each loop.

uvicorn runs on asyncio, hypercorn here on trio; the client is the ``websockets``
library's asyncio or trio implementation, which share one API.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import anyio
import hypercorn.config
import hypercorn.trio
import sniffio
import trio
import uvicorn
import websockets.asyncio.client
from starlette.types import ASGIApp
from websockets.exceptions import ConnectionClosed as WebSocketsClosed
from websockets.typing import Subprotocol

try:  # websockets 17 (Python 3.11+) has a trio client; on Python 3.10 a small one does
    import websockets.trio.client as trio_client
except ImportError:  # pragma: no cover - depends on the Python version
    from . import _trio_ws_client as trio_client  # type: ignore[no-redef]

__all__ = [
    "Client",
    "abort",
    "close",
    "close_code",
    "connect",
    "hypercorn_serving",
    "serving",
    "trio_client",
    "uvicorn_serving",
]


class Client(Protocol):
    """What the tests use of a ``websockets`` client connection, asyncio or trio."""

    @property
    def subprotocol(self) -> Subprotocol | None: ...
    @property
    def local_address(self) -> Any: ...
    async def recv(self) -> str | bytes: ...
    async def send(self, message: str | bytes) -> None: ...


def on_trio() -> bool:
    return sniffio.current_async_library() == "trio"


def connect(url: str, **kwargs: Any) -> AbstractAsyncContextManager[Client]:
    """A ``websockets`` client for the running event loop."""
    kwargs.setdefault("proxy", None)
    if on_trio():
        return trio_client.connect(url, **kwargs)
    return websockets.asyncio.client.connect(url, **kwargs)


async def close(client: Client, code: int, reason: str) -> None:
    """Close ``client`` with ``code`` and ``reason``, whichever loop it runs on."""
    if isinstance(client, websockets.asyncio.client.ClientConnection):
        await client.close(code, reason)
    else:
        assert isinstance(client, trio_client.ClientConnection)
        await client.aclose(code, reason)


async def abort(client: Client) -> None:
    """Drop the TCP connection without a closing handshake: reset it."""
    if isinstance(client, websockets.asyncio.client.ClientConnection):
        client.transport.abort()
    else:
        assert isinstance(client, trio_client.ClientConnection)
        assert isinstance(client.stream, trio.SocketStream)
        client.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await client.stream.aclose()


async def close_code(client: Client) -> int | None:
    """Read until the connection closes; return the close code the server sent."""
    try:
        while True:
            await client.recv()
    except WebSocketsClosed as exc:
        return None if exc.rcvd is None else int(exc.rcvd.code)


@asynccontextmanager
async def uvicorn_serving(app: ASGIApp, **options: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn (``options`` go to its ``Config``); yield the ``ws://`` base."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, **options)
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        while not server.started:
            await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield f"ws://127.0.0.1:{port}"
        finally:
            server.should_exit = True


@asynccontextmanager
async def hypercorn_serving(app: ASGIApp, **options: Any) -> AsyncIterator[str]:
    """Serve ``app`` with hypercorn on trio (``options`` set on its config); yield the base."""
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = 1.0
    config.accesslog = None
    for name, value in options.items():
        setattr(config, name, value)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        binds: list[str] = await tg.start(
            lambda task_status: hypercorn.trio.serve(
                app,  # type: ignore[arg-type]  # hypercorn's ASGI types are its own
                config,
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )
        )
        try:
            yield "ws" + binds[0].removeprefix("http")
        finally:
            stop.set()


def serving(app: ASGIApp, **options: Any) -> AbstractAsyncContextManager[str]:
    """Serve ``app`` on the running loop's server (hypercorn on trio, else uvicorn with its
    lifespan on); yield its ``ws://`` base URL."""
    if on_trio():
        return hypercorn_serving(app, **options)
    return uvicorn_serving(app, lifespan="on", **options)
