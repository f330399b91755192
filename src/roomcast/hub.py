"""Hub: the facade of one application's runtime — its settings, lifecycle and server API.

The hub builds its parts and runs them: `roomcast.admission` decides who may connect,
`roomcast.connection` serves each connection, `roomcast.rooms` holds membership, backend
channels and the fan-out, and `roomcast.schedule` is the background loop of heartbeats
and token expiry, which runs in the hub's task group.
"""

from __future__ import annotations

import secrets
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

import anyio
from anyio.abc import TaskGroup

from ._names import _cached_room_problem, _cached_type_problem
from .admission import Admission as Admission
from .admission import Gatekeeper, HubState, check_running
from .auth import (
    AnonymousAuthenticator,
    Authenticator,
    Authorizer,
    AuthorizerFunction,
    TokenSources,
    as_authorizer,
)
from .backends.base import Backend, BackendStatus, HistoryResult
from .backends.memory import MemoryBackend
from .clock import Clock, SystemClock
from .config import DEFAULT_AUTH_TIMEOUT as DEFAULT_AUTH_TIMEOUT
from .config import DEFAULT_BAD_REQUEST_LIMIT as DEFAULT_BAD_REQUEST_LIMIT
from .config import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_QUEUE,
    DEFAULT_POSITION_CHECK,
    check_positive_int,
)
from .config import DEFAULT_DRAIN_TIMEOUT as DEFAULT_DRAIN_TIMEOUT
from .config import DEFAULT_FLUSH_DELAY as DEFAULT_FLUSH_DELAY
from .config import DEFAULT_MAX_ROOMS_PER_CONNECTION as DEFAULT_MAX_ROOMS_PER_CONNECTION
from .config import DEFAULT_TOKEN_EXPIRY_WARNING as DEFAULT_TOKEN_EXPIRY_WARNING
from .connection import Connections
from .heartbeat import HeartbeatPolicy
from .limits import ConnectionLimits
from .options import RateLimit, RoomOptions, SlowConsumerPolicy
from .protocol import CloseCode
from .rooms import NOBODY, Rooms
from .schedule import Schedule
from .settings import configure
from .transport import Handshake, Transport, close_frame
from .wire import StreamPosition, dumps, validate_event_type, validate_room

__all__ = ["Admission", "Hub", "HubStatistics"]

#: Seconds that shutdown gives closing handshakes beyond ``drain_timeout``.
_SHUTDOWN_CLOSE_GRACE: Final = 1.0

#: ``type``, which `Hub.publish()`'s argument of that name hides.
_type_of: Final = type


