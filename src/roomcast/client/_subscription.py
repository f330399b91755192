"""A room the client is in, and the stream of what arrives for it (anyio)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..exceptions import ConnectionClosed
from ..wire import StreamPosition
from ._events import Received
from ._stream import EventBuffer

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["Subscription"]


class Subscription:
    """A room this client is in, and the stream of what arrives for it.

    Iterate it for the room's [`Event`][roomcast.client.Event]s, its
    [`Recovery`][roomcast.client.Recovery] notices after reconnects, its
    [`PresenceChange`][roomcast.client.PresenceChange]s and
    [`Gap`][roomcast.client.Gap]s. Iteration ends after
    [`unsubscribe`][roomcast.client.Subscription.unsubscribe] or when the
    application closes the connection; it raises the error when the server
    refused the room on a resubscribe, or when the connection closed for good
    for another reason.

    Attributes:
        room: the room.
        history: the `history` it was subscribed with, or `None`.
        position: the latest position seen in the room (rooms with history),
            sent as `since` when the client resubscribes.
    """

    def __init__(self, connection: Connection, room: str, history: int | None) -> None:
        self.room = room
        self.history = history
        self.position: StreamPosition | None = None
        self._connection = connection
        self._buffer = EventBuffer(f"subscription {room}", connection.buffer_size)
        self._active = False

    def __repr__(self) -> str:
        return f"<Subscription {self.room} position={self.position}>"

    @property
    def active(self) -> bool:
        """Whether the room is subscribed (granted, and not left)."""
        return self._active and not self._buffer.ended

    def __aiter__(self) -> Subscription:
        self._buffer.listening = True
        return self

    async def __anext__(self) -> Received:
        return await self._buffer.get()

    async def unsubscribe(self) -> None:
        """Leave the room; iteration ends once what was received is read.

        Events of the room that arrive after this call are discarded.
        """
        conn = self._connection
        if conn._subs.get(self.room) is not self:
            self._buffer.end()
            return
        del conn._subs[self.room]
        was_active, self._active = self._active, False
        self._buffer.end()
        if not was_active or conn.state != "connected":
            return  # the server forgets the room with the connection
        conn._leaving.add(self.room)
        try:
            await conn._request("unsubscribe", {"rooms": [self.room]})
        except ConnectionClosed:
            pass
        finally:
            conn._leaving.discard(self.room)

    def _advance(self, offset: object, epoch: object) -> None:
        if type(offset) is not int or not isinstance(epoch, str):
            return
        position = self.position
        if position is None or position.epoch != epoch or offset > position.offset:
            self.position = StreamPosition(offset, epoch)
