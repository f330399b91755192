"""The roomcast exception tree.

Every error roomcast raises through its public API derives from one root:

    RoomcastError
    ├── ProtocolError                 a frame broke wire protocol v1
    │   ├── RemoteProtocolError       ... the peer sent it (answered in-band, not raised to apps)
    │   └── LocalProtocolError        ... the application asked roomcast to send it
    ├── ConnectionClosed              the connection is gone (``code``, ``reason``)
    │   ├── ConnectionClosedOK        ... with 1000, 1001 or no code (1005)
    │   └── ConnectionClosedError     ... with any other code, or without a close frame
    ├── AuthenticationError           credentials missing, invalid or expired
    ├── PermissionDenied              the authorizer refused an action on a room (*)
    ├── RateLimited                   over a rate limit (``retry_after`` seconds) (*)
    ├── ServerError                   the server failed a client's request (``code``)
    ├── RequestTimeout                a client's request got no answer in time
    │                                 (also a ``TimeoutError``)
    ├── BackendError                  the broker behind a backend failed
    └── HubNotRunning                 the hub was asked to send while not running
                                      (also a ``RuntimeError``)

(*) The hub does not raise these: it answers a refused or rate-limited request
in-band (a `forbidden` or `rate_limited` reply), and the Python client
([`roomcast.client`][roomcast.client]) raises them from the request that got
that reply. Applications (an authorizer, say) may use them too.

Bad arguments to roomcast's own functions raise `ValueError` or
`TypeError`, never one of these.
"""

from __future__ import annotations

from typing import Final

from .protocol import CLOSE_ABNORMAL, CLOSE_NO_STATUS, CloseCode

__all__ = [
    "AuthenticationError",
    "BackendError",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "HubNotRunning",
    "LocalProtocolError",
    "PermissionDenied",
    "ProtocolError",
    "RateLimited",
    "RemoteProtocolError",
    "RequestTimeout",
    "RoomcastError",
    "ServerError",
]

#: Close codes that mean the connection ended normally (1005: closed without a code,
#: as a browser's plain ``ws.close()`` does).
_OK_CLOSE_CODES: Final = frozenset({CloseCode.NORMAL, CloseCode.GOING_AWAY, CLOSE_NO_STATUS})


class RoomcastError(Exception):
    """Root of every exception roomcast raises."""


