"""The schedule's loop wakes a few times a second for heartbeats, not once per connection."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import anyio
import pytest

from roomcast import HeartbeatPolicy, Hub
from roomcast.peer import ClientId
from roomcast.schedule import _HEARTBEAT_SLACK, Schedule
from roomcast.testing import ManualClock

pytestmark = pytest.mark.anyio

INTERVAL = 10.0
CLIENTS = 1000
STEP = 0.001


class CountingClock(ManualClock):
    """A manual clock that counts the loop's sleeps: one per wake."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeps = 0

    async def sleep_until(self, deadline: float) -> None:
        self.sleeps += 1
        await super().sleep_until(deadline)


class PingedClient:
    """What the schedule uses of a client: it records when it was pinged."""

    pingable = True
    closing = False

    def __init__(self, clock: ManualClock) -> None:
        self._clock = clock
        self.pinged: list[float] = []

    def request_ping(self, on_pong: Callable[[], object]) -> None:
        self.pinged.append(self._clock.now())
        on_pong()


async def test_pings_due_close_together_go_out_in_one_wake() -> None:
    clock = CountingClock()
    policy = HeartbeatPolicy(interval=INTERVAL, timeout=3 * INTERVAL, jitter=0.1)
    settings = Hub(clock=clock, heartbeat=policy)._settings
    clients = {ClientId(f"n.{i}"): PingedClient(clock) for i in range(CLIENTS)}
    schedule = Schedule(settings, clients, clock)  # type: ignore[arg-type]
    for client_id in clients:
        schedule.add(client_id, clock.now())
    async with anyio.create_task_group() as tg:
        tg.start_soon(schedule.run)
        # One interval and the slack, in 1 ms steps: each client's first ping falls
        # somewhere in the interval.
        for _ in range(round((INTERVAL + 2 * _HEARTBEAT_SLACK) / STEP)):
            await clock.advance(STEP)
        tg.cancel_scope.cancel()
    assert all(client.pinged for client in clients.values())
    # Without the slack the loop would wake for nearly every one of the 1,000 pings.
    assert clock.sleeps <= INTERVAL / _HEARTBEAT_SLACK + 20
    assert schedule.heartbeat_timeouts == 0


async def test_a_ping_goes_out_at_most_the_slack_late() -> None:
    clock = ManualClock()
    policy = HeartbeatPolicy(interval=INTERVAL, timeout=3 * INTERVAL, jitter=0)
    settings = Hub(clock=clock, heartbeat=policy)._settings
    client = PingedClient(clock)
    schedule = Schedule(settings, {ClientId("n.0"): client}, clock)  # type: ignore[dict-item]
    schedule.add(ClientId("n.0"), clock.now())
    async with anyio.create_task_group() as tg:
        tg.start_soon(schedule.run)
        for _ in range(round(3 * INTERVAL / STEP)):
            await clock.advance(STEP)
        tg.cancel_scope.cancel()
    # The first ping falls anywhere in the first interval; each later one an interval
    # after the one before, late by at most the slack (and the 1 ms step).
    gaps = [later - earlier for earlier, later in itertools.pairwise(client.pinged)]
    assert len(gaps) >= 1
    assert all(INTERVAL - STEP <= gap <= INTERVAL + _HEARTBEAT_SLACK + STEP for gap in gaps)
