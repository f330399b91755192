"""Peer: the server-side state of one connection — its bounded outbound queue, writer and close."""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

import anyio
from anyio.abc import TaskGroup

from .auth import Principal
from .config import DEFAULT_DRAIN_TIMEOUT, DEFAULT_MAX_QUEUE, DEFAULT_MAX_QUEUE_BYTES
from .exceptions import ConnectionClosed
from .membership import ClientId as ClientId
from .membership import Room
from .options import SlowConsumerPolicy
from .protocol import CLOSE_ABNORMAL, CloseCode
from .transport import EagerTransport, PingableTransport, Transport, TryPingTransport
from .wire import encode_gap

__all__ = ["Client", "ClientId", "QueueLimits", "deliver_all"]

logger = logging.getLogger("roomcast.peer")


class _Outlet(Protocol):
    """What takes a frame in place: a transport, or a client on an eager one."""

    def try_send(self, frame: str) -> bool: ...


class _ReaderStop(Protocol):
    """What stops the connection's read loop (a ``ReadLoopStop`` or a cancel scope)."""

    def cancel(self) -> None: ...


#: Seconds an idle writer waits for more frames before its task ends.
WRITER_LINGER: Final = 1.0


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """How much may wait for one client, and what happens past it; one object per hub.

    Attributes:
        max_frames: frames that may wait before ``policy`` applies.
        max_bytes: characters of frames that may wait before ``policy`` applies.
        policy: ``"disconnect"`` (close 4009) or ``"drop_oldest"`` (a ``gap`` notice).
        drain_timeout: seconds a closing client gets to flush what is queued.
    """

    max_frames: int = DEFAULT_MAX_QUEUE
    max_bytes: int = DEFAULT_MAX_QUEUE_BYTES
    policy: SlowConsumerPolicy = "disconnect"
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT


def deliver_all(clients: Iterable[Client], frame: str, room: str | None = None) -> int:
    """Hand ``frame`` to each of ``clients`` without waiting; return how many dropped it.

    The one delivery rule, for a room's fan-out and a single client alike: the
    frame is written in place when nothing is queued and the transport can take
    it now; otherwise it joins the client's bounded queue. A transport found
    closed mid-loop closes its client (1006, recorded) and the loop goes on.
    """
    dropped = 0
    for client in clients:
        if client.direct:
            try:
                if client.outlet.try_send(frame):
                    continue
            except ConnectionClosed:
                client.close(CLOSE_ABNORMAL, "", flush=False)
                dropped += 1
                continue
        if not client.enqueue(frame, room):
            dropped += 1
    return dropped


