"""Serve a roomcast hub with the ``websockets`` library's asyncio implementation.

Checked with ``websockets`` 15.0, 15.0.1, 16.0, 16.1.1 and 17.4. The fast path, frames
written in place, relies on connection attributes (listed in `_INTERNALS`);
three of them are recent, ``send_in_progress`` and ``pending_pings`` (16.0) and
``set_connection_exc`` (17.4). Where one is missing every frame goes through ``Connection.send()``
instead, and every heartbeat ping through ``Connection.ping()``: correct, one
write per frame. On the fast path a publication's frame is
built once for every member and a connection's frames leave together, in one write
per event loop iteration (or per ``flush_delay``; the Performance page's "How fan-out
works" describes it).

What it mounts: a connection handler, [`handler(hub)`][roomcast.websockets.handler], whose
``process_request`` hook asks the hub to admit each handshake before it is accepted.
[`serve()`][roomcast.websockets.serve] is the convenience that starts a
``websockets`` server with that handler and roomcast's defaults:

    async with Hub() as hub, await roomcast.websockets.serve(hub, "127.0.0.1", 8765) as server:
        await server.serve_forever()

The hub's lifetime is tied to the server's by nesting the two contexts: enter
the hub first and the server second, so that the hub closes every connection
(flushed, then 1001) before the server stops. ``websockets`` has no lifespan
of its own to hook into.

To configure the server yourself, pass the handler's ``process_request`` so
that a refused handshake gets its HTTP status (403 for an ``Origin`` not
allowed, 401 for bad credentials, 503 while the hub is not running) before the
connection is accepted:

    from websockets.asyncio.server import serve

    hub = Hub()
    hub_handler = roomcast.websockets.handler(hub)
    async with hub, serve(
        hub_handler,
        "127.0.0.1",
        8765,
        process_request=hub_handler.process_request,
        subprotocols=[roomcast.wire.PROTOCOL],
        select_subprotocol=roomcast.websockets.select_subprotocol,
        max_size=hub.max_message_size,
        compression=None,
        ping_interval=None,
        logger=roomcast.websockets.RedactingLogger(),
    ) as server:
        await server.serve_forever()

Without it the handshake is accepted and a refused connection is closed with
the matching close code instead.

The browser client, ``roomcast.js``, is served on the same port by the
``process_request`` hook [`client_script()`][roomcast.websockets.client_script]
returns: ``serve(hub, host, port, process_request=roomcast.websockets.client_script())``.

The fast path writes frames the way ``websockets.broadcast()`` does, through
attributes of the connection that are not part of the library's documented
API; `_INTERNALS` lists them with the versions they were checked against, and
those the adapter can do without with the version that brought them.
"""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal
from weakref import WeakKeyDictionary

from roomcast import _client_script
from roomcast._adapters import Internal
from roomcast._asyncio import when_resolved
from roomcast._writes import HeldFrames, text_frame
from roomcast.auth import SUBPROTOCOL_BEARER_PREFIX
from roomcast.config import DEFAULT_FLUSH_DELAY
from roomcast.exceptions import ConnectionClosed
from roomcast.protocol import CLOSE_ABNORMAL, CloseCode
from roomcast.transport import MAX_CLOSE_REASON_BYTES, Handshake, close_frame
from roomcast.wire import PROTOCOL

try:
    from websockets.asyncio.connection import Connection
    from websockets.asyncio.server import Server, ServerConnection
    from websockets.asyncio.server import serve as _serve
    from websockets.exceptions import ConnectionClosed as _WebSocketsClosed
    from websockets.frames import DATA_OPCODES, Frame
    from websockets.http11 import Request, Response
    from websockets.protocol import CLOSED, OPEN
    from websockets.typing import Subprotocol
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "roomcast.websockets needs the websockets package: pip install 'websockets>=15.0' "
        "(from a roomcast checkout: pip install -e '.[websockets]')"
    ) from exc

if TYPE_CHECKING:
    from roomcast.hub import Admission, Hub

    _LoggerAdapter = logging.LoggerAdapter[logging.Logger]
else:  # not subscriptable at runtime before Python 3.11
    _LoggerAdapter = logging.LoggerAdapter

__all__ = [
    "Handler",
    "RedactingLogger",
    "WebSocketsTransport",
    "client_script",
    "handler",
    "select_subprotocol",
    "serve",
]

