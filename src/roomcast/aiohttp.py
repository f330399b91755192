"""Serve a roomcast hub from an aiohttp application.

What it mounts: one request handler, [`handler(hub)`][roomcast.aiohttp.handler], that admits
each handshake through the hub and answers a refusal with a plain HTTP response before any
WebSocket is prepared. The hub's lifetime is tied to the application's by
[`cleanup_ctx(hub)`][roomcast.aiohttp.cleanup_ctx], which starts the hub on startup, closes
it in ``on_shutdown`` (before aiohttp waits for open handlers) and stops it on cleanup:

    app = web.Application()
    app.router.add_get("/ws", roomcast.aiohttp.handler(hub))
    app.cleanup_ctx.append(roomcast.aiohttp.cleanup_ctx(hub))

The browser client, ``roomcast.js``, is served by the route definition
[`client_script()`][roomcast.aiohttp.client_script] returns, at the path the
application chooses: ``app.add_routes([roomcast.aiohttp.client_script("/roomcast.js")])``.

aiohttp runs on asyncio only, so this adapter and its private half,
``roomcast._aiohttp_wire`` (the close-frame watch, the drain wait, socket
reset), use asyncio directly, as does ``roomcast._writes`` (frames built once per
publication, a connection's frames written together). Needs aiohttp 3.11 or later
(``BaseProtocol.writing_paused`` appeared in 3.11); checked with 3.11.18 and 3.14.5.
The aiohttp attributes outside its documented API that the adapter uses are listed in
`_INTERNALS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Final

import anyio

from roomcast import _client_script
from roomcast._adapters import Internal
from roomcast._writes import HeldFrames, text_frame
from roomcast.config import DEFAULT_FLUSH_DELAY
from roomcast.exceptions import ConnectionClosed
from roomcast.protocol import CLOSE_ABNORMAL, CLOSE_NO_STATUS, CloseCode
from roomcast.transport import Handshake, close_frame

try:
    from aiohttp import WebSocketError, WSMsgType, web
    from aiohttp.http_exceptions import HttpProcessingError

    from roomcast._aiohttp_wire import CloseFrameWatch, drained, negotiating, reset
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "roomcast.aiohttp needs the aiohttp package: pip install 'aiohttp>=3.11' "
        "(from a roomcast checkout: pip install -e '.[aiohttp]')"
    ) from exc

if TYPE_CHECKING:
    from roomcast.hub import Hub

__all__ = ["AiohttpTransport", "RedactRequestErrors", "cleanup_ctx", "client_script", "handler"]

logger = logging.getLogger("roomcast.aiohttp")

# The hub waits for one pong at a time; older unanswered pings are forgotten.
_MAX_PENDING_PINGS = 8
# RFC 6455 section 5.2: FIN + ping opcode (0x9), then the payload's 7-bit length; our
# payloads are 8 bytes. Section 5.1: a server never masks its frames.
_PING_HEADER: Final = b"\x89\x08"

_CHECKED = ("3.11.18", "3.14.5")
_REQUEST = "aiohttp.web_request.BaseRequest"
_HANDLER = "aiohttp.web_protocol.RequestHandler"
_PROTOCOL = "aiohttp.base_protocol.BaseProtocol"
_WRITER = "aiohttp.http_writer.StreamWriter"

#: Every attribute outside aiohttp's documented API that this adapter uses. Beyond these,
#: text frames are written to the asyncio transport directly (see ``roomcast._writes``).
_INTERNALS: Final = (
    Internal(_REQUEST, "protocol", "attribute", _CHECKED, "asked whether writing is paused"),
    Internal(
        _PROTOCOL,
        "writing_paused",
        "attribute",
        _CHECKED,
        "write in place only if False (3.11+)",
    ),
    Internal(_REQUEST, "writer", "attribute", _CHECKED, "the stream writer send() drains"),
    Internal(_WRITER, "drain", "callable", _CHECKED, "wait below the low-water mark"),
    Internal(_HANDLER, "data_received", "callable", _CHECKED, "the close-frame watch feeds it"),
    Internal(_HANDLER, "eof_received", "callable", _CHECKED, "the close-frame watch feeds it"),
)


class AiohttpTransport(HeldFrames):
    """A `TryPingTransport` over a prepared ``WebSocketResponse``.

    [`handler()`][roomcast.aiohttp.handler] builds the response as this class expects:
    ``autoping=False``, so that pongs reach [`receive()`][roomcast.aiohttp.AiohttpTransport.receive]
    (which answers pings itself), and ``compress=False``, so that
    [`try_send()`][roomcast.aiohttp.AiohttpTransport.try_send] can write without waiting.

    Frames [`try_send()`][roomcast.aiohttp.AiohttpTransport.try_send] takes are built
    by roomcast (once per publication, however many members) and held until the end of
    the event loop iteration, or ``flush_delay`` seconds, then written to the socket
    together; closing, pings and pongs go through aiohttp.

    Args:
        request: the request the response was prepared for.
        ws: the prepared response.
        flush_delay: seconds frames may be held to be written together (0: until
            the end of the current event loop iteration); the hub passes its own.

    Raises:
        ValueError: ``ws`` is not prepared, or ``flush_delay`` is negative, not
            finite or over a second.
    """

    __slots__ = ("_next_ping", "_pings", "_request", "_sent", "_watch", "_ws")

    def __init__(
        self,
        request: web.BaseRequest,
        ws: web.WebSocketResponse,
        *,
        flush_delay: float = DEFAULT_FLUSH_DELAY,
    ) -> None:
        if not ws.prepared:
            raise ValueError("prepare the WebSocketResponse before wrapping it")
        self._start_holding(flush_delay)
        self._request = request
        self._ws = ws
        self._pings: dict[bytes, Callable[[], object]] = {}
        self._next_ping = 0
        self._sent: tuple[int, str] | None = None
        # Installed by handler() before the handshake was answered, if it was.
        transport = request.transport
        watch = None if transport is None else transport.get_protocol()
        self._watch = watch if isinstance(watch, CloseFrameWatch) else None

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
                raise self._ended() from exc
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
                code = int(message.data) or CLOSE_NO_STATUS
                raise _closed(None, code, message.extra or "")
            elif kind is WSMsgType.ERROR:  # aiohttp has already sent its close frame
                error = message.data
                raise _closed(error if isinstance(error, BaseException) else None)
            else:  # CLOSING, CLOSED: another task closed the connection
                raise self._ended()

    def try_send(self, frame: str) -> bool:
        """Take ``frame`` if the write buffer is at or below its high-water mark.

        A frame taken is written with the connection's other frames of the same
        event loop iteration (or ``flush_delay``), in one write; frames held past
        the high-water mark are written at once. A frame of the publication
        this connection took last, behind frames it holds, is taken without
        the checks, which passed for the first of them; a connection that
        closed meanwhile drops it at the flush.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        if self._hold_again(frame):
            return True
        transport = self._open_transport()
        high = transport.get_write_buffer_limits()[1]
        if (
            self._ws.compress
            or self._request.protocol.writing_paused
            or transport.get_write_buffer_size() > high
        ):
            return False
        try:
            self._hold(frame, high)
        except UnicodeEncodeError as exc:  # a lone surrogate: as a failed write
            reset(transport)
            raise _closed(None) from exc
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
            if self._request.protocol.writing_paused:
                # Waits until the transport resumes writing (below its low-water mark).
                await drained(self._request)
        except (ConnectionError, RuntimeError) as exc:
            raise self._ended() from exc
        transport = self._open_transport()
        # One write, so one system call, for what is held (taken first) and every waiting frame.
        data = b"".join(map(text_frame, frames))
        held = self._take_held()
        transport.write(data if held is None else held + data)

    def _flush_held(self) -> None:
        """Write what is held in one write; drop it if the connection is no longer open."""
        data = self._take_held()
        if data is None:
            return
        transport = self._request.transport
        if self._ws.closed or transport is None or transport.is_closing():
            return  # closed or closing meanwhile: dropped, as a send in flight is
        try:
            transport.write(data)
        except Exception:
            # The connection's end, which its reader reports.
            logger.debug("writing held frames failed", exc_info=True)
            reset(transport)

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Start the closing handshake and wait for it to end; closing twice does nothing.

        The close frame goes out behind what the connection already holds;
        then frames the peer sends are read and dropped until its close frame,
        for at most the response's ``timeout``, and only then is the socket
        closed: closed with such frames unread, it would be reset, and the
        peer could lose the close frame. Once aiohttp's shutdown has begun it
        no longer reads for the response; a connection served by
        [`handler`][roomcast.aiohttp.handler] has its incoming bytes watched
        for the peer's close frame, so that the wait still ends when the peer
        answers. It returns once the socket is closed; cancelled before then
        (the hub cancels it at its close deadline), it aborts the socket, so a
        peer that has stopped reading does not keep it open with the close
        frame stuck in its write buffer.

        Raises:
            ValueError: ``code`` may not be sent in a close frame.
        """
        ws = self._ws
        if ws.closed:
            return
        code, reason = close_frame(code, reason)
        # The frames taken before the close go before its frame.
        self._flush_held()
        self._sent = (code, reason)
        watch = self._watch
        closed = False
        try:
            try:
                with anyio.CancelScope() as answered:
                    if watch is not None:
                        if watch.close_seen:
                            answered.cancel()
                        watch.on_close = answered.cancel
                    await ws.close(code=code, message=reason.encode())
            except Exception:  # the socket may already be gone; the goal was a closed connection
                logger.debug("error while closing a connection", exc_info=True)
            finally:
                if watch is not None:
                    watch.on_close = None
            await self._until_closed()
            closed = True
        finally:
            transport = self._request.transport
            if not closed and transport is not None:
                # Cancelled (the hub's close deadline): aiohttp's own close
                # would keep the socket while its write buffer is full.
                reset(transport)

    async def _until_closed(self) -> None:
        """Wait until the socket is closed; abort it if cancelled first.

        aiohttp ends the closing handshake with ``transport.close()``, which
        keeps the socket until its write buffer is flushed: for a peer that has
        stopped reading, for as long as the peer stalls. The hub cancels this
        wait at its close deadline, and the socket is then aborted; until then
        the connection still counts against its address's cap.
        """
        watch = self._watch
        transport = self._request.transport
        if watch is None or watch.lost or transport is None:
            return
        lost = anyio.Event()
        watch.on_lost = lost.set
        try:
            if not transport.is_closing():
                transport.close()
            await lost.wait()
        finally:
            watch.on_lost = None
            if not watch.lost:
                reset(transport)

    async def ping(self, on_pong: Callable[[], object]) -> None:
        """Send a protocol ping; ``on_pong`` runs when its pong arrives.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        self._open_transport()
        payload = self._new_ping(on_pong)
        try:
            await self._ws.ping(payload)
        except (ConnectionError, RuntimeError) as exc:
            self._pings.pop(payload, None)
            raise self._ended() from exc

    def try_ping(self, on_pong: Callable[[], object]) -> bool:
        """Write a protocol ping now if the write buffer is at or below its high-water mark.

        Written in one piece to the socket's transport, as ``try_send()``
        writes text frames, so it cannot split another frame; ``on_pong`` runs
        when ``receive()`` reads its pong. Once the closing handshake has
        begun, the transport counts as closed.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        transport = self._open_transport()
        if (
            self._request.protocol.writing_paused
            or transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]
        ):
            return False
        transport.write(_PING_HEADER + self._new_ping(on_pong))
        return True

    def _new_ping(self, on_pong: Callable[[], object]) -> bytes:
        """Remember ``on_pong`` under a new ping payload (8 bytes), forgetting the oldest past 8."""
        pings = self._pings
        if len(pings) >= _MAX_PENDING_PINGS:
            del pings[next(iter(pings))]
        self._next_ping += 1
        payload = self._next_ping.to_bytes(8, "big")
        pings[payload] = on_pong
        return payload

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
            raise self._ended()
        return transport

    def _ended(self) -> ConnectionClosed:
        # The side that closed first gave the reason; 1006 when neither did.
        if self._sent is not None:
            return _closed(None, *self._sent)
        code = self._ws.close_code
        return _closed(None, None if code is None else int(code))


def handler(hub: Hub) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Return an aiohttp request handler that runs each WebSocket connection in ``hub``.

    A handshake the hub refuses gets a plain HTTP response with the hub's
    status (403 for an ``Origin`` outside ``allowed_origins``, 401 for invalid
    credentials, 503 while the hub is not running) and is never accepted.
    Accepted connections select ``roomcast.v1`` when offered, take frames up to
    ``hub.max_message_size`` (bigger ones close with 1009), and run without
    permessage-deflate and without aiohttp's ``heartbeat``: the hub sends pings.

    It installs [RedactRequestErrors][roomcast.aiohttp.RedactRequestErrors] on
    the ``aiohttp.server`` logger (once per process), so that a malformed
    request's raw bytes, and any token among them, stay out of aiohttp's
    ERROR records.
    """
    _install_log_redaction()

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
            timeout=hub.close_timeout,  # for the peer's answer to a close frame
        )
        # Watching from before the handshake is answered: the peer's first frame
        # comes after, so the watch sees the stream from a frame boundary.
        CloseFrameWatch.install(request)
        await ws.prepare(negotiating(request, subprotocol))
        await hub.serve(AiohttpTransport(request, ws, flush_delay=hub.flush_delay), admission)
        return ws

    return serve_connection