def _check_kinds(**given: tuple[object, type, str]) -> None:
    """Refuse an object argument that is not of its kind; None stands for the default.

    Raises:
        TypeError: naming the argument, what it must be and what it is.
    """
    for name, (value, kind, what) in given.items():
        if value is not None and not isinstance(value, kind):
            raise TypeError(f"{name} must be {what}, not {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class HubStatistics:
    """A snapshot of a hub's counters (see [`Hub.stats()`][roomcast.hub.Hub.stats]).

    Attributes:
        clients: connections open now.
        rooms: rooms with members on this node now.
        members: members per room now.
        connections_total: connections accepted since start.
        messages_in: frames received from clients.
        messages_out: frames handed to clients' transports or queues.
        published: publications delivered to this node.
        dropped: frames discarded (``drop_oldest`` overflow, closing clients).
        rate_limited: client frames refused by the rate limit.
        bad_requests: client frames refused as malformed.
        auth_failures: credentials that failed verification (handshake,
            ``auth`` frame or ``refresh``).
        origin_refusals: handshakes refused for their ``Origin``.
        limit_refusals: connections refused by a connection or failure limit,
            and ``auth`` frames and ``refresh`` requests left unverified because
            their address had spent its failure budget.
        token_expirations: connections closed with 4002 because their token expired.
        slow_consumer_disconnects: clients closed with 4009.
        heartbeat_timeouts: clients closed for not answering heartbeats.
        backend: the backend's broker link now (see
            [`Backend.status()`][roomcast.backends.base.Backend.status]).
        gaps: history-room messages this node missed (filled from history, or reset).
        resets: gaps history could not fill: the room's members got ``room.reset``.
    """

    clients: int
    rooms: int
    members: Mapping[str, int]
    connections_total: int
    messages_in: int
    messages_out: int
    published: int
    dropped: int
    rate_limited: int
    bad_requests: int
    auth_failures: int
    origin_refusals: int
    limit_refusals: int
    token_expirations: int
    slow_consumer_disconnects: int
    heartbeat_timeouts: int
    backend: BackendStatus
    gaps: int = 0
    resets: int = 0


class Hub:
    """The center of a roomcast application: one per app, never global.

    ``async with Hub(...) as hub:`` starts the backend and the heartbeat task in
    a task group the hub owns, and on exit closes every connection with 1001
    after flushing what is queued for it. Adapters hand each accepted
    connection to [`serve()`][roomcast.hub.Hub.serve].

    Args:
        authenticator: identifies connections (default: everyone anonymous).
            A principal it returns that the hub cannot carry (see
            [`check_principal`][roomcast.auth.check_principal]) is refused like
            invalid credentials: 401, or close 4001.
        authorizer: decides subscribe/publish/presence per room; an
            [`Authorizer`][roomcast.Authorizer] or a function ``(principal, action, room)``
            returning ``bool`` (or an awaitable of it). Default:
            [`DefaultAuthorizer`][roomcast.DefaultAuthorizer] (no client publish; ``user:{id}``
            rooms private).
        backend: carries messages between nodes (default [`MemoryBackend`][roomcast.MemoryBackend]).
        namespaces: [`RoomOptions`][roomcast.RoomOptions] per namespace (the part of a
            room name before the first ``:``); others get ``default_room_options``.
        default_room_options: options of rooms in no configured namespace.
        heartbeat: ping interval, dead-client timeout and jitter.
        rate_limit: per-connection message rate.
        max_message_size: largest client frame in bytes (adapters configure
            their framework with it; larger frames close the connection with 1009).
        max_rooms_per_connection: rooms one connection may be in.
        max_queue: frames a client may have waiting before ``slow_consumer`` applies.
        slow_consumer: ``"disconnect"`` (close 4009) or ``"drop_oldest"`` (the
            client gets a ``gap`` notice).
        drain_timeout: seconds a closing connection gets to flush its queue.
        close_timeout: seconds a closing connection is kept once its queue is
            flushed or dropped: no more data frames, its close frame queued
            behind what the transport already holds, until the peer has read it
            and answered (a client stalled longer is cut off and sees 1006).
            Shutdown gives closing handshakes ``drain_timeout`` plus one second.
        auth_timeout: seconds a connection without credentials in its handshake
            has to send an ``auth`` frame (close 4008 after).
        bad_request_limit: malformed requests per minute before close 1008.
        allowed_origins: when set, a handshake that carries an ``Origin`` is
            accepted only when it carries exactly one, equal to one of these
            (``scheme://host[:port]``); others get 403. Browsers always send
            ``Origin``, so a handshake without one is not a browser's: see
            ``allow_missing_origin``.
        allow_missing_origin: with ``allowed_origins`` set, whether a handshake
            with no ``Origin`` header (a server, a mobile app, a command-line
            client) is admitted (default) or refused with 403. Without
            ``allowed_origins`` it has no effect.
        token_sources: where a token is looked for in the handshake (default:
            ``Sec-WebSocket-Protocol`` bearer entry and ``Authorization`` header;
            cookie and query string only when named).
        limits: connections per user and per address, failed authentications
            per address, queued bytes per client.
        token_expiry_warning: seconds before a token expires that the client
            is sent ``token.expiring``.
        token_expiry_grace: seconds after the principal's ``expires_at`` (for
            a JWT, ``exp`` plus the authenticator's leeway) before the
            connection is closed with 4002.
        position_check: seconds between two checks of each history room's position
            against the backend's, so that a lost last message is noticed.
        flush_delay: seconds the `websockets` and aiohttp adapters may hold a
            connection's frames to write them together, in one system call
            (at most 1). 0, the default, writes at the end of the current event
            loop iteration: frames ready in the same iteration still leave
            together, and none waits past the iteration. A delay of a few
            milliseconds lets a client's frames of several publications share
            a write, for less CPU per delivery under heavy fan-out; each frame
            may wait up to the delay, plus the time one flush of every waiting
            client takes (see the performance page). The Starlette adapter cannot
            batch below the ASGI server and ignores it.
        clock: time source (tests pass [`ManualClock`][roomcast.testing.ManualClock]).

    Raises:
        ValueError: a limit or delay is not a number in its range, or an option is
            malformed.
        TypeError: an object argument is not of its kind (an ``authenticator``
            that is no [`Authenticator`][roomcast.Authenticator], ``limits`` that
            are no [`ConnectionLimits`][roomcast.ConnectionLimits], ...), or
            ``allowed_origins`` is not a collection of origin strings.
    """

    def __init__(
        self,
        *,
        authenticator: Authenticator | None = None,
        authorizer: Authorizer | AuthorizerFunction | None = None,
        backend: Backend | None = None,
        namespaces: Mapping[str, RoomOptions] | None = None,
        default_room_options: RoomOptions | None = None,
        heartbeat: HeartbeatPolicy | None = None,
        rate_limit: RateLimit | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_rooms_per_connection: int = DEFAULT_MAX_ROOMS_PER_CONNECTION,
        max_queue: int = DEFAULT_MAX_QUEUE,
        slow_consumer: SlowConsumerPolicy = "disconnect",
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        auth_timeout: float = DEFAULT_AUTH_TIMEOUT,
        bad_request_limit: int = DEFAULT_BAD_REQUEST_LIMIT,
        allowed_origins: Iterable[str] | None = None,
        allow_missing_origin: bool = True,
        token_sources: TokenSources | None = None,
        limits: ConnectionLimits | None = None,
        token_expiry_warning: float = DEFAULT_TOKEN_EXPIRY_WARNING,
        token_expiry_grace: float = 0.0,
        position_check: float = DEFAULT_POSITION_CHECK,
        flush_delay: float = DEFAULT_FLUSH_DELAY,
        clock: Clock | None = None,
    ) -> None:
        _check_kinds(
            authenticator=(authenticator, Authenticator, "an Authenticator"),
            backend=(backend, Backend, "a Backend"),
            namespaces=(namespaces, Mapping, "a mapping of namespace to RoomOptions"),
            default_room_options=(default_room_options, RoomOptions, "a RoomOptions"),
            rate_limit=(rate_limit, RateLimit, "a RateLimit"),
            token_sources=(token_sources, TokenSources, "a TokenSources"),
            limits=(limits, ConnectionLimits, "a ConnectionLimits"),
            clock=(clock, Clock, "a Clock"),
        )
        self._clock: Clock = clock or SystemClock()
        limits = limits or ConnectionLimits()
        self._settings = settings = configure(
            namespaces=namespaces,
            default_room_options=default_room_options,
            heartbeat=heartbeat,
            rate_limit=rate_limit,
            max_message_size=max_message_size,
            max_rooms_per_connection=max_rooms_per_connection,
            max_queue=max_queue,
            max_queue_bytes=limits.max_queue_bytes,
            slow_consumer=slow_consumer,
            drain_timeout=drain_timeout,
            close_timeout=close_timeout,
            auth_timeout=auth_timeout,
            bad_request_limit=bad_request_limit,
            token_expiry_warning=token_expiry_warning,
            token_expiry_grace=token_expiry_grace,
            position_check=position_check,
            flush_delay=flush_delay,
        )
        self._gate = Gatekeeper(
            authenticator=authenticator or AnonymousAuthenticator(),
            clock=self._clock,
            allowed_origins=allowed_origins,
            allow_missing_origin=allow_missing_origin,
            token_sources=token_sources,
            limits=limits,
        )
        self._backend: Backend = backend or MemoryBackend(clock=self._clock.now)
        self._node = secrets.token_hex(4)
        self._state: HubState = "new"
        self._rooms = Rooms(settings, self._backend, self._node)
        self._clients = self._rooms.clients  # connected clients by id
        self._schedule = Schedule(settings, self._clients, self._clock)
        self._connections = Connections(
            settings,
            gate=self._gate,
            rooms=self._rooms,
            authorizer=as_authorizer(authorizer),
            schedule=self._schedule,
            clock=self._clock,
            node=self._node,
            admit=self.admit,
            running=lambda: self._state == "running",
        )
        self._task_group: TaskGroup | None = None
        # The background loop's scope (made on start: a scope needs an event loop).
        self._loop: anyio.CancelScope | None = None

    @property
    def max_message_size(self) -> int:
        """Largest client frame in bytes; adapters configure their framework with it."""
        return self._settings.max_message_size

    @property
    def close_timeout(self) -> float:
        """Seconds a closing connection is kept for the peer to answer its close frame."""
        return self._settings.close_timeout

    @property
    def drain_timeout(self) -> float:
        """Seconds a closing connection gets to flush its queue."""
        return self._settings.queue.drain_timeout

    @property
    def flush_delay(self) -> float:
        """Seconds the `websockets` and aiohttp adapters may hold frames to write them together."""
        return self._settings.flush_delay

    async def __aenter__(self) -> Hub:
        if self._state != "new":
            raise RuntimeError("a Hub can be started once")
        self._state = "running"
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._connections.start(self._task_group)
        try:
            await self._rooms.start(self._task_group)
        except BaseException:
            self._task_group.cancel_scope.cancel()
            await self._task_group.__aexit__(None, None, None)
            self._state = "closed"
            raise
        self._loop = anyio.CancelScope()
        self._task_group.start_soon(self._run_schedule, self._loop, name="roomcast heartbeat")
        return self

    async def _run_schedule(self, scope: anyio.CancelScope) -> None:
        with scope:  # cancelled by aclose(), even before it is entered
            async with anyio.create_task_group() as loops:
                loops.start_soon(self._rooms.check_positions_every, self._clock)
                await self._schedule.run()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self.aclose()
        task_group, self._task_group = self._task_group, None
        if task_group is not None:
            return await task_group.__aexit__(exc_type, exc, tb)
        return None

    async def aclose(self) -> None:
        """Shut down: clients get their queued frames (within ``drain_timeout``), then close 1001.

        Returns once every connection has finished its closing handshake (the
        peer has read the close frame and answered it) or ``drain_timeout``
        plus one second has passed; what the peers send meanwhile is read and
        dropped. A server may then stop without resetting a connection whose
        peer was still reading. New handshakes are refused (HTTP 503, where the
        server still accepts connections: aiohttp stops listening before its
        ``on_shutdown`` closes the hub) from the moment this is called, and a
        connection accepted since is closed with 1001 without being
        acknowledged. Idempotent.
        """
        if self._state != "running":
            return
        self._state = "closing"
        deadline = anyio.current_time() + self.drain_timeout + _SHUTDOWN_CLOSE_GRACE
        with anyio.CancelScope(shield=True):
            await self._connections.shutdown(deadline)
            # Stop the background loop only: the task group also encloses the
            # application's code when the hub is used as a context manager.
            if self._loop is not None:
                self._loop.cancel()
            with anyio.move_on_after(self.drain_timeout):
                await self._backend.aclose()
        self._state = "closed"

    @property
    def running(self) -> bool:
        """Whether the hub accepts connections."""
        return self._state == "running"

    async def publish(
        self,
        rooms: str | Iterable[str],
        type: str,
        payload: Any = None,
        *,
        user_id: str | None = None,
        exclude: Iterable[str] | None = None,
        ephemeral: bool = False,
    ) -> str:
        """Publish an event to one room or several.

        The payload is encoded once; every member of every room receives the
        same frame text for its room, and every copy carries the same message
        ``id``. Members of a room see its messages in publish order.

        Args:
            rooms: a room name, or several.
            type: the event type, e.g. ``issue.created``.
            payload: any JSON-serializable value.
            user_id: the publisher, shown to clients as ``userId``.
            exclude: client ids that must not receive it.
            ephemeral: never store it in history.

        Returns:
            The message id.

        Raises:
            HubNotRunning: the hub is not started, or is shutting down.
            ValueError: a room name or the type is invalid, or the payload is
                not JSON-serializable.
            BackendError: the backend could not send it.
        """
        if self._state != "running":
            check_running(self._state, "publish")
        names = (rooms,) if isinstance(rooms, str) else tuple(dict.fromkeys(rooms))
        for name in names:
            # The verdicts on names seen before are cached: ask the cache first.
            if _type_of(name) is not str or _cached_room_problem(name) is not None:
                validate_room(name)
        if _type_of(type) is not str or _cached_type_problem(type) is not None:
            validate_event_type(type)
        payload_json = dumps(payload)
        excluded = frozenset(exclude) if exclude else NOBODY
        # The memory backend's fan-out runs in place: no coroutine below this one.
        publish_now = self._rooms.publish_now
        if publish_now is not None:
            return publish_now(names, type, payload_json, user_id, excluded, ephemeral)
        return await self._rooms.publish(names, type, payload_json, user_id, excluded, ephemeral)

    async def history(
        self, room: str, *, limit: int | None = None, since: StreamPosition | None = None
    ) -> HistoryResult:
        """Read the messages ``room`` keeps, as a client's ``history`` request does.

        Without ``since``, the room's last ``limit`` messages (every kept one
        when ``limit`` is ``None``); with ``since``, at most ``limit`` messages
        after that position, oldest first, and ``recovered`` says whether they
        are exactly the ones that follow it (when ``False``, there are none).
        Nothing is authorized here: the application decides who may read.

        Args:
            room: a room whose namespace keeps history.
            limit: at most this many messages, an integer of at least 1.
            since: the position to read after, as a client last saw it.

        Returns:
            The messages, oldest first, and the room's latest position.

        Raises:
            HubNotRunning: the hub is not started, or is shutting down.
            ValueError: an invalid room name or ``limit``, or a room whose
                namespace keeps no history.
            BackendError: the backend could not be read.
        """
        check_running(self._state, "history")
        validate_room(room)
        if limit is not None:
            check_positive_int("limit", limit)
        found = await self._rooms.history(room, limit, since)
        if found is None:
            raise ValueError(f"the namespace of {room!r} keeps no history")
        return found

    async def send_to_user(self, user_id: str, type: str, payload: Any = None) -> str:
        """Send an event to every connection of ``user_id``, on every node, once each.

        The frame carries ``room: null``.

        Returns:
            The message id.

        Raises:
            HubNotRunning: the hub is not started, or is shutting down.
            ValueError: the type is invalid or the payload is not JSON-serializable.
        """
        check_running(self._state, "send_to_user")
        if not isinstance(user_id, str) or not user_id:
            raise ValueError("user_id must be a non-empty string")
        validate_event_type(type)
        return await self._rooms.send_to_user(user_id, type, dumps(payload))

    async def send_to_client(self, client_id: str, type: str, payload: Any = None) -> str:
        """Send an event to one connection, on whichever node holds it (``room: null``).

        Returns:
            The message id.

        Raises:
            HubNotRunning: the hub is not started, or is shutting down.
            ValueError: the type is invalid or the payload is not JSON-serializable.
        """
        check_running(self._state, "send_to_client")
        validate_event_type(type)
        return await self._rooms.send_to_client(client_id, type, dumps(payload))

    def disconnect_user(self, user_id: str, code: int = CloseCode.NORMAL, reason: str = "") -> int:
        """Close every connection of ``user_id`` on every node, e.g. on logout.

        Returns:
            How many connections of the user this node closed (before returning).
            Other nodes are told on the user's backend channel, from the hub's
            task group, and close theirs shortly after; they are not counted,
            and a backend failure there is logged, not raised.

        Raises:
            ValueError: ``code`` may not be sent in a close frame (1005, 1006,
                1015, below 1000, or from 5000 up).
        """
        code, reason = close_frame(code, reason)
        return self._rooms.disconnect_user(user_id, code, reason, remote=self.running)

    def stats(self) -> HubStatistics:
        """A snapshot of the hub's counters."""
        rooms, connections, gate = self._rooms, self._connections, self._gate
        return HubStatistics(
            clients=len(rooms.clients),
            rooms=len(rooms.rooms),
            members={name: len(room.members) for name, room in rooms.rooms.items()},
            connections_total=connections.connections_total,
            messages_in=connections.messages_in,
            messages_out=rooms.messages_out,
            published=rooms.published,
            dropped=rooms.dropped + connections.dropped,
            rate_limited=connections.rate_limited,
            bad_requests=connections.bad_requests,
            auth_failures=gate.auth_failures,
            origin_refusals=gate.origin_refusals,
            limit_refusals=gate.limit_refusals,
            token_expirations=self._schedule.token_expirations,
            slow_consumer_disconnects=connections.slow_consumer_disconnects,
            heartbeat_timeouts=self._schedule.heartbeat_timeouts,
            backend=self._backend.status(),
            gaps=rooms.gaps,
            resets=rooms.resets,
        )

    def room_options(self, room: str) -> RoomOptions:
        """The options that apply to ``room`` (by its namespace)."""
        return self._settings.room_options(room)

    async def admit(self, handshake: Handshake) -> Admission:
        """Decide whether to accept an opening handshake, before the adapter accepts it.

        Checks, in order: the hub is running (else 503); when
        ``allowed_origins`` is set, the handshake carries exactly one
        ``Origin`` and it is in the list, or carries none and
        ``allow_missing_origin`` is on (else 403); the client address has
        not failed authentication too often (else 429) nor has too many
        connections open (else 503); credentials carried by the handshake
        (see ``token_sources``) are valid (else 401, or 401 with close code
        4002 when expired); the user has not too many connections open (else
        503). Adapters that can answer the HTTP request refuse with the
        returned status; the others accept and let [`serve()`][roomcast.hub.Hub.serve] close with
        the matching close code. A handshake without credentials is admitted:
        it may authenticate with a first ``auth`` frame.
        """
        return await self._gate.admit(handshake, self._state)

    def serve(
        self, transport: Transport, admission: Admission | None = None
    ) -> Coroutine[Any, Any, None]:
        """Run one accepted connection to its end: ``await hub.serve(transport)``.

        Authenticates, sends ``connection.ack``, answers requests, and on the
        way out removes the client from every room, even when the transport
        dies mid-broadcast or this task is cancelled. Never raises for
        anything the peer does.

        Args:
            transport: the accepted connection.
            admission: what [`admit()`][roomcast.hub.Hub.admit] answered for its handshake, when the
                adapter asked before accepting; otherwise ``serve`` asks.

        Returns:
            The coroutine that serves the connection, to await (or ``hub.serve``
            itself, to hand to a task group's ``start_soon``).
        """
        # The connection's own coroutine, not one awaiting it: one frame per idle connection.
        return self._connections.serve(transport, admission)
