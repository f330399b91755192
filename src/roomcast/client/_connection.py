"""The Python client's connection: reconnects, resubscribes, requests by `ref` (anyio)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

import anyio
from anyio.abc import TaskGroup
from websockets.exceptions import ConnectionClosed as WebSocketClosed
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from ..exceptions import (
    AuthenticationError,
    ConnectionClosed,
    LocalProtocolError,
    RequestTimeout,
    RoomcastError,
    ServerError,
)
from ..protocol import CLOSE_ABNORMAL, CloseCode, Reconnect
from ..wire import (
    MAX_MESSAGE_SIZE,
    MAX_ROOMS_PER_REQUEST,
    StreamPosition,
    dumps,
    validate_event_type,
    validate_room,
)
from ._backoff import Backoff
from ._events import (
    BadFrame,
    HistoryPage,
    Member,
    Received,
    Recovery,
    State,
    StateChange,
    parse_event,
    parse_gap,
    parse_history,
    parse_member,
    parse_presence_change,
    parse_reset,
)
from ._rules import check_count, check_token, reconnect_advice, server_error
from ._socket import WebSocket, open_websocket, require_a_websocket_client
from ._stream import EventBuffer
from ._subscription import Subscription

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_OPEN_TIMEOUT",
    "DEFAULT_REQUEST_TIMEOUT",
    "Connection",
    "StateListener",
    "Subscription",
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
#: The largest server frame the client reads, in bytes (a long history reply).
DEFAULT_MAX_SERVER_FRAME: Final = 32 * 2**20
#: Seconds of silence beyond two heartbeats after which the connection is lost.
LIVENESS_MARGIN: Final = 5.0
#: The heartbeat assumed until `connection.ack` names the server's, in milliseconds.
_ASSUMED_HEARTBEAT_MS: Final = 30_000
_PONG: Final = '{"action":"pong"}'
_PING: Final = '{"action":"ping"}'

#: An async callable that returns a token: called for every (re)connect and refresh.
TokenProvider = Callable[[], Awaitable[str]]
#: A state listener: called with each change, in the connection's task; must not block.
StateListener = Callable[[StateChange], None]


class _Pending:
    """A request waiting for its reply."""

    __slots__ = ("done", "error", "on_reply", "payload")

    def __init__(self, on_reply: Callable[[Any], Awaitable[None]] | None = None) -> None:
        self.done = anyio.Event()
        self.payload: Any = None
        self.error: BaseException | None = None
        self.on_reply = on_reply


@dataclass
class _Ending:
    """How one connection attempt ended, for the reconnect decision."""

    code: int = CLOSE_ABNORMAL
    reason: str = ""
    acked: bool = False
    advice: Reconnect | None = None  # set when the attempt itself decided
    error: RoomcastError | None = None


class Connection:
    """A roomcast client connection that reconnects on its own.

    Built by [`connect`][roomcast.client.connect]; use it as an async context
    manager. Entering it starts connecting in the background (requests wait
    for the connection, up to `request_timeout`); leaving it closes the
    connection with 1000.

    Iterating the connection yields what no subscription is iterated for:
    events sent to the user or to this connection (`room` is `None`), and,
    from the moment iteration starts, every event of every room. An event of a
    subscribed room goes to the subscription's stream too, unless the
    connection is being iterated and the subscription is not. Nothing is ever
    dropped: each stream holds up to `buffer_size` items, and when one is full
    the client stops reading from the server until the application takes an
    item (logged at WARNING).

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
        for name, value in (("request_timeout", request_timeout), ("open_timeout", open_timeout)):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number of seconds")
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive finite number of seconds")
        if type(buffer_size) is not int or buffer_size < 1:
            raise ValueError("buffer_size must be a positive integer")
        if type(max_frame_size) is not int or max_frame_size < 1:
            raise ValueError("max_frame_size must be a positive integer")
        self.url = url
        self.client_id: str | None = None
        self.user_id: str | None = None
        self.heartbeat = _ASSUMED_HEARTBEAT_MS / 1000
        self.buffer_size = buffer_size
        self.request_timeout = float(request_timeout)
        self._open_timeout = float(open_timeout)
        self._max_frame_size = max_frame_size
        self._token = token
        self._provider = token_provider
        self._backoff = backoff if backoff is not None else Backoff()
        items = headers.items() if isinstance(headers, Mapping) else headers
        self._headers = [(str(key), str(value)) for key, value in items]
        self._origin = origin
        self._state: State = "connecting"
        self._listeners: list[StateListener] = []
        self._changed: anyio.Event | None = None
        self._subs: dict[str, Subscription] = {}
        self._leaving: set[str] = set()
        self._pending: dict[int, _Pending] = {}
        self._next_ref = 0
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
        self._task_group.start_soon(self._run)
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
            result = await self._task_group.__aexit__(exc_type, exc, tb)
        return result

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
    def state(self) -> State:
        """`"connecting"`, `"connected"`, `"disconnected"` or `"closed"`."""
        return self._state

    @property
    def error(self) -> RoomcastError | None:
        """Why the connection closed for good, once `state` is `"closed"` (else `None`)."""
        return self._error

    @property
    def subscriptions(self) -> dict[str, Subscription]:
        """The rooms subscribed or being subscribed, by name (a copy)."""
        return dict(self._subs)

    def on_state_change(self, listener: StateListener) -> Callable[[], None]:
        """Call `listener` with every [`StateChange`][roomcast.client.StateChange].

        Listeners run in the connection's task and must not block; an exception
        from one is logged and ignored.

        Returns:
            A function that removes the listener.
        """
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    async def wait_state(self, *states: State) -> State:
        """Wait until the state is one of `states` (at once if it is), and return it.

        Raises:
            ValueError: no state is given.
        """
        if not states:
            raise ValueError("name at least one state")
        while self._state not in states:
            if self._state == "closed":
                return self._state  # terminal: nothing else will come
            await self._wait_change()
        return self._state

    async def _wait_change(self) -> None:
        if self._changed is None:
            raise RuntimeError("enter the connection first: async with connect(...)")
        await self._changed.wait()

    def _set_state(
        self,
        state: State,
        *,
        code: int | None = None,
        reason: str = "",
        delay: float | None = None,
        error: Exception | None = None,
    ) -> None:
        previous = self._state
        if previous == "closed" or previous == state:
            return
        self._state = state
        change = StateChange(state, previous, code, reason, delay, error)
        logger.debug("connection %s: %s -> %s (%s %s)", self.url, previous, state, code, reason)
        if self._changed is not None:
            self._changed.set()
            self._changed = anyio.Event()
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                logger.exception("a state listener of the roomcast client failed")

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
        self._fail_pending(error or ConnectionClosed.from_code(code, reason))
        self._set_state("closed", code=code, reason=reason, error=error)

    def _fail_pending(self, error: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for waiting in pending.values():
            waiting.error = error
            waiting.done.set()

    # ------------------------------------------------------------------- run loop

    async def _run(self) -> None:
        assert self._run_done is not None
        try:
            with anyio.CancelScope() as self._run_scope:
                await self._reconnect_forever()
        finally:
            self._run_done.set()

    async def _reconnect_forever(self) -> None:
        attempt = 0
        token = self._token
        while True:
            ending = await self._attempt(token)
            if self._closing:
                return
            token = self._token
            if ending.acked:
                attempt = 0
            advice = ending.advice or reconnect_advice(ending.code)
            if ending.error is not None:
                self._finish(ending.error, ending.code, ending.reason)
                return
            if advice == "never":
                error = ConnectionClosed.from_code(ending.code, ending.reason)
                self._finish(error, ending.code, ending.reason)
                return
            if advice == "with_new_token":
                fresh = await self._new_token(self._in_force)
                if fresh is None:
                    refusal = AuthenticationError(
                        f"the server refused the credentials ({ending.code}"
                        f"{' ' + ending.reason if ending.reason else ''}) and no new token "
                        "could be obtained",
                        close_code=ending.code,
                    )
                    self._finish(refusal, ending.code, ending.reason)
                    return
                token = fresh
            delay = self._backoff.delay(attempt)
            attempt += 1
            self._set_state("disconnected", code=ending.code, reason=ending.reason, delay=delay)
            await anyio.sleep(delay)

    async def _new_token(self, refused: str | None) -> str | None:
        if self._provider is None:
            return None
        try:
            token = await self._provider()
            check_token(token, "the token provider's token")
        except Exception as exc:
            logger.warning("the token provider failed: %s", type(exc).__name__)
            return None
        return None if token == refused else token

    async def _attempt(self, token: str | None) -> _Ending:
        """One connection, from opening the socket to its end."""
        ending = _Ending()
        self._set_state("connecting")
        self._lost = None
        if token is None and self._provider is not None:
            try:
                token = await self._provider()
                check_token(token, "the token provider's token")
            except Exception as exc:
                ending.error = AuthenticationError(f"the token provider failed: {exc!r}")
                ending.reason = "no token"
                return ending
        self._in_force = token
        try:
            async with open_websocket(
                self.url,
                headers=self._headers,
                origin=self._origin,
                open_timeout=self._open_timeout,
                max_size=DEFAULT_MAX_SERVER_FRAME,
            ) as ws:
                if token is not None:
                    await ws.send(dumps({"action": "auth", "token": token}))
                with anyio.fail_after(self._open_timeout):
                    await self._read_ack(ws)
                ending.acked = True
                self._ws = ws
                await self._resubscribe(ws)
                if self._closing:
                    return ending
                self._set_state("connected")
                await self._read_loop(ws)
                ending.reason = self._lost or "connection lost"
        except WebSocketClosed as exc:
            received = exc.rcvd
            if self._lost is not None:
                ending.code, ending.reason = CLOSE_ABNORMAL, self._lost
            elif received is None:
                ending.code, ending.reason = CLOSE_ABNORMAL, "no close frame"
            else:
                ending.code, ending.reason = received.code, received.reason
        except InvalidStatus as exc:
            status = exc.response.status_code
            ending.reason = f"HTTP {status}"
            # 401: the credentials; 403: refused for good (origin, path); others: retry.
            ending.advice = (
                "with_new_token" if status == 401 else "never" if status == 403 else "after_delay"
            )
        except InvalidURI as exc:
            ending.error = ConnectionClosed.from_code(CLOSE_ABNORMAL, "invalid URL")
            ending.reason = str(exc)
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            ending.reason = f"{type(exc).__name__}: {exc}"[:200]
        finally:
            self._ws = None
            error = ConnectionClosed.from_code(ending.code, ending.reason)
            self._fail_pending(error)
            for sub in [sub for sub in self._subs.values() if not sub._active]:
                # A subscribe in flight fails with its connection; the room is not kept.
                del self._subs[sub.room]
                sub._buffer.end(error)
            self._leaving.clear()
        return ending

    async def _read_ack(self, ws: WebSocket) -> None:
        while True:
            frame = _decode(await ws.recv())
            if frame is None or frame.get("type") != "connection.ack":
                continue  # a ping before the ack, or a frame this client does not know
            payload = frame.get("payload")
            if isinstance(payload, dict):
                client_id, user_id = payload.get("clientId"), payload.get("userId")
                heartbeat = payload.get("heartbeatMs")
                self.client_id = client_id if isinstance(client_id, str) else None
                self.user_id = user_id if isinstance(user_id, str) else None
                if type(heartbeat) is int and heartbeat > 0:
                    self.heartbeat = heartbeat / 1000
            return

    async def _read_loop(self, ws: WebSocket) -> None:
        """Read until the socket closes (raises) or falls silent (returns).

        Servers whose transport has protocol pings (the `websockets` and aiohttp
        adapters) never send `{"type":"ping"}`, and protocol pings never reach
        `recv()`: after a heartbeat interval without a frame the client sends
        its own `ping`, which the server answers with a `pong` frame. Nothing
        received for two heartbeats plus a margin means the connection is lost.
        """
        limit = 2 * self.heartbeat + LIVENESS_MARGIN
        while True:
            data: str | bytes | None = None
            with anyio.move_on_after(self.heartbeat):
                data = await ws.recv()
            if data is None:
                await ws.send(_PING)
                with anyio.move_on_after(limit - self.heartbeat):
                    data = await ws.recv()
            if data is None:
                self._lost = f"no frame from the server in {limit:g} s"
                logger.warning("roomcast client: %s; reconnecting", self._lost)
                return
            await self._dispatch(ws, data)

    # ------------------------------------------------------------------ receiving

    async def _dispatch(self, ws: WebSocket, data: str | bytes) -> None:
        frame = _decode(data)
        if frame is None:
            return
        kind = frame["type"]
        try:
            if kind == "reply":
                await self._on_reply(frame)
            elif kind == "ping":
                await ws.send(_PONG)
            elif kind in ("pong", "connection.ack"):
                pass
            elif kind == "error":
                payload = frame.get("payload")
                code = payload.get("code") if isinstance(payload, dict) else None
                logger.warning("roomcast client: the server sent an error frame: %s", code)
            elif kind == "token.expiring":
                self._start_refresh()
            elif kind == "gap":
                gap = parse_gap(frame)
                logger.warning("roomcast client: the server dropped %d events", gap.dropped)
                await self._deliver_to_rooms(gap.rooms, gap)
            elif kind == "room.reset":
                reset = parse_reset(frame)
                sub = self._subs.get(reset.room)
                if sub is not None:
                    sub.position = StreamPosition(reset.offset, reset.epoch)
                await self._deliver(reset.room, reset)
            elif kind in ("presence.join", "presence.leave"):
                change = parse_presence_change(frame)
                await self._deliver(change.room, change)
            else:
                event = parse_event(frame)
                if event.room is not None:
                    sub = self._subs.get(event.room)
                    if sub is not None:
                        sub._advance(event.offset, event.epoch)
                await self._deliver(event.room, event)
        except BadFrame as exc:
            logger.warning("roomcast client: a malformed %r frame was ignored: %s", kind, exc)

    async def _deliver(self, room: str | None, item: Received) -> None:
        if room is not None and room in self._leaving:
            return  # unsubscribed by the application
        sub = self._subs.get(room) if room is not None else None
        listening = self._stream.listening
        if sub is not None and (sub._buffer.listening or not listening):
            await sub._buffer.put(item)
            if listening:
                await self._stream.put(item)
        else:
            await self._stream.put(item)

    async def _deliver_to_rooms(self, rooms: Iterable[str], item: Received) -> None:
        listening = self._stream.listening
        taken = False
        for room in rooms:
            sub = self._subs.get(room)
            if sub is not None and (sub._buffer.listening or not listening):
                await sub._buffer.put(item)
                taken = True
        if listening or not taken:
            await self._stream.put(item)

    async def _on_reply(self, frame: dict[str, Any]) -> None:
        ref = frame.get("ref")
        pending = self._pending.pop(ref, None) if type(ref) is int else None
        if pending is None:
            logger.debug("roomcast client: a reply to no request in flight (ref %r)", ref)
            return
        if frame.get("ok") is True:
            pending.payload = frame.get("payload")
            if pending.on_reply is not None:
                await pending.on_reply(pending.payload)
        else:
            pending.error = server_error(frame.get("error"))
        pending.done.set()

    # ------------------------------------------------------------ token refresh

    def _start_refresh(self) -> None:
        if self._provider is None:
            logger.warning("roomcast client: the token expires and there is no token provider")
            return
        if self._refreshing or self._task_group is None:
            return
        self._refreshing = True
        self._task_group.start_soon(self._refresh)

    async def _refresh(self) -> None:
        assert self._provider is not None
        try:
            token = await self._provider()
            check_token(token, "the token provider's token")
            await self._request("refresh", {"token": token})
        except RoomcastError as exc:
            logger.warning("roomcast client: refreshing the token failed: %s", exc)
        except Exception as exc:
            logger.warning("roomcast client: the token provider failed: %s", type(exc).__name__)
        else:
            self._in_force = token  # what a later refusal refers to
        finally:
            self._refreshing = False

    # ---------------------------------------------------------------- requests

    def _encode(self, frame: dict[str, Any]) -> str:
        text = dumps(frame)
        size = len(text.encode("utf-8"))
        if size > self._max_frame_size:
            raise LocalProtocolError(
                f"the {frame['action']} frame is {size} bytes, over the limit of "
                f"{self._max_frame_size}"
            )
        return text

    async def _request(
        self,
        action: str,
        fields: dict[str, Any],
        *,
        on_reply: Callable[[Any], Awaitable[None]] | None = None,
    ) -> Any:
        """Send a request once connected, and return its reply's payload.

        Raises:
            LocalProtocolError: the frame cannot be sent (not JSON, too big).
            RequestTimeout: no connection, then no reply, within `request_timeout`.
            ConnectionClosed: the connection dropped with the request in flight,
                or is closed for good.
            RoomcastError: the server failed the request (see `server_error`).
        """
        self._next_ref += 1
        ref = self._next_ref
        text = self._encode({"action": action, "ref": ref, **fields})
        pending = _Pending(on_reply)
        try:
            with anyio.fail_after(self.request_timeout):
                ws = await self._wait_connected()
                self._pending[ref] = pending
                await _send(ws, text)
                await pending.done.wait()
        except TimeoutError as exc:
            raise RequestTimeout(f"{action}: no reply within {self.request_timeout:g} s") from exc
        finally:
            self._pending.pop(ref, None)
        if pending.error is not None:
            raise pending.error
        return pending.payload

    async def _wait_connected(self) -> WebSocket:
        while True:
            if self._state == "closed":
                raise self._error or ConnectionClosed.from_code(1000, "closed by the application")
            ws = self._ws
            if ws is not None and self._state == "connected":
                return ws
            await self._wait_change()

    async def _resubscribe(self, ws: WebSocket) -> None:
        rooms = [room for room, sub in self._subs.items() if sub._active]
        for start in range(0, len(rooms), MAX_ROOMS_PER_REQUEST):
            chunk = rooms[start : start + MAX_ROOMS_PER_REQUEST]
            since: dict[str, dict[str, Any]] = {}
            history: dict[str, int] = {}
            for room in chunk:
                sub = self._subs[room]
                if sub.position is not None:
                    since[room] = {"offset": sub.position.offset, "epoch": sub.position.epoch}
                elif sub.history is not None:
                    history[room] = sub.history
            fields: dict[str, Any] = {"rooms": chunk}
            if since:
                fields["since"] = since
            if history:
                fields["history"] = history
            self._next_ref += 1
            ref = self._next_ref
            text = self._encode({"action": "subscribe", "ref": ref, **fields})

            async def on_reply(payload: Any, chunk: list[str] = chunk, since: Any = since) -> None:
                await self._resubscribed(payload, chunk, since)

            self._pending[ref] = _Pending(on_reply)
            self._watch_resubscribe(ref, ws)
            await ws.send(text)

    def _watch_resubscribe(self, ref: int, ws: WebSocket) -> None:
        """A failed resubscribe must not leave rooms the app thinks it is in: reconnect."""
        pending = self._pending[ref]
        assert self._task_group is not None

        async def watch() -> None:
            await pending.done.wait()
            if pending.error is not None and not isinstance(pending.error, ConnectionClosed):
                self._lost = f"resubscribing failed: {pending.error}"
                logger.warning("roomcast client: %s; reconnecting", self._lost)
                with anyio.move_on_after(self._open_timeout):
                    await ws.close(CloseCode.NORMAL, "resubscribe failed")

        self._task_group.start_soon(watch)

    async def _resubscribed(self, payload: Any, rooms: list[str], since: Mapping[str, Any]) -> None:
        results = payload.get("rooms") if isinstance(payload, dict) else None
        if not isinstance(results, dict):
            results = {}
        for room in rooms:
            sub = self._subs.get(room)
            if sub is None or not sub._active:
                continue
            result = results.get(room)
            if not isinstance(result, dict) or result.get("ok") is not True:
                error = server_error(result.get("error") if isinstance(result, dict) else None)
                logger.warning("roomcast client: resubscribing %s was refused: %s", room, error)
                del self._subs[room]
                sub._buffer.end(error)
                continue
            sub._advance(result.get("offset"), result.get("epoch"))
            if room in since and sub.position is not None:
                recovered = result.get("recovered") is True
                await self._deliver(
                    room, Recovery(room, recovered, sub.position.offset, sub.position.epoch)
                )

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
        if history is not None:
            fields["history"] = {room: history}
        try:
            payload = await self._request("subscribe", fields, on_reply=on_reply)
        except BaseException as exc:
            if self._subs.get(room) is sub and not sub._active:
                del self._subs[room]
                sub._buffer.end(exc if isinstance(exc, Exception) else None)
            raise
        if not sub._active:
            rooms = payload.get("rooms") if isinstance(payload, dict) else None
            result = rooms.get(room) if isinstance(rooms, dict) else None
            error = server_error(result.get("error") if isinstance(result, dict) else None)
            if self._subs.get(room) is sub:
                del self._subs[room]
            sub._buffer.end(error)
            raise error
        return sub

    async def _unsubscribe(self, sub: Subscription) -> None:
        if self._subs.get(sub.room) is not sub:
            sub._buffer.end()
            return
        del self._subs[sub.room]
        was_active, sub._active = sub._active, False
        sub._buffer.end()
        if not was_active or self._state != "connected":
            return  # the server forgets the room with the connection
        self._leaving.add(sub.room)
        try:
            await self._request("unsubscribe", {"rooms": [sub.room]})
        except ConnectionClosed:
            pass
        finally:
            self._leaving.discard(sub.room)

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


def _decode(data: str | bytes) -> dict[str, Any] | None:
    if isinstance(data, bytes):
        logger.warning("roomcast client: a binary frame from the server was ignored")
        return None
    try:
        frame = json.loads(data)
    except ValueError:
        logger.warning("roomcast client: a frame that is not JSON was ignored")
        return None
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        logger.warning("roomcast client: a frame without a type was ignored")
        return None
    return frame


async def _send(ws: WebSocket, text: str) -> None:
    try:
        await ws.send(text)
    except WebSocketClosed as exc:
        received = exc.rcvd
        if received is None:
            raise ConnectionClosed.from_code(CLOSE_ABNORMAL, "no close frame") from exc
        raise ConnectionClosed.from_code(received.code, received.reason) from exc


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
