"""Settings: a hub's configuration, checked once and shared read-only by the hub's parts."""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass

from .config import check_flush_delay, check_non_negative, check_positive, check_positive_int
from .heartbeat import HeartbeatPolicy
from .options import RateLimit, RoomOptions, SlowConsumerPolicy
from .peer import QueueLimits
from .ratelimit import RateLimiter
from .session import SessionLimits
from .wire import WireLimits, namespace_of

__all__ = ["Settings", "configure"]

#: Seconds over which ``bad_request_limit`` malformed frames are tolerated.
_BAD_REQUEST_PERIOD = 60.0


@dataclass(frozen=True, slots=True)
class Settings:
    """What a [`Hub`][roomcast.Hub] was configured with, after checking (see its arguments).

    Attributes:
        namespaces: [`RoomOptions`][roomcast.RoomOptions] per namespace (read-only).
        default_room_options: options of rooms in no configured namespace.
        heartbeat: ping interval, dead-client timeout and jitter.
        max_message_size: largest client frame, in bytes.
        max_rooms_per_connection: rooms one connection may be in.
        queue: each client's outbound queue bound, policy and drain time.
        close_timeout: seconds a closing connection is kept for its closing handshake.
        auth_timeout: seconds a connection has to send its first-message ``auth``.
        token_expiry_warning: seconds before expiry that ``token.expiring`` is sent.
        token_expiry_grace: seconds after expiry before the close with 4002.
        session: the request-rate and bad-request budgets every session starts from.
        position_check: seconds between two checks of each history room's position.
        flush_delay: seconds the asyncio adapters may hold frames to write them together.
    """

    namespaces: Mapping[str, RoomOptions]
    default_room_options: RoomOptions
    heartbeat: HeartbeatPolicy
    max_message_size: int
    max_rooms_per_connection: int
    queue: QueueLimits
    close_timeout: float
    auth_timeout: float
    token_expiry_warning: float
    token_expiry_grace: float
    session: SessionLimits
    position_check: float
    flush_delay: float

    def room_options(self, room: str) -> RoomOptions:
        """The options that apply to ``room`` (by its namespace)."""
        return self.namespaces.get(namespace_of(room), self.default_room_options)


def configure(
    *,
    namespaces: Mapping[str, RoomOptions] | None,
    default_room_options: RoomOptions | None,
    heartbeat: HeartbeatPolicy | None,
    rate_limit: RateLimit | None,
    max_message_size: int,
    max_rooms_per_connection: int,
    max_queue: int,
    max_queue_bytes: int,
    slow_consumer: SlowConsumerPolicy,
    drain_timeout: float,
    close_timeout: float,
    auth_timeout: float,
    bad_request_limit: int,
    token_expiry_warning: float,
    token_expiry_grace: float,
    position_check: float,
    flush_delay: float,
) -> Settings:
    """Check a hub's keyword arguments and build its settings.

    Raises:
        ValueError: a limit is not positive, a time is not a positive finite
            number of seconds (``token_expiry_grace``: not negative;
            ``flush_delay``: from 0 to 1), the
            slow-consumer policy is unknown, or a namespace is malformed. The
            message names the argument.
        TypeError: a namespace's options are not [`RoomOptions`][roomcast.RoomOptions].
    """
    for name, value in (
        ("max_message_size", max_message_size),
        ("max_rooms_per_connection", max_rooms_per_connection),
        ("max_queue", max_queue),
        ("bad_request_limit", bad_request_limit),
    ):
        check_positive_int(name, value)
    drain = check_positive("drain_timeout", drain_timeout)
    close = check_positive("close_timeout", close_timeout)
    auth = check_positive("auth_timeout", auth_timeout)
    warning = check_positive("token_expiry_warning", token_expiry_warning)
    grace = check_non_negative("token_expiry_grace", token_expiry_grace)
    check = check_positive("position_check", position_check)
    delay = check_flush_delay(flush_delay)
    if slow_consumer not in ("disconnect", "drop_oldest"):
        raise ValueError(
            f"slow_consumer must be 'disconnect' or 'drop_oldest', got {slow_consumer!r}"
        )
    checked: dict[str, RoomOptions] = {}
    for namespace, options in (namespaces or {}).items():
        if not isinstance(options, RoomOptions):
            raise TypeError(f"namespaces[{namespace!r}] must be RoomOptions")
        if not namespace or ":" in namespace:
            raise ValueError(f"namespace {namespace!r} must be non-empty and contain no ':'")
        checked[namespace] = options
    limit = rate_limit or RateLimit()
    return Settings(
        namespaces=types.MappingProxyType(checked),
        default_room_options=default_room_options or RoomOptions(),
        heartbeat=heartbeat or HeartbeatPolicy(),
        max_message_size=max_message_size,
        max_rooms_per_connection=max_rooms_per_connection,
        queue=QueueLimits(max_queue, max_queue_bytes, slow_consumer, drain),
        close_timeout=close,
        auth_timeout=auth,
        token_expiry_warning=warning,
        token_expiry_grace=grace,
        # Templates: each session gets fresh buckets sharing their parameters.
        session=SessionLimits(
            wire=WireLimits(
                max_message_size=max_message_size,
                max_rooms_per_request=max_rooms_per_connection,
            ),
            messages=RateLimiter(limit.rate, limit.period, limit.burst),
            strikes=RateLimiter(limit.strikes, limit.period, limit.strikes),
            bad_requests=RateLimiter(bad_request_limit, _BAD_REQUEST_PERIOD, bad_request_limit),
        ),
        position_check=check,
        flush_delay=delay,
    )
