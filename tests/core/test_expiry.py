"""Token expiry schedule: a warning before each expiry, a close after it, superseded on refresh."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast.expiry import ExpiryDue, ExpirySchedule


def heap_size(schedule: ExpirySchedule[Any]) -> int:
    # The heap is private; its size is the memory bound under test.
    return len(schedule._heap)


def test_nothing_is_due_without_a_token() -> None:
    schedule: ExpirySchedule[str] = ExpirySchedule(warning=60)
    assert schedule.poll(1e9) == ()
    assert schedule.next_deadline() is None
    assert len(schedule) == 0


def test_warns_before_expiry_and_expires_after_the_grace() -> None:
    schedule: ExpirySchedule[str] = ExpirySchedule(warning=60, grace=5)
    schedule.schedule("a", 1000.0)
    assert schedule.next_deadline() == 940.0
    assert schedule.poll(939.9) == ()
    assert schedule.poll(940.0) == (ExpiryDue("a", "warn", 60.0),)
    assert schedule.next_deadline() == 1005.0
    assert schedule.poll(1004.0) == ()
    assert schedule.poll(1005.0) == (ExpiryDue("a", "expire", -5.0),)
    assert "a" not in schedule
    assert schedule.next_deadline() is None


def test_a_late_poll_reports_both_in_order_and_the_time_left() -> None:
    schedule: ExpirySchedule[str] = ExpirySchedule(warning=60)
    schedule.schedule("a", 1000.0)
    assert schedule.poll(2000.0) == (
        ExpiryDue("a", "warn", -1000.0),
        ExpiryDue("a", "expire", -1000.0),
    )


def test_a_token_already_expired_is_due_at_once() -> None:
    schedule: ExpirySchedule[str] = ExpirySchedule(warning=60)
    schedule.schedule("a", 10.0)
    assert schedule.next_deadline() == -50.0
    assert [due.action for due in schedule.poll(11.0)] == ["warn", "expire"]


def test_a_new_token_supersedes_the_old_one() -> None:
    schedule: ExpirySchedule[str] = ExpirySchedule(warning=60)
    schedule.schedule("a", 100.0)
    schedule.schedule("a", 500.0)
    assert schedule.expires_at("a") == 500.0
    assert schedule.next_deadline() == 440.0
    assert schedule.poll(400.0) == ()
    assert schedule.poll(440.0) == (ExpiryDue("a", "warn", 60.0),)


def test_a_new_token_after_the_warning_is_warned_again() -> None:
    schedule: ExpirySchedule[str] = ExpirySchedule(warning=60)
    schedule.schedule("a", 100.0)
    assert [due.action for due in schedule.poll(50.0)] == ["warn"]
    schedule.schedule("a", 200.0)
    assert schedule.poll(100.0) == ()
    assert schedule.poll(140.0) == (ExpiryDue("a", "warn", 60.0),)


def test_removed_keys_are_never_due() -> None:
    schedule: ExpirySchedule[str] = ExpirySchedule(warning=60)
    schedule.schedule("a", 100.0)
    schedule.schedule("b", 200.0)
    schedule.remove("a")
    schedule.remove("unknown")
    assert schedule.expires_at("a") is None
    assert schedule.next_deadline() == 140.0
    assert [(due.key, due.action) for due in schedule.poll(300.0)] == [
        ("b", "warn"),
        ("b", "expire"),
    ]


def test_a_token_that_never_expires_ends_the_schedule() -> None:
    schedule: ExpirySchedule[str] = ExpirySchedule(warning=60)
    schedule.schedule("a", 100.0)
    schedule.schedule("a", None)  # refreshed to credentials without an expiry
    assert "a" not in schedule
    assert schedule.poll(1000.0) == ()
    assert schedule.next_deadline() is None


@pytest.mark.parametrize(("expires_in", "ms"), [(1.2345, 1234), (0.0, 0), (-3.0, 0)])
def test_the_time_left_in_milliseconds_is_never_negative(expires_in: float, ms: int) -> None:
    assert ExpiryDue("a", "warn", expires_in).expires_in_ms == ms


def test_keys_are_due_in_deadline_order() -> None:
    schedule: ExpirySchedule[str] = ExpirySchedule(warning=10)
    schedule.schedule("late", 300.0)
    schedule.schedule("early", 100.0)
    schedule.schedule("middle", 200.0)
    assert [due.key for due in schedule.poll(250.0)] == ["early", "early", "middle", "middle"]


def test_the_heap_stays_bounded_under_churn() -> None:
    schedule: ExpirySchedule[int] = ExpirySchedule(warning=60)
    for key in range(10_000):
        schedule.schedule(key, 1e6)
        schedule.schedule(key, 2e6)  # a refresh
        schedule.remove(key)
    assert len(schedule) == 0
    assert heap_size(schedule) <= 2 * 64 + 2


@pytest.mark.parametrize(
    ("warning", "grace"),
    [(0, 0), (-1, 0), (math.inf, 0), (math.nan, 0), (60, -1), (60, math.inf), (True, 0)],
)
def test_bad_configuration_is_refused(warning: float, grace: float) -> None:
    with pytest.raises(ValueError, match=r"^(warning|grace) must be"):
        ExpirySchedule(warning, grace)


@pytest.mark.parametrize("expires_at", [math.inf, -math.inf, math.nan])
def test_an_infinite_expiry_is_refused(expires_at: float) -> None:
    schedule: ExpirySchedule[str] = ExpirySchedule(warning=60)
    with pytest.raises(ValueError, match="expires_at"):
        schedule.schedule("a", expires_at)


times = st.floats(min_value=0, max_value=1e6, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    warning=st.floats(min_value=0.001, max_value=1e4),
    grace=st.floats(min_value=0, max_value=1e4),
    tokens=st.lists(st.tuples(st.integers(0, 5), times), max_size=20),
    polls=st.lists(times, max_size=20),
)
def test_each_current_token_is_warned_then_expired_once_at_its_deadlines(
    warning: float,
    grace: float,
    tokens: list[tuple[int, float]],
    polls: list[float],
) -> None:
    """Scheduled up front, polled at increasing times: only the last token of a key counts."""
    schedule: ExpirySchedule[int] = ExpirySchedule(warning, grace)
    current: dict[int, float] = {}
    for key, expires_at in tokens:
        schedule.schedule(key, expires_at)
        current[key] = expires_at
    seen: list[tuple[int, str]] = []
    for now in [*sorted(polls), 3e6]:
        deadline = schedule.next_deadline()
        found = schedule.poll(now)
        if found:
            assert deadline is not None
            assert deadline <= now
        for due in found:
            expires_at = current[due.key]
            assert due.expires_in == expires_at - now
            if due.action == "warn":
                assert expires_at - warning <= now
            else:
                assert expires_at + grace <= now
                assert (due.key, "warn") in seen
            seen.append((due.key, due.action))
    assert sorted(seen) == sorted((key, action) for key in current for action in ("warn", "expire"))
    assert len(schedule) == 0


def test_a_short_token_is_warned_halfway_through_what_it_has_left() -> None:
    schedule: ExpirySchedule[str] = ExpirySchedule(warning=60)
    schedule.schedule("a", 130.0, now=100.0)
    assert schedule.next_deadline() == 115.0
    assert schedule.poll(114.9) == ()
    assert schedule.poll(115.0) == (ExpiryDue("a", "warn", 15.0),)


def test_refreshing_a_short_token_on_its_warning_is_not_warned_again_at_once() -> None:
    # A 30 s token, 60 s warning: without the halfway rule every refresh is due a
    # warning the moment it is scheduled, and a client refreshing on each warning loops.
    schedule: ExpirySchedule[str] = ExpirySchedule(warning=60)
    schedule.schedule("a", 30.0, now=0.0)
    assert [due.action for due in schedule.poll(15.0)] == ["warn"]
    schedule.schedule("a", 45.0, now=15.0)
    assert schedule.poll(15.0) == ()
    assert schedule.next_deadline() == 30.0


def test_a_long_token_is_warned_the_full_warning_ahead_whatever_now() -> None:
    schedule: ExpirySchedule[str] = ExpirySchedule(warning=60)
    schedule.schedule("a", 1000.0, now=0.0)
    assert schedule.next_deadline() == 940.0


@pytest.mark.parametrize("now", [math.inf, -math.inf, math.nan])
def test_an_infinite_now_is_refused(now: float) -> None:
    schedule: ExpirySchedule[str] = ExpirySchedule(warning=60)
    with pytest.raises(ValueError, match="now"):
        schedule.schedule("a", 10.0, now=now)
