"""Connection limits per user and per IP, and failed-authentication limits per IP."""

from __future__ import annotations

from dataclasses import dataclass

from .config import DEFAULT_AUTH_FAILURES_PER_MINUTE as DEFAULT_AUTH_FAILURES_PER_MINUTE
from .config import DEFAULT_MAX_CONNECTIONS_PER_IP as DEFAULT_MAX_CONNECTIONS_PER_IP
from .config import DEFAULT_MAX_CONNECTIONS_PER_USER as DEFAULT_MAX_CONNECTIONS_PER_USER
from .config import DEFAULT_MAX_QUEUE_BYTES as DEFAULT_MAX_QUEUE_BYTES
from .config import DEFAULT_MAX_TRACKED_IPS as DEFAULT_MAX_TRACKED_IPS
from .config import check_positive_int
from .ratelimit import KeyedRateLimiter

__all__ = [
    "DEFAULT_AUTH_FAILURES_PER_MINUTE",
    "DEFAULT_MAX_CONNECTIONS_PER_IP",
    "DEFAULT_MAX_CONNECTIONS_PER_USER",
    "DEFAULT_MAX_QUEUE_BYTES",
    "DEFAULT_MAX_TRACKED_IPS",
    "ConnectionLimits",
    "ConnectionTracker",
]


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Caps that keep one user, one address or one client from exhausting a node.

    Attributes:
        max_connections_per_user: open connections per user id; over it the
            handshake is refused with 503 (or the connection closed with 1013).
        max_connections_per_ip: open connections per client address; likewise.
        auth_failures_per_minute: failed authentications per client address
            per minute, counted across the handshake, first-message ``auth``
            frames and ``refresh`` requests; past it, nothing from that address
            is verified until the budget refills: handshakes are refused with
            429 (or closed with 1013), ``auth`` frames closed with 1013, and
            ``refresh`` requests answered ``rate_limited``. Only failures
            count, so a busy office behind one address is not locked out by
            its own successful logins, while guessing tokens is.
        max_tracked_ips: addresses whose failures are remembered at once; the
            table never grows past it (full buckets are forgotten first, then
            the least recently seen).
        max_queue_bytes: characters of frames (bytes, for ASCII) that may wait
            for one client before the slow-consumer policy applies.
    """

    max_connections_per_user: int = DEFAULT_MAX_CONNECTIONS_PER_USER
    max_connections_per_ip: int = DEFAULT_MAX_CONNECTIONS_PER_IP
    auth_failures_per_minute: int = DEFAULT_AUTH_FAILURES_PER_MINUTE
    max_tracked_ips: int = DEFAULT_MAX_TRACKED_IPS
    max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES

    def __post_init__(self) -> None:
        for name in (
            "max_connections_per_user",
            "max_connections_per_ip",
            "auth_failures_per_minute",
            "max_tracked_ips",
            "max_queue_bytes",
        ):
            check_positive_int(f"ConnectionLimits.{name}", getattr(self, name))


class ConnectionTracker:
    """Counts open connections per user and per address, and failures per address.

    Pure bookkeeping: the hub asks before accepting and reports opens, closes
    and failures. Entries exist only while connections are open, and the
    failure table is bounded, so memory follows the open connections.
    """

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self._per_ip: dict[str, int] = {}
        self._per_user: dict[str, int] = {}
        self._failures: KeyedRateLimiter[str] = KeyedRateLimiter(
            limits.auth_failures_per_minute,
            60.0,
            limits.auth_failures_per_minute,
            max_keys=limits.max_tracked_ips,
        )

    def ip_refusal(self, ip: str | None, now: float) -> int | None:
        """The HTTP status refusing another connection from ``ip``, or ``None``."""
        if ip is None:
            return None
        if self.locked_out(ip, now) > 0:
            return 429
        if self._per_ip.get(ip, 0) >= self.limits.max_connections_per_ip:
            return 503
        return None

    def locked_out(self, ip: str | None, now: float) -> float:
        """Seconds until ``ip`` may have credentials verified again; 0 when it may now."""
        if ip is None:
            return 0.0
        return self._failures.retry_after(ip, now)

    def reserve(self, ip: str | None, now: float) -> float:
        """Take one failure from ``ip``'s budget before verifying its credentials.

        Every verification from an address (handshake, first-message ``auth``,
        ``refresh``) takes its failure up front, so that attempts verified at
        the same time (an authenticator that awaits a database or a key-set
        fetch) cannot all pass a check made before any of them failed; one
        that succeeds gives it back with `release()`.

        Returns:
            ``0.0`` when the failure was taken and verification may go ahead;
            otherwise the seconds until the address may try again (nothing taken).
        """
        if ip is None or self._failures.allow(ip, now):
            return 0.0
        return max(self._failures.retry_after(ip, now), 1e-3)

    def release(self, ip: str | None, now: float) -> None:
        """Give back the failure `reserve()` took, for credentials that verified."""
        if ip is not None:
            self._failures.refund(ip, now)

    def user_refusal(self, user_id: str | None) -> int | None:
        """The HTTP status refusing another connection of ``user_id``, or ``None``."""
        if user_id is None:
            return None
        if self._per_user.get(user_id, 0) >= self.limits.max_connections_per_user:
            return 503
        return None

    def failed(self, ip: str | None, now: float) -> None:
        """Count a failed authentication from ``ip``."""
        if ip is not None:
            self._failures.allow(ip, now)

    def opened(self, ip: str | None, user_id: str | None) -> None:
        """Count an accepted connection."""
        if ip is not None:
            self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        if user_id is not None:
            self._per_user[user_id] = self._per_user.get(user_id, 0) + 1

    def closed(self, ip: str | None, user_id: str | None) -> None:
        """Forget a connection counted by `opened()`."""
        for table, key in ((self._per_ip, ip), (self._per_user, user_id)):
            if key is not None:
                left = table.get(key, 0) - 1
                if left > 0:
                    table[key] = left
                else:
                    table.pop(key, None)

    @property
    def tracked_ips(self) -> int:
        """Addresses in the failure table."""
        return len(self._failures)
