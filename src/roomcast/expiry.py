"""When to warn each client that its token expires and when to close it, given the time (pure)."""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final, Generic, Literal, TypeVar

from .config import check_finite, check_non_negative, check_positive

__all__ = ["ExpiryAction", "ExpiryDue", "ExpirySchedule"]

K = TypeVar("K", bound=Hashable)

#: What is due for a token: ``"warn"`` (send ``token.expiring``) or ``"expire"`` (close 4002).
ExpiryAction = Literal["warn", "expire"]

# Stale heap entries (left by remove() and by a token replaced before its deadlines)
# tolerated beyond two per live key before the heap is rebuilt.
_STALE_SLACK: Final = 64


@dataclass(frozen=True, slots=True)
class ExpiryDue(Generic[K]):
    """One deadline that [`ExpirySchedule.poll()`][roomcast.expiry.ExpirySchedule.poll] found due.

    Attributes:
        key: whose token it is.
        action: ``"warn"`` or ``"expire"``.
        expires_in: seconds from the poll's ``now`` until the token expires;
            zero or negative once it has.
    """

    key: K
    action: ExpiryAction
    expires_in: float

    @property
    def expires_in_ms(self) -> int:
        """Whole milliseconds until the token expires, never negative (``token.expiring``)."""
        return max(0, int(self.expires_in * 1000))


class _Token:
    """Per-key schedule: when the token expires, and which heap entries are current."""

    __slots__ = ("expires_at", "seq")

    def __init__(self, expires_at: float, seq: int) -> None:
        self.expires_at = expires_at
        self.seq = seq


class ExpirySchedule(Generic[K]):
    """Token deadlines of many clients: a warning before each expiry, a close after it.

    The caller [`schedule()`][roomcast.expiry.ExpirySchedule.schedule]s a key's
    expiry (again on refresh: the new token supersedes the old one), calls
    [`poll()`][roomcast.expiry.ExpirySchedule.poll] at (or after)
    [`next_deadline()`][roomcast.expiry.ExpirySchedule.next_deadline], and
    warns or closes each key it returns. All times are on the caller's clock.

    Each scheduled token has two entries in a heap, ``"warn"`` at
    ``expires_at - warning`` and ``"expire"`` at ``expires_at + grace``;
    a token scheduled with less than twice ``warning`` left is warned halfway
    through what it has left instead, so that a client refreshing a short-lived
    token on every warning is not warned again at once;
    entries of a token that was replaced or removed are skipped when they reach
    the top, so `schedule()` and `remove()` are O(log n).
    """

    __slots__ = ("_grace", "_heap", "_seq", "_tokens", "_warning")

    def __init__(self, warning: float, grace: float = 0.0) -> None:
        """Create a schedule with no token.

        Args:
            warning: seconds before a token expires that it is due a ``"warn"``.
            grace: seconds after it expires that it is due an ``"expire"``.

        Raises:
            ValueError: ``warning`` is not a positive finite number, or
                ``grace`` is negative or not finite.
        """
        self._warning = check_positive("warning", warning)
        self._grace = check_non_negative("grace", grace)
        self._tokens: dict[K, _Token] = {}
        # (deadline, sequence of the token's schedule, key, action)
        self._heap: list[tuple[float, int, K, ExpiryAction]] = []
        self._seq = 0

    @property
    def warning(self) -> float:
        """Seconds before expiry that a token is due a ``"warn"``."""
        return self._warning

    @property
    def grace(self) -> float:
        """Seconds after expiry that a token is due an ``"expire"``."""
        return self._grace

    def __len__(self) -> int:
        """The number of keys with a token scheduled."""
        return len(self._tokens)

    def __contains__(self, key: object) -> bool:
        return key in self._tokens

    def schedule(self, key: K, expires_at: float | None, now: float | None = None) -> None:
        """Schedule the token of ``key`` expiring at ``expires_at``, replacing any earlier one.

        Deadlines already past are due at the next poll. ``None`` (a token
        that never expires) ends the schedule of ``key``, as `remove()` does.
        With ``now``, the warning comes ``warning`` seconds before the expiry
        or halfway from ``now`` to it, whichever is later.

        Raises:
            ValueError: ``expires_at`` or ``now`` is not finite.
        """
        if expires_at is None:
            self.remove(key)
            return
        check_finite("expires_at", expires_at)
        warn_at = expires_at - self._warning
        if now is not None:
            check_finite("now", now)
            warn_at = max(warn_at, now + (expires_at - now) / 2)
        self._seq += 1
        seq = self._seq
        replaced = key in self._tokens
        self._tokens[key] = _Token(expires_at, seq)
        heap = self._heap
        heapq.heappush(heap, (warn_at, seq, key, "warn"))
        heapq.heappush(heap, (expires_at + self._grace, seq, key, "expire"))
        if replaced:
            self._compact()

    def remove(self, key: K) -> None:
        """Forget the token of ``key``; unknown keys are ignored."""
        if self._tokens.pop(key, None) is not None:
            self._compact()

    def expires_at(self, key: K) -> float | None:
        """When the token of ``key`` expires, or ``None`` when none is scheduled."""
        token = self._tokens.get(key)
        return None if token is None else token.expires_at

    def poll(self, now: float) -> tuple[ExpiryDue[K], ...]:
        """Return what is due at ``now``, in deadline order.

        A key's ``"warn"`` comes before its ``"expire"``; after its
        ``"expire"`` the key is forgotten.
        """
        heap, tokens = self._heap, self._tokens
        due: list[ExpiryDue[K]] = []
        while heap and heap[0][0] <= now:
            _, seq, key, action = heapq.heappop(heap)
            token = tokens.get(key)
            if token is None or token.seq != seq:
                continue  # replaced or removed
            if action == "expire":
                del tokens[key]
            due.append(ExpiryDue(key, action, token.expires_at - now))
        return tuple(due)

    def next_deadline(self) -> float | None:
        """The earliest time at which `poll()` will have something to do, or ``None``."""
        heap, tokens = self._heap, self._tokens
        while heap:
            _, seq, key, _ = heap[0]
            token = tokens.get(key)
            if token is not None and token.seq == seq:
                return heap[0][0]
            heapq.heappop(heap)
        return None

    def _compact(self) -> None:
        if len(self._heap) > 2 * len(self._tokens) + _STALE_SLACK:
            tokens = self._tokens
            self._heap = [
                entry
                for entry in self._heap
                if (token := tokens.get(entry[2])) is not None and token.seq == entry[1]
            ]
            heapq.heapify(self._heap)

    def __repr__(self) -> str:
        return f"ExpirySchedule(warning={self._warning!r}, grace={self._grace!r}, keys={len(self)})"
