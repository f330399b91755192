"""The protocol's rules as the client applies them (pure).

A failed reply's error becomes a roomcast exception, a close code becomes
reconnect advice (from [`CloseCode`][roomcast.CloseCode], never a copy of its
table), and the arguments the client sends are checked before they leave.
"""

from __future__ import annotations

import math
from typing import Any, Final

from ..exceptions import (
    AuthenticationError,
    PermissionDenied,
    RateLimited,
    RoomcastError,
    ServerError,
)
from ..protocol import MAX_TOKEN_LENGTH, CloseCode, Reconnect

__all__ = [
    "MAX_HISTORY",
    "check_count",
    "check_seconds",
    "check_size",
    "check_token",
    "reconnect_advice",
    "server_error",
]

#: The largest `history` a subscribe may ask for, and a history request's `limit`.
MAX_HISTORY: Final = 10_000

#: Each close code the server sends, and its reconnect advice.
_ADVICE: Final[dict[int, Reconnect]] = {int(code): code.reconnect for code in CloseCode}


def server_error(error: Any) -> RoomcastError:
    """The exception a failed reply's `error` object stands for."""
    if not isinstance(error, dict):
        return ServerError("malformed error", code="internal")
    code = error.get("code")
    if not isinstance(code, str):
        code = "internal"
    message = error.get("message")
    if not isinstance(message, str):
        message = code
    retry_ms = error.get("retryAfterMs")
    retry_after = retry_ms / 1000 if type(retry_ms) is int and retry_ms >= 0 else None
    if code == "forbidden":
        return PermissionDenied(message)
    if code == "rate_limited":
        return RateLimited(message, retry_after=retry_after or 0.0)
    if code == "unauthorized":
        return AuthenticationError(message)
    return ServerError(message, code=code, retry_after=retry_after)


def reconnect_advice(code: int) -> Reconnect:
    """What to do after close code `code`: `CloseCode`'s advice; unknown codes retry."""
    # 1005, 1006 and codes this client does not know: try again.
    return _ADVICE.get(code, "after_delay")


def check_token(token: object, what: str) -> str:
    """Return `token` if protocol v1 can carry it.

    Raises:
        ValueError: it is not a non-empty string within the token length limit.
    """
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise ValueError(f"{what} must be a non-empty string of at most {MAX_TOKEN_LENGTH} chars")
    return token


def check_count(name: str, value: object) -> int:
    """Return `value` if it is a valid `history` or `limit` (1 to 10 000).

    Raises:
        ValueError: it is not.
    """
    if type(value) is not int or not 1 <= value <= MAX_HISTORY:
        raise ValueError(f"{name} must be an integer from 1 to {MAX_HISTORY}, got {value!r}")
    return value


def check_seconds(name: str, value: object) -> float:
    """Return `value` as a float if it is a positive, finite number of seconds.

    Raises:
        ValueError: it is not.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number of seconds")
    return float(value)


def check_size(name: str, value: object) -> int:
    """Return `value` if it is a positive integer.

    Raises:
        ValueError: it is not.
    """
    if type(value) is not int or value < 1:
        raise ValueError(f"{name} must be a positive integer")
    return value
