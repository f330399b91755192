"""How long the Python client waits before reconnecting: exponential backoff, full jitter (pure)."""

from __future__ import annotations

import random
from typing import Final

from ..config import check_positive

__all__ = ["DEFAULT_MAX_DELAY", "DEFAULT_MIN_DELAY", "Backoff"]

#: The first reconnect waits up to this many seconds.
DEFAULT_MIN_DELAY: Final = 0.5
#: No reconnect waits longer than this many seconds.
DEFAULT_MAX_DELAY: Final = 20.0
#: Past this many attempts the window is `max_delay` anyway; the cap keeps
#: `2 ** attempt` small.
_MAX_EXPONENT: Final = 62


class Backoff:
    """Exponential backoff with full jitter, as the protocol's clients use it.

    The delay before attempt `attempt` (0 after a connection that was
    acknowledged, then 1, 2, ... for each failed attempt) is drawn uniformly
    from `[0, min(max_delay, min_delay * 2 ** attempt)]`: spreading clients
    over the whole window keeps a restarted server from being hit by all of
    them at once.

    Args:
        min_delay: the window of the first attempt, in seconds.
        max_delay: the largest window, in seconds.
        rng: the source of randomness; pass `random.Random(seed)` to make the
            delays repeatable in tests.

    Raises:
        ValueError: a delay is not positive, or `max_delay < min_delay`.
    """

    def __init__(
        self,
        min_delay: float = DEFAULT_MIN_DELAY,
        max_delay: float = DEFAULT_MAX_DELAY,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.min_delay = check_positive("min_delay", min_delay)
        self.max_delay = check_positive("max_delay", max_delay)
        if max_delay < min_delay:
            raise ValueError("max_delay must not be less than min_delay")
        self._rng = rng if rng is not None else random.Random()

    def window(self, attempt: int) -> float:
        """The largest delay before attempt `attempt`, in seconds.

        Raises:
            ValueError: `attempt` is negative.
        """
        if attempt < 0:
            raise ValueError("attempt must not be negative")
        growth: float = 2.0 ** min(attempt, _MAX_EXPONENT)
        return min(self.max_delay, self.min_delay * growth)

    def delay(self, attempt: int) -> float:
        """A delay before attempt `attempt`: uniform in `[0, window(attempt)]`.

        Raises:
            ValueError: `attempt` is negative.
        """
        delay: float = self._rng.uniform(0, self.window(attempt))
        return delay
