"""Hub: owns the connections, rooms and background tasks of one application."""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any, Final

import anyio
from anyio.abc import TaskGroup

from ._reader import ReadLoopStop
from .admission import Admission, Gatekeeper, LockedOut, refusal_reason
from .auth import (
    AnonymousAuthenticator,
    Authenticator,
    Authorizer,
    AuthorizerFunction,
    Principal,
    TokenSources,
    as_authorizer,
)
from .backends.base import Backend, ChannelKind, PresenceEntry, Publication
from .backends.memory import MemoryBackend
from .clock import Clock, SystemClock
from .config import DEFAULT_AUTH_TIMEOUT as DEFAULT_AUTH_TIMEOUT
from .config import DEFAULT_BAD_REQUEST_LIMIT as DEFAULT_BAD_REQUEST_LIMIT
from .config import DEFAULT_DRAIN_TIMEOUT as DEFAULT_DRAIN_TIMEOUT
from .config import DEFAULT_MAX_ROOMS_PER_CONNECTION as DEFAULT_MAX_ROOMS_PER_CONNECTION
from .config import DEFAULT_TOKEN_EXPIRY_WARNING as DEFAULT_TOKEN_EXPIRY_WARNING
from .exceptions import (
    AuthenticationError,
    ConnectionClosed,
    HubNotRunning,
)
from .expiry import ExpirySchedule
from .heartbeat import Heartbeat, HeartbeatPolicy
from .limits import ConnectionLimits
from .membership import Membership, Room
from .options import DEFAULT_MAX_QUEUE, RateLimit, RoomOptions, SlowConsumerPolicy
from .peer import Client, ClientId, QueueLimits, deliver_all
from .protocol import CloseCode
from .ratelimit import RateLimiter
from .session import Authenticate, Close, Fail, Handle, Session, SessionLimits
from .transport import DEFAULT_CLOSE_TIMEOUT, Handshake, Transport, close_frame
from .wire import (
    MAX_MESSAGE_SIZE,
    PING_FRAME,
    PROTOCOL,
    Ping,
    Presence,
    Publish,
    Refresh,
    Request,
    StreamPosition,
    Subscribe,
    Unsubscribe,
    WireLimits,
    dumps,
    encode_ack,
    encode_error,
    encode_event,
    encode_frame,
    encode_reply,
    namespace_of,
    validate_event_type,
    validate_room,
)

__all__ = ["Admission", "Hub", "HubStatistics"]

logger = logging.getLogger("roomcast.hub")

#: Seconds that shutdown gives closing handshakes beyond ``drain_timeout``.
_SHUTDOWN_CLOSE_GRACE: Final = 1.0
#: Longest the heartbeat task sleeps, so new clients are picked up promptly.
_HEARTBEAT_MAX_SLEEP: Final = 1.0

_NOBODY: Final[frozenset[str]] = frozenset()
_CLOSE_GOING_AWAY: Final = 1001
_CLOSE_INTERNAL: Final = 1011
_CLOSE_TRY_AGAIN: Final = 1013
_CLOSE_TOKEN_EXPIRED: Final = 4002
_CLOSE_AUTH_TIMEOUT: Final = 4008


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


