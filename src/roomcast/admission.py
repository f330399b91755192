"""Admission: who may open a connection — origin, connection limits, failed-login budget."""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from .auth import Authenticator, Principal, TokenSources, check_principal
from .clock import Clock
from .exceptions import AuthenticationError, HubNotRunning
from .limits import ConnectionLimits, ConnectionTracker
from .protocol import PROTOCOL, CloseCode
from .transport import Handshake, close_frame

__all__ = [
    "Admission",
    "Gatekeeper",
    "HubState",
    "check_running",
    "LockedOut",
    "parse_origins",
    "refusal_reason",
]

logger = logging.getLogger("roomcast.admission")

#: Where a hub is in its life: admission depends on it.
HubState = Literal["new", "running", "closing", "closed"]

#: Close codes for refusals the adapter could not answer with an HTTP status.
_CLOSE_FOR_STATUS: Final = {
    401: CloseCode.INVALID_TOKEN,
    403: CloseCode.POLICY_VIOLATION,
    408: CloseCode.AUTH_TIMEOUT,
    429: CloseCode.TRY_AGAIN_LATER,
    503: CloseCode.TRY_AGAIN_LATER,
}


@dataclass(frozen=True, slots=True)
class Admission:
    """The hub's answer to an opening handshake (see [`Hub.admit()`][roomcast.hub.Hub.admit]).

    Attributes:
        status: 101 to accept; otherwise the HTTP status to refuse with.
        reason: why it was refused (no secrets; fits a close reason).
        principal: who the handshake's credentials identified, or ``None``
            when it carried none.
        subprotocol: the subprotocol to select (``roomcast.v1`` when offered).
        close_code: the close code to use when the adapter has already
            accepted; derived from ``status`` when not given.
    """

    status: int = 101
    reason: str = ""
    principal: Principal | None = None
    subprotocol: str | None = None
    close_code: int = 0

    def __post_init__(self) -> None:
        if self.close_code == 0 and self.status != 101:
            object.__setattr__(
                self, "close_code", _CLOSE_FOR_STATUS.get(self.status, CloseCode.POLICY_VIOLATION)
            )

    @property
    def accepted(self) -> bool:
        """Whether the handshake may be accepted."""
        return self.status == 101


class LockedOut(AuthenticationError):
    """The address has spent its failed-authentication budget; nothing was verified."""

    def __init__(self, retry_after: float = 0.0) -> None:
        super().__init__(
            "too many failed authentications", close_code=CloseCode.TRY_AGAIN_LATER, status=429
        )
        #: Seconds until the address may have credentials verified again.
        self.retry_after = retry_after


