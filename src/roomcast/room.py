"""Room: the members of one room on this node."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .options import RoomOptions

if TYPE_CHECKING:
    from .client import Client, ClientId

__all__ = ["Room"]


class Room:
    """The local members of one room.

    A room exists on a node while it has members there (or clients joining);
    the hub removes it when the last one leaves.

    Attributes:
        name: the room name, e.g. ``team:t1``.
        options: the options of the room's namespace.
        members: clients that receive the room's messages, by id, in join order.
        joining: clients between joining and the end of their history replay;
            live frames for them are held here, with their offsets, and handed
            over once the replay is sent, so nothing is lost or repeated.
    """

    __slots__ = ("joining", "members", "name", "options")

    def __init__(self, name: str, options: RoomOptions) -> None:
        self.name = name
        self.options = options
        self.members: dict[ClientId, Client] = {}
        # None while nobody is joining (almost always): an emptied dict keeps its table.
        self.joining: dict[ClientId, list[tuple[int | None, str]]] | None = None

    @property
    def empty(self) -> bool:
        """Whether nobody is in or joining the room."""
        return not self.members and not self.joining

    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        return f"<Room {self.name!r} members={len(self.members)}>"