@dataclass(slots=True)
class _Counters:
    connections_total: int = 0
    messages_in: int = 0
    messages_out: int = 0
    published: int = 0
    dropped: int = 0
    rate_limited: int = 0
    bad_requests: int = 0
    token_expirations: int = 0
    slow_consumer_disconnects: int = 0
    heartbeat_timeouts: int = 0


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
        clock: time source (tests pass [`ManualClock`][roomcast.testing.ManualClock]).

    Raises:
        ValueError: a limit is not positive, or an option is malformed.
        TypeError: an argument has the wrong type.
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
        max_message_size: int = MAX_MESSAGE_SIZE,
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
        clock: Clock | None = None,
    ) -> None:
        for name, value in (
            ("max_message_size", max_message_size),
            ("max_rooms_per_connection", max_rooms_per_connection),
            ("max_queue", max_queue),
            ("bad_request_limit", bad_request_limit),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, number in (
            ("drain_timeout", drain_timeout),
            ("close_timeout", close_timeout),
            ("auth_timeout", auth_timeout),
            ("token_expiry_warning", token_expiry_warning),
        ):
            if not isinstance(number, (int, float)) or not math.isfinite(number) or number <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {number!r}")
        if slow_consumer not in ("disconnect", "drop_oldest"):
            raise ValueError(
                f"slow_consumer must be 'disconnect' or 'drop_oldest', got {slow_consumer!r}"
            )
        self._namespaces: dict[str, RoomOptions] = {}
        for namespace, options in (namespaces or {}).items():
            if not isinstance(options, RoomOptions):
                raise TypeError(f"namespaces[{namespace!r}] must be RoomOptions")
            if not namespace or ":" in namespace:
                raise ValueError(f"namespace {namespace!r} must be non-empty and contain no ':'")
            self._namespaces[namespace] = options
        self._authenticator: Authenticator = authenticator or AnonymousAuthenticator()
        self._clock: Clock = clock or SystemClock()
        self._gate = Gatekeeper(
            authenticator=self._authenticator,
            clock=self._clock,
            allowed_origins=allowed_origins,
            allow_missing_origin=allow_missing_origin,
            token_sources=token_sources,
            limits=limits,
        )
        self.allow_missing_origin = allow_missing_origin
        if (
            not isinstance(token_expiry_grace, (int, float))
            or not 0 <= token_expiry_grace < math.inf
        ):
            raise ValueError(f"token_expiry_grace must be >= 0 seconds, got {token_expiry_grace!r}")
        self.limits = self._gate.limits
        self.token_expiry_warning = float(token_expiry_warning)
        self.token_expiry_grace = float(token_expiry_grace)
        # The background loop's sleep, so that an earlier deadline can cut it short.
        self._sleep: anyio.CancelScope | None = None
        self._sleep_until = math.inf
        self._expiries: ExpirySchedule[ClientId] = ExpirySchedule(
            self.token_expiry_warning, self.token_expiry_grace
        )
        self._default_options = default_room_options or RoomOptions()
        self._authorizer = as_authorizer(authorizer)
        self._backend: Backend = backend or MemoryBackend(clock=self._clock.now)
        self.heartbeat_policy: HeartbeatPolicy = heartbeat or HeartbeatPolicy()
        self.rate_limit: RateLimit = rate_limit or RateLimit()
        self.max_message_size = max_message_size
        self.max_rooms_per_connection = max_rooms_per_connection
        self.max_queue = max_queue
        self.slow_consumer: SlowConsumerPolicy = slow_consumer
        self.drain_timeout = float(drain_timeout)
        self.close_timeout = float(close_timeout)
        self.auth_timeout = float(auth_timeout)
        self.bad_request_limit = bad_request_limit
        self._queue_limits = QueueLimits(
            max_queue, self.limits.max_queue_bytes, slow_consumer, self.drain_timeout
        )
        limit = self.rate_limit
        # Templates: each connection gets a fresh bucket sharing their parameters.
        self._session_limits = SessionLimits(
            wire=WireLimits(
                max_message_size=max_message_size, max_rooms_per_request=max_rooms_per_connection
            ),
            messages=RateLimiter(limit.rate, limit.period, limit.burst),
            strikes=RateLimiter(limit.strikes, limit.period, limit.strikes),
            bad_requests=RateLimiter(bad_request_limit, 60.0, bad_request_limit),
        )
        self._node = secrets.token_hex(4)
        self._sequence = 0
        self._membership: Membership[Client] = Membership()
        # Its maps, read directly on the fan-out path; changed only through it.
        self._clients = self._membership.clients
        self._users = self._membership.users
        self._rooms = self._membership.rooms
        # Channels this node is subscribed to at the backend, by kind.
        self._channels: dict[ChannelKind, set[str]] = {"room": set(), "user": set(), "node": set()}
        self._channel_lock = anyio.Lock()
        self._heartbeat: Heartbeat[ClientId] = Heartbeat(self.heartbeat_policy)
        self._counters = _Counters()
        self._task_group: TaskGroup | None = None
        self._state = "new"
        self._idle: anyio.Event | None = None
        self._background: list[anyio.CancelScope] = []
        # Connections inside serve() past registration, until their closing handshake ends.
        self._serving = 0
        # The closing handshakes under way, each bounded by its scope's deadline.
        self._closing: set[anyio.CancelScope] = set()
        # When shutdown gives up on the closing handshakes still under way.
        self._shutdown_deadline = math.inf
        # Bound once and shared by every client, rather than a bound method each.
        self._client_closed = self._on_client_close
        self._frame_dropped = self._on_drop
        # The handler of each request an open session hands over (see session.RULES).
        self._handlers: dict[type[Request], Callable[[Client, Any], Awaitable[None]]] = {
            Subscribe: self._subscribe,
            Unsubscribe: self._unsubscribe,
            Publish: self._client_publish,
            Presence: self._presence,
            Refresh: self._refresh,
            Ping: self._ping,
        }

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Hub:
        if self._state != "new":
            raise RuntimeError("a Hub can be started once")
        self._state = "running"
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        try:
            await self._backend.start(self._on_publication)
            await self._sync_channel("node", self._node)
        except BaseException:
            self._task_group.cancel_scope.cancel()
            await self._task_group.__aexit__(None, None, None)
            self._state = "closed"
            raise
        self._task_group.start_soon(
            self._background_task, self._run_heartbeat, name="roomcast heartbeat"
        )
        return self

    async def _background_task(self, run: Callable[[], Awaitable[None]]) -> None:
        with anyio.CancelScope() as scope:
            self._background.append(scope)
            if self._state != "running":
                scope.cancel()
            await run()

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
        self._shutdown_deadline = deadline
        with anyio.CancelScope(shield=True):
            for scope in self._closing:  # closing for another reason, with more time
                scope.deadline = min(scope.deadline, deadline)
            for client in list(self._clients.values()):
                client.close(_CLOSE_GOING_AWAY, "server shutting down")
            if self._serving:
                self._idle = anyio.Event()
                with anyio.CancelScope(deadline=deadline):
                    await self._idle.wait()
            # Stop the background tasks only: the task group also encloses the
            # application's code when the hub is used as a context manager.
            for scope in self._background:
                scope.cancel()
            with anyio.move_on_after(self.drain_timeout):
                await self._backend.aclose()
        self._state = "closed"

    @property
    def running(self) -> bool:
        """Whether the hub accepts connections."""
        return self._state == "running"

    # ------------------------------------------------------------------ server API

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
        self._check_running("publish")
        names = (rooms,) if isinstance(rooms, str) else tuple(dict.fromkeys(rooms))
        for name in names:
            validate_room(name)
        validate_event_type(type)
        return await self._publish(
            names,
            type,
            dumps(payload),
            user_id,
            frozenset(exclude) if exclude else _NOBODY,
            ephemeral,
        )

    async def send_to_user(self, user_id: str, type: str, payload: Any = None) -> str:
        """Send an event to every connection of ``user_id``, on every node, once each.

        The frame carries ``room: null``.

        Returns:
            The message id.

        Raises:
            HubNotRunning: the hub is not started, or is shutting down.
            ValueError: the type is invalid or the payload is not JSON-serializable.
        """
        self._check_running("send_to_user")
        if not isinstance(user_id, str) or not user_id:
            raise ValueError("user_id must be a non-empty string")
        validate_event_type(type)
        publication = self._publication(None, type, dumps(payload), None, frozenset(), True)
        await self._backend.publish("user", user_id, publication, None)
        return publication.id

    async def send_to_client(self, client_id: str, type: str, payload: Any = None) -> str:
        """Send an event to one connection, on whichever node holds it (``room: null``).

        Returns:
            The message id.

        Raises:
            HubNotRunning: the hub is not started, or is shutting down.
            ValueError: the type is invalid or the payload is not JSON-serializable.
        """
        self._check_running("send_to_client")
        validate_event_type(type)
        node, dot, _ = client_id.partition(".")
        publication = self._publication(None, type, dumps(payload), None, frozenset(), True)
        if dot:
            await self._backend.publish("node", node, publication._replace(client=client_id), None)
        return publication.id

    def _check_running(self, method: str) -> None:
        if self._state == "running":
            return
        if self._state == "new":
            raise HubNotRunning(
                f"Hub.{method}() on a hub that is not running: start it first, with "
                "`async with hub:` or the adapter's lifespan "
                "(roomcast.starlette.lifespan, roomcast.aiohttp.cleanup_ctx)"
            )
        raise HubNotRunning(
            f"Hub.{method}() on a hub that is shut down or shutting down: publish only "
            "inside `async with hub:` (or while the adapter's lifespan runs)"
        )

    def disconnect_user(self, user_id: str, code: int = 1000, reason: str = "") -> int:
        """Close every connection of ``user_id`` on this node, e.g. on logout; return how many.

        Raises:
            ValueError: ``code`` may not be sent in a close frame (1005, 1006,
                1015, below 1000, or from 5000 up).
        """
        code, reason = close_frame(code, reason)
        clients = list(self._users.get(user_id, {}).values())
        for client in clients:
            client.close(code, reason)
        return len(clients)

    def stats(self) -> HubStatistics:
        """A snapshot of the hub's counters."""
        counters = self._counters
        return HubStatistics(
            clients=len(self._clients),
            rooms=len(self._rooms),
            members={name: len(room.members) for name, room in self._rooms.items()},
            connections_total=counters.connections_total,
            messages_in=counters.messages_in,
            messages_out=counters.messages_out,
            published=counters.published,
            dropped=counters.dropped,
            rate_limited=counters.rate_limited,
            bad_requests=counters.bad_requests,
            auth_failures=self._gate.auth_failures,
            origin_refusals=self._gate.origin_refusals,
            limit_refusals=self._gate.limit_refusals,
            token_expirations=counters.token_expirations,
            slow_consumer_disconnects=counters.slow_consumer_disconnects,
            heartbeat_timeouts=counters.heartbeat_timeouts,
        )

    def room_options(self, room: str) -> RoomOptions:
        """The options that apply to ``room`` (by its namespace)."""
        return self._namespaces.get(namespace_of(room), self._default_options)

    # ------------------------------------------------------------------ publishing

    def _publication(
        self,
        room: str | None,
        type_: str,
        payload_json: str,
        user_id: str | None,
        exclude: frozenset[str],
        ephemeral: bool,
        message_id: str | None = None,
    ) -> Publication:
        if message_id is None:
            self._sequence += 1
            message_id = f"{self._node}-{self._sequence:x}"
        return Publication(
            room=room,
            type=type_,
            id=message_id,
            payload_json=payload_json,
            timestamp=int(time.time() * 1000),
            user_id=user_id,
            ephemeral=ephemeral,
            exclude=exclude,
        )

    async def _publish(
        self,
        rooms: tuple[str, ...],
        type_: str,
        payload_json: str,
        user_id: str | None,
        exclude: frozenset[str],
        ephemeral: bool,
    ) -> str:
        self._sequence += 1
        message_id = f"{self._node}-{self._sequence:x}"
        timestamp = int(time.time() * 1000)
        for room in rooms:
            publication = Publication(
                room, type_, message_id, payload_json, timestamp, user_id, ephemeral, exclude
            )
            await self._backend.publish("room", room, publication, self.room_options(room).history)
        return message_id

    def _on_publication(self, kind: ChannelKind, key: str, publication: Publication) -> None:
        """Fan one publication out to this node's clients; never waits, never raises."""
        try:
            if kind == "room":
                room = self._rooms.get(key)
                if room is not None:
                    self._fan_out(room, publication)
                return
            if kind == "user":
                targets: Iterable[Client] = list(self._users.get(key, {}).values())
            elif kind == "node":
                client = self._clients.get(ClientId(publication.client or ""))
                targets = () if client is None else (client,)
            else:
                return
            frame = self._encode(publication)
            for client in targets:
                self._count(client.deliver(frame))
        except Exception:  # a bug here must not take down the backend's reader
            logger.exception("fan-out failed for a %s publication", kind)

    @staticmethod
    def _encode(publication: Publication) -> str:
        return encode_event(
            type_=publication.type,
            room=publication.room,
            message_id=publication.id,
            payload_json=publication.payload_json,
            timestamp=publication.timestamp,
            user_id=publication.user_id,
            offset=publication.offset,
            epoch=publication.epoch,
        )

    def _count(self, delivered: bool) -> None:
        if delivered:
            self._counters.messages_out += 1
        else:
            self._counters.dropped += 1

    def _fan_out(self, room: Room[Client], publication: Publication) -> None:
        frame = self._encode(publication)
        name = room.name
        exclude = publication.exclude
        # A snapshot: a member closing mid-loop leaves the room at once.
        members = tuple(room.members.values())
        if exclude:
            members = tuple(client for client in members if client.id not in exclude)
        # The hot path: one frame string for every member, no per-member
        # allocation, task or call beyond the transport's.
        dropped = deliver_all(members, frame, name)
        if room.joining is not None:
            for client_id, held in room.joining.items():
                if client_id not in exclude:
                    held.append((publication.offset, frame))
        counters = self._counters
        counters.published += 1
        counters.messages_out += len(members) - dropped
        counters.dropped += dropped

    # ------------------------------------------------------------------ connections

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
        if self._state == "new":
            return Admission(503, "server not started")
        if self._state != "running":
            return Admission(503, "server shutting down", close_code=_CLOSE_GOING_AWAY)
        return await self._gate.admit(handshake)

    async def serve(self, transport: Transport, admission: Admission | None = None) -> None:
        """Run one accepted connection to its end.

        Authenticates, sends ``connection.ack``, answers requests, and on the
        way out removes the client from every room, even when the transport
        dies mid-broadcast or this task is cancelled. Never raises for
        anything the peer does.

        Args:
            transport: the accepted connection.
            admission: what [`admit()`][roomcast.hub.Hub.admit] answered for its handshake, when the
                adapter asked before accepting; otherwise ``serve`` asks.
        """
        # Adapters build the handshake on each access: read it once, and keep
        # only the peer's address for the connection's lifetime.
        handshake = transport.handshake
        ip = handshake.client_host
        if admission is None:
            admission = await self.admit(handshake)
        del handshake
        if not admission.accepted:
            with anyio.CancelScope(shield=True):
                await transport.close(admission.close_code, admission.reason)
            return
        handshake_principal = admission.principal
        del admission  # not kept alive for the connection's lifetime
        # Counted from acceptance, so sockets still waiting to authenticate count too.
        self._gate.opened(ip, None)
        # One coroutine frame per connection: the rest of the connection runs
        # here rather than in a helper coroutine.
        session = Session(self._session_limits)
        try:
            try:
                principal = handshake_principal or await self._authenticate(transport, session)
            except AuthenticationError as exc:  # counted where it was raised
                with anyio.CancelScope(shield=True):
                    await transport.close(exc.close_code, refusal_reason(exc))
                return
            except ConnectionClosed:
                return
            if handshake_principal is None and self._gate.user_refused(principal.user_id):
                with anyio.CancelScope(shield=True):
                    await transport.close(_CLOSE_TRY_AGAIN, "too many connections for this user")
                return
            if self._state != "running":
                # Admitted before shutdown began, accepted after: never acknowledged.
                with anyio.CancelScope(shield=True, deadline=self._shutdown_deadline):
                    await transport.close(_CLOSE_GOING_AWAY, "server shutting down")
                return
            # The node prefix routes send_to_client to the node holding the client.
            client_id = ClientId(f"{self._node}.{secrets.token_hex(6)}")
            client = Client(
                client_id,
                transport,
                principal,
                limits=self._queue_limits,
                on_close=self._client_closed,
                on_drop=self._frame_dropped,
            )
            self._register(client, session)
            self._serving += 1
            try:
                # Subscribed before the ack: once a client is acknowledged,
                # send_to_user reaches it.
                if client.user_id is not None:
                    await self._sync_channel("user", client.user_id)
                expires = principal.expires_at
                client.deliver(
                    encode_ack(
                        client_id=client_id,
                        user_id=principal.user_id,
                        heartbeat_ms=int(self.heartbeat_policy.interval * 1000),
                        expires_at=None if expires is None else int(expires * 1000),
                        protocol=PROTOCOL,
                    )
                )
                # After the ack, so that token.expiring never comes before it.
                self._schedule_expiry(client)
                # The request loop runs in this task, inline (one coroutine frame
                # fewer per idle connection). A writer runs in the hub's task group
                # only while frames are queued; closing stops the loop once what
                # had to be flushed is flushed (see ReadLoopStop).
                stop = ReadLoopStop()
                with stop:
                    client.attach(self._tasks(), stop)
                    try:
                        while not client.closing:
                            stop.waiting = True
                            try:
                                data = await transport.receive()
                            finally:
                                stop.waiting = False
                            self._counters.messages_in += 1
                            self._heartbeat.seen(client_id, self._clock.now())
                            with stop.handling():
                                await self._handle_frame(client, session, data)
                    except ConnectionClosed as exc:
                        client.close(exc.code, exc.reason, flush=False)
                    except Exception:
                        logger.exception("connection %s failed", client_id)
                        client.close(_CLOSE_INTERNAL, "internal error", flush=False)
                # A writer may still be flushing (bounded by the drain deadline).
                await client.writer_finished()
            finally:
                with anyio.CancelScope(shield=True):
                    # Cancelled from outside (the server is going away), or a bug.
                    client.close(_CLOSE_GOING_AWAY, "going away", flush=False)
                    session.close()
                    await self._unregister(client)
                    close_code, close_reason = client.close_code or 1000, client.close_reason
                    # 1006 means the peer is already gone; closing still frees
                    # the transport, and 1006 itself may not be sent on the wire.
                    if close_code == 1006:
                        close_code, close_reason = 1000, ""
                    # The close frame waits behind what the transport holds, and
                    # the transport for the peer's answer, reading and dropping
                    # what the peer sends first: closing the socket with that
                    # unread would reset the connection and lose the close frame.
                    deadline = min(
                        anyio.current_time() + self.close_timeout, self._shutdown_deadline
                    )
                    with anyio.CancelScope(deadline=deadline) as scope:
                        self._closing.add(scope)
                        try:
                            await transport.close(close_code, close_reason)
                        finally:
                            self._closing.discard(scope)
                    # Only now is this connection done: aclose() waits for its closing handshake.
                    self._serving -= 1
                    if not self._serving and self._idle is not None:
                        self._idle.set()
        finally:
            self._gate.closed(ip, None)

    def _tasks(self) -> TaskGroup:
        if self._task_group is None:  # serve() refuses connections before start
            raise RuntimeError("the hub is not running")
        return self._task_group

    def _on_client_close(self, client: Client) -> None:
        """A client started closing: stop fan-out to it at once, before its task ends."""
        if client.close_code == CloseCode.SLOW_CONSUMER:
            self._counters.slow_consumer_disconnects += 1
        self._membership.stop_delivery(client)

    def _on_drop(self) -> None:
        self._counters.dropped += 1

    async def _authenticate(self, transport: Transport, session: Session) -> Principal:
        """Identify a connection whose handshake carried no credentials."""
        handshake = transport.handshake
        ip = handshake.client_host
        # Credentials the authenticator finds on its own (a session, say):
        # checked like any others, and refused rather than waited on.
        try:
            principal = await self._gate.implicit_principal(handshake)
        except AuthenticationError as exc:
            self._gate.failed(ip, exc)
            raise
        if principal is not None:
            return principal
        # The authenticator wants credentials: wait for a first-message ``auth``.
        with anyio.move_on_after(self.auth_timeout):
            while True:
                data = await transport.receive()
                verdict = session.receive(data, self._clock.now())
                if isinstance(verdict, Fail):
                    failure = AuthenticationError(verdict.reason)
                    self._gate.failed(ip, failure)
                    raise failure
                if isinstance(verdict, Authenticate):
                    # The same failure budget as the handshake: once it is
                    # spent, the token is not even looked at.
                    return await self._gate.verify(handshake, verdict.token)
        timeout = AuthenticationError("auth timeout", close_code=_CLOSE_AUTH_TIMEOUT, status=408)
        self._gate.failed(ip, timeout)
        raise timeout

    def _register(self, client: Client, session: Session) -> None:
        now = self._clock.now()
        session.open(now)
        self._membership.add(client)
        self._heartbeat.add(client.id, now)
        self._gate.opened(None, client.user_id)
        self._counters.connections_total += 1

    async def _unregister(self, client: Client) -> None:
        self._heartbeat.remove(client.id)
        self._expiries.remove(client.id)
        if client.id in self._clients:
            self._gate.closed(None, client.user_id)
        last_of_user = self._membership.remove(client)
        if last_of_user is not None:
            await self._sync_channel("user", last_of_user)
        rooms = list(client.rooms)
        for name in rooms:
            self._membership.leave(client, name)
        for name in rooms:
            await self._after_leave(client, name)

    async def _sync_channel(self, kind: ChannelKind, key: str) -> None:
        """Bring the backend's subscription for one channel in line with local demand.

        Serialized, so a leave and a join racing on one room cannot leave the
        node unsubscribed from a room that has members. A channel is in
        ``_channels`` only once its subscription is complete and until its
        unsubscription starts, so a join to a room this node already receives
        needs no lock: a burst of joins to one room does not queue on it.
        """
        channels = self._channels[kind]
        if key in channels and self._wants_channel(kind, key):
            return
        async with self._channel_lock:
            wanted = self._wants_channel(kind, key)
            have = key in channels
            if wanted and not have:
                await self._backend.subscribe(kind, key)
                channels.add(key)
            elif not wanted and have:
                channels.discard(key)
                await self._backend.unsubscribe(kind, key)

    def _wants_channel(self, kind: ChannelKind, key: str) -> bool:
        if kind == "room":
            return key in self._rooms
        if kind == "user":
            return key in self._users
        return key == self._node and self._state == "running"

    # ------------------------------------------------------------------ request loop

    async def _handle_frame(self, client: Client, session: Session, data: str | bytes) -> None:
        verdict = session.receive(data, self._clock.now())
        if isinstance(verdict, Handle):
            request = verdict.request
            await self._handlers[type(request)](client, request)
            return
        if verdict is None or isinstance(verdict, (Fail, Authenticate)):  # only before auth
            return
        if verdict.strike == "bad_request":
            self._counters.bad_requests += 1
        elif verdict.strike == "rate_limited":
            self._counters.rate_limited += 1
        if isinstance(verdict, Close):
            client.close(verdict.code, verdict.reason)
        else:
            client.deliver(verdict.frame)

    async def _ping(self, client: Client, request: Ping) -> None:
        client.deliver(
            encode_frame("pong", ref=request.ref) if request.ref is not None else '{"type":"pong"}'
        )

    async def _subscribe(self, client: Client, request: Subscribe) -> None:
        results: dict[str, Any] = {}
        for name in request.rooms:
            if name in client.rooms:
                results[name] = await self._room_result(name)
                continue
            if len(client.rooms) >= self.max_rooms_per_connection:
                results[name] = _room_error("limit_exceeded", "too many rooms on this connection")
                continue
            if not await self._authorizer.authorize(client.principal, "subscribe", name):
                results[name] = _room_error("forbidden", "not allowed to subscribe")
                continue
            results[name] = await self._join(client, name, request.since.get(name))
        client.deliver(encode_reply(request.ref, {"rooms": results}))

    async def _room_result(self, name: str) -> dict[str, Any]:
        """The reply for a room the client is already in: its position, where it keeps history."""
        history = self.room_options(name).history
        result: dict[str, Any] = {"ok": True}
        if history is not None:
            found = await self._backend.history(name, None, history)
            result.update(offset=found.position.offset, epoch=found.position.epoch)
        return result

    async def _join(
        self, client: Client, name: str, since: StreamPosition | None
    ) -> dict[str, Any]:
        options = self.room_options(name)
        room, held = self._membership.start_join(client, name, options)
        try:
            await self._sync_channel("room", name)
            result: dict[str, Any] = {"ok": True}
            replay: tuple[Publication, ...] = ()
            top: int | None = None
            if options.history is not None:
                found = await self._backend.history(name, since, options.history)
                top = found.position.offset
                result.update(offset=top, epoch=found.position.epoch)
                if since is not None:
                    result["recovered"] = found.recovered
                    replay = found.publications
            if client.closing:
                return _room_error("internal", "connection closing")
            # No await from here on: replay, then what arrived meanwhile, then live.
            for publication in replay:
                self._count(client.deliver(self._encode(publication), name))
            for offset, frame in held:
                if top is None or offset is None or offset > top:
                    self._count(client.deliver(frame, name))
            self._membership.join(client, room)
        finally:
            if self._membership.end_join(client, room):
                with anyio.CancelScope(shield=True):
                    await self._sync_channel("room", name)
        if options.presence:
            await self._backend.presence_add(name, PresenceEntry(client.id, client.user_id))
            await self._presence_event(name, "presence.join", client)
        return result

    async def _after_leave(self, client: Client, name: str) -> None:
        if self.room_options(name).presence:
            await self._backend.presence_remove(name, client.id)
            await self._presence_event(name, "presence.leave", client)
        if name not in self._rooms:
            await self._sync_channel("room", name)

    async def _presence_event(self, room: str, type_: str, client: Client) -> None:
        payload = dumps({"userId": client.user_id, "clientId": client.id, "info": None})
        publication = self._publication(room, type_, payload, client.user_id, frozenset(), True)
        await self._backend.publish("room", room, publication, None)

    async def _unsubscribe(self, client: Client, request: Unsubscribe) -> None:
        results: dict[str, Any] = {}
        for name in request.rooms:
            if self._membership.leave(client, name):
                await self._after_leave(client, name)
                results[name] = {"ok": True}
            else:
                results[name] = _room_error("not_found", "not subscribed")
        client.deliver(encode_reply(request.ref, {"rooms": results}))

    async def _client_publish(self, client: Client, request: Publish) -> None:
        if not await self._authorizer.authorize(client.principal, "publish", request.room):
            client.deliver(
                encode_error("forbidden", "not allowed to publish here", ref=request.ref)
            )
            return
        options = self.room_options(request.room)
        if options.client_types is not None and request.type not in options.client_types:
            client.deliver(
                encode_error("forbidden", "clients may not publish this type", ref=request.ref)
            )
            return
        message_id = await self._publish(
            (request.room,),
            request.type,
            dumps(request.payload),
            client.user_id,
            frozenset((client.id,)),
            request.ephemeral or options.client_ephemeral,
        )
        client.deliver(encode_reply(request.ref, {"id": message_id}))

    async def _presence(self, client: Client, request: Presence) -> None:
        if not self.room_options(request.room).presence:
            client.deliver(
                encode_error("not_found", "presence is off for this room", ref=request.ref)
            )
            return
        if not await self._authorizer.authorize(client.principal, "presence", request.room):
            client.deliver(
                encode_error("forbidden", "not allowed to see presence here", ref=request.ref)
            )
            return
        entries = await self._backend.presence(request.room)
        members = [{"userId": e.user_id, "clientId": e.client_id, "info": e.info} for e in entries]
        client.deliver(encode_reply(request.ref, {"room": request.room, "members": members}))

    async def _refresh(self, client: Client, request: Refresh) -> None:
        """Replace the connection's token: same subject only; rooms re-checked at once."""
        handshake = client.transport.handshake
        try:
            principal = await self._gate.verify(handshake, request.token)
        except LockedOut as exc:
            # Answered the same whatever the token, so that a locked-out address
            # cannot use refresh to tell valid tokens from invalid ones.
            client.deliver(
                encode_error(
                    "rate_limited",
                    "too many failed authentications",
                    ref=request.ref,
                    retryAfterMs=math.ceil(exc.retry_after * 1000),
                )
            )
            return
        except AuthenticationError:
            client.deliver(encode_error("unauthorized", "invalid token", ref=request.ref))
            return
        if principal.user_id != client.user_id:
            self._gate.failed(handshake.client_host, AuthenticationError("subject changed"))
            client.close(4001, "token subject changed")
            return
        client.principal = principal
        self._schedule_expiry(client)
        # The new claims may no longer allow every room the client is in.
        removed = []
        for name in list(client.rooms):
            if not await self._authorizer.authorize(principal, "subscribe", name):
                if self._membership.leave(client, name):
                    await self._after_leave(client, name)
                removed.append(name)
        expires = principal.expires_at
        client.deliver(
            encode_reply(
                request.ref,
                {
                    "expiresAt": None if expires is None else int(expires * 1000),
                    "removed": removed,
                },
            )
        )

    # ------------------------------------------------------------------ heartbeat

    async def _run_heartbeat(self) -> None:
        clock = self._clock
        heartbeat = self._heartbeat
        while True:
            now = clock.now()
            actions = heartbeat.poll(now)
            for client_id in actions.ping:
                client = self._clients.get(client_id)
                if client is None:
                    continue
                # Protocol pings where the transport has them (browsers answer
                # on their own); the application ping frame otherwise.
                if client.pingable:
                    client.request_ping(partial(self._on_pong, client_id))
                else:
                    client.deliver(PING_FRAME)
            for client_id in actions.dead:
                client = self._clients.get(client_id)
                if client is not None and not client.closing:
                    self._counters.heartbeat_timeouts += 1
                    client.close(_CLOSE_INTERNAL, "heartbeat timeout", flush=False)
            self._run_expiries(now)
            deadline = heartbeat.next_deadline()
            first = self._expiries.next_deadline()
            if first is not None:
                deadline = first if deadline is None else min(deadline, first)
            limit = now + _HEARTBEAT_MAX_SLEEP
            self._sleep_until = limit if deadline is None else min(deadline, limit)
            with anyio.CancelScope() as self._sleep:
                await clock.sleep_until(self._sleep_until)
            self._sleep = None

    def _schedule_expiry(self, client: Client) -> None:
        """Schedule the ``token.expiring`` notice and the 4002 close for the client's token."""
        expires_at = client.principal.expires_at
        if expires_at is None:
            # A refresh to credentials that never expire ends the old token's schedule.
            self._expiries.remove(client.id)
            return
        # Token times are wall-clock; the schedule runs on the hub's clock.
        left = expires_at - time.time()
        self._expiries.schedule(client.id, self._clock.now() + left)
        # A token that expires within the loop's current sleep must not wait
        # for its end: wake the loop to sleep until the new deadline instead.
        first = self._expiries.next_deadline()
        if self._sleep is not None and first is not None and first < self._sleep_until:
            self._sleep.cancel()

    def _run_expiries(self, now: float) -> None:
        for due in self._expiries.poll(now):
            client = self._clients.get(due.key)
            if client is None or client.closing:
                continue
            if due.action == "warn":
                payload = {"expiresInMs": due.expires_in_ms}
                client.deliver(encode_frame("token.expiring", payload=payload))
            else:
                self._counters.token_expirations += 1
                client.close(_CLOSE_TOKEN_EXPIRED, "token expired")

    def _on_pong(self, client_id: ClientId) -> None:
        if client_id in self._clients:
            self._heartbeat.seen(client_id, self._clock.now())


def _room_error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}
