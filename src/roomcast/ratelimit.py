"""Token-bucket rate limiting for one sender or many, driven by a caller-supplied clock (pure)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .config import DEFAULT_BURST as DEFAULT_BURST
from .config import DEFAULT_MAX_KEYS as DEFAULT_MAX_KEYS
from .config import DEFAULT_PERIOD as DEFAULT_PERIOD
from .config import DEFAULT_RATE as DEFAULT_RATE
from .config import check_finite, check_positive, check_positive_int

__all__ = [
    "DEFAULT_BURST",
    "DEFAULT_MAX_KEYS",
    "DEFAULT_PERIOD",
    "DEFAULT_RATE",
    "KeyedRateLimiter",
    "RateLimiter",
]


K = TypeVar("K", bound=Hashable)


def _check_now(now: float) -> float:
    # A clock reading, not configuration: any finite number of seconds, negative included.
    return check_finite("now", now)


@dataclass(frozen=True, slots=True)
class _Rate:
    """Validated bucket parameters shared by every bucket of one limiter."""

    rate: float
    period: float
    burst: float
    per_second: float

    @classmethod
    def of(cls, rate: float, period: float, burst: float) -> _Rate:
        rate = check_positive("rate", rate)
        period = check_positive("period", period)
        burst = check_positive("burst", burst)
        # The quotient of two valid numbers can still overflow to inf or underflow to 0.
        per_second = check_positive("rate / period", rate / period)
        return cls(rate, period, burst, per_second)

    def level(self, tokens: float, last: float, now: float) -> float:
        """Tokens in a bucket holding ``tokens`` at ``last``, seen at ``now``."""
        # A clock that steps backwards counts as no elapsed time: it must never mint tokens.
        return min(self.burst, tokens + max(0.0, now - last) * self.per_second)

    def retry_after(self, tokens: float, last: float, now: float, cost: float) -> float:
        """Seconds from ``now`` until a bucket (``tokens`` at ``last``) can pay ``cost``."""
        if cost > self.burst:
            raise ValueError(f"cost {cost!r} exceeds burst {self.burst!r}: it can never be allowed")
        if self.level(tokens, last, now) >= cost:
            return 0.0
        # Refill only starts once the clock is back past ``last``.
        base = max(0.0, last - now)
        delay = base + (cost - self.level(tokens, last, now + base)) / self.per_second
        # Rounding can leave the bucket a hair short at now + delay; step forward until
        # allow() at exactly now + delay would succeed, so callers can trust the answer.
        step = max(math.ulp(now + delay), math.ulp(delay))
        while self.level(tokens, last, now + delay) < cost:
            delay += step
            step *= 2
        return delay


def _check_cost(cost: float) -> float:
    return check_positive("cost", cost)


class RateLimiter:
    """A token bucket: ``rate`` tokens per ``period`` seconds, holding at most ``burst``.

    The bucket starts full. Each allowed message takes ``cost`` tokens; a refused one
    takes nothing. Time is passed in as ``now`` (seconds, any monotonic origin), so the
    limiter does no I/O and is deterministic.
    """

    __slots__ = ("_last", "_params", "_tokens")

    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        period: float = DEFAULT_PERIOD,
        burst: float = DEFAULT_BURST,
        *,
        now: float = 0.0,
    ) -> None:
        """Create a full bucket.

        Args:
            rate: tokens added per ``period``.
            period: seconds over which ``rate`` tokens are added.
            burst: most tokens the bucket holds.
            now: the current time, in seconds.

        Raises:
            ValueError: an argument is not a finite number, or ``rate``, ``period`` or
                ``burst`` is not positive.
        """
        self._params = _Rate.of(rate, period, burst)
        self._tokens = self._params.burst
        self._last = _check_now(now)

    def fresh(self, now: float) -> RateLimiter:
        """A new, full bucket with the same parameters, for another client.

        Raises:
            ValueError: ``now`` is not finite.
        """
        bucket = RateLimiter.__new__(RateLimiter)
        bucket._params = self._params
        bucket._tokens = self._params.burst
        bucket._last = _check_now(now)
        return bucket

    @property
    def rate(self) -> float:
        """Tokens added per ``period``."""
        return self._params.rate

    @property
    def period(self) -> float:
        """Seconds over which ``rate`` tokens are added."""
        return self._params.period

    @property
    def burst(self) -> float:
        """Most tokens the bucket holds."""
        return self._params.burst

    def allow(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if the bucket holds them at ``now``.

        Returns:
            ``True`` if the tokens were taken; ``False`` (taking nothing) otherwise.

        Raises:
            ValueError: ``now`` is not finite, or ``cost`` is not a positive finite number.
        """
        now = _check_now(now)
        cost = _check_cost(cost)
        tokens = self._params.level(self._tokens, self._last, now)
        if tokens < cost:
            # Leaving the state untouched keeps an earlier retry_after() answer exact.
            return False
        self._tokens = tokens - cost
        self._last = max(self._last, now)
        return True

    def _take(self, tokens: float, last: float, now: float) -> tuple[float, float] | None:
        """`allow()` for one message on a bucket whose state the caller keeps.

        The bucket holds ``tokens`` at ``last`` and has this limiter's
        parameters (a session keeps its bucket in two fields, not an object).

        Returns:
            The bucket's new ``(tokens, last)``, or ``None`` when refused (the
            state stays as it was).
        """
        now = _check_now(now)
        level = self._params.level(tokens, last, now)
        if level < 1.0:
            return None
        return level - 1.0, max(last, now)

    def _retry_after(self, tokens: float, last: float, now: float) -> float:
        """`retry_after()` for one message on a bucket whose state the caller keeps."""
        return self._params.retry_after(tokens, last, _check_now(now), 1.0)

    def retry_after(self, now: float, cost: float = 1.0) -> float:
        """Seconds from ``now`` until `allow()` with ``cost`` would succeed.

        Returns:
            ``0.0`` if it would succeed at ``now``; otherwise the delay after which it
            will (if nothing else takes tokens meanwhile).

        Raises:
            ValueError: ``now`` is not finite, ``cost`` is not a positive finite number,
                or ``cost`` exceeds ``burst`` (it could never succeed).
        """
        now = _check_now(now)
        cost = _check_cost(cost)
        return self._params.retry_after(self._tokens, self._last, now, cost)

    def __repr__(self) -> str:
        return f"RateLimiter(rate={self.rate!r}, period={self.period!r}, burst={self.burst!r})"


