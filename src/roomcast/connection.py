"""Connection: one transport served from handshake to closing handshake, and its requests."""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio
from anyio.abc import TaskGroup

from ._reader import ReadLoopStop
from .admission import Admission, Gatekeeper, LockedOut, refusal_reason
from .auth import Authorizer, Principal
from .clock import Clock
from .exceptions import AuthenticationError, BackendError, ConnectionClosed
from .peer import Client, ClientId
from .protocol import CLOSE_ABNORMAL, PONG_FRAME, PROTOCOL, CloseCode
from .rooms import Rooms, encode, room_error
from .schedule import Schedule
from .session import Authenticate, Close, Fail, Handle, Reply, Session, Strike
from .settings import Settings
from .transport import Handshake, Transport
from .wire import (
    HistoryRequest,
    Ping,
    Presence,
    Publish,
    Refresh,
    Request,
    Subscribe,
    Unsubscribe,
    dumps,
    encode_ack,
    encode_error,
    encode_frame,
    encode_history_reply,
    encode_reply,
)

__all__ = ["Connections"]

logger = logging.getLogger("roomcast.connection")

#: Milliseconds a client is told to wait before retrying a request the backend failed.
_BACKEND_RETRY_MS: Final = 1000


class Connections:
    """The connections of one hub: each one's life in `serve()`, and its requests.

    [`serve()`][roomcast.connection.Connections.serve] authenticates a
    connection, acknowledges it, and runs its read loop, carrying out the
    [`Session`][roomcast.session.Session]'s verdict on each frame; on the way
    out it leaves every room and finishes the closing handshake. An idle
    connection is one coroutine frame, waiting in ``transport.receive()``.

    Attributes:
        serving: connections past registration whose closing handshake has not ended.
        connections_total: connections registered since start (authenticated, before the ack).
        messages_in: frames received from clients.
        bad_requests: client frames refused as malformed.
        rate_limited: client frames refused by the rate limit.
        slow_consumer_disconnects: clients closed with 4009.
        dropped: frames discarded by ``drop_oldest`` overflow.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        gate: Gatekeeper,
        rooms: Rooms,
        authorizer: Authorizer,
        schedule: Schedule,
        clock: Clock,
        node: str,
        admit: Callable[[Handshake], Awaitable[Admission]],
        running: Callable[[], bool],
    ) -> None:
        """Create the connections of a hub that is not started yet.

        Args:
            settings: the hub's settings.
            gate: admission, connection counts and the failed-login budget.
            rooms: membership, channels and publishing.
            authorizer: decides subscribe/publish/presence per room.
            schedule: heartbeats and token expiry (connections join and leave it).
            clock: the hub's clock.
            node: this node's id, the prefix of its client ids.
            admit: the hub's decision on a handshake nobody asked about yet.
            running: whether the hub still accepts connections.
        """
        self._settings = settings
        self._gate = gate
        self._rooms = rooms
        self._authorizer = authorizer
        self._schedule = schedule
        self._clock = clock
        self._node = node
        self._admit = admit
        self._running = running
        self._task_group: TaskGroup | None = None
        self.serving = 0
        self._idle: anyio.Event | None = None
        # The closing handshakes under way, each bounded by its scope's deadline.
        self._closing: set[anyio.CancelScope] = set()
        # When shutdown gives up on the closing handshakes still under way.
        self._shutdown_deadline = math.inf
        self.connections_total = 0
        self.messages_in = 0
        self.bad_requests = 0
        self.rate_limited = 0
        self.slow_consumer_disconnects = 0
        self.dropped = 0
        # Bound once and shared by every client, rather than a bound method each.
        self._client_closed = self._on_client_close
        self._frame_dropped = self._on_drop
        # The handler of each request an open session hands over (see session.RULES).
        self._handlers: dict[type[Request], Callable[[Client, Any], Awaitable[None]]] = {
            Subscribe: self._subscribe,
            Unsubscribe: self._unsubscribe,
            Publish: self._publish,
            Presence: self._presence,
            HistoryRequest: self._history,
            Refresh: self._refresh,
            Ping: self._ping,
        }

    def start(self, task_group: TaskGroup) -> None:
        """Run clients' writers in ``task_group`` (the hub's) from now on."""
        self._task_group = task_group

    async def shutdown(self, deadline: float) -> None:
        """Close every connection with 1001; return once all are done, or at ``deadline``."""
        self._shutdown_deadline = deadline
        for scope in self._closing:  # closing for another reason, with more time
            scope.deadline = min(scope.deadline, deadline)
        for client in list(self._rooms.clients.values()):
            client.close(CloseCode.GOING_AWAY, "server shutting down")
        if self.serving:
            self._idle = anyio.Event()
            with anyio.CancelScope(deadline=deadline):
                await self._idle.wait()

    # ------------------------------------------------------------------ one connection

    async def serve(self, transport: Transport, admission: Admission | None = None) -> None:
        """Run one accepted connection to its end (see [`Hub.serve()`][roomcast.Hub.serve])."""
        # Adapters build the handshake on each access: read it once, and keep
        # only the peer's address for the connection's lifetime.
        handshake = transport.handshake
        ip = handshake.client_host
        if admission is None:
            admission = await self._admit(handshake)
        del handshake
        if not admission.accepted:
            with anyio.CancelScope(shield=True):
                await transport.close(admission.close_code, admission.reason)
            return
        # Counted from acceptance, so sockets still waiting to authenticate count too.
        self._gate.opened(ip, None)
        # One coroutine frame per idle connection: the read loop runs here, and
        # what happens once (authentication, the ack, the closing handshake)
        # runs in helpers, so that their variables take no room in this frame
        # for the connection's lifetime.
        try:
            session = Session(self._settings.session)
            principal = await self._identify(transport, admission.principal, session)
            del admission  # not kept alive for the connection's lifetime
            if principal is None:
                return
            client = self._open(transport, principal, session)
            try:
                await self._acknowledge(client)
                # The request loop runs in this task, inline (one coroutine frame
                # fewer per idle connection). A writer runs in the hub's task group
                # only while frames are queued; closing stops the loop once what
                # had to be flushed is flushed (see ReadLoopStop). Entered and
                # exited by hand: a `with` would keep its bound __exit__ alive
                # for the connection's lifetime.
                stop = ReadLoopStop()
                stop.__enter__()
                try:
                    client.attach(self._tasks(), stop)
                    try:
                        while not client.closing:
                            stop.waiting = True
                            try:
                                data = await transport.receive()
                            finally:
                                stop.waiting = False
                            self.messages_in += 1
                            self._schedule.seen(client.id, self._clock.now())
                            with stop.handling():
                                await self._handle_frame(client, session, data)
                    except ConnectionClosed as exc:
                        client.close(exc.code, exc.reason, flush=False)
                    except Exception:
                        logger.exception("connection %s failed", client.id)
                        client.close(CloseCode.INTERNAL_ERROR, "internal error", flush=False)
                except BaseException as exc:
                    if not stop.__exit__(type(exc), exc, exc.__traceback__):
                        raise
                else:
                    stop.__exit__(None, None, None)
                # A writer may still be flushing (bounded by the drain deadline).
                await client.writer_finished()
            finally:
                await self._finish(client, transport, session)
        finally:
            self._gate.closed(ip, None)

    async def _identify(
        self, transport: Transport, principal: Principal | None, session: Session
    ) -> Principal | None:
        """Who is connecting; ``None`` (the transport closed) when they may not."""
        handshake_principal = principal
        try:
            principal = handshake_principal or await self._authenticate(transport, session)
        except AuthenticationError as exc:  # counted where it was raised
            with anyio.CancelScope(shield=True):
                await transport.close(exc.close_code, refusal_reason(exc))
            return None
        except ConnectionClosed:
            return None
        if handshake_principal is None and self._gate.user_refused(principal.user_id):
            with anyio.CancelScope(shield=True):
                await transport.close(
                    CloseCode.TRY_AGAIN_LATER, "too many connections for this user"
                )
            return None
        if not self._running():
            # Admitted before shutdown began, accepted after: never acknowledged.
            with anyio.CancelScope(shield=True, deadline=self._shutdown_deadline):
                await transport.close(CloseCode.GOING_AWAY, "server shutting down")
            return None
        return principal

    def _open(self, transport: Transport, principal: Principal, session: Session) -> Client:
        """Make the client of an authenticated connection and register it."""
        # The node prefix routes send_to_client to the node holding the client.
        client = Client(
            ClientId(f"{self._node}.{secrets.token_hex(6)}"),
            transport,
            principal,
            limits=self._settings.queue,
            on_close=self._client_closed,
            on_drop=self._frame_dropped,
        )
        self._register(client, session)
        self.serving += 1
        return client

    async def _acknowledge(self, client: Client) -> None:
        """Send ``connection.ack``, once ``send_to_user`` reaches the client."""
        if client.user_id is not None:
            await self._rooms.sync_channel("user", client.user_id)
        expires = client.principal.expires_at
        client.deliver(
            encode_ack(
                client_id=client.id,
                user_id=client.user_id,
                heartbeat_ms=int(self._settings.heartbeat.interval * 1000),
                expires_at=None if expires is None else int(expires * 1000),
                protocol=PROTOCOL,
            )
        )
        # After the ack, so that token.expiring never comes before it.
        self._schedule.token(client)

    async def _finish(self, client: Client, transport: Transport, session: Session) -> None:
        """Leave every room and finish the closing handshake; shielded from cancellation."""
        with anyio.CancelScope(shield=True):
            # Cancelled from outside (the server is going away), or a bug.
            client.close(CloseCode.GOING_AWAY, "going away", flush=False)
            session.close()
            await self._unregister(client)
            close_code = client.close_code or CloseCode.NORMAL
            close_reason = client.close_reason
            # 1006 means the peer is already gone; closing still frees
            # the transport, and 1006 itself may not be sent on the wire.
            if close_code == CLOSE_ABNORMAL:
                close_code, close_reason = CloseCode.NORMAL, ""
            # The close frame waits behind what the transport holds, and
            # the transport for the peer's answer, reading and dropping
            # what the peer sends first: closing the socket with that
            # unread would reset the connection and lose the close frame.
            deadline = min(
                anyio.current_time() + self._settings.close_timeout,
                self._shutdown_deadline,
            )
            with anyio.CancelScope(deadline=deadline) as scope:
                self._closing.add(scope)
                try:
                    await transport.close(close_code, close_reason)
                finally:
                    self._closing.discard(scope)
            # Only now is this connection done: shutdown waits for its closing handshake.
            self.serving -= 1
            if not self.serving and self._idle is not None:
                self._idle.set()

    def _tasks(self) -> TaskGroup:
        if self._task_group is None:  # serve() refuses connections before start
            raise RuntimeError("the hub is not running")
        return self._task_group

    def _on_client_close(self, client: Client) -> None:
        """A client started closing: stop fan-out to it at once, before its task ends."""
        if client.close_code == CloseCode.SLOW_CONSUMER:
            self.slow_consumer_disconnects += 1
        self._rooms.stop_delivery(client)

    def _on_drop(self) -> None:
        self.dropped += 1

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
        with anyio.move_on_after(self._settings.auth_timeout):
            while True:
                data = await transport.receive()
                match session.receive(data, self._clock.now()):
                    case Authenticate(token):
                        # The same failure budget as the handshake: once it is
                        # spent, the token is not even looked at.
                        return await self._gate.verify(handshake, token)
                    case Fail(reason):
                        failure = AuthenticationError(reason)
                        self._gate.failed(ip, failure)
                        raise failure
                    # None: ignored while waiting (pings, pongs).
        timeout = AuthenticationError("auth timeout", close_code=CloseCode.AUTH_TIMEOUT, status=408)
        self._gate.failed(ip, timeout)
        raise timeout

    def _register(self, client: Client, session: Session) -> None:
        now = self._clock.now()
        session.open(now)
        self._rooms.add(client)
        self._schedule.add(client.id, now)
        self._gate.opened(None, client.user_id)
        self.connections_total += 1

    async def _unregister(self, client: Client) -> None:
        self._schedule.remove(client.id)
        if client.id in self._rooms.clients:
            self._gate.closed(None, client.user_id)
        await self._rooms.remove(client)

    # ------------------------------------------------------------------ requests

    async def _handle_frame(self, client: Client, session: Session, data: str | bytes) -> None:
        """Carry out the session's verdict on one frame of an open connection."""
        match session.receive(data, self._clock.now()):
            case Handle(request):
                try:
                    await self._handlers[type(request)](client, request)
                except BackendError as exc:
                    # The broker is down or slow: this request failed, the
                    # connection did not (it may retry, and it is still served).
                    logger.warning("%s from %s failed: %s", type(request).__name__, client.id, exc)
                    client.deliver(
                        encode_error(
                            "internal",
                            "the backend is unavailable; try again",
                            ref=request.ref,
                            retryAfterMs=_BACKEND_RETRY_MS,
                        )
                    )
            case Reply(frame, strike):
                self._count_strike(strike)
                client.deliver(frame)
            case Close(code, reason, strike):
                self._count_strike(strike)
                client.close(code, reason)
            # None: ignored. Authenticate and Fail come only before the session opens.

    def _count_strike(self, strike: Strike | None) -> None:
        if strike == "bad_request":
            self.bad_requests += 1
        elif strike == "rate_limited":
            self.rate_limited += 1

    async def _ping(self, client: Client, request: Ping) -> None:
        client.deliver(PONG_FRAME if request.ref is None else encode_frame("pong", ref=request.ref))

    async def _subscribe(self, client: Client, request: Subscribe) -> None:
        results: dict[str, Any] = {}
        for name in request.rooms:
            if name in client.rooms:
                results[name] = await self._rooms.position(name)
                continue
            if len(client.rooms) >= self._settings.max_rooms_per_connection:
                results[name] = room_error("limit_exceeded", "too many rooms on this connection")
                continue
            if not await self._authorizer.authorize(client.principal, "subscribe", name):
                results[name] = room_error("forbidden", "not allowed to subscribe")
                continue
            results[name] = await self._rooms.join(
                client, name, request.since.get(name), request.history.get(name)
            )
        client.deliver(encode_reply(request.ref, {"rooms": results}))

    async def _unsubscribe(self, client: Client, request: Unsubscribe) -> None:
        results: dict[str, Any] = {}
        for name in request.rooms:
            if await self._rooms.leave(client, name):
                results[name] = {"ok": True}
            else:
                results[name] = room_error("not_found", "not subscribed")
        client.deliver(encode_reply(request.ref, {"rooms": results}))

    async def _publish(self, client: Client, request: Publish) -> None:
        if not await self._authorizer.authorize(client.principal, "publish", request.room):
            client.deliver(
                encode_error("forbidden", "not allowed to publish here", ref=request.ref)
            )
            return
        options = self._settings.room_options(request.room)
        if options.client_types is not None and request.type not in options.client_types:
            client.deliver(
                encode_error("forbidden", "clients may not publish this type", ref=request.ref)
            )
            return
        message_id = await self._rooms.publish(
            (request.room,),
            request.type,
            dumps(request.payload),
            client.user_id,
            frozenset((client.id,)),
            request.ephemeral or options.client_ephemeral,
        )
        client.deliver(encode_reply(request.ref, {"id": message_id}))

    async def _presence(self, client: Client, request: Presence) -> None:
        if not self._settings.room_options(request.room).presence:
            client.deliver(
                encode_error("not_found", "presence is off for this room", ref=request.ref)
            )
            return
        if not await self._authorizer.authorize(client.principal, "presence", request.room):
            client.deliver(
                encode_error("forbidden", "not allowed to see presence here", ref=request.ref)
            )
            return
        members = await self._rooms.presence(request.room)
        client.deliver(encode_reply(request.ref, {"room": request.room, "members": members}))

    async def _history(self, client: Client, request: HistoryRequest) -> None:
        """A room's kept messages, for a connection that may subscribe to it (need not be in it)."""
        if self._settings.room_options(request.room).history is None:
            client.deliver(encode_error("not_found", "this room keeps no history", ref=request.ref))
            return
        if not await self._authorizer.authorize(client.principal, "subscribe", request.room):
            client.deliver(
                encode_error("forbidden", "not allowed to read this room", ref=request.ref)
            )
            return
        found = await self._rooms.history(request.room, request.limit, request.since)
        if found is None:  # not reached: a namespace's options do not change while running
            client.deliver(encode_error("not_found", "this room keeps no history", ref=request.ref))
            return
        client.deliver(
            encode_history_reply(
                request.ref,
                request.room,
                [encode(publication) for publication in found.publications],
                found.position.offset,
                found.position.epoch,
                None if request.since is None else found.recovered,
            )
        )

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
            client.close(CloseCode.INVALID_TOKEN, "token subject changed")
            return
        client.principal = principal
        self._schedule.token(client)
        # The new claims may no longer allow every room the client is in.
        removed = []
        for name in list(client.rooms):
            if not await self._authorizer.authorize(principal, "subscribe", name):
                await self._rooms.leave(client, name)
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
