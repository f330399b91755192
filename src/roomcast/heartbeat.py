"""When to ping each client and when a silent one is dead, given the time by the caller (pure)."""

from __future__ import annotations

import heapq
import random
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from . import config

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_JITTER",
    "DEFAULT_POLICY",
    "DEFAULT_TIMEOUT",
    "Heartbeat",
    "HeartbeatActions",
    "HeartbeatPolicy",
]


#: Seconds between two server pings to one client.
DEFAULT_INTERVAL: Final = config.DEFAULT_HEARTBEAT_INTERVAL
#: Seconds of silence (no frame, no pong) after which a client is dead.
DEFAULT_TIMEOUT: Final = config.DEFAULT_HEARTBEAT_TIMEOUT
#: Fraction of the interval by which each ping time is randomly moved, earlier or later.
DEFAULT_JITTER: Final = config.DEFAULT_HEARTBEAT_JITTER

# Stale heap entries (left by remove()) tolerated beyond one per live key before the heap
# is rebuilt; keeps the heap O(number of keys) while making the rebuild amortized O(1).
_STALE_SLACK: Final = 64

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class HeartbeatPolicy:
    """How often clients are pinged and how long they may stay silent.

    Attributes:
        interval: seconds between server pings to one client.
        timeout: a client silent this long (no frame, no pong) is dead. It must be
            longer than the longest gap between two pings, ``interval * (1 + jitter)``,
            by at least a round trip, or a client that answers every ping could still be
            declared dead. (The hub carries out pings and timeouts due within 50 ms of
            each other together, so either may come up to 50 ms late.)
        jitter: fraction of ``interval`` by which each ping time is randomly moved,
            so that clients connected together are not pinged together.

    Raises:
        ValueError: ``interval`` or ``timeout`` is not a positive finite number,
            ``jitter`` is outside ``[0, 1)``, or ``timeout`` is not longer than
            ``interval * (1 + jitter)``.
    """

    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    jitter: float = DEFAULT_JITTER

    def __post_init__(self) -> None:
        config.check_positive("HeartbeatPolicy.interval", self.interval)
        config.check_positive("HeartbeatPolicy.timeout", self.timeout)
        config.check_fraction("HeartbeatPolicy.jitter", self.jitter)
        longest_gap = self.interval * (1 + self.jitter)
        if self.timeout <= longest_gap:
            raise ValueError(
                f"timeout ({self.timeout!r}) must be longer than interval * (1 + jitter) "
                f"({longest_gap!r}), the longest gap between two pings"
            )


#: The default policy: ping every 30 s (± 10 %), dead after 60 s of silence.
DEFAULT_POLICY: Final = HeartbeatPolicy()


@dataclass(frozen=True, slots=True)
class HeartbeatActions(Generic[K]):
    """What [`Heartbeat.poll()`][roomcast.heartbeat.Heartbeat.poll] asks the caller to do.

    Attributes:
        ping: keys to send a ping to now.
        dead: keys silent for at least ``timeout``; already forgotten by the heartbeat,
            to be closed by the caller. No key is in both.
    """

    ping: tuple[K, ...] = ()
    dead: tuple[K, ...] = ()


class _Client:
    """Per-key schedule. ``due`` and ``seq`` identify the key's one live heap entry."""

    __slots__ = ("due", "last_seen", "next_ping", "seq")

    def __init__(self, last_seen: float, next_ping: float, due: float, seq: int) -> None:
        self.last_seen = last_seen
        self.next_ping = next_ping
        self.due = due
        self.seq = seq


def _check_now(now: float) -> float:
    # A clock reading, not configuration: any finite number of seconds, negative included.
    return config.check_finite("now", now)


