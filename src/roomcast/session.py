"""Session: which requests each connection phase allows, and the verdict on each frame (pure)."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from .exceptions import RemoteProtocolError
from .protocol import CloseCode
from .ratelimit import RateLimiter
from .wire import (
    Auth,
    HistoryRequest,
    Ping,
    Pong,
    Presence,
    Publish,
    Refresh,
    Request,
    Subscribe,
    Unsubscribe,
    WireLimits,
    decode,
    encode_error,
)

__all__ = [
    "RULES",
    "Authenticate",
    "Close",
    "Fail",
    "Handle",
    "Phase",
    "Reply",
    "Rule",
    "Session",
    "SessionLimits",
    "Strike",
    "Verdict",
]

#: A connection's phase: waiting for a first-message ``auth``, open, or closing.
Phase = Literal["awaiting_auth", "open", "closing"]

#: What a refused frame counts as: a malformed request, or one over the rate limit.
Strike = Literal["bad_request", "rate_limited"]

_BEFORE_AUTH: Final = "authenticate before any other request"


class Rule(enum.Enum):
    """What a phase does with a kind of request."""

    #: The connection runs the request's handler (waiting for ``auth``: verifies its token).
    HANDLE = "handle"
    #: Nothing happens (and nothing is counted against the rate limit).
    IGNORE = "ignore"
    #: Waiting for ``auth``: authentication fails. Open: an in-band ``bad_request``.
    REFUSE = "refuse"


_H, _I, _R = Rule.HANDLE, Rule.IGNORE, Rule.REFUSE

#: Which requests each phase allows: the one table of the connection's protocol rules.
#: A closing connection ignores everything; the connection also stops reading as soon
#: as it starts closing, so the row states the rule for a frame already on its way.
RULES: Final[Mapping[Phase, Mapping[type[Request], Rule]]] = {
    "awaiting_auth": {
        Auth: _H,
        Ping: _I,
        Pong: _I,
        Subscribe: _R,
        Unsubscribe: _R,
        Publish: _R,
        Presence: _R,
        HistoryRequest: _R,
        Refresh: _R,
    },
    "open": {
        Auth: _R,
        Ping: _H,
        Pong: _I,
        Subscribe: _H,
        Unsubscribe: _H,
        Publish: _H,
        Presence: _H,
        HistoryRequest: _H,
        Refresh: _H,
    },
    "closing": {
        Auth: _I,
        Ping: _I,
        Pong: _I,
        Subscribe: _I,
        Unsubscribe: _I,
        Publish: _I,
        Presence: _I,
        HistoryRequest: _I,
        Refresh: _I,
    },
}


@dataclass(frozen=True, slots=True)
class Handle:
    """Run the handler of ``request`` (an open connection)."""

    request: Request


@dataclass(frozen=True, slots=True)
class Authenticate:
    """Verify ``token``, the credentials of a first-message ``auth``."""

    token: str


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``frame`` to the peer; ``strike`` says what the refusal counts as, if it is one."""

    frame: str
    strike: Strike | None = None


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection with ``code`` and ``reason``; ``strike`` as for `Reply`."""

    code: CloseCode
    reason: str
    strike: Strike | None = None


@dataclass(frozen=True, slots=True)
class Fail:
    """Authentication fails (close 4001, counted against the address's budget)."""

    reason: str


#: The verdict on one frame; ``None`` means it is ignored. Waiting for ``auth``, it is
#: `Authenticate`, `Fail` or ``None``; once open, `Handle`, `Reply`, `Close` or ``None``.
Verdict = Handle | Authenticate | Reply | Close | Fail | None


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """The limits every session of a hub shares (templates: each session gets fresh buckets).

    Attributes:
        wire: frame size and request limits for decoding.
        messages: requests per period on an open connection.
        strikes: rate-limit refusals per period before the connection is closed with 4029.
        bad_requests: malformed frames per period before it is closed with 1008.
    """

    wire: WireLimits
    messages: RateLimiter
    strikes: RateLimiter
    bad_requests: RateLimiter


class Session:
    """One connection's protocol state: its phase and its budgets for requests and refusals.

    [`receive()`][roomcast.session.Session.receive] turns each frame from the
    peer into a [Verdict][roomcast.session.Verdict] that the connection
    carries out; the session itself does no I/O.

    A session starts waiting for a first-message ``auth``;
    [`open()`][roomcast.session.Session.open] starts its rate limit.

    Attributes:
        phase: where the connection is (see [RULES][roomcast.session.RULES]).
    """

    __slots__ = ("_bad_requests", "_last", "_limits", "_strikes", "_tokens", "phase")

    def __init__(self, limits: SessionLimits) -> None:
        self._limits = limits
        self.phase: Phase = "awaiting_auth"
        # The request-rate bucket (``limits.messages``' parameters), kept in two
        # fields rather than an object of its own: it lives as long as the
        # connection. ``_last`` is ``None`` until the session opens.
        self._tokens = 0.0
        self._last: float | None = None
        # Made on first need: most connections are never limited nor malformed.
        self._strikes: RateLimiter | None = None
        self._bad_requests: RateLimiter | None = None

    def open(self, now: float) -> None:
        """The peer is authenticated: requests are handled, within the rate limit from ``now``."""
        self.phase = "open"
        self._tokens = self._limits.messages.burst
        self._last = now

    def close(self) -> None:
        """The connection is closing: nothing it sends is handled any more."""
        self.phase = "closing"

    def receive(self, data: str | bytes, now: float) -> Verdict:
        """The verdict on one frame from the peer at ``now``."""
        phase = self.phase
        try:
            request = decode(data, self._limits.wire)
        except RemoteProtocolError as exc:
            if phase == "awaiting_auth":
                return Fail("expected an auth frame")
            if phase == "closing":
                return None
            if self._bad_requests is None:
                self._bad_requests = self._limits.bad_requests.fresh(now)
            if not self._bad_requests.allow(now):
                return Close(CloseCode.POLICY_VIOLATION, "too many bad requests", "bad_request")
            return Reply(
                encode_error(exc.code, exc.message, ref=exc.ref, reply=exc.ref is not None),
                "bad_request",
            )
        rule = RULES[phase][type(request)]
        if rule is Rule.IGNORE:
            return None
        if phase == "awaiting_auth":
            if rule is Rule.HANDLE and isinstance(request, Auth):
                return Authenticate(request.token)
            return Fail(_BEFORE_AUTH)
        last = self._last
        if last is None:  # never opened: every phase but "open" has returned above
            return None
        limiter = self._limits.messages
        taken = limiter._take(self._tokens, last, now)
        if taken is None:
            if self._strikes is None:
                self._strikes = self._limits.strikes.fresh(now)
            if not self._strikes.allow(now):
                return Close(CloseCode.RATE_LIMITED, "rate limit exceeded", "rate_limited")
            retry_ms = math.ceil(limiter._retry_after(self._tokens, last, now) * 1000)
            return Reply(
                encode_error(
                    "rate_limited",
                    "too many messages",
                    ref=request.ref,
                    reply=request.ref is not None,
                    retryAfterMs=retry_ms,
                ),
                "rate_limited",
            )
        self._tokens, self._last = taken
        if rule is Rule.REFUSE:
            return Reply(encode_error("bad_request", "already authenticated", ref=request.ref))
        return Handle(request)
