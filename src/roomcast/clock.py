"""Clock: the time source of the runtime, replaceable by a manual clock in tests."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

import anyio

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Monotonic time for heartbeats, rate limits and history expiry."""

    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once `now()` has reached ``deadline``."""
        ...


class SystemClock:
    """The real monotonic clock (the default)."""

    def now(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until ``deadline``."""
        delay = deadline - time.monotonic()
        await anyio.sleep(delay if delay > 0 else 0)
