"""Heartbeat scheduling: spread pings, timely death, and bounded bookkeeping."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from roomcast.heartbeat import (
    DEFAULT_INTERVAL,
    DEFAULT_JITTER,
    DEFAULT_TIMEOUT,
    Heartbeat,
    HeartbeatActions,
    HeartbeatPolicy,
)


class FixedRandom(random.Random):
    """A random source that always returns ``value``, to place pings exactly."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def heap_size(heartbeat: Heartbeat[Any]) -> int:
    # The heap is private; its size is the memory bound under test.
    return len(heartbeat._heap)


# --------------------------------------------------------------------------- policy


def test_default_policy() -> None:
    policy = HeartbeatPolicy()
    assert (policy.interval, policy.timeout, policy.jitter) == (30.0, 60.0, 0.1)
    assert (DEFAULT_INTERVAL, DEFAULT_TIMEOUT, DEFAULT_JITTER) == (30.0, 60.0, 0.1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"interval": 0},
        {"interval": -1},
        {"interval": math.nan},
        {"interval": math.inf},
        {"timeout": 0},
        {"timeout": math.inf},
        {"timeout": math.nan},
        {"jitter": -0.01},
        {"jitter": 1.0},
        {"jitter": math.nan},
        {"interval": True},
        {"interval": "30"},
        {"interval": 30.0, "timeout": 29.0, "jitter": 0.0},
        {"interval": 10.0, "timeout": 10.0, "jitter": 0.0},
    ],
)
def test_policy_rejects_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"interval|timeout|jitter"):
        HeartbeatPolicy(**kwargs)


def test_policy_rejects_timeout_shorter_than_the_longest_gap_between_pings() -> None:
    # With 10 % jitter two pings can be 33 s apart: a client answering each would die.
    with pytest.raises(ValueError, match="timeout"):
        HeartbeatPolicy(interval=30.0, timeout=32.0, jitter=0.1)


def test_policy_rejects_timeout_equal_to_the_longest_gap_between_pings() -> None:
    # The answer to a ping takes time; a timeout with no margin for it kills live clients.
    with pytest.raises(ValueError, match="timeout"):
        HeartbeatPolicy(interval=10.0, timeout=10.0, jitter=0.0)


def test_policy_accepts_timeout_just_over_the_longest_gap_between_pings() -> None:
    assert HeartbeatPolicy(interval=10.0, timeout=10.5, jitter=0.0).timeout == 10.5


def test_policy_is_frozen() -> None:
    policy = HeartbeatPolicy()
    with pytest.raises(AttributeError):
        policy.interval = 1.0  # type: ignore[misc]


def test_heartbeat_rejects_a_policy_of_the_wrong_type() -> None:
    with pytest.raises(ValueError, match="policy"):
        Heartbeat(policy=30.0)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- membership


def test_add_tracks_the_key() -> None:
    heartbeat: Heartbeat[str] = Heartbeat()
    heartbeat.add("a", 0.0)
    assert "a" in heartbeat
    assert "b" not in heartbeat
    assert len(heartbeat) == 1


def test_add_rejects_a_key_already_tracked() -> None:
    heartbeat: Heartbeat[str] = Heartbeat()
    heartbeat.add("a", 0.0)
    with pytest.raises(ValueError, match="already"):
        heartbeat.add("a", 1.0)


def test_remove_of_an_unknown_key_is_ignored() -> None:
    heartbeat: Heartbeat[str] = Heartbeat()
    heartbeat.remove("ghost")
    assert len(heartbeat) == 0


def test_seen_of_an_unknown_key_is_ignored() -> None:
    heartbeat: Heartbeat[str] = Heartbeat()
    heartbeat.seen("ghost", 1.0)
    assert "ghost" not in heartbeat


@pytest.mark.parametrize("now", [math.nan, math.inf, -math.inf])
def test_non_finite_times_are_rejected(now: float) -> None:
    heartbeat: Heartbeat[str] = Heartbeat()
    with pytest.raises(ValueError, match="now"):
        heartbeat.add("a", now)
    heartbeat.add("b", 0.0)
    with pytest.raises(ValueError, match="now"):
        heartbeat.seen("b", now)
    with pytest.raises(ValueError, match="now"):
        heartbeat.poll(now)


# --------------------------------------------------------------------------- pings