def cleanup_ctx(hub: Hub) -> Callable[[web.Application], AsyncIterator[None]]:
    """Return a cleanup context that runs ``hub`` for as long as the application.

    Append it to the root application's ``cleanup_ctx``. On startup it starts
    the hub and adds a hook to ``app.on_shutdown``: there, before aiohttp waits
    for open handlers, every client gets its queued frames and then close
    1001. On cleanup it stops the hub and raises what stopped it, if anything did.
    Like [`handler()`][roomcast.aiohttp.handler], it installs
    [RedactRequestErrors][roomcast.aiohttp.RedactRequestErrors] on the
    ``aiohttp.server`` logger.

    Raises:
        RuntimeError: (on startup) ``app.on_shutdown`` is frozen, as a
            sub-application's is.
    """

    _install_log_redaction()

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


def client_script(path: str = _client_script.DEFAULT_PATH) -> web.RouteDef:
    """Return a route definition that serves the browser client, ``roomcast.js``, at ``path``.

    Add it with ``app.add_routes([...])``; pages then
    ``import { Roomcast } from "/roomcast.js"``. GET and HEAD are answered. The
    script is read from the package once, here; responses carry an ``ETag`` and
    ``Cache-Control: no-cache``, and a request whose ``If-None-Match`` names the
    ETag gets ``304``.

    Raises:
        ValueError: ``path`` is not an absolute URL path.
        FileNotFoundError: the package was installed without its static files.
    """
    script = _client_script.load()

    async def roomcast_js(request: web.Request) -> web.Response:
        status, headers, body = script.answer(request.headers.get("If-None-Match"))
        return web.Response(status=status, headers=headers, body=body if status == 200 else None)

    return web.get(_client_script.validate_path(path), roomcast_js)


