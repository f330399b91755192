"""The Python client's connection: its state, its streams and its requests (anyio).

[`Connection`][roomcast.client.Connection] is what the application holds; the
task that connects and reconnects is in `_session`, what each frame does in
`_router`, and requests by `ref` in `_requests`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final

import anyio
from anyio.abc import TaskGroup

from ..exceptions import ConnectionClosed, RoomcastError, ServerError
from ..protocol import CloseCode
from ..wire import MAX_MESSAGE_SIZE, StreamPosition, validate_event_type, validate_room
from ._backoff import Backoff
from ._events import (
    BadFrame,
    HistoryPage,
    Member,
    Received,
    parse_history,
    parse_member,
)
from ._requests import OnReply, Requests
from ._rules import check_count, check_seconds, check_size, check_token, server_error
from ._session import LIVENESS_MARGIN, run
from ._socket import WebSocket, require_a_websocket_client
from ._state import Observable
from ._stream import EventBuffer
from ._subscription import Subscription

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_OPEN_TIMEOUT",
    "DEFAULT_REQUEST_TIMEOUT",
    "Connection",
    "TokenProvider",
    "connect",
]

logger = logging.getLogger("roomcast.client")

#: Seconds a request waits for a connection and then for its reply.
DEFAULT_REQUEST_TIMEOUT: Final = 10.0
#: Seconds the WebSocket handshake and then `connection.ack` may each take.
DEFAULT_OPEN_TIMEOUT: Final = 10.0
#: Events each stream (a subscription, the connection) holds for the application.
DEFAULT_BUFFER_SIZE: Final = 1000
#: The heartbeat assumed until `connection.ack` names the server's, in milliseconds.
_ASSUMED_HEARTBEAT_MS: Final = 30_000

#: An async callable that returns a token: called for every (re)connect and refresh.
#: Raising [`AuthenticationError`][roomcast.exceptions.AuthenticationError] means
#: "there is no token to be had" (signed out): the connection closes for good.
TokenProvider = Callable[[], Awaitable[str]]


class Connection(Observable):
    """A roomcast client connection that reconnects on its own.

    Built by [`connect`][roomcast.client.connect]; use it as an async context
    manager. Entering it starts connecting in the background (requests wait
    for the connection, up to `request_timeout`); leaving it closes the
    connection with 1000.

    Iterating the connection yields what no subscription is iterated for:
    events sent to the user or to this connection (`room` is `None`), and,
    from the moment iteration starts, every event of every room. An event of a
    subscribed room goes to the subscription's stream too, unless the
    connection is being iterated and the subscription is not. Until the
    connection is iterated, what would go to its stream alone (room-less
    events, a `Gap` for no subscribed room) is discarded, counted in
    `unclaimed` and logged at WARNING: a stream nobody reads never holds the
    client back. Each stream holds up to `buffer_size` items; when one that
    is read is full, the client stops reading from the server until the
    application takes an item (logged at WARNING), and if the connection
    closes or falls silent meanwhile, it reconnects.

    Attributes:
        url: the server's WebSocket URL.
        client_id: the server's id for the current (or last) connection.
        user_id: the authenticated user, or `None` (anonymous, or not yet).
        heartbeat: the server's heartbeat interval in seconds, from `connection.ack`.
        buffer_size: the size of each stream's buffer.
        request_timeout: seconds a request may wait for a connection and its reply.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        backoff: Backoff | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        open_timeout: float = DEFAULT_OPEN_TIMEOUT,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        max_frame_size: int = MAX_MESSAGE_SIZE,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
        origin: str | None = None,
    ) -> None:
        if token is not None and token_provider is not None:
            raise ValueError("pass token or token_provider, not both")
        if token is not None:
            check_token(token, "token")
        if token_provider is not None and not callable(token_provider):
            raise TypeError("token_provider must be an async callable returning a token")
        check_seconds("request_timeout", request_timeout)
        check_seconds("open_timeout", open_timeout)
        check_size("buffer_size", buffer_size)
        check_size("max_frame_size", max_frame_size)
        super().__init__(url)
        self.client_id: str | None = None
        self.user_id: str | None = None
        self.heartbeat = _ASSUMED_HEARTBEAT_MS / 1000
        self.buffer_size = buffer_size
        self.request_timeout = float(request_timeout)
        self._open_timeout = float(open_timeout)
        self._token = token
        self._provider = token_provider
        self._backoff = backoff if backoff is not None else Backoff()
        items = headers.items() if isinstance(headers, Mapping) else headers
        self._headers = [(str(key), str(value)) for key, value in items]
        self._origin = origin
        self._subs: dict[str, Subscription] = {}
        self._leaving: set[str] = set()
        self._requests = Requests(max_frame_size)
        self._unclaimed = 0
        self._ws: WebSocket | None = None
        self._stream = EventBuffer("connection", buffer_size)
        self._error: RoomcastError | None = None
        self._task_group: TaskGroup | None = None
        self._run_scope: anyio.CancelScope | None = None
        self._run_done: anyio.Event | None = None
        self._closing = False
        self._refreshing = False
        self._lost: str | None = None
        #: The token the server holds for this connection: sent in `auth` or `refresh`.
        self._in_force: str | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Connection:
        if self._task_group is not None:
            raise RuntimeError("a Connection can be entered once")
        require_a_websocket_client()
        self._changed = anyio.Event()
        self._run_done = anyio.Event()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(run, self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None  # entered
        try:
            with anyio.CancelScope(shield=True):
                await self.aclose()
        finally:
            # The body's exception is not the task group's business: it
            # propagates as itself, not wrapped in an ExceptionGroup. The
            # background tasks are done or cancelled here; one that failed
            # still raises its error.
            self._task_group.cancel_scope.cancel()
            await self._task_group.__aexit__(None, None, None)
        return None

    async def aclose(self) -> None:
        """Close the connection with 1000 and stop reconnecting; the state becomes `closed`."""
        if self._closing or self._state == "closed":
            return
        self._closing = True
        ws = self._ws
        if ws is not None:
            with anyio.move_on_after(self._open_timeout):
                await ws.close(1000, "")
        if self._run_scope is not None:
            self._run_scope.cancel()
        if self._run_done is not None:
            await self._run_done.wait()
        self._finish(None, CloseCode.NORMAL, "closed by the application")

    # ---------------------------------------------------------------------- state

    @property
    def error(self) -> RoomcastError | None:
        """Why the connection closed for good, once `state` is `"closed"` (else `None`)."""
        return self._error

    @property
    def subscriptions(self) -> dict[str, Subscription]:
        """The rooms subscribed or being subscribed, by name (a copy)."""
        return dict(self._subs)

    @property
    def unclaimed(self) -> int:
        """How many items were discarded because nothing would read them.

        Room-less events (sent to the user or to this connection) and `Gap`s
        for no subscribed room arrive in the connection's own stream; until the
        application iterates the connection they are discarded, each one
        counted here and logged at WARNING.
        """
        return self._unclaimed

    def _finish(self, error: RoomcastError | None, code: int, reason: str) -> None:
        """Enter `closed`: end every stream, fail every waiting request."""
        if self._state == "closed":
            return
        self._error = error
        ok = error is None or (isinstance(error, ConnectionClosed) and error.code == 1000)
        for sub in list(self._subs.values()):
            sub._buffer.end(None if ok else error)
        self._subs.clear()
        self._stream.end(None if ok else error)
        self._requests.fail_all(error or ConnectionClosed.from_code(code, reason))
        self._set_state("closed", code=code, reason=reason, error=error)

    def _liveness_limit(self) -> float:
        """Seconds without a frame after which the connection counts as lost."""
        return 2 * self.heartbeat + LIVENESS_MARGIN

    # ---------------------------------------------------------------- requests

    async def _request(
        self, action: str, fields: dict[str, Any], *, on_reply: OnReply | None = None
    ) -> Any:
        """Send a request once connected, and return its reply's payload (see `Requests`)."""
        return await self._requests.request(
            action,
            fields,
            connected=self._wait_connected,
            within=self.request_timeout,
            on_reply=on_reply,
        )

    async def _wait_connected(self) -> WebSocket:
        while True:
            if self._state == "closed":
                raise self._error or ConnectionClosed.from_code(1000, "closed by the application")
            ws = self._ws
            if ws is not None and self._state == "connected":
                return ws
            await self._wait_change()

    # ------------------------------------------------------------------ the API

    def __aiter__(self) -> Connection:
        self._stream.listening = True
        return self

    async def __anext__(self) -> Received:
        return await self._stream.get()

    async def subscribe(self, room: str, *, history: int | None = None) -> Subscription:
        """Join `room`, and resubscribe it after every reconnect until left.

        Args:
            room: the room's name.
            history: for a room whose namespace keeps history: first receive its
                last `history` events (1 to 10 000), atomically with the join. On
                reconnects the client asks for what it missed instead.

        Returns:
            The subscription: iterate it for the room's events.

        Raises:
            LocalProtocolError: (a `ValueError`) `room` is not a valid room name.
            ValueError: `history` is out of range, or the room is subscribed already.
            PermissionDenied: the server refused the room.
            ServerError: the server could not subscribe it (`limit_exceeded`, ...).
            RequestTimeout: no connection, then no reply, within `request_timeout`.
            ConnectionClosed: the connection dropped before the reply, or is closed.
        """
        validate_room(room)
        if history is not None:
            check_count("history", history)
        if room in self._subs:
            raise ValueError(f"{room} is subscribed already")
        sub = Subscription(self, room, history)
        self._subs[room] = sub

        async def on_reply(payload: Any) -> None:
            rooms = payload.get("rooms") if isinstance(payload, dict) else None
            result = rooms.get(room) if isinstance(rooms, dict) else None
            if isinstance(result, dict) and result.get("ok") is True:
                sub._active = True
                sub._advance(result.get("offset"), result.get("epoch"))

        fields: dict[str, Any] = {"rooms": [room]}
        # The replay arrives before the reply, while the application cannot
        # read the subscription yet: its stream (and the connection's, which
        # takes the room's events when it is read and the subscription is
        # not) makes room for it until the reply.
        extra = history or 0
        streams = (sub._buffer, self._stream)
        if history is not None:
            fields["history"] = {room: history}
            for stream in streams:
                stream.reserve(extra)
        try:
            payload = await self._request("subscribe", fields, on_reply=on_reply)
        except BaseException as exc:
            if self._subs.get(room) is sub and not sub._active:
                del self._subs[room]
                sub._buffer.end(exc if isinstance(exc, Exception) else None)
            raise
        finally:
            for stream in streams:
                stream.release(extra)
        if not sub._active:
            rooms = payload.get("rooms") if isinstance(payload, dict) else None
            result = rooms.get(room) if isinstance(rooms, dict) else None
            error = server_error(result.get("error") if isinstance(result, dict) else None)
            if self._subs.get(room) is sub:
                del self._subs[room]
            sub._buffer.end(error)
            raise error
        return sub

    async def publish(
        self, room: str, type: str, payload: Any = None, *, ephemeral: bool = False
    ) -> str:
        """Publish an event to `room`, where the server lets clients publish.

        The publishing connection does not receive its own event. A publish in
        flight when the connection drops fails and is not retried.

        Args:
            room: the room.
            type: the event type; the protocol's own types are reserved.
            payload: any JSON value.
            ephemeral: ask the server not to keep the event in the room's history.

        Returns:
            The message id the event carries.

        Raises:
            LocalProtocolError: (a `ValueError`) the room, the type or the payload
                cannot be sent: an invalid name, a reserved type, not JSON, or a
                frame over the size limit.
            PermissionDenied: the server does not let this client publish there.
            RateLimited: over the connection's rate limit.
            ServerError: the server failed the publish.
            RequestTimeout: no connection, then no reply, within `request_timeout`.
            ConnectionClosed: the connection dropped before the reply, or is closed.
        """
        validate_room(room)
        validate_event_type(type)
        if not isinstance(ephemeral, bool):
            raise TypeError("ephemeral must be a bool")
        fields: dict[str, Any] = {"room": room, "type": type, "payload": payload}
        if ephemeral:
            fields["ephemeral"] = True
        reply = await self._request("publish", fields)
        message_id = reply.get("id") if isinstance(reply, dict) else None
        return message_id if isinstance(message_id, str) else ""

    async def presence(self, room: str) -> list[Member]:
        """Who is in `room` (a room whose namespace has presence turned on).

        Raises:
            LocalProtocolError: (a `ValueError`) `room` is not a valid room name.
            PermissionDenied: the server refused.
            ServerError: `not_found` when the room's namespace has no presence.
            RequestTimeout: no connection, then no reply, within `request_timeout`.
            ConnectionClosed: the connection dropped before the reply, or is closed.
        """
        validate_room(room)
        reply = await self._request("presence", {"room": room})
        members = reply.get("members") if isinstance(reply, dict) else None
        if not isinstance(members, list):
            raise ServerError("presence reply without members", code="internal")
        try:
            return [parse_member(entry) for entry in members]
        except BadFrame as exc:
            raise ServerError(f"malformed presence reply: {exc}", code="internal") from exc

    async def history(
        self, room: str, *, limit: int | None = None, since: StreamPosition | None = None
    ) -> HistoryPage:
        """The kept events of `room`: the last `limit`, or those after `since`.

        The client need not be subscribed; the server allows it where it would
        allow a subscribe. To page forward, ask again with the position of the
        last event received.

        Args:
            room: the room.
            limit: at most this many events (1 to 10 000); all kept ones if `None`.
            since: list the events after this position, oldest first; the page's
                `recovered` says whether the position could still be continued.

        Raises:
            LocalProtocolError: (a `ValueError`) `room` is not a valid room name.
            ValueError: `limit` is out of range.
            PermissionDenied: the server refused.
            ServerError: `not_found` when the room's namespace keeps no history.
            RequestTimeout: no connection, then no reply, within `request_timeout`.
            ConnectionClosed: the connection dropped before the reply, or is closed.
        """
        validate_room(room)
        fields: dict[str, Any] = {"room": room}
        if limit is not None:
            fields["limit"] = check_count("limit", limit)
        if since is not None:
            if not isinstance(since, StreamPosition):
                raise TypeError("since must be a StreamPosition")
            fields["since"] = {"offset": since.offset, "epoch": since.epoch}
        reply = await self._request("history", fields)
        try:
            return parse_history(reply)
        except BadFrame as exc:
            raise ServerError(f"malformed history reply: {exc}", code="internal") from exc


def connect(
    url: str,
    *,
    token: str | None = None,
    token_provider: TokenProvider | None = None,
    backoff: Backoff | None = None,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    open_timeout: float = DEFAULT_OPEN_TIMEOUT,
    buffer_size: int = DEFAULT_BUFFER_SIZE,
    max_frame_size: int = MAX_MESSAGE_SIZE,
    headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
    origin: str | None = None,
) -> Connection:
    """A client connection to the roomcast server at `url`; use it with `async with`.

    ```python
    async with roomcast.client.connect("ws://127.0.0.1:8000/ws", token=token) as conn:
        sub = await conn.subscribe("team:t1", history=50)
        async for event in sub:
            print(event)
    ```

    The client authenticates with its first message (never the URL), and
    reconnects on its own after a lost connection, with exponential backoff and
    full jitter, following the close code's advice
    ([`CloseCode.reconnect`][roomcast.CloseCode]); after a reconnect it
    resubscribes every room, with `since` where it has a position.

    Args:
        url: the server's WebSocket URL, `ws://` or `wss://`.
        token: a fixed token, sent in the first message.
        token_provider: an async callable returning a token, called for every
            connection, for every in-band refresh (on `token.expiring`) and
            after the server refused a token. Without `token` nor
            `token_provider` the client connects anonymously.
        backoff: the reconnect delays (default: 0.5 s doubling up to 20 s,
            full jitter).
        request_timeout: seconds a request waits for a connection and then its
            reply before it fails with
            [`RequestTimeout`][roomcast.exceptions.RequestTimeout].
        open_timeout: seconds the handshake, and then `connection.ack`, may take.
        buffer_size: how many received items each stream holds for the application.
        max_frame_size: the largest frame the client sends, in bytes (the
            server's limit; 64 KiB by default).
        headers: extra HTTP headers for the handshake.
        origin: the `Origin` header, for servers that check it.

    Raises:
        ValueError: a bad argument (both `token` and `token_provider`, a token
            out of the protocol's bounds, a timeout that is not positive).

    Entering the connection under trio raises `ImportError` where `websockets`
    has no trio client: before websockets 17.0, as on Python 3.10.
    """
    return Connection(
        url,
        token=token,
        token_provider=token_provider,
        backoff=backoff,
        request_timeout=request_timeout,
        open_timeout=open_timeout,
        buffer_size=buffer_size,
        max_frame_size=max_frame_size,
        headers=headers,
        origin=origin,
    )
