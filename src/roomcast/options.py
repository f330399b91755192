"""Per-namespace room options and hub-wide policies (configuration, validated eagerly)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

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


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


@dataclass(frozen=True, slots=True)
class History:
    """Keep the last ``size`` messages of each room, each for ``ttl`` seconds.

    Rooms with history give every message an ``offset`` and the room an
    ``epoch``, so reconnecting clients can recover what they missed.
    """

    size: int
    ttl: float

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"History.size must be a positive integer, got {self.size!r}")
        _positive("History.ttl", self.ttl)


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
    """

    rate: float = 100
    period: float = 60.0
    burst: float = 20
    strikes: int = 20

    def __post_init__(self) -> None:
        _positive("RateLimit.rate", self.rate)
        _positive("RateLimit.period", self.period)
        _positive("RateLimit.burst", self.burst)
        if self.burst < 1:
            raise ValueError("RateLimit.burst must be at least 1")
        if isinstance(self.strikes, bool) or not isinstance(self.strikes, int) or self.strikes < 1:
            raise ValueError(f"RateLimit.strikes must be a positive integer, got {self.strikes!r}")