def parse_origins(values: Iterable[str]) -> frozenset[str]:
    """Check an ``allowed_origins`` setting: each entry ``scheme://host[:port]``.

    Raises:
        TypeError: ``values`` is a single string, or not iterable.
        ValueError: an entry is not an http(s) origin.
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(
            f"allowed_origins must be a collection of origins, not {type(values).__name__}"
        )
    origins = set()
    for value in values:
        parsed = urllib.parse.urlsplit(value) if isinstance(value, str) else None
        if (
            parsed is None
            or parsed.scheme not in ("http", "https")
            or not parsed.hostname
            or parsed.path
            or parsed.query
            or parsed.fragment
            or parsed.username is not None
        ):
            raise ValueError(f"allowed origin {value!r} must look like https://host[:port]")
        origins.add(value)
    return frozenset(origins)


def check_running(state: HubState, method: str) -> None:
    """Refuse a send on a hub that is not running, saying what to do instead.

    Raises:
        HubNotRunning: the hub is not started yet, or is shutting down or shut down.
    """
    if state == "running":
        return
    if state == "new":
        raise HubNotRunning(
            f"Hub.{method}() on a hub that is not running: start it first, with "
            "`async with hub:` or the adapter's lifespan "
            "(roomcast.starlette.lifespan, roomcast.aiohttp.cleanup_ctx)"
        )
    raise HubNotRunning(
        f"Hub.{method}() on a hub that is shut down or shutting down: publish only "
        "inside `async with hub:` (or while the adapter's lifespan runs)"
    )


def refusal_reason(exc: Exception) -> str:
    """A close reason from an exception message, cut to fit a close frame."""
    return close_frame(CloseCode.NORMAL, str(exc))[1]


class Gatekeeper:
    """Decides which handshakes and credentials are let in, and counts who is in.

    Owns the origin rule, the connections open per address and per user, and
    the failed-authentication budget per address (see
    [`ConnectionLimits`][roomcast.ConnectionLimits]). Every verification of
    credentials goes through it, so a spent budget stops guessing on every
    path: the handshake, a first-message ``auth`` and ``refresh``.

    Attributes:
        allowed_origins: the ``Origin`` values admitted, or ``None`` for any.
        allow_missing_origin: whether a handshake without ``Origin`` is
            admitted when ``allowed_origins`` is set.
        limits: the connection and failure limits.
        auth_failures: credentials that failed verification.
        origin_refusals: handshakes refused for their ``Origin``.
        limit_refusals: connections refused by a connection or failure
            limit, and verifications skipped because of the failure budget.
    """

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        clock: Clock,
        allowed_origins: Iterable[str] | None = None,
        allow_missing_origin: bool = True,
        token_sources: TokenSources | None = None,
        limits: ConnectionLimits | None = None,
    ) -> None:
        """Create a gatekeeper with nobody connected.

        Raises:
            TypeError: ``allowed_origins`` is a string, or
                ``allow_missing_origin`` is not a bool.
            ValueError: an allowed origin is malformed.
        """
        self.allowed_origins = None if allowed_origins is None else parse_origins(allowed_origins)
        if not isinstance(allow_missing_origin, bool):
            raise TypeError(
                f"allow_missing_origin must be True or False, got {allow_missing_origin!r}"
            )
        self.allow_missing_origin = allow_missing_origin
        self.limits = limits or ConnectionLimits()
        self._authenticator = authenticator
        self._clock = clock
        self._token_sources = token_sources or TokenSources()
        self._tracker = ConnectionTracker(self.limits)
        self.auth_failures = 0
        self.origin_refusals = 0
        self.limit_refusals = 0

    async def admit(self, handshake: Handshake, state: HubState) -> Admission:
        """Decide on a handshake to a hub in ``state`` (see [`Hub.admit()`][roomcast.Hub.admit]).

        A hub not started refuses with 503; one shutting down or shut down
        with 503, or 1001 once accepted.
        """
        if state == "new":
            return Admission(503, "server not started")
        if state != "running":
            return Admission(503, "server shutting down", close_code=CloseCode.GOING_AWAY)
        if self.allowed_origins is not None:
            why = self.origin_refusal(handshake.header_values("origin"))
            if why is not None:
                self.origin_refusals += 1
                return Admission(403, why)
        ip = handshake.client_host
        refusal = self._tracker.ip_refusal(ip, self._clock.now())
        if refusal is not None:
            self.limit_refusals += 1
            reason = "too many failed authentications" if refusal == 429 else "too many connections"
            return Admission(refusal, reason)
        subprotocol = PROTOCOL if PROTOCOL in handshake.subprotocols else None
        token = self._token_sources.find(handshake)
        if token is None:
            return Admission(101, subprotocol=subprotocol)
        try:
            principal = await self.verify(handshake, token)
        except AuthenticationError as exc:  # counted by verify()
            return Admission(exc.status, refusal_reason(exc), close_code=exc.close_code)
        if self.user_refused(principal.user_id):
            return Admission(503, "too many connections for this user")
        return Admission(101, principal=principal, subprotocol=subprotocol)

    def origin_refusal(self, origins: list[str]) -> str | None:
        """Why a handshake with these ``Origin`` values is refused, or ``None``.

        Browsers send ``Origin`` on every WebSocket handshake (RFC 6455,
        section 4.1), so a handshake without one is not a cross-site request
        from a browser; any other client can send whatever ``Origin`` it likes.
        """
        allowed = self.allowed_origins
        if allowed is None:
            return None
        if not origins:
            return None if self.allow_missing_origin else "origin required"
        if len(origins) == 1 and origins[0] in allowed:
            return None
        return "origin not allowed"

    async def implicit_principal(self, handshake: Handshake) -> Principal | None:
        """Who the authenticator finds without a token (a session, say), or ``None``.

        ``None`` when the authenticator wants credentials; a refusal here is
        not a failed login and is not counted.

        Raises:
            AuthenticationError: the authenticator returned a principal the
                hub cannot carry.
        """
        try:
            principal = await self._authenticator.authenticate(handshake, None)
        except AuthenticationError:
            return None
        return check_principal(principal)

    async def verify(self, handshake: Handshake, token: str) -> Principal:
        """Verify a token on its address's failure budget, and check the principal.

        The failure is taken from the budget before the authenticator is asked
        and given back when the token verifies, so that verifications in
        flight at once (an authenticator that awaits a database or a key-set
        fetch) cannot all pass while none of them has failed yet. Every
        outcome is counted: a refusal unverified as a limit refusal, a failure
        as an authentication failure.

        Raises:
            LockedOut: the address has spent its budget; the token was not looked at.
            AuthenticationError: the token, or the principal it names, was refused.
        """
        ip = handshake.client_host
        retry_after = self._tracker.reserve(ip, self._clock.now())
        if retry_after:
            self.limit_refusals += 1
            raise LockedOut(retry_after)
        try:
            principal = check_principal(await self._authenticator.authenticate(handshake, token))
        except AuthenticationError as exc:
            self._count_failure(exc)
            raise
        except BaseException:
            # Cancelled, or the authenticator's own bug: not a failed login.
            self._tracker.release(ip, self._clock.now())
            raise
        self._tracker.release(ip, self._clock.now())
        return principal

    def failed(self, ip: str | None, exc: AuthenticationError) -> None:
        """Count a failure that no `verify()` counted (a protocol error before ``auth``)."""
        self._tracker.failed(ip, self._clock.now())
        self._count_failure(exc)

    def _count_failure(self, exc: AuthenticationError) -> None:
        self.auth_failures += 1
        # The exception class only: messages may quote what the client sent.
        logger.debug("authentication failed: %s", type(exc).__name__)

    def user_refused(self, user_id: str | None) -> bool:
        """Whether ``user_id`` has all the connections it may have (counted as a refusal)."""
        if self._tracker.user_refusal(user_id) is None:
            return False
        self.limit_refusals += 1
        return True

    def opened(self, ip: str | None, user_id: str | None) -> None:
        """Count an accepted connection: from its address, or of its user once known."""
        self._tracker.opened(ip, user_id)

    def closed(self, ip: str | None, user_id: str | None) -> None:
        """Forget a connection counted by `opened()`."""
        self._tracker.closed(ip, user_id)
