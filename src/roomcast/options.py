"""Per-namespace room options and hub-wide policies (configuration, validated eagerly)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .config import (
    DEFAULT_BURST,
    DEFAULT_PERIOD,
    DEFAULT_RATE,
    DEFAULT_STRIKES,
    check_positive,
    check_positive_int,
)
from .config import DEFAULT_MAX_QUEUE as DEFAULT_MAX_QUEUE
from .wire import validate_event_type

__all__ = [
    "DEFAULT_MAX_QUEUE",
    "History",
    "RateLimit",
    "RoomOptions",
    "SlowConsumerPolicy",
]

#: What happens when a client's outbound queue is full.
SlowConsumerPolicy = Literal["disconnect", "drop_oldest"]


@dataclass(frozen=True, slots=True)
class History:
    """Keep the last ``size`` messages of each room, each for ``ttl`` seconds.

    Rooms with history give every message an ``offset`` and the room an
    ``epoch``, so reconnecting clients can recover what they missed.

    Raises:
        ValueError: ``size`` is not a positive integer, or ``ttl`` is not a
            positive finite number.
    """

    size: int
    ttl: float

    def __post_init__(self) -> None:
        check_positive_int("History.size", self.size)
        check_positive("History.ttl", self.ttl)


@dataclass(frozen=True, slots=True)
class RoomOptions:
    """Options for every room of one namespace.

    Attributes:
        history: keep recent messages for recovery, or ``None`` (at-most-once).
        presence: track who is in each room and send ``presence.join``/``presence.leave``.
        client_types: the event types clients may publish in these rooms (where
            the authorizer lets them publish at all); ``None`` allows any type.
            Keeps clients from forging the server's own events.
        client_ephemeral: client publishes in these rooms are never stored in
            history, whatever the client asked (typing indicators, cursors).
    """

    history: History | None = None
    presence: bool = False
    client_types: frozenset[str] | None = None
    client_ephemeral: bool = False

    def __post_init__(self) -> None:
        if self.history is not None and not isinstance(self.history, History):
            raise TypeError("RoomOptions.history must be a History or None")
        if not isinstance(self.presence, bool):
            raise TypeError("RoomOptions.presence must be a bool")
        if self.client_types is not None:
            if isinstance(self.client_types, str):
                raise TypeError("RoomOptions.client_types must be a collection of types")
            types = frozenset(self.client_types)
            for name in types:
                validate_event_type(name)
            object.__setattr__(self, "client_types", types)
        if not isinstance(self.client_ephemeral, bool):
            raise TypeError("RoomOptions.client_ephemeral must be a bool")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A per-connection message rate: ``rate`` messages per ``period`` seconds, bursts of ``burst``.

    Attributes:
        strikes: rejected messages tolerated per ``period`` before the
            connection is closed with 4029.

    Raises:
        ValueError: ``rate``, ``period`` or ``burst`` is not a positive finite
            number, ``burst`` is below 1, or ``strikes`` is not a positive integer.
    """

    rate: float = DEFAULT_RATE
    period: float = DEFAULT_PERIOD
    burst: float = DEFAULT_BURST
    strikes: int = DEFAULT_STRIKES

    def __post_init__(self) -> None:
        check_positive("RateLimit.rate", self.rate)
        check_positive("RateLimit.period", self.period)
        if check_positive("RateLimit.burst", self.burst) < 1:
            raise ValueError(f"RateLimit.burst must be at least 1, got {self.burst!r}")
        check_positive_int("RateLimit.strikes", self.strikes)
