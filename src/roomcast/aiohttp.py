"""Serve a roomcast hub from an aiohttp application.

Mount the endpoint and tie the hub's lifetime to the application's::

    app = web.Application()
    app.router.add_get("/ws", roomcast.aiohttp.handler(hub))
    app.cleanup_ctx.append(roomcast.aiohttp.cleanup_ctx(hub))
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import anyio

from roomcast.exceptions import ConnectionClosed
from roomcast.transport import Handshake, close_frame

try:
    from aiohttp import WebSocketError, WSMsgType, hdrs, web
    from multidict import CIMultiDict
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "roomcast.aiohttp needs the 'aiohttp' extra: pip install 'roomcast[aiohttp]'"
    ) from exc

if TYPE_CHECKING:
    from roomcast.hub import Hub

__all__ = ["AiohttpTransport", "cleanup_ctx", "handler"]

logger = logging.getLogger("roomcast.aiohttp")

# The hub waits for one pong at a time; older unanswered pings are forgotten.
_MAX_PENDING_PINGS = 8
# RFC 6455 section 5.2: FIN + text opcode, then a 7-bit length, or 126 and a 16-bit
# one, or 127 and a 64-bit one. Section 5.1: a server never masks its frames.
_PACK_LENGTH_7 = struct.Struct("!BB").pack
_PACK_LENGTH_16 = struct.Struct("!BBH").pack
_PACK_LENGTH_64 = struct.Struct("!BBQ").pack


class AiohttpTransport:
    """A :class:`~roomcast.transport.PingableTransport` over a prepared ``WebSocketResponse``.

    :func:`handler` builds the response as this class expects: ``autoping=False``,
    so that pongs reach :meth:`receive` (which answers pings itself), and
    ``compress=False``, so that :meth:`try_send` can write without waiting.
    """

    __slots__ = ("_next_ping", "_pings", "_request", "_sent", "_ws")

    def __init__(self, request: web.BaseRequest, ws: web.WebSocketResponse) -> None:
        if not ws.prepared:
            raise ValueError("prepare the WebSocketResponse before wrapping it")
        self._request = request
        self._ws = ws
        self._pings: dict[bytes, Callable[[], object]] = {}
        self._next_ping = 0
        self._sent: tuple[int, str] | None = None

    @property
    def handshake(self) -> Handshake:
        """Facts about the opening handshake.

        Built on each access from the request aiohttp keeps anyway, so that an
        idle connection holds no copy of its headers.
        """
        return _handshake(self._request)

    async def receive(self) -> str | bytes:
        """Wait for the next message.

        Raises:
            ConnectionClosed: the connection is closed (1009 after an oversized frame).
        """
        ws = self._ws
        while True:
            try:
                message = await ws.receive()
            except RuntimeError as exc:  # aiohttp's answer to reading on after the end
                raise self._closed() from exc
            kind = message.type
            if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                data: str | bytes = message.data
                return data
            if kind is WSMsgType.PING:
                # On failure, the next receive reports how the connection ended.
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.pong(message.data)
            elif kind is WSMsgType.PONG:
                self._pong_received(bytes(message.data))
            elif kind is WSMsgType.CLOSE:  # 0: the peer's close frame had no code
                raise ConnectionClosed.from_code(int(message.data) or 1005, message.extra or "")
            elif kind is WSMsgType.ERROR:  # aiohttp has already sent its close frame
                error = message.data
                code = error.code if isinstance(error, WebSocketError) else 1006
                raise ConnectionClosed.from_code(int(code))
            else:  # CLOSING, CLOSED: another task closed the connection
                raise self._closed()

    def try_send(self, frame: str) -> bool:
        """Write ``frame`` now if the write buffer is at or below its high-water mark.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        transport = self._open_transport()
        if (
            self._ws.compress
            or self._request.protocol.writing_paused
            or transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]
        ):
            return False
        transport.write(_text_frame(frame))
        return True

    async def send(self, frames: list[str]) -> None:
        """Send ``frames`` in order, waiting while the write buffer is full.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        try:
            if self._ws.compress:
                for frame in frames:
                    await self._ws.send_str(frame)
                return
            # Waits until the transport resumes writing (below its low-water mark).
            await self._request.writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise self._closed() from exc
        # One write, so one system call, for every waiting frame.
        self._open_transport().writelines([_text_frame(frame) for frame in frames])

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake and wait for it to end; closing twice does nothing.

        Raises:
            ValueError: ``code`` may not be sent in a close frame.
        """
        ws = self._ws
        if ws.closed:
            return
        code, reason = close_frame(code, reason)
        self._sent = (code, reason)
        try:
            # 1001: this server is going away. aiohttp stops reading once its
            # shutdown begins, so the peer's close frame would never be seen:
            # the connection closes, after flushing, without waiting for it.
            with anyio.move_on_after(0 if code == 1001 else math.inf):
                await ws.close(code=code, message=reason.encode())
        except Exception:  # the socket may already be gone; the goal was a closed connection
            logger.debug("error while closing a connection", exc_info=True)

    async def ping(self, on_pong: Callable[[], object]) -> None:
        """Send a protocol ping; ``on_pong`` runs when its pong arrives.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        self._open_transport()
        pings = self._pings
        if len(pings) >= _MAX_PENDING_PINGS:
            del pings[next(iter(pings))]
        self._next_ping += 1
        payload = self._next_ping.to_bytes(8, "big")
        pings[payload] = on_pong
        try:
            await self._ws.ping(payload)
        except (ConnectionError, RuntimeError) as exc:
            pings.pop(payload, None)
            raise self._closed() from exc

    def _pong_received(self, payload: bytes) -> None:
        pings = self._pings
        if payload not in pings:
            return  # unsolicited, or answering a ping we forgot
        # RFC 6455 section 5.5.3: a peer may answer only the latest of several
        # pings, so a pong answers every ping sent before its own as well.
        while pings:
            sent = next(iter(pings))
            on_pong = pings.pop(sent)
            try:
                on_pong()
            except Exception:
                logger.exception("pong callback failed")
            if sent == payload:
                return

    def _open_transport(self) -> asyncio.Transport:
        transport = self._request.transport  # None once aiohttp has dropped the connection
        if self._ws.closed or transport is None or transport.is_closing():
            raise self._closed()
        return transport

    def _closed(self) -> ConnectionClosed:
        # The side that closed first gave the reason; 1006 when neither did.
        if self._sent is not None:
            return ConnectionClosed.from_code(*self._sent)
        code = self._ws.close_code
        return ConnectionClosed.from_code(1006 if code is None else int(code))


def handler(hub: Hub) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Return an aiohttp request handler that runs each WebSocket connection in ``hub``.

    A handshake the hub refuses gets a plain HTTP response with the hub's
    status (403 for an ``Origin`` outside ``allowed_origins``, 401 for invalid
    credentials, 503 while the hub is not running) and is never accepted.
    Accepted connections select ``roomcast.v1`` when offered, take frames up to
    ``hub.max_message_size`` (bigger ones close with 1009), and run without
    permessage-deflate and without aiohttp's ``heartbeat``: the hub sends pings.
    """

    async def serve_connection(request: web.Request) -> web.StreamResponse:
        admission = await hub.admit(_handshake(request))
        if not admission.accepted:
            return web.Response(status=admission.status, text=admission.reason)
        subprotocol = admission.subprotocol
        ws: web.WebSocketResponse = web.WebSocketResponse(
            protocols=() if subprotocol is None else (subprotocol,),
            # aiohttp refuses a message of max_msg_size bytes; the hub takes one.
            max_msg_size=hub.max_message_size + 1,
            compress=False,
            autoping=False,
            heartbeat=None,
        )
        await ws.prepare(_negotiating(request, subprotocol))
        await hub.serve(AiohttpTransport(request, ws), admission)
        return ws

    return serve_connection


