"""Token-bucket rate limiting: bursts, refill, retry hints and bounded per-key memory."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast.ratelimit import (
    DEFAULT_BURST,
    DEFAULT_PERIOD,
    DEFAULT_RATE,
    KeyedRateLimiter,
    RateLimiter,
)


def drain(limiter: RateLimiter, now: float) -> int:
    taken = 0
    while limiter.allow(now):
        taken += 1
    return taken


# --------------------------------------------------------------------------- RateLimiter


def test_defaults_are_100_per_minute_with_a_burst_of_20() -> None:
    limiter = RateLimiter()
    assert (limiter.rate, limiter.period, limiter.burst) == (DEFAULT_RATE, DEFAULT_PERIOD, 20)
    assert DEFAULT_BURST == 20


def test_starts_full_allowing_a_burst_then_refuses() -> None:
    limiter = RateLimiter(rate=10, period=1.0, burst=5)
    assert [limiter.allow(0.0) for _ in range(6)] == [True] * 5 + [False]


def test_refuses_cost_above_available_tokens_without_taking_any() -> None:
    limiter = RateLimiter(rate=1, period=1.0, burst=3)
    assert limiter.allow(0.0, cost=2)
    assert not limiter.allow(0.0, cost=2)
    assert limiter.allow(0.0, cost=1)


def test_refuses_cost_above_burst() -> None:
    assert not RateLimiter(rate=1, period=1.0, burst=3).allow(100.0, cost=4)


def test_refills_at_rate_per_period() -> None:
    limiter = RateLimiter(rate=2, period=1.0, burst=4)
    drain(limiter, 0.0)
    assert drain(limiter, 1.0) == 2


def test_refill_is_capped_at_burst() -> None:
    limiter = RateLimiter(rate=2, period=1.0, burst=4)
    drain(limiter, 0.0)
    assert drain(limiter, 1000.0) == 4


def test_partial_tokens_accumulate() -> None:
    limiter = RateLimiter(rate=1, period=1.0, burst=1, now=0.0)
    drain(limiter, 0.0)
    assert not limiter.allow(0.5)
    assert limiter.allow(1.0)


def test_initial_now_sets_the_start_of_time() -> None:
    limiter = RateLimiter(rate=1, period=1.0, burst=1, now=100.0)
    assert limiter.allow(100.0)
    assert not limiter.allow(100.5)
    assert limiter.allow(101.0)


def test_retry_after_is_zero_when_allowed_now() -> None:
    assert RateLimiter(rate=1, period=1.0, burst=1).retry_after(0.0) == 0.0


def test_retry_after_is_the_time_to_refill_the_shortfall() -> None:
    limiter = RateLimiter(rate=100, period=60.0, burst=20)
    drain(limiter, 0.0)
    assert limiter.retry_after(0.0) == pytest.approx(0.6)
    assert limiter.retry_after(0.0, cost=5) == pytest.approx(3.0)


def test_allow_succeeds_at_retry_after_and_not_before() -> None:
    limiter = RateLimiter(rate=7, period=3.0, burst=2)
    drain(limiter, 0.1)
    wait = limiter.retry_after(0.1)
    assert wait > 0
    assert not limiter.allow(0.1 + wait * (1 - 1e-9))
    assert limiter.allow(0.1 + wait)


def test_retry_after_raises_when_cost_exceeds_burst() -> None:
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(rate=1, period=1.0, burst=3).retry_after(0.0, cost=3.5)


def test_time_going_backwards_mints_no_tokens() -> None:
    limiter = RateLimiter(rate=1, period=1.0, burst=1, now=10.0)
    assert limiter.allow(10.0)
    assert not limiter.allow(5.0)
    assert not limiter.allow(10.5)
    assert limiter.allow(11.0)


def test_time_going_backwards_counts_as_no_elapsed_time_after_a_success() -> None:
    limiter = RateLimiter(rate=1, period=1.0, burst=2, now=10.0)
    assert limiter.allow(10.0)
    assert limiter.allow(3.0)  # one token left; taking it must not rewind the clock
    assert not limiter.allow(10.5)
    assert limiter.allow(11.0)


def test_retry_after_in_the_past_includes_the_wait_until_time_catches_up() -> None:
    limiter = RateLimiter(rate=1, period=1.0, burst=1, now=10.0)
    assert limiter.allow(10.0)
    assert limiter.retry_after(4.0) == pytest.approx(7.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate": 0},
        {"rate": -1},
        {"rate": math.nan},
        {"rate": math.inf},
        {"rate": True},
        {"rate": "1"},
        {"period": 0},
        {"period": -0.5},
        {"period": math.inf},
        {"burst": 0},
        {"burst": math.nan},
        {"now": math.nan},
        {"now": -math.inf},
        {"rate": 1e308, "period": 1e-308},
    ],
)
def test_rejects_bad_construction_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"rate|period|burst|now"):
        RateLimiter(**kwargs)


@pytest.mark.parametrize("cost", [0, -1, math.nan, math.inf])
def test_rejects_bad_cost(cost: float) -> None:
    limiter = RateLimiter()
    with pytest.raises(ValueError, match="cost"):
        limiter.allow(0.0, cost)
    with pytest.raises(ValueError, match="cost"):
        limiter.retry_after(0.0, cost)


@pytest.mark.parametrize("now", [math.nan, math.inf])
def test_rejects_non_finite_now(now: float) -> None:
    limiter = RateLimiter()
    with pytest.raises(ValueError, match="now"):
        limiter.allow(now)
    with pytest.raises(ValueError, match="now"):
        limiter.retry_after(now)


def test_rate_period_and_burst_are_read_only() -> None:
    limiter = RateLimiter()
    with pytest.raises(AttributeError):
        limiter.rate = 5  # type: ignore[misc]


# --------------------------------------------------------------------------- properties

rates = st.floats(0.1, 1000.0)
periods = st.floats(0.1, 100.0)
bursts = st.floats(0.5, 50.0)
events = st.lists(st.tuples(st.floats(0.0, 5.0), st.floats(0.01, 10.0)), min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(rates, periods, bursts, st.floats(-1e6, 1e6), events)
def test_no_window_accepts_more_than_burst_plus_refill(
    rate: float, period: float, burst: float, start: float, steps: list[tuple[float, float]]
) -> None:
    limiter = RateLimiter(rate, period, burst, now=start)
    accepted: list[tuple[float, float]] = []
    now = start
    for dt, cost in steps:
        now += dt
        if limiter.allow(now, cost):
            accepted.append((now, cost))
    per_second = rate / period
    for i, (t0, _) in enumerate(accepted):
        total = 0.0
        for t1, cost in accepted[i:]:
            total += cost
            allowed = burst + per_second * (t1 - t0)
            assert total <= allowed + 1e-9 * max(1.0, allowed, abs(t1))


@settings(max_examples=300, deadline=None)
@given(rates, periods, bursts, st.floats(-1e6, 1e6), events, st.floats(0.01, 1.0))
def test_allow_succeeds_exactly_at_retry_after(
    rate: float,
    period: float,
    burst: float,
    start: float,
    steps: list[tuple[float, float]],
    fraction: float,
) -> None:
    limiter = RateLimiter(rate, period, burst, now=start)
    now = start
    for dt, cost in steps:
        now += dt
        limiter.allow(now, cost)
    cost = burst * fraction
    wait = limiter.retry_after(now, cost)
    assert wait >= 0.0
    early_time = now + wait * (1 - 1e-6)
    # "Not before" is only checkable where floats can tell the two times apart.
    if wait > 1e-6 and now + wait - early_time > 16 * math.ulp(now + wait):
        early = copy.copy(limiter)
        assert not early.allow(early_time, cost)
    assert limiter.allow(now + wait, cost)


@settings(max_examples=300, deadline=None)
@given(rates, periods, st.floats(1.0, 50.0), st.floats(-1e6, 1e6), st.lists(st.floats(-1.0, 5.0)))
def test_a_bucket_kept_outside_the_limiter_behaves_like_the_limiter(
    rate: float, period: float, burst: float, start: float, steps: list[float]
) -> None:
    # A session keeps its request bucket in two fields (see roomcast.session).
    template = RateLimiter(rate, period, burst)
    limiter = template.fresh(start)
    tokens, last = template.burst, start
    now = start
    for dt in steps:
        now += dt
        assert template._retry_after(tokens, last, now) == limiter.retry_after(now)
        taken = template._take(tokens, last, now)
        assert (taken is not None) == limiter.allow(now)
        if taken is not None:
            tokens, last = taken


# --------------------------------------------------------------------------- KeyedRateLimiter


def test_keys_have_independent_buckets() -> None:
    limiter: KeyedRateLimiter[str] = KeyedRateLimiter(rate=1, period=1.0, burst=2)
    assert [limiter.allow("a", 0.0) for _ in range(3)] == [True, True, False]
    assert limiter.allow("b", 0.0)
    assert limiter.retry_after("a", 0.0) == pytest.approx(1.0)
    assert limiter.retry_after("b", 0.0) == 0.0


def test_a_new_key_starts_with_a_full_bucket() -> None:
    limiter: KeyedRateLimiter[str] = KeyedRateLimiter(rate=1, period=1.0, burst=3)
    assert limiter.allow("k", 0.0, cost=3)


def test_keyed_refuses_cost_above_burst_without_remembering_the_key() -> None:
    limiter: KeyedRateLimiter[str] = KeyedRateLimiter(rate=1, period=1.0, burst=3)
    assert not limiter.allow("k", 0.0, cost=4)
    assert len(limiter) == 0


def test_retry_after_does_not_remember_unknown_keys() -> None:
    limiter: KeyedRateLimiter[int] = KeyedRateLimiter()
    for key in range(100):
        assert limiter.retry_after(key, 0.0) == 0.0
    assert len(limiter) == 0


def test_stays_within_max_keys_for_100_000_distinct_keys() -> None:
    limiter: KeyedRateLimiter[int] = KeyedRateLimiter(max_keys=1000)
    for key in range(100_000):
        assert limiter.allow(key, 0.0)
        assert len(limiter) <= 1000
    assert len(limiter) == 1000


def test_full_buckets_are_forgotten_before_the_least_recently_used_key() -> None:
    limiter: KeyedRateLimiter[str] = KeyedRateLimiter(rate=1, period=1.0, burst=2, max_keys=2)
    assert limiter.allow("drained", 0.0, cost=2)
    assert limiter.allow("light", 0.0, cost=1)
    # At t=1 "light" has refilled to full; "drained" (least recently used) holds 1 token.
    assert limiter.allow("new", 1.0)
    assert len(limiter) == 2
    assert [limiter.allow("drained", 1.0) for _ in range(2)] == [True, False]


def test_least_recently_used_key_is_evicted_when_no_bucket_is_full() -> None:
    limiter: KeyedRateLimiter[str] = KeyedRateLimiter(rate=1, period=1.0, burst=2, max_keys=2)
    assert limiter.allow("a", 0.0, cost=2)
    assert limiter.allow("b", 0.0, cost=2)
    assert not limiter.allow("a", 0.0)  # a refused attempt still counts as a use
    assert limiter.allow("c", 0.0)
    assert not limiter.allow("a", 0.0)  # "a" survived, still drained
    assert limiter.allow("b", 0.0, cost=2)  # "b" was forgotten: a fresh, full bucket


def test_keyed_time_going_backwards_mints_no_tokens() -> None:
    limiter: KeyedRateLimiter[str] = KeyedRateLimiter(rate=1, period=1.0, burst=1)
    assert limiter.allow("k", 10.0)
    assert not limiter.allow("k", 2.0)
    assert not limiter.allow("k", 10.5)
    assert limiter.allow("k", 11.0)


@pytest.mark.parametrize("max_keys", [0, -1, 1.5, True])
def test_rejects_bad_max_keys(max_keys: Any) -> None:
    with pytest.raises(ValueError, match="max_keys"):
        KeyedRateLimiter(max_keys=max_keys)


def test_keyed_rejects_bad_rate() -> None:
    with pytest.raises(ValueError, match="rate"):
        KeyedRateLimiter(rate=0)


def test_keyed_rejects_bad_cost_and_now() -> None:
    limiter: KeyedRateLimiter[str] = KeyedRateLimiter()
    with pytest.raises(ValueError, match="cost"):
        limiter.allow("k", 0.0, cost=0)
    with pytest.raises(ValueError, match="now"):
        limiter.allow("k", math.nan)
    with pytest.raises(ValueError, match="burst"):
        limiter.retry_after("k", 0.0, cost=DEFAULT_BURST + 1)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.floats(0.0, 2.0), st.floats(0.1, 3.0)), max_size=80)
)
def test_keyed_limiter_matches_one_limiter_per_key_while_under_max_keys(
    steps: list[tuple[int, float, float]],
) -> None:
    keyed: KeyedRateLimiter[int] = KeyedRateLimiter(rate=3, period=2.0, burst=4, max_keys=6)
    single: dict[int, RateLimiter] = {}
    now = 0.0
    for key, dt, cost in steps:
        now += dt
        reference = single.setdefault(key, RateLimiter(3, 2.0, 4, now=now))
        assert keyed.retry_after(key, now, cost) == pytest.approx(reference.retry_after(now, cost))
        assert keyed.allow(key, now, cost) == reference.allow(now, cost)


def test_keyed_refund_gives_tokens_back_up_to_the_burst() -> None:
    limiter: KeyedRateLimiter[str] = KeyedRateLimiter(3, 60.0, 3)
    assert all(limiter.allow("a", 0.0) for _ in range(3))
    assert not limiter.allow("a", 0.0)
    limiter.refund("a", 0.0)
    assert limiter.allow("a", 0.0)
    assert not limiter.allow("a", 0.0)
    for _ in range(10):
        limiter.refund("a", 0.0)
    assert [limiter.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]


def test_keyed_refund_of_an_unknown_key_changes_nothing() -> None:
    limiter: KeyedRateLimiter[str] = KeyedRateLimiter(3, 60.0, 3)
    limiter.refund("a", 0.0)
    assert len(limiter) == 0
