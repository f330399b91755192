"""The client requests of protocol v1, as [`decode`][roomcast.wire.decode] returns them (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# No __all__: roomcast.wire re-exports these, and its __all__ is the public list.

#: A request's ``ref``, echoed in its reply or error so the client can match them.
Ref = str | int


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """A position in a room's history: the last ``offset`` seen in stream ``epoch``."""

    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Auth:
    """``auth``: first-message authentication."""

    token: str
    ref: Ref | None = None


@dataclass(frozen=True, slots=True)
class Subscribe:
    """``subscribe``: join ``rooms``.

    With ``since``, a room replays what was missed after a position; with
    ``history``, a room without a position replays its last ``N`` messages.
    A room is in one of the two at most.
    """

    rooms: tuple[str, ...]
    since: Mapping[str, StreamPosition]
    ref: Ref | None = None
    history: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """``unsubscribe``: leave ``rooms``."""

    rooms: tuple[str, ...]
    ref: Ref | None = None


@dataclass(frozen=True, slots=True)
class Publish:
    """``publish``: a client publishes ``payload`` as event ``type`` to ``room``."""

    room: str
    type: str
    payload: Any
    ephemeral: bool = False
    ref: Ref | None = None


@dataclass(frozen=True, slots=True)
class Presence:
    """``presence``: list who is in ``room``."""

    room: str
    ref: Ref | None = None


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    """``history``: read the kept messages of ``room``.

    Without ``since``, the last ``limit`` messages (every kept one when
    ``limit`` is ``None``); with ``since``, at most ``limit`` messages after
    that position, oldest first.
    """

    room: str
    limit: int | None = None
    since: StreamPosition | None = None
    ref: Ref | None = None


@dataclass(frozen=True, slots=True)
class Refresh:
    """``refresh``: replace the connection's token."""

    token: str
    ref: Ref | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    """``ping``: the client checks the server is alive; answered with ``pong``."""

    ref: Ref | None = None


@dataclass(frozen=True, slots=True)
class Pong:
    """``pong``: the client answers a server ``ping``."""

    ref: Ref | None = None


#: Any client frame [`decode`][roomcast.wire.decode] returns.
Request = (
    Auth | Subscribe | Unsubscribe | Publish | Presence | HistoryRequest | Refresh | Ping | Pong
)