def test_first_pings_of_clients_added_together_are_spread_over_the_interval() -> None:
    heartbeat: Heartbeat[int] = Heartbeat(HeartbeatPolicy(30.0, 60.0, 0.1), rng=random.Random(7))
    for key in range(10_000):
        heartbeat.add(key, 0.0)
    first_pinged: set[int] = set()
    per_second = Counter[int]()
    for second in range(31):
        actions = heartbeat.poll(float(second))
        assert actions.dead == ()
        firsts = set(actions.ping) - first_pinged
        first_pinged |= firsts
        per_second[second] = len(firsts)
    assert len(first_pinged) == 10_000
    # Uniform over 30 s is ~333 a second; a burst would put thousands in one slice.
    assert max(per_second.values()) <= 2 * 10_000 // 30


def test_first_ping_is_within_one_interval_of_add() -> None:
    heartbeat: Heartbeat[str] = Heartbeat(HeartbeatPolicy(10.0, 20.0, 0.0), rng=FixedRandom(0.25))
    heartbeat.add("a", 100.0)
    assert heartbeat.poll(102.4) == HeartbeatActions()
    assert heartbeat.poll(102.5) == HeartbeatActions(ping=("a",))


def test_a_pinged_key_is_pinged_again_one_interval_later() -> None:
    heartbeat: Heartbeat[str] = Heartbeat(HeartbeatPolicy(10.0, 20.0, 0.0), rng=FixedRandom(0.5))
    heartbeat.add("a", 0.0)
    assert heartbeat.poll(5.0).ping == ("a",)
    heartbeat.seen("a", 5.0)
    assert heartbeat.poll(14.9).ping == ()
    assert heartbeat.poll(15.0).ping == ("a",)


def test_jitter_spreads_later_pings_within_its_bounds() -> None:
    policy = HeartbeatPolicy(10.0, 20.0, 0.3)
    heartbeat: Heartbeat[int] = Heartbeat(policy, rng=random.Random(3))
    for key in range(1000):
        heartbeat.add(key, 0.0)
    assert len(heartbeat.poll(10.0).ping) == 1000  # everyone pinged at t=10
    for key in range(1000):
        heartbeat.seen(key, 10.0)
    counts = [len(heartbeat.poll(t).ping) for t in (16.99, 17.0 + 3.0, 23.0)]
    assert counts[0] == 0  # none earlier than interval * (1 - jitter)
    assert 0 < counts[1] < 1000  # some on each side of the interval
    assert sum(counts) == 1000  # all by interval * (1 + jitter)


@settings(max_examples=100, deadline=None)
@given(
    st.floats(0.5, 100.0),
    st.floats(0.0, 0.9),
    st.floats(1.001, 3.0),
    st.floats(0.0, 0.99),
    st.integers(0, 2**32),
)
def test_a_key_that_keeps_answering_is_never_dead(
    interval: float, jitter: float, slack: float, rtt_share: float, seed: int
) -> None:
    timeout = interval * (1 + jitter) * slack
    policy = HeartbeatPolicy(interval, timeout, jitter)
    heartbeat: Heartbeat[str] = Heartbeat(policy, rng=random.Random(seed))
    heartbeat.add("a", 0.0)
    # The answer arrives within the margin between the longest ping gap and the timeout.
    rtt = rtt_share * (timeout - interval * (1 + jitter))
    pings: list[float] = []
    while len(pings) < 50:
        now = heartbeat.next_deadline()
        assert now is not None
        actions = heartbeat.poll(now)
        assert actions.dead == ()
        if actions.ping:
            pings.append(now)
            heartbeat.seen("a", now + rtt)
    gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
    assert min(gaps) >= interval * (1 - jitter) * (1 - 1e-9)
    assert max(gaps) <= interval * (1 + jitter) * (1 + 1e-9)


# --------------------------------------------------------------------------- death


def test_a_silent_key_is_dead_at_exactly_timeout() -> None:
    heartbeat: Heartbeat[str] = Heartbeat(HeartbeatPolicy(10.0, 25.0, 0.2), rng=random.Random(1))
    heartbeat.add("a", 100.0)
    for now in (100.0, 105.0, 110.0, 115.0, 120.0, 124.999):
        assert heartbeat.poll(now).dead == ()
    assert heartbeat.poll(125.0) == HeartbeatActions(dead=("a",))


def test_a_dead_key_is_forgotten() -> None:
    heartbeat: Heartbeat[str] = Heartbeat(HeartbeatPolicy(10.0, 20.0, 0.0))
    heartbeat.add("a", 0.0)
    assert heartbeat.poll(20.0).dead == ("a",)
    assert "a" not in heartbeat
    assert heartbeat.poll(1000.0) == HeartbeatActions()
    assert heartbeat.next_deadline() is None