logger = logging.getLogger("roomcast.websockets")


_CHECKED: Final = ("15.0", "15.0.1", "16.0", "16.1.1", "17.4")


def _on_connection(
    name: str, kind: Literal["callable", "attribute"], why: str, since: str | None = None
) -> Internal:
    return Internal("websockets.asyncio.connection.Connection", name, kind, _CHECKED, why, since)


#: Every attribute of a ``websockets`` connection outside the library's
#: documented API that this adapter uses. All of them are what
#: ``websockets.broadcast()`` itself uses to write without waiting. Those with
#: a ``since`` are optional: without one, frames go through ``Connection.send()``.
_INTERNALS: Final = (
    _on_connection("protocol", "attribute", "the sans-I/O state; frames written in place"),
    _on_connection("transport", "attribute", "frames written to it; its buffer; abort on close"),
    _on_connection(
        "send_in_progress", "attribute", "a fragmented send: wait (else: send())", since="16.0"
    ),
    _on_connection("paused", "attribute", "flow control: wait while paused"),
    _on_connection("send_data", "callable", "flush the frames written in place"),
    _on_connection(
        "set_connection_exc", "callable", "why a write failed (else: send())", since="17.4"
    ),
    _on_connection("close_timeout", "attribute", "the hub's close_timeout for its closes"),
    _on_connection("loop", "attribute", "the future a ping written in place resolves"),
    _on_connection(
        "pending_pings", "attribute", "a ping written in place (else: ping())", since="16.0"
    ),
    Internal(
        "websockets.protocol.Protocol",
        "extensions",
        "attribute",
        _CHECKED,
        "frames built by roomcast only where none is negotiated",
    ),
    Internal(
        "websockets.protocol.Protocol",
        "writes",
        "attribute",
        _CHECKED,
        "frames built by roomcast only while nothing of the library's waits",
    ),
)

#: Whether this ``websockets`` records why an in-place write failed (17.4 and
#: later); without it, no frame is written in place. ``send_in_progress`` (16.0),
#: an instance attribute, is looked for on each connection at its handshake.
_RECORDS_WRITE_ERRORS: Final = callable(getattr(Connection, "set_connection_exc", None))

_ProcessRequest = Callable[
    [ServerConnection, Request], "Awaitable[Response | None] | Response | None"
]