class RedactRequestErrors(logging.Filter):
    """Keeps the raw request out of the records aiohttp's server logs for a malformed request.

    When aiohttp's parser refuses a request (a header value with a stray
    ``\\r`` or a control byte, a NUL in a cookie, an obs-folded header, a line
    too long), ``aiohttp.server`` logs ``Error handling request from <peer>``
    at ERROR with the exception, whose message quotes the offending bytes:
    an ``Authorization`` header or a ``roomcast.bearer.`` entry included. On
    such a record (any exception derived from aiohttp's
    ``HttpProcessingError``) this filter drops the exception, its traceback
    and its message, and appends the exception's class name to the message;
    the record itself, its level and the peer's address are kept. Other
    records pass unchanged.

    [`handler()`][roomcast.aiohttp.handler] and
    [`cleanup_ctx()`][roomcast.aiohttp.cleanup_ctx] install one on the
    ``aiohttp.server`` logger, once per process; give it to another logger
    (one you pass to ``AppRunner(..., logger=...)``) with ``addFilter``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` when it carries a request parsing error; keep it in any case."""
        exc_info = record.exc_info
        error = exc_info[1] if exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg = f"{record.msg} [{type(error).__name__}]"
            record.exc_info = None
            record.exc_text = None
            record.stack_info = None
        return True


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


def _closed(
    exc: BaseException | None, code: int | None = None, reason: str = ""
) -> ConnectionClosed:
    """The [`ConnectionClosed`][roomcast.ConnectionClosed] for how aiohttp reported the end.

    ``exc`` is the ``WebSocketError`` of an ``ERROR`` message (or any other
    error, or ``None``); ``code`` and ``reason`` those of a ``CLOSE`` message,
    or of the close frame either side sent. 1006 when neither gives a code.
    """
    if isinstance(exc, WebSocketError):
        return ConnectionClosed.from_code(int(exc.code))
    if code is not None:
        return ConnectionClosed.from_code(code, reason)
    return ConnectionClosed.from_code(CLOSE_ABNORMAL)


def _install_log_redaction(logger_name: str = "aiohttp.server") -> None:
    """Add a [RedactRequestErrors][roomcast.aiohttp.RedactRequestErrors] filter to a logger.

    Idempotent: a logger that already has one keeps just that one.
    """
    target = logging.getLogger(logger_name)
    if not any(isinstance(existing, RedactRequestErrors) for existing in target.filters):
        target.addFilter(RedactRequestErrors())