def test_death_is_found_between_pings() -> None:
    heartbeat: Heartbeat[str] = Heartbeat(HeartbeatPolicy(10.0, 15.0, 0.0), rng=FixedRandom(0.7))
    heartbeat.add("a", 0.0)
    assert heartbeat.poll(7.0).ping == ("a",)  # next ping at 17, death at 15
    assert heartbeat.next_deadline() == 15.0
    assert heartbeat.poll(15.0).dead == ("a",)


def test_seen_postpones_death() -> None:
    heartbeat: Heartbeat[str] = Heartbeat(HeartbeatPolicy(10.0, 20.0, 0.0), rng=FixedRandom(0.5))
    heartbeat.add("a", 0.0)
    heartbeat.seen("a", 12.0)
    assert heartbeat.poll(31.9).dead == ()
    assert heartbeat.poll(32.0).dead == ("a",)


def test_seen_with_an_older_time_does_not_bring_death_forward() -> None:
    heartbeat: Heartbeat[str] = Heartbeat(HeartbeatPolicy(10.0, 20.0, 0.0), rng=FixedRandom(0.5))
    heartbeat.add("a", 0.0)
    heartbeat.seen("a", 12.0)
    heartbeat.seen("a", 3.0)
    assert heartbeat.poll(31.9).dead == ()


def test_a_dead_key_is_not_also_pinged() -> None:
    heartbeat: Heartbeat[str] = Heartbeat(HeartbeatPolicy(10.0, 20.0, 0.0), rng=FixedRandom(0.5))
    heartbeat.add("a", 0.0)
    assert heartbeat.poll(500.0) == HeartbeatActions(dead=("a",))


def test_removed_keys_never_show_up() -> None:
    heartbeat: Heartbeat[str] = Heartbeat(HeartbeatPolicy(10.0, 20.0, 0.0))
    heartbeat.add("gone", 0.0)
    heartbeat.add("kept", 0.0)
    heartbeat.remove("gone")
    seen: set[str] = set()
    for now in range(0, 100, 3):
        actions = heartbeat.poll(float(now))
        seen.update(actions.ping, actions.dead)
    assert seen == {"kept"}


def test_a_key_added_again_after_removal_follows_only_its_new_schedule() -> None:
    heartbeat: Heartbeat[str] = Heartbeat(HeartbeatPolicy(10.0, 20.0, 0.0), rng=FixedRandom(0.5))
    heartbeat.add("a", 0.0)  # would be pinged at 5
    heartbeat.remove("a")
    heartbeat.add("a", 3.0)  # pinged at 8, dead at 23
    assert heartbeat.poll(5.0) == HeartbeatActions()
    assert heartbeat.poll(8.0) == HeartbeatActions(ping=("a",))
    assert heartbeat.poll(22.9).dead == ()
    assert heartbeat.poll(23.0).dead == ("a",)


# --------------------------------------------------------------------------- next_deadline


def test_next_deadline_is_none_when_empty() -> None:
    assert Heartbeat[str]().next_deadline() is None


def test_next_deadline_is_the_earliest_first_ping() -> None:
    heartbeat: Heartbeat[str] = Heartbeat(HeartbeatPolicy(8.0, 16.0, 0.0), rng=FixedRandom(0.25))
    heartbeat.add("a", 10.0)
    heartbeat.add("b", 1.0)
    assert heartbeat.next_deadline() == 3.0


def test_next_deadline_follows_seen() -> None:
    heartbeat: Heartbeat[str] = Heartbeat(HeartbeatPolicy(10.0, 12.0, 0.0), rng=FixedRandom(0.5))
    heartbeat.add("a", 0.0)
    heartbeat.poll(5.0)  # pinged; next ping at 15, death at 12
    assert heartbeat.next_deadline() == 12.0
    heartbeat.seen("a", 11.0)  # death moves to 23
    assert heartbeat.next_deadline() == 15.0


def test_next_deadline_skips_removed_keys() -> None:
    heartbeat: Heartbeat[str] = Heartbeat(HeartbeatPolicy(10.0, 20.0, 0.0), rng=FixedRandom(0.5))
    heartbeat.add("early", 0.0)
    heartbeat.add("late", 4.0)
    heartbeat.remove("early")
    assert heartbeat.next_deadline() == 9.0


def test_poll_before_next_deadline_does_nothing_and_at_it_acts() -> None:
    heartbeat: Heartbeat[int] = Heartbeat(rng=random.Random(5))
    for key in range(50):
        heartbeat.add(key, 0.0)
    for _ in range(200):
        deadline = heartbeat.next_deadline()
        assert deadline is not None
        assert heartbeat.poll(math.nextafter(deadline, -math.inf)) == HeartbeatActions()
        actions = heartbeat.poll(deadline)
        assert actions.ping or actions.dead
        for key in actions.ping:
            heartbeat.seen(key, deadline)


