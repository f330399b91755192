"""Every default roomcast uses, and the validators that check configured numbers (pure).

Each module re-exports the defaults that belong to its own options (for example
`DEFAULT_INTERVAL` from `roomcast.heartbeat`),
but the numbers live here, so one page lists them all. A configuration error is a
`ValueError` naming the option, raised when the object is built, never later.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = [
    "DEFAULT_AUTH_FAILURES_PER_MINUTE",
    "DEFAULT_AUTH_TIMEOUT",
    "DEFAULT_BAD_REQUEST_LIMIT",
    "DEFAULT_BURST",
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_FLUSH_DELAY",
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_HEARTBEAT_JITTER",
    "DEFAULT_HEARTBEAT_TIMEOUT",
    "DEFAULT_JWKS_COOLDOWN",
    "DEFAULT_JWKS_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS_PER_IP",
    "DEFAULT_MAX_CONNECTIONS_PER_USER",
    "DEFAULT_MAX_KEYS",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_QUEUE_BYTES",
    "DEFAULT_MAX_RECONNECT_DELAY",
    "DEFAULT_MAX_ROOMS_PER_CONNECTION",
    "DEFAULT_MAX_TRACKED_IPS",
    "DEFAULT_PERIOD",
    "DEFAULT_POSITION_CHECK",
    "DEFAULT_POSITION_TTL",
    "DEFAULT_PRESENCE_LEASE",
    "DEFAULT_PROBE_INTERVAL",
    "DEFAULT_PROBE_TIMEOUT",
    "DEFAULT_PUBLISH_TIMEOUT",
    "DEFAULT_RECONNECT_DELAY",
    "DEFAULT_RATE",
    "DEFAULT_STRIKES",
    "DEFAULT_TOKEN_EXPIRY_WARNING",
    "MAX_FLUSH_DELAY",
    "check_finite",
    "check_flush_delay",
    "check_fraction",
    "check_non_negative",
    "check_positive",
    "check_positive_int",
]

# -- the hub -----------------------------------------------------------------------------

#: Largest client frame a hub accepts, in bytes of UTF-8 (the wire protocol's limit).
DEFAULT_MAX_MESSAGE_SIZE: Final = 64 * 1024
#: Rooms one connection may be in at once.
DEFAULT_MAX_ROOMS_PER_CONNECTION: Final = 100
#: Seconds [`Hub.aclose()`][roomcast.Hub.aclose] lets clients drain queued frames.
DEFAULT_DRAIN_TIMEOUT: Final = 5.0
#: Seconds a connection has to authenticate (first-message `auth`).
DEFAULT_AUTH_TIMEOUT: Final = 10.0
#: Seconds before a token expires that `token.expiring` is sent.
DEFAULT_TOKEN_EXPIRY_WARNING: Final = 60.0
#: Malformed frames tolerated per minute before a connection is closed with 1008.
DEFAULT_BAD_REQUEST_LIMIT: Final = 10
#: Seconds a closing connection is kept for the peer to read its close frame and answer.
DEFAULT_CLOSE_TIMEOUT: Final = 30.0
#: Seconds between two checks of each history room's position against the backend.
DEFAULT_POSITION_CHECK: Final = 15.0
#: Seconds the `websockets` and aiohttp adapters may hold frames to write them together
#: (0: until the end of the current event loop iteration).
DEFAULT_FLUSH_DELAY: Final = 0.0
#: The longest `flush_delay` accepted, in seconds.
MAX_FLUSH_DELAY: Final = 1.0

# -- one client's outbound queue ---------------------------------------------------------

#: Frames a client may have waiting before the slow-consumer policy applies.
DEFAULT_MAX_QUEUE: Final = 1000
#: Characters of frames that may wait for one client (1 MiB of ASCII).
DEFAULT_MAX_QUEUE_BYTES: Final = 1024 * 1024

# -- connection and login limits ---------------------------------------------------------

#: Open connections one user may have on one node (tabs, devices).
DEFAULT_MAX_CONNECTIONS_PER_USER: Final = 32
#: Open connections from one IP address on one node (offices share NAT addresses).
DEFAULT_MAX_CONNECTIONS_PER_IP: Final = 256
#: Failed authentications one IP address may make per minute.
DEFAULT_AUTH_FAILURES_PER_MINUTE: Final = 10
#: Distinct IP addresses whose failures are remembered at once.
DEFAULT_MAX_TRACKED_IPS: Final = 100_000

# -- message rates -----------------------------------------------------------------------

#: Tokens added per `period` (messages per minute, with the default period).
DEFAULT_RATE: Final = 100
#: Seconds over which `rate` tokens are added.
DEFAULT_PERIOD: Final = 60.0
#: Most tokens a bucket holds: how many messages may arrive back to back.
DEFAULT_BURST: Final = 20
#: Messages refused by a [`RateLimit`][roomcast.RateLimit] tolerated per `period`
#: before the connection is closed with 4029.
DEFAULT_STRIKES: Final = 20
#: Most keys a [`KeyedRateLimiter`][roomcast.KeyedRateLimiter] remembers.
DEFAULT_MAX_KEYS: Final = 100_000

# -- heartbeats --------------------------------------------------------------------------

#: Seconds between two server pings to one client.
DEFAULT_HEARTBEAT_INTERVAL: Final = 30.0
#: Seconds of silence (no frame, no pong) after which a client is dead.
DEFAULT_HEARTBEAT_TIMEOUT: Final = 60.0
#: Fraction of the interval by which each ping time is randomly moved, earlier or later.
DEFAULT_HEARTBEAT_JITTER: Final = 0.1

# -- JWT key sets ------------------------------------------------------------------------

#: Least seconds between two fetches of a JWT issuer's key set, however many tokens
#: name an unknown `kid`.
DEFAULT_JWKS_COOLDOWN: Final = 300.0
#: Seconds one fetch of a key set may take in all: connecting, headers and body.
DEFAULT_JWKS_TIMEOUT: Final = 5.0

# -- backends ----------------------------------------------------------------------------

#: Seconds a room's position (offset and epoch) outlives its last publish or read, in
#: every backend: long after the messages expire, a client that missed nothing is
#: still told `recovered: true`.
DEFAULT_POSITION_TTL: Final = 86_400.0
#: Seconds a Redis publish (or any other command) may take before it fails with
#: `BackendError`.
DEFAULT_PUBLISH_TIMEOUT: Final = 5.0
#: Seconds of the first pause before a lost Redis pub/sub connection is made again.
DEFAULT_RECONNECT_DELAY: Final = 0.1
#: Most seconds between two attempts to make a Redis pub/sub connection again.
DEFAULT_MAX_RECONNECT_DELAY: Final = 10.0
#: Seconds between two liveness probes of a Redis pub/sub connection.
DEFAULT_PROBE_INTERVAL: Final = 5.0
#: Seconds a probe may take to come back before the pub/sub connection is made again.
DEFAULT_PROBE_TIMEOUT: Final = 5.0
#: Seconds within which a dead node's presence entries disappear, with a `presence.leave`.
DEFAULT_PRESENCE_LEASE: Final = 30.0


def check_finite(name: str, value: object) -> float:
    """Return `value` as a float if it is a finite number (of any sign).

    Also checks times passed in by a caller (a `now` in seconds from any origin).

    Raises:
        ValueError: `value` is not a number (`bool` is not one), or is not finite.
            The message names the option.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_positive(name: str, value: object) -> float:
    """Return `value` as a float if it is a finite number greater than 0.

    Raises:
        ValueError: `value` is not a number (`bool` is not one), is not finite,
            or is not greater than 0. The message names the option.
    """
    number = check_finite(name, value)
    if number <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return number