class Client:
    """One connected client as the hub sees it.

    Fan-out hands each frame to every member with `deliver_all()`, and
    `deliver()` hands one frame to one client by the same rule; neither
    waits. When nothing is queued and the transport can take the frame at
    once, it is written in place. Otherwise it joins a bounded queue drained by a writer
    task that exists only while something is queued, so an idle connection
    costs no task. When the queue is full the slow-consumer policy applies.

    Attributes:
        id: the connection's id.
        principal: who is connected.
        rooms: the rooms this client is a member of.
        transport: the connection.
        limits: the queue's bounds and slow-consumer policy, shared by every
            client of the hub.
        direct: whether frames may go straight to the transport right now
            (nothing queued, nothing in flight, not closing).
        outlet: what `deliver_all()` calls ``try_send`` on: the transport;
            for an [`EagerTransport`][roomcast.transport.EagerTransport] (Starlette on
            asyncio), the client itself, whose `try_send()` starts the send in
            place and leaves only a send that has to wait to the writer.
        close_code: the code the connection is closing with, once it is.
        pingable: whether the transport sends protocol pings (a
            [`PingableTransport`][roomcast.transport.PingableTransport]).
    """

    __slots__ = (
        "_close_deadline",
        "_close_reason",
        "_dropped",
        "_dropped_rooms",
        "_finished",
        "_inflight",
        "_on_close",
        "_on_drop",
        "_ping",
        "_ping_in_place",
        "_queue",
        "_queued_bytes",
        "_reader_scope",
        "_send_scope",
        "_task_group",
        "_wakeup",
        "_writing",
        "close_code",
        "direct",
        "id",
        "limits",
        "outlet",
        "pingable",
        "principal",
        "rooms",
        "transport",
    )

    def __init__(
        self,
        client_id: ClientId,
        transport: Transport,
        principal: Principal,
        *,
        limits: QueueLimits,
        on_close: Callable[[Client], None] | None = None,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        self.id = client_id
        self.transport = transport
        self.principal = principal
        self.rooms: dict[str, Room[Client]] = {}
        # Shared with every client of the hub: one reference instead of a field each.
        self.limits = limits
        self._queued_bytes = 0
        # The transport itself, not its bound try_send: one object fewer per
        # client, and one pointer fewer to follow per delivery.
        self.outlet: _Outlet = transport
        #: The rest of a send that `EagerTransport.begin_send()` started
        #: but could not finish without waiting; the writer finishes it first.
        self._inflight: Coroutine[Any, Any, None] | None = None
        self._finished: anyio.Event | None = None
        if isinstance(transport, EagerTransport) and transport.eager:
            self.outlet = self
        self.direct = True
        self.close_code: int | None = None
        self._close_reason = ""
        self._close_deadline = math.inf
        self._on_close = on_close
        self._on_drop = on_drop
        # Created on first use: most connections never queue anything.
        self._queue: deque[tuple[str, str | None]] | None = None
        self._dropped = 0
        self._dropped_rooms: dict[str, None] | None = None
        self._ping: Callable[[], object] | None = None
        self._task_group: TaskGroup | None = None
        self._reader_scope: _ReaderStop | None = None
        self._send_scope: anyio.CancelScope | None = None
        self._writing = False
        self._wakeup: anyio.Event | None = None
        # Checked once: a protocol check is slow. A TryPingTransport is a PingableTransport
        # with try_ping, which a plain look-up finds faster than a second protocol check.
        self.pingable = isinstance(transport, PingableTransport)
        self._ping_in_place = self.pingable and callable(getattr(transport, "try_ping", None))

    @property
    def user_id(self) -> str | None:
        """The connected user, or ``None`` when anonymous."""
        return self.principal.user_id

    @property
    def closing(self) -> bool:
        """Whether the connection is being closed."""
        return self.close_code is not None

    @property
    def close_reason(self) -> str:
        """The reason the connection is closing with."""
        return self._close_reason

    @property
    def queued(self) -> int:
        """Frames waiting for the transport."""
        return len(self._queue) if self._queue else 0

    def attach(self, task_group: TaskGroup, reader_scope: _ReaderStop) -> None:
        """Give the client the task group its writer runs in, and its read loop's stop.

        The writer runs in ``task_group`` while frames are queued; closing
        cancels ``reader_scope`` once what had to be flushed is flushed.
        """
        self._task_group = task_group
        self._reader_scope = reader_scope
        if self._queue or self._ping is not None or self._inflight is not None:
            # Closing or not, what is pending goes out first (a close without
            # flush has already dropped it).
            self._start_writer()
        elif self.close_code is not None and not self._writing:
            reader_scope.cancel()

    async def writer_finished(self) -> None:
        """Return once no writer runs for this client."""
        if self._writing:
            finished = self._finished = anyio.Event()
            await finished.wait()

    def deliver(self, frame: str, room: str | None = None) -> bool:
        """Hand ``frame`` to this client without waiting.

        Returns ``False`` when the frame was dropped (the client is closing, or
        its queue overflowed under ``disconnect``), ``True`` otherwise.
        """
        return deliver_all((self,), frame, room) == 0

    def try_send(self, frame: str) -> bool:
        """The `outlet` on an [`EagerTransport`][roomcast.EagerTransport]: start the send in place.

        The frame is always taken: when the send cannot finish without
        waiting, its rest goes to the writer, and later frames queue behind it.
        """
        # Only ever the outlet of an eager transport (see __init__).
        transport: EagerTransport = self.transport  # type: ignore[assignment]
        rest = transport.begin_send(frame)
        if rest is not None:
            self._inflight = rest
            self.direct = False
            self._wake_writer()
        return True

    def enqueue(self, frame: str, room: str | None = None) -> bool:
        """Queue ``frame`` for the writer; the slow path of `deliver()`."""
        if self.close_code is not None:
            return False
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        size = len(frame)
        limits = self.limits
        while queue and (
            len(queue) >= limits.max_frames or self._queued_bytes + size > limits.max_bytes
        ):
            if limits.policy == "disconnect":
                self.close(CloseCode.SLOW_CONSUMER, "slow consumer", flush=False)
                return False
            dropped_frame, dropped_room = queue.popleft()
            self._queued_bytes -= len(dropped_frame)
            self._dropped += 1
            if dropped_room is not None:
                if self._dropped_rooms is None:
                    self._dropped_rooms = {}
                self._dropped_rooms[dropped_room] = None
            if self._on_drop is not None:
                self._on_drop()
        queue.append((frame, room))
        self._queued_bytes += size
        self.direct = False
        self._wake_writer()
        return True

    def request_ping(self, on_pong: Callable[[], object]) -> None:
        """Ask for a protocol ping, where the transport has them; ``on_pong`` runs on its pong.

        By the rule of [`deliver()`][roomcast.peer.Client.deliver]: when nothing is queued
        or in flight and the transport is a
        [`TryPingTransport`][roomcast.transport.TryPingTransport] that can take it now, the
        ping is written in place, and no task is started; otherwise the writer sends it,
        after what is queued. A transport found closed closes the client (1006), as a
        failed write does; any other error of the transport's is logged and closes the
        client (1011), as in the writer, and never reaches the caller.
        """
        if self.close_code is not None or not self.pingable:
            return
        if self.direct and self._ping_in_place:
            transport = cast(TryPingTransport, self.transport)
            try:
                if transport.try_ping(on_pong):
                    return
            except ConnectionClosed:
                self.close(CLOSE_ABNORMAL, "", flush=False)
                return
            except Exception:
                # Called from the hub's heartbeat loop: a transport's bug must end
                # this connection, never the loop.
                logger.exception("ping of connection %s failed", self.id)
                self.close(CloseCode.INTERNAL_ERROR, "internal error", flush=False)
                return
        self._ping = on_pong
        self.direct = False
        self._wake_writer()

    def close(self, code: int, reason: str, *, flush: bool = True) -> None:
        """Close the connection with ``code``; the first request wins.

        With ``flush``, frames already queued are sent first, within the
        drain deadline; otherwise they are discarded and a send in flight is
        abandoned. Closing again without ``flush`` abandons what a first close
        was still flushing.
        """
        if self.close_code is None:
            self.close_code = code
            self._close_reason = reason
            self._close_deadline = anyio.current_time() + self.limits.drain_timeout
            self.direct = False
            if self._on_close is not None:
                self._on_close(self)
        elif flush:
            return
        if not flush:
            self._queue = None
            self._queued_bytes = 0
            self._ping = None
            inflight, self._inflight = self._inflight, None
            if inflight is not None:
                inflight.close()  # abandoned, as a send in flight is
            if self._send_scope is not None:
                self._send_scope.cancel()
        elif self._send_scope is not None:
            self._send_scope.deadline = min(self._send_scope.deadline, self._close_deadline)
        if self._wakeup is not None:
            self._wakeup.set()
        if not self._writing and self._reader_scope is not None:
            self._reader_scope.cancel()

    def _wake_writer(self) -> None:
        if not self._writing:
            self._start_writer()
        elif self._wakeup is not None:
            self._wakeup.set()

    def _start_writer(self) -> None:
        if self._task_group is None:
            return  # attach() starts it
        self._writing = True
        self._task_group.start_soon(self._write)

    def _take(self) -> list[str]:
        queue = self._queue
        frames = [frame for frame, _ in queue] if queue else []
        self._queue = None
        self._queued_bytes = 0
        if self._dropped:
            rooms = list(self._dropped_rooms or ())
            frames.insert(0, encode_gap(self._dropped, rooms))
            self._dropped = 0
            self._dropped_rooms = None
        return frames

    async def _write(self) -> None:
        """Drain the queue (and a requested ping); linger briefly, then end.

        While a batch is in flight, new frames queue behind it, so per-room
        order holds. After draining, the writer waits up to
        `WRITER_LINGER` seconds for more, so a steady stream to a
        transport that can only ``await`` reuses one task instead of starting
        one per frame; an idle connection keeps no writer.
        """
        transport = self.transport
        try:
            with anyio.CancelScope() as scope:
                self._send_scope = scope
                if self.close_code is not None:
                    scope.deadline = self._close_deadline
                while True:
                    inflight = self._inflight
                    if inflight is not None:
                        self._inflight = None
                        try:
                            await inflight
                        except ConnectionClosed as exc:
                            self.close(exc.code, exc.reason, flush=False)
                            break
                        continue
                    if self._queue or self._dropped:
                        try:
                            await transport.send(self._take())
                        except ConnectionClosed as exc:
                            self.close(exc.code, exc.reason, flush=False)
                            break
                        continue
                    on_pong = self._ping
                    if on_pong is not None:
                        self._ping = None
                        try:
                            await transport.ping(on_pong)  # type: ignore[attr-defined]
                        except ConnectionClosed as exc:
                            self.close(exc.code, exc.reason, flush=False)
                            break
                        continue
                    if self.close_code is not None:
                        break
                    self.direct = True
                    wakeup = self._wakeup = anyio.Event()
                    with anyio.move_on_after(WRITER_LINGER):
                        await wakeup.wait()
                    self._wakeup = None
                    if not (
                        self._queue
                        or self._dropped
                        or self._ping is not None
                        or self._inflight is not None
                    ):
                        break
        except Exception:
            # The writer runs in the hub's task group: a bug here must end
            # this connection, never the hub.
            logger.exception("writer of connection %s failed", self.id)
            self.close(CloseCode.INTERNAL_ERROR, "internal error", flush=False)
        finally:
            inflight, self._inflight = self._inflight, None
            if inflight is not None:  # cancelled before it was picked up
                inflight.close()
            if self._finished is not None:
                self._finished.set()
                self._finished = None
            self._send_scope = None
            self._wakeup = None
            self._writing = False
            if self.close_code is None:
                self.direct = True
            elif self._reader_scope is not None:
                self._reader_scope.cancel()

    def __repr__(self) -> str:
        return f"<Client {self.id} user={self.user_id!r} rooms={len(self.rooms)}>"
