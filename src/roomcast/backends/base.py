"""The Backend seam: how publications travel between nodes, and where history and presence live."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

from ..options import History
from ..wire import StreamPosition

__all__ = [
    "Backend",
    "BackendStatus",
    "ChannelKind",
    "Delivery",
    "HistoryResult",
    "PresenceEntry",
    "Publication",
    "Resync",
]

from ..config import DEFAULT_POSITION_TTL as DEFAULT_POSITION_TTL

#: What a channel carries: a room's publications, a user's (every connection of the
#: user), or a node's (messages for one connection held by that node).
ChannelKind = Literal["room", "user", "node"]


class Publication(NamedTuple):
    """One published message, as it travels between nodes.

    An immutable record (a named tuple: built once per publish on the hot
    path, where a frozen dataclass costs several times more); copy it with
    ``publication._replace(offset=...)``.

    Attributes:
        room: the room, or ``None`` for a message to a user or a client.
        type: the event type.
        id: the message id, shared by every copy of one publish.
        payload_json: the payload, already encoded as JSON.
        timestamp: milliseconds since the epoch.
        user_id: the publisher, or ``None``.
        ephemeral: never stored in history.
        exclude: client ids that must not receive it (the sender, by default).
        offset: position in the room's history (set by the backend).
        epoch: the room's history epoch (set by the backend).
        client: the target client id, for a message to one client.
    """

    room: str | None
    type: str
    id: str
    payload_json: str
    timestamp: int
    user_id: str | None = None
    ephemeral: bool = False
    exclude: frozenset[str] = frozenset()
    offset: int | None = None
    epoch: str | None = None
    client: str | None = None


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """What a backend found when asked for a room's messages.

    Attributes:
        recovered: ``True`` when ``publications`` are exactly the messages
            after the position asked for (all of them, or the first ``limit``),
            or the last messages when no position was given; ``False`` when
            that cannot be guaranteed (pruned, expired, other epoch), in which
            case ``publications`` is empty.
        publications: the messages, oldest first.
        position: the room's latest position when the history was read.
    """

    recovered: bool
    publications: tuple[Publication, ...]
    position: StreamPosition


@dataclass(frozen=True, slots=True)
class PresenceEntry:
    """One connection present in a room."""

    client_id: str
    user_id: str | None
    info: object = None


@dataclass(frozen=True, slots=True)
class BackendStatus:
    """How a backend's link to its broker is doing now.

    See [`Backend.status()`][roomcast.backends.base.Backend.status].

    Attributes:
        connected: the backend can publish and receive now.
        reconnects: times the broker connection was lost and made again since start.
        last_error: the last broker failure, as a short message, or ``None``.
        lag: seconds a probe publication took to come back through the broker's
            pub/sub on its last check, or ``None`` when not measured.
    """

    connected: bool
    reconnects: int = 0
    last_error: str | None = None
    lag: float | None = None


#: What the hub registers with [`Backend.on_resync()`][roomcast.backends.base.Backend.on_resync]:
#: called, synchronously and from the hub's event loop, when the backend may have
#: missed publications of channels it stayed subscribed to.
Resync = Callable[[], None]

#: Where a backend hands the publications of the channels this node subscribed to.
#: ``kind`` is ``"room"``, ``"user"`` or ``"node"`` and ``key`` the room, user or node id.
Delivery = Callable[[ChannelKind, str, Publication], None]


class Backend(ABC):
    """Carries publications between the nodes of one application.

    The hub subscribes a node to a room when the room's first local member
    joins and unsubscribes it when the last one leaves, so a node receives
    only the rooms it has members in. Every publication for a room reaches
    every subscribed node in one order, the order offsets are assigned in.
    """

    @abstractmethod
    async def start(self, deliver: Delivery) -> None:
        """Connect and start handing publications to ``deliver``.

        ``deliver`` is synchronous and never raises; it must be called from
        the event loop the hub runs in.

        Raises:
            BackendError: the broker cannot be reached.
        """

    @abstractmethod
    async def aclose(self) -> None:
        """Disconnect; publications are no longer delivered."""

    def status(self) -> BackendStatus:
        """How the link to the broker is doing now; a backend without a broker is connected."""
        return BackendStatus(connected=True)

    def on_resync(self, callback: Resync | None) -> None:
        """Register the hub's `callback`, called after publications may have been missed.

        A backend calls it (with `_resynced()`) when its broker connection was lost
        and made again, since messages published meanwhile never reached this node;
        the hub then checks the position of every history room it holds and fills
        the gap or tells the members. The in-memory backend never loses one.
        """
        self._resync = callback

    def _resynced(self) -> None:
        callback: Resync | None = getattr(self, "_resync", None)
        if callback is not None:
            callback()

    @abstractmethod
    async def subscribe(self, kind: ChannelKind, key: str) -> None:
        """Receive the publications of channel ``kind``/``key`` on this node.

        Raises:
            BackendError: the broker failed.
        """

    @abstractmethod
    async def unsubscribe(self, kind: ChannelKind, key: str) -> None:
        """Stop receiving channel ``kind``/``key`` on this node."""

    @abstractmethod
    async def publish(
        self, kind: ChannelKind, key: str, publication: Publication, history: History | None
    ) -> Publication:
        """Send ``publication`` to every node subscribed to ``kind``/``key``.

        With ``history`` (rooms only) and a non-ephemeral publication, the
        backend appends it to the room's stream, atomically with sending it,
        and returns it with ``offset`` and ``epoch`` set.

        Raises:
            BackendError: the broker failed; the publication may not have been sent.
        """

    @abstractmethod
    async def history(
        self,
        room: str,
        since: StreamPosition | None,
        history: History,
        *,
        limit: int | None = None,
    ) -> HistoryResult:
        """The messages of ``room`` after ``since``, or its last ``limit`` messages.

        With ``since``, the messages after that position, oldest first: every
        one of them, or the first ``limit``; ``recovered`` is ``False`` (and
        there are none) when the message right after ``since`` is no longer
        kept or the epoch is not the room's. Without ``since``, the room's last
        ``limit`` messages still kept, oldest first (``recovered`` is ``True``),
        or none at all when ``limit`` is ``None``: only the latest position.

        Reading a room with no position yet gives it one (offset 0, a new
        epoch), so that the reader learns the epoch its next messages carry.

        Raises:
            BackendError: the broker failed.
        """

    @abstractmethod
    async def presence_add(self, room: str, entry: PresenceEntry) -> None:
        """Record that a connection is present in ``room``."""

    @abstractmethod
    async def presence_remove(self, room: str, client_id: str) -> None:
        """Forget a connection's presence in ``room``."""

    @abstractmethod
    async def presence(self, room: str) -> list[PresenceEntry]:
        """Every connection present in ``room``, on every node."""