def check_non_negative(name: str, value: object) -> float:
    """Return `value` as a float if it is a finite number of at least 0.

    Raises:
        ValueError: `value` is not a finite number, or is below 0.
    """
    number = check_finite(name, value)
    if number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def check_fraction(name: str, value: object) -> float:
    """Return `value` as a float if it is a finite number in `[0, 1)`.

    Raises:
        ValueError: `value` is not a finite number, or is outside `[0, 1)`.
    """
    number = check_finite(name, value)
    if not 0 <= number < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return number


def check_flush_delay(value: object, name: str = "flush_delay") -> float:
    """Return `value` as a float if it is a finite number in `[0, MAX_FLUSH_DELAY]`.

    Raises:
        ValueError: `value` is not a finite number, is below 0 or above `MAX_FLUSH_DELAY`
            (a frame held that long is a stalled connection, not a batch).
    """
    number = check_non_negative(name, value)
    if number > MAX_FLUSH_DELAY:
        raise ValueError(f"{name} must be at most {MAX_FLUSH_DELAY} seconds, got {value!r}")
    return number


def check_positive_int(name: str, value: object) -> int:
    """Return `value` if it is an integer of at least 1.

    Raises:
        ValueError: `value` is not an `int` (`bool` is not one), or is below 1.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value