class WebSocketsTransport(HeldFrames):
    """A [`TryPingTransport`][roomcast.transport.TryPingTransport] over a ``ServerConnection``.

    Frames taken by [`try_send`][roomcast.websockets.WebSocketsTransport.try_send]
    are built into WebSocket frames by roomcast (once per publication, however many
    members) and held until the end of the event loop iteration, or ``flush_delay``
    seconds, then written to the socket together. Where the connection's state does
    not allow it (permessage-deflate negotiated, a fragmented message being sent,
    anything of the library's own waiting to be written), frames go through the
    library's own send instead; closing, pings and pongs always do.

    Args:
        connection: the connection, past its opening handshake.
        close_timeout: seconds [`close`][roomcast.websockets.WebSocketsTransport.close]
            keeps the connection for the peer to read the close frame and
            answer it, in place of the connection's own ``close_timeout``;
            ``None`` keeps that one.
        flush_delay: seconds frames may be held to be written together (0: until
            the end of the current event loop iteration); the hub passes its own.

    Raises:
        ValueError: the connection has not completed its opening handshake, or
            ``flush_delay`` is negative, not finite or over a second.
    """

    __slots__ = ("_close_timeout", "_connection", "_in_place", "_raw")

    def __init__(
        self,
        connection: ServerConnection,
        *,
        close_timeout: float | None = None,
        flush_delay: float = DEFAULT_FLUSH_DELAY,
    ) -> None:
        if connection.request is None:  # handlers run only after the opening handshake
            raise ValueError("the connection has not completed its opening handshake")
        self._start_holding(flush_delay)
        self._connection = connection
        self._close_timeout = close_timeout
        # Frames are written in place only where every internal that takes is there.
        self._in_place = _RECORDS_WRITE_ERRORS and hasattr(connection, "send_in_progress")
        # And framed by roomcast only without extensions: permessage-deflate (RFC 7692)
        # compresses each frame inside the protocol, with its own context.
        self._raw = self._in_place and not connection.protocol.extensions

    @property
    def handshake(self) -> Handshake:
        """Facts about the opening handshake.

        Built on each access from the request the connection keeps anyway, so
        that an idle connection holds no copy of its headers.
        """
        return _handshake(self._connection)

    async def receive(self) -> str | bytes:
        """Wait for the next message.

        Raises:
            ConnectionClosed: the connection is closed (1009 after an oversized frame).
        """
        try:
            return await self._connection.recv()
        except _WebSocketsClosed as exc:
            raise _closed(exc) from exc

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
        # _can_write_now(), inlined: this runs once per member of every fan-out.
        connection = self._connection
        protocol = connection.protocol
        state = protocol.state
        if state is not OPEN:
            if state is CLOSED:
                raise _closed(protocol.close_exc)
            return False  # closing: send() waits for the end and reports it
        if not self._in_place:
            return False  # an older websockets: Connection.send() does it all
        transport = connection.transport
        high = transport.get_write_buffer_limits()[1]
        if (
            connection.send_in_progress is not None
            or connection.paused
            or transport.is_closing()
            or transport.get_write_buffer_size() > high
        ):
            return False
        if self._raw and not protocol.writes:
            try:
                self._hold(frame, high)
            except UnicodeEncodeError as exc:  # a lone surrogate: as a failed write
                connection.set_connection_exc(exc)
                transport.abort()
                raise _closed(None) from exc
        else:
            self._write([frame])
        return True

    async def send(self, frames: list[str]) -> None:
        """Send ``frames`` in order, waiting while the write buffer is full.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        connection = self._connection
        for index, frame in enumerate(frames):
            if self._can_write_now():
                # The rest go out in one write, so in one system call.
                self._write(frames[index:])
                return
            # What is held was taken before these frames: it goes first.
            self._flush_held()
            try:
                await connection.send(frame)
            except _WebSocketsClosed as exc:
                raise _closed(exc) from exc

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Start the closing handshake and wait for it to end; closing twice does nothing.

        The close frame goes out behind what the connection already holds,
        and the connection is kept until the peer answers it or the close
        timeout passes: ``websockets`` then drops the connection, and a peer
        still stalled loses the close frame. Cancelled before then (the hub
        bounds every closing handshake by its shutdown deadline), it aborts
        the connection at once.

        Raises:
            ValueError: ``code`` may not be sent in a close frame.
        """
        connection = self._connection
        if connection.protocol.state is OPEN:
            code, reason = close_frame(code, reason)
            # The frames taken before the close go before its frame.
            self._flush_held()
            if self._close_timeout is not None:
                # Read when the close frame is queued: the deadline for the peer's answer.
                connection.close_timeout = self._close_timeout
        else:
            reason = reason.encode()[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore")
        try:
            await connection.close(code, reason)
        except Exception:  # the socket may already be gone; the goal was a closed connection
            logger.debug("error while closing a connection", exc_info=True)
        finally:
            if connection.protocol.state is not CLOSED:
                # Cancelled before the peer answered (the hub's shutdown
                # deadline): drop the connection now, or websockets would keep
                # it for close_timeout once the handler returns.
                connection.transport.abort()

    async def ping(self, on_pong: Callable[[], object]) -> None:
        """Send a protocol ping; ``on_pong`` runs when its pong arrives.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        try:
            waiter = await self._connection.ping()
        except _WebSocketsClosed as exc:
            raise _closed(exc) from exc
        when_resolved(waiter, on_pong, logger)

    def try_ping(self, on_pong: Callable[[], object]) -> bool:
        """Write a protocol ping now if the write buffer is below its high-water mark.

        The ping is registered with the connection as ``Connection.ping()``
        registers its own, so ``websockets`` matches its pong (and a pong
        answering a later ping answers it too) and ``on_pong`` runs then.
        Declines, as ``try_send()`` does, while a fragmented message is being
        sent, while the connection is closing, and with a ``websockets`` older
        than 17.4.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        if not self._can_write_now():
            return False
        connection = self._connection
        pending = getattr(connection, "pending_pings", None)
        if pending is None:
            return False  # renamed or gone: ping() does it all
        while True:  # four random bytes not awaiting a pong, as Connection.ping() chooses
            data = random.getrandbits(32).to_bytes(4, "big")
            if data not in pending:
                break
        loop = connection.loop
        pong = loop.create_future()
        pending[data] = (pong, loop.time())
        when_resolved(pong, on_pong, logger)
        try:
            connection.protocol.send_ping(data)
            connection.send_data()
        except Exception as exc:
            # As a failed in-place write: the connection's end, which also
            # cancels the pong's future (on_pong never runs).
            connection.set_connection_exc(exc)
            connection.transport.abort()
            raise _closed(None) from exc
        return True

    def _can_write_now(self) -> bool:
        connection = self._connection
        state = connection.protocol.state
        if state is not OPEN:
            if state is CLOSED:
                raise _closed(connection.protocol.close_exc)
            return False  # closing: send() waits for the end and reports it
        if not self._in_place:
            return False  # an older websockets: Connection.send() does it all
        # Same gate as Connection.send(), which drains while the transport is
        # paused (past the high-water mark until it falls to the low one).
        transport = connection.transport
        return (
            connection.send_in_progress is None
            and not connection.paused
            and not transport.is_closing()
            and transport.get_write_buffer_size() <= transport.get_write_buffer_limits()[1]
        )

    def _write(self, frames: list[str]) -> None:
        """Write what is held and ``frames`` now, in one write where roomcast frames them."""
        connection = self._connection
        protocol = connection.protocol
        try:
            if self._raw and not protocol.writes:
                held = self._take_held()
                data = b"".join(map(text_frame, frames))
                connection.transport.write(data if held is None else held + data)
            else:
                # The library frames them (an extension, or bytes of its own waiting).
                self._flush_held()
                for frame in frames:
                    protocol.send_text(frame.encode())
                connection.send_data()
        except Exception as exc:
            # As broadcast() does, a failed write is the connection's end.
            connection.set_connection_exc(exc)
            connection.transport.abort()
            raise _closed(None) from exc

    def _flush_held(self) -> None:
        """Write what is held in one write; drop it if the connection is no longer open."""
        data = self._take_held()
        if data is None:
            return
        connection = self._connection
        transport = connection.transport
        if connection.protocol.state is not OPEN or transport.is_closing():
            return  # closed or closing meanwhile: dropped, as a send in flight is
        try:
            transport.write(data)
        except Exception as exc:
            # As a failed in-place write: the connection's end, which its reader reports.
            connection.set_connection_exc(exc)
            transport.abort()


class Handler:
    """A ``websockets`` connection handler that runs each connection in a hub.

    Pass [`process_request()`][roomcast.websockets.Handler.process_request] to the server too: it
    asks the hub to admit each handshake before it is accepted, so a refusal is an HTTP response.

    Args:
        hub: the hub to run connections in.
        process_request: your own hook, called first; when it returns a
            response (a page, a 404), the hub is not asked.
    """

    __slots__ = ("_admissions", "_hub", "_then")

    def __init__(self, hub: Hub, process_request: _ProcessRequest | None = None) -> None:
        self._hub = hub
        self._then = process_request
        # Keyed weakly: a handshake that fails after admission must not leak its entry.
        self._admissions: WeakKeyDictionary[ServerConnection, Admission] = WeakKeyDictionary()

    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """Refuse the handshake with the hub's HTTP status, or remember its admission."""
        if self._then is not None:
            response = self._then(connection, request)
            if isinstance(response, Awaitable):
                response = await response
            if response is not None:
                return response
        # websockets sets connection.request before it calls process_request.
        admission = await self._hub.admit(_handshake(connection))
        if not admission.accepted:
            return connection.respond(admission.status, admission.reason + "\n")
        self._admissions[connection] = admission
        return None

    def __call__(self, connection: ServerConnection) -> Coroutine[Any, Any, None]:
        """Run one accepted connection in the hub to its end.

        A plain function returning `Hub.serve()`'s coroutine: no extra
        coroutine frame stays alive for each idle connection.
        """
        admission = self._admissions.pop(connection, None)
        hub = self._hub
        transport = WebSocketsTransport(
            connection, close_timeout=hub.close_timeout, flush_delay=hub.flush_delay
        )
        return hub.serve(transport, admission)


def handler(hub: Hub, process_request: _ProcessRequest | None = None) -> Handler:
    """Return a ``websockets`` connection handler that runs each connection in ``hub``.

    Give the server its ``process_request`` as well (see [`Handler`][roomcast.websockets.Handler]).
    """
    return Handler(hub, process_request)


def select_subprotocol(
    connection: ServerConnection, subprotocols: Sequence[Subprotocol]
) -> Subprotocol | None:
    """Choose ``roomcast.v1`` when offered, else continue without a subprotocol.

    A client that offers nothing (or only other values, such as a token carried
    in ``Sec-WebSocket-Protocol``) is accepted rather than refused with HTTP 400,
    as most WebSocket servers do: the hub, not the handshake, decides what such
    a client may do, and ``connection.ack`` names the protocol. Browsers close
    the connection themselves when none of their offers is echoed.
    """
    return Subprotocol(PROTOCOL) if PROTOCOL in subprotocols else None


async def serve(
    hub: Hub,
    host: str | None = "127.0.0.1",
    port: int | None = 8765,
    *,
    process_request: _ProcessRequest | None = None,
    **kwargs: Any,
) -> Server:
    """Start a ``websockets`` server that runs every connection in ``hub``.

    Defaults: subprotocol ``roomcast.v1`` (see
        [`select_subprotocol()`][roomcast.websockets.select_subprotocol]),
    ``max_size=hub.max_message_size`` (bigger frames close with 1009),
    ``compression=None`` (permessage-deflate off), ``ping_interval=None``
    (the hub runs heartbeats) and ``logger=RedactingLogger()`` (no token in
    the library's DEBUG lines). ``process_request`` and any other keyword
    arguments go to `websockets.asyncio.server.serve()` and may override
    these defaults. Close the returned server with ``async with`` or
    ``server.close(); await server.wait_closed()``.

    Raises:
        OSError: the address cannot be bound.
    """
    kwargs.setdefault("subprotocols", [Subprotocol(PROTOCOL)])
    kwargs.setdefault("select_subprotocol", select_subprotocol)
    kwargs.setdefault("max_size", hub.max_message_size)
    kwargs.setdefault("compression", None)
    kwargs.setdefault("ping_interval", None)
    kwargs.setdefault("logger", RedactingLogger())
    hub_handler = handler(hub, process_request)
    server: Server = await _serve(
        hub_handler, host, port, process_request=hub_handler.process_request, **kwargs
    )
    return server


def client_script(
    path: str = _client_script.DEFAULT_PATH, process_request: _ProcessRequest | None = None
) -> _ProcessRequest:
    """Return a ``process_request`` hook serving the browser client, ``roomcast.js``, at ``path``.

    Pass it as [`serve()`][roomcast.websockets.serve]'s ``process_request`` (or
    [`handler()`][roomcast.websockets.handler]'s); pages then
    ``import { Roomcast } from "/roomcast.js"``. A request for another path goes
    to ``process_request``, your own hook, when given, and otherwise on to the
    hub. The script is read from the package once, here; responses carry an
    ``ETag`` and ``Cache-Control: no-cache``, and a request whose
    ``If-None-Match`` names the ETag gets ``304``.

    Raises:
        ValueError: ``path`` is not an absolute URL path.
        FileNotFoundError: the package was installed without its static files.
    """
    script = _client_script.load()
    path = _client_script.validate_path(path)

    def serve_roomcast_js(
        connection: ServerConnection, request: Request
    ) -> Awaitable[Response | None] | Response | None:
        if request.path.partition("?")[0] != path:
            return None if process_request is None else process_request(connection, request)
        status, headers, body = script.answer(request.headers.get("If-None-Match"))
        response = connection.respond(status, "")
        del response.headers["Content-Type"]
        del response.headers["Content-Length"]
        for name, value in headers.items():
            response.headers[name] = value
        if status == 200:
            response.headers["Content-Length"] = str(len(body))
            response.body = body
        return response

    return serve_roomcast_js


#: Request headers that carry credentials; ``Sec-WebSocket-Protocol`` only in its
#: ``roomcast.bearer.`` entries.
_CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
_REDACTED = "[redacted]"
#: What ``websockets`` logs, with the exception, for a handshake its parser refused.
_HANDSHAKE_FAILED = "opening handshake failed"


class RedactingLogger(_LoggerAdapter):
    """The ``websockets`` server's logger, without credentials or message bodies.

    At DEBUG the ``websockets`` library logs the request line, every header and
    every frame of a connection. Through this adapter the query string, the
    values of ``Authorization``, ``Cookie`` and ``Proxy-Authorization``, the
    ``roomcast.bearer.`` entries of ``Sec-WebSocket-Protocol`` and the payload
    of data frames are written as ``[redacted]``, and a DEBUG record's
    exception (which may quote a header) is reduced to its class name. Records
    above DEBUG pass unchanged, but for ``opening handshake failed``, an ERROR
    whose exception quotes a malformed header line before ``websockets`` 17.0:
    its exception is reduced to its class name too.
    [`serve`][roomcast.websockets.serve] uses it by
    default; give it to a server you configure yourself with
    ``serve(..., logger=RedactingLogger())``.

    Args:
        logger: the logger to write to (default: ``websockets.server``, as the
            library's own default).
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        super().__init__(logger or logging.getLogger("websockets.server"), {})

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        """Log, redacting what a DEBUG record of the library could reveal."""
        if (level <= logging.DEBUG or msg == _HANDSHAKE_FAILED) and self.isEnabledFor(level):
            args = tuple(_redacted(msg, args))
            exc_info = kwargs.pop("exc_info", None)
            if exc_info:
                error = exc_info if isinstance(exc_info, BaseException) else None
                if isinstance(exc_info, tuple):
                    error = exc_info[1]
                elif exc_info is True:
                    error = sys.exc_info()[1]
                if error is not None:
                    msg = f"{msg} [{type(error).__name__}]"
        super().log(level, msg, *args, **kwargs)


def _handshake(connection: ServerConnection) -> Handshake:
    request = connection.request
    if request is None:  # checked by WebSocketsTransport; kept for the type checker
        raise ValueError("the connection has not completed its opening handshake")
    return Handshake.from_request(request.path, request.headers.raw_items(), _client(connection))


def _closed(
    exc: BaseException | None, code: int | None = None, reason: str = ""
) -> ConnectionClosed:
    """The [`ConnectionClosed`][roomcast.ConnectionClosed] for how ``websockets`` reported the end.

    ``exc`` is the library's ``ConnectionClosed`` (or any other error, or
    ``None``); ``code`` and ``reason`` a close the caller read elsewhere.
    The side that closed first gave the reason: the peer's code when it
    started, ours (1009 for an oversized frame) when we did, 1006 when
    neither close frame made it.
    """
    if isinstance(exc, _WebSocketsClosed):
        if exc.rcvd is not None and (exc.sent is None or exc.rcvd_then_sent):
            return ConnectionClosed.from_code(int(exc.rcvd.code), exc.rcvd.reason)
        if exc.sent is not None:
            return ConnectionClosed.from_code(int(exc.sent.code), exc.sent.reason)
    if code is not None:
        return ConnectionClosed.from_code(code, reason)
    return ConnectionClosed.from_code(CLOSE_ABNORMAL)


def _client(connection: ServerConnection) -> tuple[str, int] | None:
    address = connection.remote_address
    return (str(address[0]), int(address[1])) if isinstance(address, tuple) else None


def _redacted(msg: object, args: tuple[object, ...]) -> list[object]:
    if msg in ("< %s: %s", "> %s: %s") and len(args) == 2:  # a header
        name, value = str(args[0]).lower(), str(args[1])
        if name in _CREDENTIAL_HEADERS:
            return [args[0], _REDACTED]
        if name == "sec-websocket-protocol":
            entries = (entry.strip() for entry in value.split(","))
            return [
                args[0],
                ", ".join(
                    f"{SUBPROTOCOL_BEARER_PREFIX}{_REDACTED}"
                    if entry.startswith(SUBPROTOCOL_BEARER_PREFIX)
                    else entry
                    for entry in entries
                ),
            ]
        return list(args)
    if msg == "< %s %s %s" and len(args) == 3:  # the request line
        path, question, _ = str(args[1]).partition("?")
        return [args[0], path + (f"?{_REDACTED}" if question else ""), args[2]]
    if msg == "< GET %s HTTP/1.1" and len(args) == 1:  # the request line before 17.0
        path, question, _ = str(args[0]).partition("?")
        return [path + (f"?{_REDACTED}" if question else "")]
    return [
        f"{arg.opcode.name} {_REDACTED} [{len(arg.data)} bytes]"
        if isinstance(arg, Frame) and arg.opcode in DATA_OPCODES
        else arg
        for arg in args
    ]