class KeyedRateLimiter(Generic[K]):
    """One token bucket per key (client id, IP address), bounded in memory.

    Every key gets its own bucket with the same ``rate``, ``period`` and ``burst``,
    created full on first use. At most ``max_keys`` buckets are kept. When a new key
    arrives at the bound, buckets that have refilled to full are forgotten first: a
    full bucket behaves exactly like a new one, so forgetting it changes nothing. If
    none is full, the least recently used key is forgotten.

    That last step favours an attacker slightly: a drained key that is evicted comes
    back with a full bucket. The gain is bounded: to evict one key an attacker must
    bring ``max_keys`` more recently used keys, each of which itself gets at most
    ``burst`` tokens, so the attacker gains no more than an honest sender with as many
    keys would.

    Each call is amortized O(1): the scan for full buckets runs at most once per
    ``max_keys // 4`` new keys.
    """

    __slots__ = ("_buckets", "_max_keys", "_new_since_sweep", "_params", "_sweep_every")

    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        period: float = DEFAULT_PERIOD,
        burst: float = DEFAULT_BURST,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        """Create a limiter that remembers no key yet.

        Args:
            rate: tokens added per ``period``, for each key.
            period: seconds over which ``rate`` tokens are added.
            burst: most tokens one key's bucket holds.
            max_keys: most keys remembered at once.

        Raises:
            ValueError: ``rate``, ``period`` or ``burst`` is not a positive finite number,
                or ``max_keys`` is not a positive integer.
        """
        self._params = _Rate.of(rate, period, burst)
        self._max_keys = check_positive_int("max_keys", max_keys)
        # Per key, (tokens, time of last update): two floats, far smaller than an object.
        # Ordered from least to most recently used.
        self._buckets: OrderedDict[K, tuple[float, float]] = OrderedDict()
        self._sweep_every = max(1, max_keys // 4)
        self._new_since_sweep = self._sweep_every

    @property
    def rate(self) -> float:
        """Tokens added per ``period``, for each key."""
        return self._params.rate

    @property
    def period(self) -> float:
        """Seconds over which ``rate`` tokens are added."""
        return self._params.period

    @property
    def burst(self) -> float:
        """Most tokens one key's bucket holds."""
        return self._params.burst

    @property
    def max_keys(self) -> int:
        """Most keys remembered at once."""
        return self._max_keys

    def __len__(self) -> int:
        """The number of keys remembered."""
        return len(self._buckets)

    def allow(self, key: K, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket if it holds them at ``now``.

        Returns:
            ``True`` if the tokens were taken; ``False`` (taking nothing) otherwise.

        Raises:
            ValueError: ``now`` is not finite, or ``cost`` is not a positive finite number.
        """
        now = _check_now(now)
        cost = _check_cost(cost)
        params = self._params
        state = self._buckets.get(key)
        if state is None:
            if cost > params.burst:
                return False
            self._make_room(now)
            self._buckets[key] = (params.burst - cost, now)
            return True
        self._buckets.move_to_end(key)
        tokens = params.level(state[0], state[1], now)
        if tokens < cost:
            return False
        self._buckets[key] = (tokens - cost, max(state[1], now))
        return True

    def refund(self, key: K, now: float, cost: float = 1.0) -> None:
        """Give back ``cost`` tokens that `allow()` took from ``key``'s bucket.

        For work that takes its tokens before it knows whether it counts: an
        attempt reserves a token, so that concurrent attempts cannot all pass
        a check made before any of them finished, and an attempt that turns
        out not to count gives its token back. The bucket never holds more
        than ``burst``; a key already forgotten is left alone.

        Raises:
            ValueError: ``now`` is not finite, or ``cost`` is not a positive finite number.
        """
        now = _check_now(now)
        cost = _check_cost(cost)
        state = self._buckets.get(key)
        if state is None:
            return
        params = self._params
        tokens = min(params.burst, params.level(state[0], state[1], now) + cost)
        self._buckets[key] = (tokens, max(state[1], now))

    def retry_after(self, key: K, now: float, cost: float = 1.0) -> float:
        """Seconds from ``now`` until `allow()` for ``key`` with ``cost`` would succeed.

        It neither creates a bucket nor counts as a use of ``key``.

        Returns:
            ``0.0`` if it would succeed at ``now``; otherwise the delay after which it
            will (if nothing else takes tokens meanwhile).

        Raises:
            ValueError: ``now`` is not finite, ``cost`` is not a positive finite number,
                or ``cost`` exceeds ``burst`` (it could never succeed).
        """
        now = _check_now(now)
        cost = _check_cost(cost)
        tokens, last = self._buckets.get(key, (self._params.burst, now))
        return self._params.retry_after(tokens, last, now, cost)

    def _make_room(self, now: float) -> None:
        if len(self._buckets) < self._max_keys:
            return
        self._new_since_sweep += 1
        if self._new_since_sweep >= self._sweep_every:
            self._new_since_sweep = 0
            level, burst = self._params.level, self._params.burst
            full = [
                key
                for key, (tokens, last) in self._buckets.items()
                if level(tokens, last, now) >= burst
            ]
            for key in full:
                del self._buckets[key]
        if len(self._buckets) >= self._max_keys:
            self._buckets.popitem(last=False)

    def __repr__(self) -> str:
        return (
            f"KeyedRateLimiter(rate={self.rate!r}, period={self.period!r}, "
            f"burst={self.burst!r}, max_keys={self._max_keys!r}, keys={len(self)})"
        )
