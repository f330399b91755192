"""Membership: which clients are on this node, in which rooms, for which users (pure)."""

from __future__ import annotations

from typing import Any, Generic, Literal, NewType, Protocol, TypeVar

from .options import RoomOptions

__all__ = ["ClientId", "Held", "Member", "Membership", "Room"]

#: A connection's id, unique across nodes.
ClientId = NewType("ClientId", str)

#: A live frame held for a client whose history replay is under way: (offset, frame).
Held = tuple[int | None, str]


class Member(Protocol):
    """What membership needs of a connection: its ids and the rooms it is in."""

    @property
    def id(self) -> ClientId:
        """The connection's id."""
        ...

    @property
    def user_id(self) -> str | None:
        """The connected user, or ``None`` when anonymous."""
        ...

    @property
    def rooms(self) -> dict[str, Room[Any]]:
        """The rooms the connection is a member of, by name."""
        ...


M = TypeVar("M", bound=Member)


class Room(Generic[M]):
    """The local members of one room.

    A room exists on a node while it has members there (or clients joining);
    `Membership` removes it when the last one leaves.

    Attributes:
        name: the room name, e.g. ``team:t1``.
        options: the options of the room's namespace.
        members: clients that receive the room's messages, by id, in join order.
        joining: clients between joining and the end of their history replay;
            live frames for them are held here, with their offsets, and handed
            over once the replay is sent, so nothing is lost or repeated.
        offset: the offset of the last message delivered here (history rooms).
        epoch: the epoch of ``offset``, or ``None`` while no position is known.
        next_offset: the offset the next message must carry to be delivered
            straight away: ``offset + 1``, or ``-1`` while no position is known
            or a gap is being filled, so that one comparison sends every other
            message to the slow path.
        filling: while a gap is being filled from history, the live messages
            that arrived meanwhile, in arrival order; otherwise ``None``.
        old_epoch: the epoch the room left, whose late messages are dropped.
        recipients: ``members``' values as a tuple, kept for the fan-out until
            the members change (``None`` until needed again).
    """

    __slots__ = (
        "epoch",
        "filling",
        "joining",
        "members",
        "name",
        "next_offset",
        "offset",
        "old_epoch",
        "options",
        "recipients",
    )

    def __init__(self, name: str, options: RoomOptions) -> None:
        self.name = name
        self.options = options
        self.members: dict[ClientId, M] = {}
        # None while nobody is joining (almost always): an emptied dict keeps its table.
        self.joining: dict[ClientId, list[Held]] | None = None
        self.offset = 0
        self.epoch: str | None = None
        self.next_offset = -1
        self.filling: list[Any] | None = None
        self.old_epoch: str | None = None
        self.recipients: tuple[M, ...] | None = None

    def out_of_line(
        self, offset: int, epoch: str | None, item: Any
    ) -> Literal["deliver", "gap", ""]:
        """What to do with ``item``, a message at ``offset``/``epoch`` that does not follow on.

        Returns ``""`` when it is held (a fill is under way) or dropped (already
        delivered, or of the epoch the room left); ``"deliver"`` when the room
        has no position yet; ``"gap"`` when it opens a gap: it is then held in
        `filling` and the caller fills the gap from history.
        """
        if self.filling is not None:
            self.filling.append(item)
            return ""
        if self.epoch is None:
            return "deliver"
        if epoch == self.epoch:
            if offset <= self.offset:
                return ""
        elif epoch == self.old_epoch:
            return ""
        self.filling = [item]
        self.next_offset = -1
        return "gap"

    def align(self, offset: int, epoch: str) -> int | None:
        """A member joins and read the position ``offset``/``epoch`` from history.

        The first read sets the room's position. A later one may be ahead of
        the live messages still on their way to this node: the joining
        client's replay must then stop at the room's offset, returned, and
        the rest reaches it live, like the other members, rather than twice.
        """
        if self.epoch is None:
            self.advance(offset, epoch)
        elif self.epoch == epoch and self.offset < offset:
            return self.offset
        return None

    def advance(self, offset: int, epoch: str | None) -> None:
        """Record that the message at ``offset`` of ``epoch`` was delivered here."""
        if epoch != self.epoch and self.epoch is not None:
            self.old_epoch = self.epoch
        self.offset = offset
        self.epoch = epoch
        self.next_offset = offset + 1 if self.filling is None else -1

    @property
    def empty(self) -> bool:
        """Whether nobody is in or joining the room."""
        return not self.members and not self.joining

    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        return f"<Room {self.name!r} members={len(self.members)}>"


class Membership(Generic[M]):
    """The clients of one node, by id and by user, and the rooms they are in.

    Pure bookkeeping: every change is synchronous, and the methods that can
    leave a room or a user without anyone on this node say so, so that the
    caller can drop its broker subscription.

    Attributes:
        clients: connected clients by id.
        users: each user's connected clients, by user id.
        rooms: rooms with members (or clients joining) on this node, by name.
    """

    __slots__ = ("clients", "rooms", "users")

    def __init__(self) -> None:
        self.clients: dict[ClientId, M] = {}
        self.users: dict[str, dict[ClientId, M]] = {}
        self.rooms: dict[str, Room[M]] = {}

    def add(self, client: M) -> None:
        """Register a connected client (under its user, if any)."""
        self.clients[client.id] = client
        user_id = client.user_id
        if user_id is not None:
            self.users.setdefault(user_id, {})[client.id] = client

    def remove(self, client: M) -> str | None:
        """Forget a client, but not its rooms (see `leave()`).

        Returns:
            Its user id when it was that user's last client here, else ``None``.
        """
        self.clients.pop(client.id, None)
        user_id = client.user_id
        if user_id is not None:
            clients = self.users.get(user_id)
            if clients is not None:
                clients.pop(client.id, None)
                if not clients:
                    del self.users[user_id]
                    return user_id
        return None

    def start_join(self, client: M, name: str, options: RoomOptions) -> tuple[Room[M], list[Held]]:
        """Open the room if needed and hold its live frames for ``client`` until `join()`."""
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name, options)
        held: list[Held] = []
        if room.joining is None:
            room.joining = {}
        room.joining[client.id] = held
        return room, held

    def join(self, client: M, room: Room[M]) -> None:
        """Make ``client`` a member of ``room``: from now on it gets the room's frames."""
        room.members[client.id] = client
        room.recipients = None
        client.rooms[room.name] = room

    def end_join(self, client: M, room: Room[M]) -> bool:
        """Stop holding frames for ``client``, joined or not.

        Returns:
            Whether the room is now empty, and so closed.
        """
        if room.joining is not None:
            room.joining.pop(client.id, None)
            if not room.joining:
                room.joining = None
        return self._close_if_empty(room)

    def leave(self, client: M, name: str) -> bool:
        """Take ``client`` out of room ``name``; whether it was in it."""
        room = client.rooms.pop(name, None)
        if room is None:
            return False
        room.members.pop(client.id, None)
        room.recipients = None
        self._close_if_empty(room)
        return True

    def stop_delivery(self, client: M) -> None:
        """Stop fan-out to a closing client at once; its own list of rooms stays until it leaves."""
        for room in client.rooms.values():
            room.members.pop(client.id, None)
            room.recipients = None

    def _close_if_empty(self, room: Room[M]) -> bool:
        if room.empty and self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            return True
        return False
