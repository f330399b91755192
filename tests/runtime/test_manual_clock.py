"""The test kit's clock moves only forward, by a finite amount."""

from __future__ import annotations

import math

import pytest

from roomcast.testing import ManualClock

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("seconds", [-1.0, math.nan, math.inf, -math.inf])
async def test_advance_refuses_a_step_that_is_not_a_finite_forward_one(seconds: float) -> None:
    clock = ManualClock(start=5.0)
    with pytest.raises(ValueError, match="seconds"):
        await clock.advance(seconds)
    assert clock.now() == 5.0


async def test_advance_moves_the_clock_forward() -> None:
    clock = ManualClock()
    await clock.advance(2.5)
    assert clock.now() == 2.5
