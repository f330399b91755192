"""The client's WebSocket: the `websockets` client of the event loop it runs in."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

from websockets.typing import Data, Origin, Subprotocol

from ..protocol import PROTOCOL

__all__ = ["WebSocket", "on_trio", "open_websocket", "require_a_websocket_client"]

#: Seconds the closing handshake may take before the socket is dropped.
CLOSE_TIMEOUT = 2.0


class WebSocket(Protocol):
    """What the client uses of a `websockets` connection (asyncio's and trio's alike)."""

    @property
    def send(self) -> Callable[[str], Awaitable[None]]: ...

    @property
    def recv(self) -> Callable[[], Awaitable[Data]]: ...

    @property
    def close(self) -> Callable[[int, str], Awaitable[None]]: ...


def on_trio() -> bool:
    """Whether the calling task runs under trio (trio is only looked at if imported)."""
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


#: The first `websockets` with a trio client, `websockets.trio` (it needs Python 3.11).
TRIO_CLIENT_SINCE = "17.0"


def require_a_websocket_client() -> None:
    """Check that `websockets` has a client for the calling task's event loop.

    Its asyncio client is in every version the `client` extra admits; its trio
    client only in 17.0 and later, which needs Python 3.11.

    Raises:
        ImportError: the task runs under trio and `websockets.trio` cannot be imported.
    """
    if not on_trio():
        return
    try:
        import websockets.trio.client  # noqa: F401
    except ImportError as exc:
        installed = getattr(sys.modules.get("websockets"), "__version__", "unknown")
        raise ImportError(
            f"roomcast.client on trio needs websockets {TRIO_CLIENT_SINCE} or later "
            f"(websockets.trio), which needs Python 3.11; websockets {installed} is installed "
            f"on Python {sys.version_info.major}.{sys.version_info.minor}. "
            f"Upgrade websockets, or run the client on asyncio"
        ) from exc


@asynccontextmanager
async def open_websocket(
    url: str,
    *,
    headers: Sequence[tuple[str, str]],
    origin: str | None,
    open_timeout: float,
    max_size: int | None,
) -> AsyncIterator[WebSocket]:
    """A WebSocket to `url` offering `roomcast.v1`, closed on the way out.

    Keepalive pings of the WebSocket layer are off: the client watches the
    server's application pings instead, as the protocol asks. Compression is
    off, as roomcast servers never negotiate it.

    Raises:
        OSError: the TCP connection failed.
        websockets.exceptions.InvalidHandshake: the server refused the handshake.
        TimeoutError: the handshake took longer than `open_timeout`.
    """
    options = {
        "subprotocols": [Subprotocol(PROTOCOL)],
        "compression": None,
        "additional_headers": list(headers),
        "origin": Origin(origin) if origin is not None else None,
        "open_timeout": open_timeout,
        "ping_interval": None,
        "close_timeout": CLOSE_TIMEOUT,
        "max_size": max_size,
    }
    if on_trio():
        from websockets.trio.client import connect as trio_connect

        async with trio_connect(url, **options) as trio_socket:  # type: ignore[arg-type]
            yield _Socket(trio_socket.send, trio_socket.recv, trio_socket.aclose)
    else:
        from websockets.asyncio.client import connect as asyncio_connect

        async with asyncio_connect(url, **options) as asyncio_socket:  # type: ignore[arg-type]
            yield _Socket(asyncio_socket.send, asyncio_socket.recv, asyncio_socket.close)


class _Socket:
    """Both clients behind one shape (trio's spells ``close`` ``aclose``)."""

    __slots__ = ("close", "recv", "send")

    def __init__(
        self,
        send: Callable[[str], Awaitable[None]],
        recv: Callable[[], Awaitable[Data]],
        close: Callable[[int, str], Awaitable[None]],
    ) -> None:
        self.send = send
        self.recv = recv
        self.close = close