# --------------------------------------------------------------------------- bounds


def test_heap_stays_bounded_under_many_seen_calls() -> None:
    heartbeat: Heartbeat[int] = Heartbeat(rng=random.Random(0))
    for key in range(10):
        heartbeat.add(key, 0.0)
    for step in range(100_000):
        now = step * 0.01
        heartbeat.seen(step % 10, now)
        if step % 100 == 0:
            heartbeat.poll(now)
            heartbeat.next_deadline()
        assert heap_size(heartbeat) <= 10
    assert len(heartbeat) == 10


def test_heap_stays_bounded_under_add_and_remove_churn() -> None:
    heartbeat: Heartbeat[int] = Heartbeat()
    heartbeat.add(-1, 0.0)
    for key in range(100_000):
        heartbeat.add(key, 0.0)
        heartbeat.remove(key)
        assert heap_size(heartbeat) <= 2 * len(heartbeat) + 65
    assert len(heartbeat) == 1


# --------------------------------------------------------------------------- model

KEYS = st.integers(0, 7)
STEPS = st.floats(0.0, 15.0)
POLICY = HeartbeatPolicy(interval=5.0, timeout=8.0, jitter=0.5)


class HeartbeatModel(RuleBasedStateMachine):
    """Random add/remove/seen/poll sequences against a model of who is alive."""

    def __init__(self) -> None:
        super().__init__()
        self.heartbeat: Heartbeat[int] = Heartbeat(POLICY, rng=random.Random(0))
        self.now = 0.0
        self.last_seen: dict[int, float] = {}
        self.last_ping: dict[int, float] = {}

    @initialize(seed=st.integers(0, 2**32))
    def seed(self, seed: int) -> None:
        self.heartbeat = Heartbeat(POLICY, rng=random.Random(seed))

    @rule(key=KEYS, dt=STEPS)
    def add(self, key: int, dt: float) -> None:
        self.now += dt
        if key in self.last_seen:
            with pytest.raises(ValueError, match="already"):
                self.heartbeat.add(key, self.now)
            return
        self.heartbeat.add(key, self.now)
        self.last_seen[key] = self.now
        self.last_ping.pop(key, None)

    @rule(key=KEYS)
    def remove(self, key: int) -> None:
        self.heartbeat.remove(key)
        self.last_seen.pop(key, None)

    @rule(key=KEYS, dt=STEPS)
    def seen(self, key: int, dt: float) -> None:
        self.now += dt
        self.heartbeat.seen(key, self.now)
        if key in self.last_seen:
            self.last_seen[key] = self.now

    @rule(dt=STEPS)
    def poll(self, dt: float) -> None:
        self.now += dt
        self.check(self.heartbeat.poll(self.now))

    @precondition(lambda self: bool(self.last_seen))
    @rule()
    def poll_at_deadline(self) -> None:
        deadline = self.heartbeat.next_deadline()
        assert deadline is not None
        self.now = max(self.now, deadline)
        self.check(self.heartbeat.poll(self.now))

    def check(self, actions: HeartbeatActions[int]) -> None:
        expected_dead = {
            key for key, seen in self.last_seen.items() if self.now >= seen + POLICY.timeout
        }
        assert set(actions.dead) == expected_dead
        assert len(actions.dead) == len(expected_dead)
        assert not set(actions.ping) & expected_dead
        assert len(set(actions.ping)) == len(actions.ping)
        for key in actions.ping:
            assert key in self.last_seen
            if key in self.last_ping:
                gap = self.now - self.last_ping[key]
                assert gap >= POLICY.interval * (1 - POLICY.jitter) - 1e-9
            self.last_ping[key] = self.now
        for key in actions.dead:
            del self.last_seen[key]

    @invariant()
    def membership_matches(self) -> None:
        assert len(self.heartbeat) == len(self.last_seen)
        assert all(key in self.heartbeat for key in self.last_seen)
        assert heap_size(self.heartbeat) <= 2 * len(self.last_seen) + 65

    @invariant()
    def nobody_is_overdue_after_a_poll_at_the_deadline(self) -> None:
        deadline = self.heartbeat.next_deadline()
        if not self.last_seen:
            assert deadline is None
            return
        assert deadline is not None
        earliest_death = min(self.last_seen.values()) + POLICY.timeout
        assert deadline <= earliest_death


HeartbeatModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_heartbeat_model = HeartbeatModel.TestCase
