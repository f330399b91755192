"""Serve a roomcast hub from a Starlette or FastAPI application (Starlette 0.37 and later).

What it mounts: one WebSocket endpoint, [`endpoint(hub)`][roomcast.starlette.endpoint], that
admits each handshake through the hub before accepting it. The hub's lifetime is tied to the
application's by [`lifespan(hub)`][roomcast.starlette.lifespan], which enters the hub at startup
and leaves it at shutdown:

    app = Starlette(
        routes=[WebSocketRoute("/ws", roomcast.starlette.endpoint(hub))],
        lifespan=roomcast.starlette.lifespan(hub),
    )

    app = FastAPI(lifespan=roomcast.starlette.lifespan(hub))
    app.add_api_websocket_route("/ws", roomcast.starlette.endpoint(hub))

The browser client, ``roomcast.js``, is served by the route
[`client_script()`][roomcast.starlette.client_script] returns, at the path the
application chooses (``routes=[roomcast.starlette.client_script("/roomcast.js"), ...]``;
FastAPI: ``app.router.routes.append(...)``).

ASGI gives an application no say over the server's WebSocket settings, so configure the server too:
a frame limit no larger than ``hub.max_message_size`` (uvicorn: ``--ws-max-size 65536``; hypercorn:
``websocket_max_message_size``) and permessage-deflate off (uvicorn: ``--ws-per-message-deflate
false``). Whatever the server allows, [`StarletteTransport`][roomcast.starlette.StarletteTransport]
closes the connection with 1009 on a message over ``hub.max_message_size`` bytes.

Checked with Starlette 1.10.0, 1.7.0 (the newest on Python 3.10) and 0.37.2, uvicorn 0.54.0
and 0.30.0, and hypercorn 0.18.0. The attributes of Starlette's ``WebSocket`` and of uvicorn
that are outside their documented API, and that the adapter uses, are listed in `_INTERNALS`;
the eager send on asyncio lives in `roomcast._asyncio`.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.lowlevel

from roomcast import _client_script
from roomcast._adapters import Internal
from roomcast._asyncio import on_asyncio, resume
from roomcast.exceptions import ConnectionClosed
from roomcast.protocol import CLOSE_ABNORMAL, CLOSE_NO_STATUS, CloseCode
from roomcast.transport import DEFAULT_CLOSE_TIMEOUT, Handshake, close_frame
from roomcast.wire import MAX_MESSAGE_SIZE

try:
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route
    from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "roomcast.starlette needs the starlette package: pip install 'starlette>=0.37' "
        "(from a roomcast checkout: pip install -e '.[starlette]')"
    ) from exc

if TYPE_CHECKING:
    from starlette.types import Message

    from roomcast.hub import Hub

__all__ = ["StarletteTransport", "client_script", "endpoint", "lifespan"]

logger = logging.getLogger("roomcast.starlette")

# Starlette raises RuntimeError (WebSocketDisconnected among them) once a side
# has closed; servers raise OSError (uvicorn's ClientDisconnected) when the
# socket is gone.
_GONE = (WebSocketDisconnect, RuntimeError, OSError)
_CONNECTED = WebSocketState.CONNECTED

_WEBSOCKET = "starlette.websockets.WebSocket"
_STARLETTE = ("0.37.2", "1.7.0", "1.10.0")
_UVICORN = ("0.30.0", "0.54.0")

#: Every attribute outside Starlette's and uvicorn's documented API that this adapter uses.
_INTERNALS: Final = (
    Internal(
        _WEBSOCKET,
        "_send",
        "attribute",
        _STARLETTE,
        "the ASGI send: data frames skip WebSocket.send's checks (without it, they go through it)",
    ),
    Internal(
        _WEBSOCKET,
        "_receive",
        "attribute",
        _STARLETTE,
        "the ASGI receive: the closing handshake reads past the first websocket.disconnect",
    ),
    Internal(
        _WEBSOCKET,
        "application_state",
        "attribute",
        _STARLETTE,
        "whether a data frame may go to the ASGI send directly; set when the socket is lost",
    ),
    Internal(
        _WEBSOCKET,
        "client_state",
        "attribute",
        _STARLETTE,
        "whether the peer is gone, so that closing has nothing left to do",
    ),
    Internal(
        "uvicorn.lifespan.on.LifespanOn",
        "config",
        "attribute",
        _UVICORN,
        "the server's config, read at startup from the frame running uvicorn.lifespan.on "
        "(without it, no startup check)",
    ),
    Internal(
        "uvicorn.config.Config",
        "ws_protocol_class",
        "attribute",
        _UVICORN,
        "None when uvicorn has no WebSocket implementation (without it, no startup check)",
    ),
)


class StarletteTransport:
    """A [`Transport`][roomcast.transport.Transport] over an accepted Starlette ``WebSocket``.

    Sends can only be awaited, so [`try_send()`][roomcast.starlette.StarletteTransport.try_send]
    always declines. On asyncio the transport is an
    [`EagerTransport`][roomcast.transport.EagerTransport]: the hub runs each send in place with
    [`begin_send()`][roomcast.starlette.StarletteTransport.begin_send], which on a server such as
    uvicorn finishes without waiting unless the peer is slow, and only a send that has to wait
    continues in the client's bounded writer. Elsewhere (trio) every frame goes through the writer.

    Args:
        websocket: the connection, accepted by the caller.
        max_message_size: messages over this many bytes close the connection with 1009.
        close_timeout: seconds [`close`][roomcast.starlette.StarletteTransport.close] waits for
            the closing handshake to end.
    """

    __slots__ = ("_close_timeout", "_eager", "_max_size", "_send", "_websocket")

    def __init__(
        self,
        websocket: WebSocket,
        *,
        max_message_size: int = MAX_MESSAGE_SIZE,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    ) -> None:
        self._websocket = websocket
        self._max_size = max_message_size
        self._close_timeout = close_timeout
        self._eager = on_asyncio()
        # The ASGI send the WebSocket wraps. Data frames go to it directly while
        # the socket is open, with the checks WebSocket.send would make for them
        # done here; everything else (accept, close) goes through WebSocket.send.
        send = getattr(websocket, "_send", None)
        self._send: Callable[[Message], Awaitable[None]] | None = send if callable(send) else None

    @property
    def eager(self) -> bool:
        """Whether `begin_send()` may be used: only on asyncio.

        A send continued in another task must not depend on which task runs
        it, which holds for asyncio's futures but not for trio's scheduler.
        """
        return self._eager

    @property
    def handshake(self) -> Handshake:
        """Facts about the opening handshake.

        Built on each access from the ASGI scope the server keeps anyway, so
        that an idle connection holds no copy of its headers.
        """
        return _handshake(self._websocket)

    async def receive(self) -> str | bytes:
        """Wait for the next message.

        Raises:
            ConnectionClosed: the connection is closed: with the peer's code
                (1005 when it gave none, 1006 when the socket was lost), or
                1009 after a message over the size limit.
        """
        try:
            message = await self._websocket.receive()
        except _GONE as exc:
            raise _closed(None) from exc  # the socket is gone: no close code came
        if message["type"] == "websocket.disconnect":
            code = message.get("code") or CLOSE_NO_STATUS
            raise _closed(None, int(code), message.get("reason") or "")
        text: str | None = message.get("text")
        data: str | bytes = text if text is not None else bytes(message.get("bytes") or b"")
        limit = self._max_size
        if isinstance(data, str):
            # n characters take n to 4n bytes of UTF-8: encode only when that is not enough.
            too_big = len(data) > limit or (len(data) * 4 > limit and len(data.encode()) > limit)
        else:
            too_big = len(data) > limit
        if too_big:
            await self.close(CloseCode.MESSAGE_TOO_BIG, "message too big")
            raise _closed(None, CloseCode.MESSAGE_TOO_BIG, "message too big")
        return data

    def try_send(self, frame: str) -> bool:
        """Decline: an ASGI send can only be awaited."""
        return False

    def begin_send(self, frame: str) -> Coroutine[Any, Any, None] | None:
        """Run the send of ``frame`` until it finishes or first has to wait.

        Returns ``None`` when the frame was sent, or else the rest of the send,
        which any task on the same loop may await (or close, to abandon it).

        Raises:
            ConnectionClosed: the connection is closed.
        """
        websocket = self._websocket
        message: Message = {"type": "websocket.send", "text": frame}
        send = self._send
        if send is not None and websocket.application_state is _CONNECTED:
            sending: Coroutine[Any, Any, None] = send(message)  # type: ignore[assignment]
        else:
            sending = websocket.send(message)
        try:
            # The first step, in place: no call added to the fan-out loop for a
            # send that finishes at once (see roomcast._asyncio for the rest).
            suspended = sending.send(None)
        except StopIteration:
            return None
        except _GONE as exc:
            raise self._gone(exc) from exc
        return _finish_send(resume(sending, suspended), self)

    def _gone(self, exc: BaseException) -> ConnectionClosed:
        """The error for a send that found the socket gone."""
        if isinstance(exc, OSError):
            # What WebSocket.send does when the server reports the socket gone.
            self._websocket.application_state = WebSocketState.DISCONNECTED
        return _closed(exc)

    async def send(self, frames: list[str]) -> None:
        """Send ``frames`` in order, each awaited.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        websocket = self._websocket
        send = self._send
        for frame in frames:
            message: Message = {"type": "websocket.send", "text": frame}
            try:
                if send is not None and websocket.application_state is _CONNECTED:
                    await send(message)
                else:
                    await websocket.send(message)
            except _GONE as exc:
                raise self._gone(exc) from exc

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Send a close frame and wait for the connection to end; later calls do nothing.

        The close frame goes out once the server can write it (after what it
        already holds for a slow peer); then the connection ends when the
        peer answers it, frames it sent meanwhile being read and dropped, or
        after ``close_timeout`` seconds in all. A server that closed the
        socket with such frames unread would reset the connection, and the
        peer could lose the close frame, so shutdown must not begin before
        this returns.

        Raises:
            ValueError: ``code`` may not be sent in a close frame.
        """
        websocket = self._websocket
        if (
            websocket.application_state is not WebSocketState.CONNECTED
            or websocket.client_state is WebSocketState.DISCONNECTED
        ):
            return
        code, reason = close_frame(code, reason)
        try:
            with anyio.move_on_after(self._close_timeout):
                await websocket.close(code, reason)
                await _closing_handshake(websocket, code, reason)
        except Exception:  # the socket may already be gone; the goal was a closed connection
            logger.debug("error while closing a connection", exc_info=True)


def endpoint(hub: Hub) -> Callable[[WebSocket], Awaitable[None]]:
    """Return a WebSocket endpoint that runs each connection in ``hub``.

    It takes one ``websocket: WebSocket`` argument, so Starlette's
    ``WebSocketRoute`` and FastAPI's ``add_api_websocket_route`` and
    ``@app.websocket`` accept it alike. A handshake the hub refuses is answered
    with the hub's HTTP status when the server supports the ASGI
    ``websocket.http.response`` extension, and otherwise closed before
    accepting, which servers answer with 403.
    """

    async def roomcast_endpoint(websocket: WebSocket) -> None:
        transport = StarletteTransport(
            websocket, max_message_size=hub.max_message_size, close_timeout=hub.close_timeout
        )
        admission = await hub.admit(transport.handshake)
        try:
            if not admission.accepted:
                await websocket.receive()  # websocket.connect: ASGI answers it, never ahead
                if "websocket.http.response" in websocket.scope.get("extensions", {}):
                    refusal = PlainTextResponse(admission.reason, status_code=admission.status)
                    await websocket.send_denial_response(refusal)
                    # uvicorn's websockets-sansio counts a handshake answered with
                    # a response as complete only once the socket is closed, and
                    # logs an ERROR for an application that returns before: one
                    # pass of the event loop lets it close the socket it has
                    # just written the response to.
                    await anyio.lowlevel.checkpoint()
                else:
                    await websocket.close(admission.close_code, admission.reason)
                return
            await websocket.accept(subprotocol=admission.subprotocol)
        except _GONE:  # the client left during the handshake
            logger.debug("connection lost during the handshake", exc_info=True)
            return
        await hub.serve(transport, admission)

    return roomcast_endpoint


def lifespan(hub: Hub) -> Callable[[object], AbstractAsyncContextManager[None]]:
    """Return a lifespan that runs ``hub`` (``async with hub``) while the application runs.

    Pass it as ``Starlette(lifespan=...)`` or ``FastAPI(lifespan=...)``. On
    shutdown the hub flushes and closes its clients with 1001, but servers
    close open WebSockets before the lifespan ends (uvicorn with 1012); call
    ``await hub.aclose()`` before the server shuts down to say goodbye first,
    as the examples do.

    At startup it checks that the server can serve WebSockets at all: uvicorn
    installed without a WebSocket library (``pip install uvicorn`` alone
    brings none) or run with ``--ws none`` answers every handshake with 404.
    The lifespan then fails, and the server does not start, with a
    ``RuntimeError`` that says what to install.

    Raises:
        RuntimeError: (on startup) the server running the application cannot
            accept WebSocket connections.
    """
    return _Lifespan(hub)


def client_script(path: str = _client_script.DEFAULT_PATH) -> Route:
    """Return a route that serves the browser client, ``roomcast.js``, at ``path``.

    Put it in the application's routes; pages then
    ``import { Roomcast } from "/roomcast.js"``. The script is read from the
    package once, here; responses carry an ``ETag`` and ``Cache-Control: no-cache``,
    and a request whose ``If-None-Match`` names the ETag gets ``304``.

    Raises:
        ValueError: ``path`` is not an absolute URL path.
        FileNotFoundError: the package was installed without its static files.
    """
    script = _client_script.load()

    async def roomcast_js(request: Request) -> Response:
        status, headers, body = script.answer(request.headers.get("if-none-match"))
        return Response(body, status_code=status, headers=headers)

    return Route(_client_script.validate_path(path), roomcast_js, methods=["GET"])


def _handshake(websocket: WebSocket) -> Handshake:
    scope = websocket.scope
    # raw_path keeps percent-escapes, which Handshake.from_request decodes once.
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else urllib.parse.quote(scope["path"])
    query = scope.get("query_string", b"").decode("latin-1")
    target = f"{path}?{query}" if query else path
    headers = [
        (name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]
    ]
    peer = scope.get("client")
    client = (str(peer[0]), int(peer[1])) if peer else None
    handshake = Handshake.from_request(target, headers, client)
    # The server's own parse, which also covers HTTP/2 and HTTP/3 handshakes.
    offered = scope.get("subprotocols")
    if offered is not None:
        handshake = dataclasses.replace(handshake, subprotocols=tuple(offered))
    return handshake


def _closed(
    exc: BaseException | None, code: int | None = None, reason: str = ""
) -> ConnectionClosed:
    """The [`ConnectionClosed`][roomcast.ConnectionClosed] for how Starlette reported the end.

    ``exc`` is Starlette's ``WebSocketDisconnect`` (or an error of a socket
    already gone, or ``None``); ``code`` and ``reason`` those of a
    ``websocket.disconnect`` message. 1006 when neither gives a code.
    """
    if isinstance(exc, WebSocketDisconnect):
        return ConnectionClosed.from_code(exc.code, exc.reason)
    if code is not None:
        return ConnectionClosed.from_code(code, reason)
    return ConnectionClosed.from_code(CLOSE_ABNORMAL)


async def _closing_handshake(websocket: WebSocket, code: int, reason: str) -> None:
    """Wait, after sending close ``code``, until the server reports the connection's end.

    Servers differ in what ``websocket.disconnect`` means once the application
    has closed. hypercorn sends one when the closing handshake is over; uvicorn's
    legacy ``websockets`` implementation finishes the handshake within the
    ``websocket.close`` send. uvicorn's ``websockets-sansio`` and ``wsproto``
    implementations answer the close at once with a ``websocket.disconnect``
    that repeats its code and reason, read and drop the peer's frames
    themselves until its close frame, and send a second one when the socket
    is closed: that one is the end. (Starlette refuses a second receive after
    a disconnect, so this reads the ASGI channel itself.)
    """
    receive = websocket._receive
    echoed = False
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.receive":
            continue  # a frame the peer sent before it saw the close frame
        if kind != "websocket.disconnect":
            return  # not a server that follows ASGI: nothing to wait for
        if not echoed and message.get("code") == code and message.get("reason") == reason:
            echoed = True
            continue
        return


async def _finish_send(rest: Awaitable[None], transport: StarletteTransport) -> None:
    try:
        await rest
    except _GONE as exc:
        raise transport._gone(exc) from exc


class _Lifespan:
    """Opens the hub with the application and closes it on shutdown."""

    __slots__ = ("_hub",)

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def __call__(self, app: object) -> _Lifespan:
        return self

    async def __aenter__(self) -> None:
        problem = _server_websocket_problem()
        if problem is not None:
            raise RuntimeError(problem)
        await self._hub.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._hub.__aexit__(exc_type, exc, tb)


#: The module of uvicorn's lifespan runner, whose ``main()`` calls the application.
_UVICORN_LIFESPAN = "uvicorn.lifespan.on"
#: How many frames up the lifespan runner may be (middleware, Starlette, FastAPI).
_MAX_FRAMES = 100


def _server_websocket_problem() -> str | None:
    """Why the server running this lifespan cannot accept WebSockets, or ``None``.

    Only uvicorn can be asked: ASGI tells an application nothing about the
    server's WebSocket support until a handshake arrives, and uvicorn answers
    handshakes itself, with 404, when it has no WebSocket implementation
    (``Config.ws_protocol_class`` is ``None``: ``ws="auto"`` found neither
    ``websockets`` nor ``wsproto``, or ``ws="none"``). Its lifespan runner,
    which calls the application, holds the server's config; it is found by
    walking up the frames that await this lifespan.
    """
    if _UVICORN_LIFESPAN not in sys.modules:
        return None
    frame = sys._getframe(1)
    for _ in range(_MAX_FRAMES):
        if frame.f_globals.get("__name__") == _UVICORN_LIFESPAN:
            config = getattr(frame.f_locals.get("self"), "config", None)
            if config is None or not hasattr(config, "ws_protocol_class"):
                return None
            if config.ws_protocol_class is not None:
                return None
            return (
                "uvicorn is serving this application without WebSocket support, so it "
                "would answer every WebSocket handshake with 404. Install a WebSocket "
                "implementation for it: pip install 'uvicorn[standard]' (or 'websockets', "
                "or 'wsproto'), and do not run it with --ws none."
            )
        if frame.f_back is None:
            return None
        frame = frame.f_back
    return None