class ProtocolError(RoomcastError):
    """A frame broke wire protocol v1.

    Attributes:
        code: the in-band error code (``bad_request``, ``limit_exceeded``, ...).
        message: a human-readable explanation that never contains a secret.
        ref: the request's ``ref`` when it could be read, so a reply can echo it.
    """

    def __init__(self, message: str, *, code: str = "bad_request", ref: str | int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


class RemoteProtocolError(ProtocolError):
    """The peer sent a frame that is not valid protocol v1."""


class LocalProtocolError(ProtocolError, ValueError):
    """The application asked roomcast to send something protocol v1 cannot carry.

    It is also a `ValueError`: it always means a bad argument.
    """


class ConnectionClosed(RoomcastError):
    """The connection is closed.

    Attributes:
        code: the WebSocket close code, or 1006 when no close frame was seen.
        reason: the close reason (at most 123 bytes of UTF-8).
    """

    def __init__(self, code: int = CLOSE_ABNORMAL, reason: str = ""):
        super().__init__(f"connection closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason

    @staticmethod
    def from_code(code: int, reason: str = "") -> ConnectionClosed:
        """Build the right subclass for a close code."""
        if code in _OK_CLOSE_CODES:
            return ConnectionClosedOK(code, reason)
        return ConnectionClosedError(code, reason)


class ConnectionClosedOK(ConnectionClosed):
    """The connection closed normally (1000, 1001, or 1005: no code given).

    Built by [`ConnectionClosed.from_code`][roomcast.exceptions.ConnectionClosed.from_code].
    """


class ConnectionClosedError(ConnectionClosed):
    """The connection closed with an error code, or without a close frame.

    Built by [`ConnectionClosed.from_code`][roomcast.exceptions.ConnectionClosed.from_code].
    """


class AuthenticationError(RoomcastError):
    """Credentials are missing, invalid or expired.

    Attributes:
        close_code: the close code used when the connection is already accepted
            (4001 invalid token, 4002 expired).
        status: the HTTP status used when the handshake can still be refused.
    """

    def __init__(
        self,
        message: str = "invalid credentials",
        *,
        close_code: int = CloseCode.INVALID_TOKEN,
        status: int = 401,
    ):
        super().__init__(message)
        self.close_code = close_code
        self.status = status


class PermissionDenied(RoomcastError):
    """The authorizer refused an action on a room.

    The hub does not raise it: it answers a refused ``subscribe``, ``publish``,
    ``presence`` or ``history`` request with a ``forbidden`` reply on the
    connection, and the Python client ([`roomcast.client`][roomcast.client])
    raises it from the request that got that reply. Applications may raise it
    from their own code around the hub.
    """


class RateLimited(RoomcastError):
    """A rate limit was exceeded.

    The hub does not raise it: it answers a request over a rate limit with a
    ``rate_limited`` reply carrying ``retryAfterMs``, and the Python client
    ([`roomcast.client`][roomcast.client]) raises it from the request that got
    that reply. Applications may raise it from their own code around the hub.

    Attributes:
        retry_after: seconds until the request would be allowed.
    """

    def __init__(self, message: str = "rate limited", *, retry_after: float = 0.0):
        super().__init__(message)
        self.retry_after = retry_after


class ServerError(RoomcastError):
    """The server answered a client's request with an error.

    Raised by the Python client ([`roomcast.client`][roomcast.client]) for a
    failed reply whose code has no class of its own (`forbidden` is
    [`PermissionDenied`][roomcast.exceptions.PermissionDenied], `rate_limited`
    [`RateLimited`][roomcast.exceptions.RateLimited], `unauthorized`
    [`AuthenticationError`][roomcast.exceptions.AuthenticationError]).

    Attributes:
        code: the in-band error code: `bad_request`, `not_found`,
            `limit_exceeded`, `internal`, or one this client does not know.
        message: the server's explanation, for humans; never parse it.
        retry_after: seconds after which trying again may succeed (the reply's
            `retryAfterMs`), or `None` when the server gave none.
    """

    def __init__(self, message: str, *, code: str = "internal", retry_after: float | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after


class RequestTimeout(RoomcastError, TimeoutError):
    """A client's request got no answer in time.

    Raised by the Python client ([`roomcast.client`][roomcast.client]) when a
    request waited for a connection, and then for its reply, longer than the
    client's `request_timeout`. It is also a `TimeoutError`.
    """


class BackendError(RoomcastError):
    """The broker behind a backend failed.

    Raised by [`RedisBackend`][roomcast.backends.redis.RedisBackend] (and any other
    [`Backend`][roomcast.Backend] implementation) when its broker cannot be reached,
    answers with an error or takes longer than its timeout, wrapping the broker's own
    exception; also when a backend cannot run where it was started (the Redis backend
    under trio). [`Hub.publish`][roomcast.hub.Hub.publish] lets it through to the
    caller. The in-memory backend never raises it.
    """


class HubNotRunning(RoomcastError, RuntimeError):
    """The hub was asked to publish or send while it is not running.

    Raised by [`Hub.publish`][roomcast.hub.Hub.publish],
    [`Hub.send_to_user`][roomcast.hub.Hub.send_to_user] and
    [`Hub.send_to_client`][roomcast.hub.Hub.send_to_client] before the hub is
    started and from the moment it starts shutting down, so that an event
    nobody could receive is never reported as sent. Start the hub with
    ``async with hub:`` or the adapter's lifespan (``roomcast.starlette.lifespan``,
    ``roomcast.aiohttp.cleanup_ctx``). It is also a ``RuntimeError``: it means
    the application called the hub at the wrong time.
    """
