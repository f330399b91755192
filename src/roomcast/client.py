"""Client: one connection's state in the hub, and its bounded outbound queue."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, NewType, Protocol

import anyio

from .auth import Principal
from .exceptions import ConnectionClosed
from .options import SlowConsumerPolicy
from .transport import PingableTransport, Transport
from .wire import encode_gap

if TYPE_CHECKING:
    from .room import Room

__all__ = ["Client", "ClientId"]

#: A connection's id, unique across nodes.
ClientId = NewType("ClientId", str)

#: Close code for a client whose queue overflowed under the ``disconnect`` policy.
CLOSE_SLOW_CONSUMER: Final = 4009


class DropCounter(Protocol):
    """Where a client counts the frames it discards under ``drop_oldest``."""

    dropped: int


class Client:
    """One connected client as the hub sees it.

    A client owns a bounded queue of frames waiting for its transport. Fan-out
    hands each frame to :meth:`deliver`, which never waits: when nothing is
    queued and the transport can take the frame at once, it is written in
    place; otherwise it is queued for the client's writer task, and when the
    queue is full the slow-consumer policy applies.

    Attributes:
        id: the connection's id.
        principal: who is connected.
        rooms: the rooms this client is a member of.
    """

    __slots__ = (
        "_close_reason",
        "_counters",
        "_drain_timeout",
        "_dropped",
        "_dropped_rooms",
        "_ping",
        "_queue",
        "_send_scope",
        "_try_send",
        "_wakeup",
        "close_code",
        "direct",
        "id",
        "max_queue",
        "on_overflow",
        "policy",
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
        max_queue: int,
        policy: SlowConsumerPolicy,
        counters: DropCounter | None = None,
    ) -> None:
        self.id = client_id
        self.transport = transport
        self.principal = principal
        self.rooms: dict[str, Room] = {}
        self.max_queue = max_queue
        self.policy = policy
        #: Called once when the ``disconnect`` policy fires (the hub counts it).
        self.on_overflow: object = None
        self.close_code: int | None = None
        self._close_reason = ""
        self._queue: deque[tuple[str, str | None]] = deque()
        self._try_send = transport.try_send
        self._wakeup: anyio.Event | None = None
        self._send_scope: anyio.CancelScope | None = None
        self._drain_timeout = 0.0
        self._ping: Callable[[], object] | None = None
        self._dropped = 0
        self._counters = counters
        self._dropped_rooms: dict[str, None] = {}
        # True while frames may go straight to the transport: nothing queued,
        # nothing in flight, not closing. Checked first on the hot path.
        self.direct = True

    @property
    def user_id(self) -> str | None:
        """The connected user, or ``None`` when anonymous."""
        return self.principal.user_id

    @property
    def closing(self) -> bool:
        """Whether the connection is being closed."""
        return self.close_code is not None

    @property
    def queued(self) -> int:
        """Frames waiting for the transport."""
        return len(self._queue)

    def deliver(self, frame: str, room: str | None = None) -> bool:
        """Hand ``frame`` to this client without waiting.

        Returns ``False`` when the frame was dropped (the client is closing, or
        its queue overflowed), ``True`` otherwise.
        """
        if self.direct:
            try:
                if self._try_send(frame):
                    return True
            except ConnectionClosed:
                self.close(1006, "")
                return False
        elif self.close_code is not None:
            return False
        return self._enqueue(frame, room)

    def _enqueue(self, frame: str, room: str | None) -> bool:
        queue = self._queue
        if len(queue) >= self.max_queue:
            if self.policy == "disconnect":
                self.close(CLOSE_SLOW_CONSUMER, "slow consumer", flush=False)
                return False
            _, dropped_room = queue.popleft()
            self._dropped += 1
            if self._counters is not None:
                self._counters.dropped += 1
            if dropped_room is not None:
                self._dropped_rooms[dropped_room] = None
        queue.append((frame, room))
        self.direct = False
        if self._wakeup is not None:
            self._wakeup.set()
        return True

    def request_ping(self, on_pong: Callable[[], object]) -> None:
        """Ask the writer to send a protocol ping (the transport must support it)."""
        self._ping = on_pong
        self.direct = False
        if self._wakeup is not None:
            self._wakeup.set()

    def close(self, code: int, reason: str, *, flush: bool = True) -> None:
        """Ask the writer to close the connection with ``code``.

        With ``flush``, frames already queued are sent first (within the
        hub's drain deadline); otherwise they are discarded. The first
        request wins.
        """
        if self.close_code is not None:
            return
        self.close_code = code
        self._close_reason = reason
        self.direct = False
        scope = self._send_scope
        if not flush:
            self._queue.clear()
            if scope is not None:
                scope.cancel()
        elif scope is not None:
            # A batch is in flight: give it the drain deadline, not forever.
            scope.deadline = min(scope.deadline, anyio.current_time() + self._drain_timeout)
        if self._wakeup is not None:
            self._wakeup.set()

    def _take(self) -> list[str]:
        frames = [frame for frame, _ in self._queue]
        self._queue.clear()
        if self._dropped:
            frames.insert(0, encode_gap(self._dropped, list(self._dropped_rooms)))
            self._dropped = 0
            self._dropped_rooms.clear()
        return frames

    async def run_writer(self, drain_timeout: float) -> tuple[int, str]:
        """Send queued frames until a close is requested; return the close code and reason.

        Runs in the connection's own task group. While a batch is in flight,
        new frames queue behind it, so per-room order holds. A close request
        cancels a stalled send (``flush=False``) or bounds it by
        ``drain_timeout`` seconds.
        """
        self._drain_timeout = drain_timeout
        transport = self.transport
        while self.close_code is None:
            on_pong = self._ping
            if not self._queue and on_pong is None:
                self.direct = True
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
                self._wakeup = None
                continue
            with anyio.CancelScope() as self._send_scope:
                try:
                    if self._queue:
                        await transport.send(self._take())
                    if on_pong is not None and isinstance(transport, PingableTransport):
                        self._ping = None
                        await transport.ping(on_pong)
                except ConnectionClosed as exc:
                    self.close(exc.code, "", flush=False)
            self._send_scope = None
        if self._queue or self._dropped:
            with anyio.move_on_after(drain_timeout):
                with contextlib.suppress(ConnectionClosed):
                    await self.transport.send(self._take())
        code = self.close_code
        return (1006 if code is None else code), self._close_reason

    def __repr__(self) -> str:
        return f"<Client {self.id} user={self.user_id!r} rooms={len(self.rooms)}>"
