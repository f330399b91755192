"""What the Python client hands the application: typed events, notices and replies (pure).

Each server frame the client accepts becomes one frozen object here; the parsers
are lenient about fields they do not need (a server may add fields) and strict
about the types of those they keep.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from ..wire import StreamPosition

__all__ = [
    "Event",
    "Gap",
    "HistoryPage",
    "Member",
    "PresenceChange",
    "Received",
    "Recovery",
    "State",
    "StateChange",
]

logger = logging.getLogger("roomcast.client")

#: The states of a client connection: `"connecting"` (opening the socket and
#: authenticating), `"connected"` (`connection.ack` received, rooms resubscribed),
#: `"disconnected"` (lost; a reconnect is scheduled) and `"closed"` (for good).
State = Literal["connecting", "connected", "disconnected", "closed"]


@dataclass(frozen=True, slots=True)
class Event:
    """An application event: published to a room, or sent to a user or a connection.

    Attributes:
        type: the event type chosen by the publisher, e.g. `issue.created`.
        room: the room it was published to; `None` for an event sent to a user
            or to this connection rather than to a room.
        payload: the event's data, decoded from JSON.
        id: the message id, shared by every copy of one publish; compare it,
            do not parse it.
        timestamp: when it was published, in milliseconds since the Unix epoch.
        user_id: the publishing user; `None` when the server published.
        offset: the event's position in the room's stream, in rooms with
            history; `None` elsewhere.
        epoch: the stream the offset belongs to, in rooms with history.
    """

    type: str
    room: str | None
    payload: Any
    id: str
    timestamp: int
    user_id: str | None
    offset: int | None = None
    epoch: str | None = None


@dataclass(frozen=True, slots=True)
class Recovery:
    """What became of a room's stream across a reconnect, or after a `room.reset`.

    The client resubscribes every room after a reconnect, with `since` (the last
    position it saw) where it has one. When the server replayed every missed
    event, they arrive before this notice and `recovered` is true; when it
    could not (pruned, expired, the server lost the stream), `recovered` is
    false, nothing was replayed, and the application should reload the room's
    state. A server `room.reset` frame gives the same notice with `recovered`
    false.

    Attributes:
        room: the room.
        recovered: whether every event after the old position was delivered.
        offset: the room's position the stream continues from.
        epoch: the stream `offset` belongs to.
    """

    room: str
    recovered: bool
    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Member:
    """One connection in a room's presence.

    Attributes:
        user_id: the connection's user; `None` for an anonymous connection.
        client_id: the connection's identifier on the server.
        info: what the server attached to the entry, or `None`.
    """

    user_id: str | None
    client_id: str
    info: Any


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """A connection joined or left a room whose namespace has presence turned on.

    Attributes:
        type: `"presence.join"` or `"presence.leave"`.
        room: the room.
        member: who joined or left.
    """

    type: Literal["presence.join", "presence.leave"]
    room: str
    member: Member


@dataclass(frozen=True, slots=True)
class Gap:
    """The server discarded events meant for this connection (its queue was full).

    Sent under the server's `drop_oldest` slow-consumer policy. Treat the state
    of the listed rooms as stale: reload it, or unsubscribe and subscribe again.

    Attributes:
        dropped: how many events were discarded.
        rooms: the rooms they were for.
    """

    dropped: int
    rooms: tuple[str, ...]


#: What iterating a subscription or a connection yields.
Received = Event | Recovery | PresenceChange | Gap


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """The answer to [`Connection.history`][roomcast.client.Connection.history].

    Attributes:
        room: the room.
        publications: the room's kept events, oldest first.
        offset: the room's latest offset when the history was read.
        epoch: the room's stream.
        recovered: with `since`: whether the events after that position could
            all be listed (when false, `publications` is empty: reload the
            room's state); `None` without `since`.
    """

    room: str
    publications: tuple[Event, ...]
    offset: int
    epoch: str
    recovered: bool | None = None

    @property
    def position(self) -> StreamPosition:
        """The room's position when read, to pass as `since` to a later request."""
        return StreamPosition(self.offset, self.epoch)


@dataclass(frozen=True, slots=True)
class StateChange:
    """A change of a connection's state, as its state listeners are told.

    Attributes:
        state: the new state.
        previous: the state before.
        code: the close code that ended the last connection (1006 when it
            ended without one), for `"disconnected"` and `"closed"`.
        reason: the close reason, or what went wrong.
        delay: for `"disconnected"`: seconds until the next attempt.
        error: for `"closed"`: why the client gave up, or `None` when the
            application closed it.
    """

    state: State
    previous: State
    code: int | None = None
    reason: str = ""
    delay: float | None = None
    error: Exception | None = None


class BadFrame(ValueError):
    """A server frame this client cannot read."""


def _int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise BadFrame(f"{what} is not an integer")
    return value


def _opt_int(value: Any, what: str) -> int | None:
    return None if value is None else _int(value, what)


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadFrame(f"{what} is not a string")
    return value


def _opt_str(value: Any, what: str) -> str | None:
    return None if value is None else _str(value, what)


def parse_event(frame: dict[str, Any]) -> Event:
    """An application event frame (or a publication of a history reply) as an `Event`.

    Raises:
        BadFrame: a field the event keeps has the wrong type.
    """
    return Event(
        type=_str(frame.get("type"), "type"),
        room=_opt_str(frame.get("room"), "room"),
        payload=frame.get("payload"),
        id=_str(frame.get("id", ""), "id"),
        timestamp=_int(frame.get("timestamp", 0), "timestamp"),
        user_id=_opt_str(frame.get("userId"), "userId"),
        offset=_opt_int(frame.get("offset"), "offset"),
        epoch=_opt_str(frame.get("epoch"), "epoch"),
    )


def parse_member(entry: Any) -> Member:
    """A presence entry `{userId, clientId, info}` as a `Member`.

    Raises:
        BadFrame: it is not one.
    """
    if not isinstance(entry, dict):
        raise BadFrame("a presence entry is not an object")
    return Member(
        user_id=_opt_str(entry.get("userId"), "userId"),
        client_id=_str(entry.get("clientId"), "clientId"),
        info=entry.get("info"),
    )


def parse_presence_change(frame: dict[str, Any]) -> PresenceChange:
    """A `presence.join` or `presence.leave` frame.

    Raises:
        BadFrame: it is malformed.
    """
    kind = frame.get("type")
    if kind not in ("presence.join", "presence.leave"):
        raise BadFrame("not a presence frame")
    return PresenceChange(kind, _str(frame.get("room"), "room"), parse_member(frame.get("payload")))


def parse_gap(frame: dict[str, Any]) -> Gap:
    """A `gap` frame.

    Raises:
        BadFrame: it is malformed.
    """
    payload = frame.get("payload")
    if not isinstance(payload, dict) or not isinstance(payload.get("rooms"), list):
        raise BadFrame("gap without rooms")
    rooms = tuple(_str(room, "room") for room in payload["rooms"])
    return Gap(_int(payload.get("dropped"), "dropped"), rooms)


def parse_reset(frame: dict[str, Any]) -> Recovery:
    """A `room.reset` frame, as the `Recovery` notice it means.

    Raises:
        BadFrame: it is malformed.
    """
    payload = frame.get("payload")
    if not isinstance(payload, dict):
        raise BadFrame("room.reset without a payload")
    return Recovery(
        room=_str(frame.get("room"), "room"),
        recovered=False,
        offset=_int(payload.get("offset"), "offset"),
        epoch=_str(payload.get("epoch"), "epoch"),
    )


def parse_history(payload: Any) -> HistoryPage:
    """The payload of a successful `history` reply.

    Raises:
        BadFrame: it is malformed.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("publications"), list):
        raise BadFrame("history reply without publications")
    recovered = payload.get("recovered")
    if recovered is not None and not isinstance(recovered, bool):
        raise BadFrame("recovered is not a boolean")
    publications = []
    for item in payload["publications"]:
        if not isinstance(item, dict):
            raise BadFrame("a publication is not an object")
        publications.append(parse_event(item))
    return HistoryPage(
        room=_str(payload.get("room"), "room"),
        publications=tuple(publications),
        offset=_int(payload.get("offset"), "offset"),
        epoch=_str(payload.get("epoch"), "epoch"),
        recovered=recovered,
    )