def cleanup_ctx(hub: Hub) -> Callable[[web.Application], AsyncIterator[None]]:
    """Return a cleanup context that runs ``hub`` for as long as the application.

    Append it to the root application's ``cleanup_ctx``. On startup it starts
    the hub and adds a hook to ``app.on_shutdown``: there, before aiohttp waits
    for open handlers, every client gets its queued frames and then close
    1001. On cleanup it stops the hub and raises what stopped it, if anything did.

    Raises:
        RuntimeError: (on startup) ``app.on_shutdown`` is frozen, as a
            sub-application's is.
    """

    async def run_hub(app: web.Application) -> AsyncIterator[None]:
        if app.on_shutdown.frozen:
            raise RuntimeError("add roomcast.aiohttp.cleanup_ctx(hub) to the root application")

        async def close_hub(app: web.Application) -> None:
            await hub.aclose()

        # aiohttp may run startup and cleanup in different tasks, and the hub's
        # task group must be entered and left in one: it gets a task of its own.
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()
        stop = asyncio.Event()

        async def run() -> None:
            async with hub:
                started.set_result(None)
                await stop.wait()

        task = loop.create_task(run(), name="roomcast hub")
        try:
            await asyncio.wait((started, task), return_when=asyncio.FIRST_COMPLETED)
            if started.done():
                app.on_shutdown.append(close_hub)
                yield
        finally:
            stop.set()  # leaving ``async with hub`` closes it, if on_shutdown has not
            await task  # raises what stopped the hub, if anything did

    return run_hub


def _handshake(request: web.BaseRequest) -> Handshake:
    transport = request.transport
    peer = None if transport is None else transport.get_extra_info("peername")
    # request.remote is the peer's address unless a middleware that trusts a
    # proxy replaced it with the address the proxy reported.
    host = request.remote
    client = (host, int(peer[1])) if host and isinstance(peer, tuple) else None
    headers = [
        (name.decode("latin-1"), value.decode("latin-1")) for name, value in request.raw_headers
    ]
    return Handshake.from_request(request.path_qs, headers, client)


def _negotiating(request: web.Request, subprotocol: str | None) -> web.Request:
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


def _text_frame(frame: str) -> bytes:
    payload = frame.encode()
    length = len(payload)
    if length < 126:
        return _PACK_LENGTH_7(0x81, length) + payload
    if length < 65536:
        return _PACK_LENGTH_16(0x81, 126, length) + payload
    return _PACK_LENGTH_64(0x81, 127, length) + payload