class Heartbeat(Generic[K]):
    """When to ping each client and when a client is dead, for many clients at once.

    The caller reports activity with [`seen()`][roomcast.heartbeat.Heartbeat.seen], calls
    [`poll()`][roomcast.heartbeat.Heartbeat.poll] at (or after)
    [`next_deadline()`][roomcast.heartbeat.Heartbeat.next_deadline], sends the pings and closes the
    dead clients it returns.

    Each key has exactly one live entry in a heap ordered by the earlier of its next
    ping and its death time. `seen()` only records the time: it may make the entry
    early, never late, so the entry is corrected when it reaches the top. That keeps
    `seen()` O(1) and `poll()` O(k log n) for k keys due.
    """

    __slots__ = ("_clients", "_heap", "_policy", "_rng", "_seq")

    def __init__(
        self, policy: HeartbeatPolicy = DEFAULT_POLICY, *, rng: random.Random | None = None
    ) -> None:
        """Create a heartbeat with no client.

        Args:
            policy: ping interval, timeout and jitter.
            rng: source of jitter; pass a seeded one for reproducible schedules.

        Raises:
            ValueError: ``policy`` is not a [`HeartbeatPolicy`][roomcast.HeartbeatPolicy].
        """
        if not isinstance(policy, HeartbeatPolicy):
            raise ValueError(f"policy must be a HeartbeatPolicy, got {policy!r}")
        self._policy = policy
        self._rng = rng if rng is not None else random.Random()
        self._clients: dict[K, _Client] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._seq = 0

    @property
    def policy(self) -> HeartbeatPolicy:
        """The policy in force."""
        return self._policy

    def __len__(self) -> int:
        """The number of clients tracked."""
        return len(self._clients)

    def __contains__(self, key: object) -> bool:
        return key in self._clients

    def add(self, key: K, now: float) -> None:
        """Start tracking ``key``, connected (and so seen) at ``now``.

        Its first ping falls uniformly in ``[now, now + interval)``, so that many clients
        added together, as after a restart, are not all pinged together.

        Raises:
            ValueError: ``key`` is already tracked, or ``now`` is not finite.
        """
        now = _check_now(now)
        if key in self._clients:
            raise ValueError(f"key {key!r} is already tracked")
        first_ping = now + self._policy.interval * self._rng.random()
        client = _Client(now, first_ping, 0.0, 0)
        self._clients[key] = client
        self._push(key, client)

    def remove(self, key: K) -> None:
        """Stop tracking ``key``; unknown keys are ignored."""
        if self._clients.pop(key, None) is not None and (
            len(self._heap) > 2 * len(self._clients) + _STALE_SLACK
        ):
            self._rebuild()

    def seen(self, key: K, now: float) -> None:
        """Record activity from ``key`` (any frame, including a pong) at ``now``.

        Unknown keys are ignored: a frame may race with the key's removal.

        Raises:
            ValueError: ``now`` is not finite.
        """
        now = _check_now(now)
        client = self._clients.get(key)
        if client is not None and now > client.last_seen:
            client.last_seen = now

    def poll(self, now: float) -> HeartbeatActions[K]:
        """Return the keys to ping and the keys that are dead at ``now``.

        A key is dead once ``now >= last_seen + timeout``; dead keys are forgotten.
        Each key pinged gets its next ping at ``now + interval * (1 ± jitter)``.

        Raises:
            ValueError: ``now`` is not finite.
        """
        now = _check_now(now)
        policy, clients, heap = self._policy, self._clients, self._heap
        ping: list[K] = []
        dead: list[K] = []
        rescheduled: list[tuple[K, _Client]] = []
        while heap and heap[0][0] <= now:
            _, seq, key = heapq.heappop(heap)
            client = clients.get(key)
            if client is None or client.seq != seq:
                continue
            if now >= client.last_seen + policy.timeout:
                del clients[key]
                dead.append(key)
                continue
            if now >= client.next_ping:
                ping.append(key)
                spread = policy.jitter * (2.0 * self._rng.random() - 1.0)
                client.next_ping = now + policy.interval * (1.0 + spread)
            # Pushed after the loop: a time so large that now + interval == now must not
            # make this poll revisit the same key forever.
            rescheduled.append((key, client))
        for key, client in rescheduled:
            self._push(key, client)
        return HeartbeatActions(tuple(ping), tuple(dead))

    def next_deadline(self) -> float | None:
        """The earliest time at which `poll()` will have something to do.

        Returns:
            That time, or ``None`` when no client is tracked.
        """
        clients, heap = self._clients, self._heap
        while heap:
            due, seq, key = heap[0]
            client = clients.get(key)
            if client is None or client.seq != seq:
                heapq.heappop(heap)
                continue
            actual = self._due(client)
            if actual <= due:
                return due
            # seen() moved the death time later; move the entry to where it belongs.
            heapq.heappop(heap)
            self._push(key, client)
        return None

    def _due(self, client: _Client) -> float:
        return min(client.next_ping, client.last_seen + self._policy.timeout)

    def _push(self, key: K, client: _Client) -> None:
        self._seq += 1
        client.seq = self._seq
        client.due = self._due(client)
        heapq.heappush(self._heap, (client.due, client.seq, key))

    def _rebuild(self) -> None:
        self._heap = [(client.due, client.seq, key) for key, client in self._clients.items()]
        heapq.heapify(self._heap)

    def __repr__(self) -> str:
        return f"Heartbeat({self._policy!r}, clients={len(self)})"
