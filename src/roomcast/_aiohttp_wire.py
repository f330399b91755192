"""The aiohttp adapter's work below aiohttp's WebSocket API: close watch, drain, reset.

aiohttp runs on asyncio only, so this module (like ``roomcast.aiohttp``) uses
asyncio directly. Each piece bypasses aiohttp for a reason of its own:

- `drained` waits for aiohttp's write buffer to drain without sharing
  aiohttp's one drain future between waiters.
- `CloseFrameWatch` sits between the socket and aiohttp's protocol and notices
  the peer's close frame, which aiohttp stops reading once its shutdown begins.
- `negotiating` shows aiohttp only the subprotocol the hub chose, so that it
  logs no offered token.
- `reset` aborts a socket with a zero linger time, so a stalled peer does not
  keep it in the kernel.

The aiohttp attributes this relies on are listed in ``roomcast.aiohttp._INTERNALS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Final

from aiohttp import hdrs, web
from multidict import CIMultiDict

__all__ = ["CloseFrameWatch", "drained", "negotiating", "reset"]

_LINGER_RESET: Final = struct.pack("ii", 1, 0)


class CloseFrameWatch(asyncio.Protocol):
    """Passes a connection's bytes on to aiohttp, noticing the peer's close frame.

    From the moment aiohttp's shutdown begins (``Server.pre_shutdown``, which
    runs before ``on_shutdown``) it drops what its connections receive, so a
    WebSocket closed then never sees the peer's answer. The watch sits between
    the socket and aiohttp's protocol and follows the frame boundaries of the
    peer's stream (RFC 6455 section 5.2: a 2-byte header, a 16- or 64-bit
    extended length, a 4-byte masking key) to tell when the close frame
    (opcode 0x8) arrives. It reads headers only and copies nothing.
    """

    __slots__ = ("_partial", "_protocol", "_skip", "close_seen", "lost", "on_close", "on_lost")

    def __init__(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._skip = 0  # payload bytes of the current frame still to come
        self._partial = b""  # the start of a frame header split across reads
        #: Whether the peer's close frame has arrived.
        self.close_seen = False
        #: Called once when it arrives.
        self.on_close: Callable[[], object] | None = None
        #: Whether the socket is closed.
        self.lost = False
        #: Called once when it is.
        self.on_lost: Callable[[], object] | None = None

    @classmethod
    def install(cls, request: web.BaseRequest) -> None:
        """Put a watch between ``request``'s socket and aiohttp, where possible."""
        transport = request.transport
        if transport is None:
            return
        protocol = transport.get_protocol()
        if protocol is not None and not isinstance(protocol, asyncio.BufferedProtocol):
            transport.set_protocol(cls(protocol))

    def data_received(self, data: bytes) -> None:
        if not self.close_seen:
            self._scan(data)
        self._protocol.data_received(data)  # type: ignore[attr-defined]

    def _scan(self, data: bytes) -> None:
        if self._partial:
            data = self._partial + data
            self._partial = b""
        position, end = 0, len(data)
        while position < end:
            if self._skip:
                taken = min(self._skip, end - position)
                self._skip -= taken
                position += taken
                continue
            if end - position < 2:
                break
            second = data[position + 1]
            length = second & 0x7F
            extended = 2 if length == 126 else 8 if length == 127 else 0
            size = 2 + extended + (4 if second & 0x80 else 0)
            if end - position < size:
                break
            if extended:
                length = int.from_bytes(data[position + 2 : position + 2 + extended], "big")
            if data[position] & 0x0F == 0x8:
                self.close_seen = True
                if self.on_close is not None:
                    self.on_close()
                return
            position += size
            self._skip = length
        self._partial = data[position:end]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._protocol.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.on_lost is not None:
            self.on_lost()
        self._protocol.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self._protocol.eof_received()  # type: ignore[attr-defined,no-any-return]

    def pause_writing(self) -> None:
        self._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._protocol.resume_writing()


def reset(transport: asyncio.Transport) -> None:
    """Abort ``transport``, discarding what it has not sent yet.

    A socket closed with bytes still unsent lingers in the kernel (FIN-WAIT-1)
    for as long as its peer does not read; with a zero linger time, closing
    resets the connection and frees it at once.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


async def drained(request: web.BaseRequest) -> None:
    """Wait until ``request``'s transport resumes writing.

    aiohttp's drain makes every waiter await one shared future: cancelling one
    wait (the hub stops a slow consumer's writer) would cancel the closing
    handshake's wait too. Each wait here is shielded, and what the shared
    wait ends with is read, so that it is never logged as unretrieved.
    """
    drain = asyncio.ensure_future(request.writer.drain())
    drain.add_done_callback(_retrieve)
    await asyncio.shield(drain)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def negotiating(request: web.Request, subprotocol: str | None) -> web.Request:
    """The request to prepare the response with, so that aiohttp logs no offered token.

    aiohttp reads the first ``Sec-WebSocket-Protocol`` header and, when none of
    its entries is one the response selects, logs every entry at WARNING:
    ``roomcast.bearer.<token>`` included. The hub has already chosen, so aiohttp
    is shown only its choice.
    """
    offered = request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL)
    if offered is None or (
        subprotocol is not None and subprotocol in (entry.strip() for entry in offered.split(","))
    ):
        return request
    headers = CIMultiDict(
        (name, value)
        for name, value in request.headers.items()
        if name.lower() != "sec-websocket-protocol"
    )
    if subprotocol is not None:
        headers[hdrs.SEC_WEBSOCKET_PROTOCOL] = subprotocol
    return request.clone(headers=headers)
