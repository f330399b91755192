"""Who a connection is (Authenticator) and what it may do in each room (Authorizer)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, runtime_checkable

from .exceptions import AuthenticationError
from .transport import Handshake
from .wire import namespace_of

__all__ = [
    "ANONYMOUS",
    "Action",
    "AnonymousAuthenticator",
    "Authenticator",
    "Authorizer",
    "AuthorizerFunction",
    "DefaultAuthorizer",
    "MAX_EXPIRES_AT",
    "MAX_USER_ID_LENGTH",
    "NamespaceAuthorizer",
    "NamespaceRule",
    "Principal",
    "SUBPROTOCOL_BEARER_PREFIX",
    "TokenSources",
    "bearer_token",
    "check_principal",
]

#: What a client asks to do in a room.
Action = Literal["subscribe", "publish", "presence"]


#: Longest user id, in characters.
MAX_USER_ID_LENGTH: Final = 256
#: Latest expiry a principal may have: the last second of the year 9999, in seconds
#: since the epoch (as far as ``datetime`` and JavaScript's ``Date`` reach).
MAX_EXPIRES_AT: Final = 253_402_300_799.0


@dataclass(frozen=True, slots=True)
class Principal:
    """The identity behind a connection.

    Construction checks nothing, so that existing authenticators keep working;
    the hub checks every principal an authenticator returns (see
    [`check_principal`][roomcast.auth.check_principal]) and refuses the
    connection (401 / close 4001) when it does not pass.

    Attributes:
        user_id: the user, or ``None`` for an anonymous connection; otherwise a
            non-empty string of at most
            ``MAX_USER_ID_LENGTH`` (256) characters
            that can be encoded as UTF-8 (no lone surrogates).
        claims: whatever the authenticator learned (JWT claims, session data).
        expires_at: the moment the credentials stop being accepted, in seconds
            since the epoch, or ``None`` when they do not expire; at most
            ``MAX_EXPIRES_AT`` (the end of the year 9999). The hub reports it to
            the client as ``expiresAt``, sends ``token.expiring`` before it, and
            closes the connection with 4002 at ``expires_at`` plus its
            ``token_expiry_grace``. An authenticator that tolerates clock skew
            includes it: for a JWT this is ``exp`` plus the leeway, so a token
            accepted within the leeway is not closed before the leeway is over.
    """

    user_id: str | None
    claims: Mapping[str, Any] = field(default_factory=dict)
    expires_at: float | None = None

    @classmethod
    def from_claims(
        cls, claims: Mapping[str, Any], *, user_claim: str = "sub", leeway: float = 0.0
    ) -> Principal:
        """Build the principal that verified token claims name.

        Args:
            claims: the token's claims, already verified.
            user_claim: the claim that names the user.
            leeway: seconds the credentials stay accepted after ``exp``.

        Returns:
            A principal whose ``user_id`` is the ``user_claim`` claim, whose
            ``claims`` are a copy of ``claims`` and whose ``expires_at`` is
            ``exp + leeway`` (``None`` without an ``exp`` claim).

        Raises:
            AuthenticationError: (4001) the user claim is not a valid user id, or
                ``exp`` is not a number between 0 and
                ``MAX_EXPIRES_AT`` (the end of the year 9999).
        """
        problem = _user_id_problem(claims.get(user_claim))
        if problem is not None:
            raise AuthenticationError(f"invalid {user_claim} claim: {problem}")
        expires_at = None
        if "exp" in claims:
            expires_at = _expiry(_expiry(claims["exp"], "exp claim") + leeway, "exp claim")
        return cls(claims[user_claim], claims=dict(claims), expires_at=expires_at)


def check_principal(principal: object) -> Principal:
    """Return ``principal`` if a connection can run with it.

    The hub calls this on whatever an [Authenticator][roomcast.Authenticator]
    returns, so that a principal built from bad claims is refused like a bad
    token rather than failing later (when the expiry is scheduled, or the
    ``connection.ack`` encoded).

    Raises:
        AuthenticationError: (4001) it is not a [Principal][roomcast.Principal],
            its ``user_id`` is neither ``None`` nor a valid user id, or its
            ``expires_at`` is neither ``None`` nor a number between 0 and
            ``MAX_EXPIRES_AT`` (the end of the year 9999).
    """
    if not isinstance(principal, Principal):
        raise AuthenticationError("invalid principal: the authenticator returned something else")
    if principal.user_id is not None:
        problem = _user_id_problem(principal.user_id)
        if problem is not None:
            raise AuthenticationError(f"invalid user id: {problem}")
    if principal.expires_at is not None:
        _expiry(principal.expires_at, "expiry")
    return principal


def _user_id_problem(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if len(value) > MAX_USER_ID_LENGTH:
        return f"longer than {MAX_USER_ID_LENGTH} characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid Unicode"
    return None


def _expiry(value: object, what: str) -> float:
    # RFC 7519 section 2: NumericDate is a JSON number; a bool is not one. Compared
    # before float(), which overflows on integers past 1e308.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AuthenticationError(f"invalid {what}: must be a number")
    if not 0 <= value <= MAX_EXPIRES_AT:  # also false for NaN
        raise AuthenticationError(f"invalid {what}: out of range")
    return float(value)


#: The principal of every connection when no authenticator is configured.
ANONYMOUS = Principal(None)


@runtime_checkable
class Authenticator(Protocol):
    """Turns handshake facts and a token into a [`Principal`][roomcast.Principal]."""

    async def authenticate(self, handshake: Handshake, token: str | None) -> Principal:
        """Identify a connection.

        Args:
            handshake: the opening handshake's facts.
            token: the credential the client presented, or ``None`` when it sent none
                in the handshake (the hub then waits for a first-message ``auth``
                frame if this raises).

        Raises:
            AuthenticationError: the credentials are missing, invalid or expired.
        """
        ...


class AnonymousAuthenticator:
    """Accepts every connection as `ANONYMOUS` (the default)."""

    async def authenticate(self, handshake: Handshake, token: str | None) -> Principal:
        """Return `ANONYMOUS`."""
        return ANONYMOUS


@runtime_checkable
class Authorizer(Protocol):
    """Decides each ``subscribe``, ``publish`` and ``presence`` request, per room."""

    async def authorize(self, principal: Principal, action: Action, room: str) -> bool:
        """Return whether ``principal`` may do ``action`` in ``room``."""
        ...


#: A plain function may stand in for an [`Authorizer`][roomcast.Authorizer], sync or async.
AuthorizerFunction = Callable[[Principal, Action, str], bool | Awaitable[bool]]


class DefaultAuthorizer:
    """The default rules.

    - ``subscribe`` and ``presence``: any room, except that a room
      ``user:{id}`` belongs to user ``id`` alone.
    - ``publish``: denied, except in the namespaces listed in ``publish``.

    Args:
        publish: namespaces (the part of a room name before the first ``:``)
            in which clients may publish.
    """

    def __init__(self, *, publish: Iterable[str] = ()) -> None:
        if isinstance(publish, str):
            raise TypeError("publish must be a collection of namespaces, not a string")
        self._publish = frozenset(publish)

    async def authorize(self, principal: Principal, action: Action, room: str) -> bool:
        """Apply the default rules."""
        namespace = namespace_of(room)
        if namespace == "user" and room[5:] != principal.user_id:
            return False
        if action == "publish":
            return namespace in self._publish
        return True


#: A per-namespace rule: ``(principal, action, room_id)`` where ``room_id`` is the part
#: of the room name after ``namespace:``; returns ``bool`` or an awaitable of it.
NamespaceRule = Callable[[Principal, Action, str], bool | Awaitable[bool]]


class NamespaceAuthorizer:
    """Authorization written per room namespace, for example:

        NamespaceAuthorizer({
            # team:{id} - members of the team, listed in the token's claims
            "team": lambda principal, action, team: team in principal.claims.get("teams", ()),
            # issue:{id} - anyone may read, nobody may publish from the client
            "issue": lambda principal, action, issue: action != "publish",
        })

    Rooms of a namespace without a rule go to ``default``
    ([`DefaultAuthorizer`][roomcast.DefaultAuthorizer] unless given), which also keeps ``user:{id}``
    rooms private unless a ``"user"`` rule replaces it. A rule's answer counts
    only when it is exactly ``True``.

    Args:
        rules: a rule per namespace.
        default: decides every other room.

    Raises:
        TypeError: a rule is not callable.
        ValueError: a namespace is empty or contains ``:``.
    """

    def __init__(
        self,
        rules: Mapping[str, NamespaceRule],
        *,
        default: Authorizer | AuthorizerFunction | None = None,
    ) -> None:
        for namespace, rule in rules.items():
            if not namespace or ":" in namespace:
                raise ValueError(f"namespace {namespace!r} must be non-empty and contain no ':'")
            if not callable(rule):
                raise TypeError(f"the rule for namespace {namespace!r} is not callable")
        self._rules = dict(rules)
        self._default = as_authorizer(default)

    async def authorize(self, principal: Principal, action: Action, room: str) -> bool:
        """Apply the namespace's rule, or the default."""
        namespace, sep, room_id = room.partition(":")
        rule = self._rules.get(namespace) if sep else None
        if rule is None:
            return await self._default.authorize(principal, action, room)
        result = rule(principal, action, room_id)
        if inspect.isawaitable(result):
            result = await result
        return result is True


class _FunctionAuthorizer:
    def __init__(self, function: AuthorizerFunction) -> None:
        self._function = function

    async def authorize(self, principal: Principal, action: Action, room: str) -> bool:
        result = self._function(principal, action, room)
        if inspect.isawaitable(result):
            result = await result
        return result is True


def as_authorizer(value: Authorizer | AuthorizerFunction | None) -> Authorizer:
    """Return an `Authorizer` for an authorizer object, a function or ``None``."""
    if value is None:
        return DefaultAuthorizer()
    if isinstance(value, Authorizer):
        return value
    if callable(value):
        return _FunctionAuthorizer(value)
    raise TypeError(f"authorizer must be an Authorizer or a callable, not {type(value).__name__}")


#: Prefix of a ``Sec-WebSocket-Protocol`` entry carrying a token: ``roomcast.bearer.<token>``.
SUBPROTOCOL_BEARER_PREFIX: Final = "roomcast.bearer."


@dataclass(frozen=True, slots=True)
class TokenSources:
    """Where the hub looks for a token in the opening handshake, in this order.

    A connection whose handshake carries no token may still send one in a
    first-message ``auth`` frame, the preferred source: it never appears in
    URLs, logs or headers.

    Attributes:
        subprotocol: accept a ``roomcast.bearer.<token>`` entry offered beside
            ``roomcast.v1`` in ``Sec-WebSocket-Protocol`` (the server echoes only
            ``roomcast.v1``); the one handshake source a browser can set.
        header: accept ``Authorization: Bearer <token>`` (non-browser clients).
        cookie: the name of a cookie holding the token, or ``None``. Cookies
            are sent by browsers automatically, so pair this with an
            ``allowed_origins`` list.
        query: the name of a query parameter holding the token, or ``None``
            (the default): URLs end up in access logs and browser history.
    """

    subprotocol: bool = True
    header: bool = True
    cookie: str | None = None
    query: str | None = None

    def find(self, handshake: Handshake) -> str | None:
        """The first token found in the handshake, or ``None``."""
        if self.subprotocol:
            for offered in handshake.subprotocols:
                if offered.startswith(SUBPROTOCOL_BEARER_PREFIX):
                    entry = offered[len(SUBPROTOCOL_BEARER_PREFIX) :]
                    if entry:
                        return entry
        found: str | None = None
        if self.header:
            found = bearer_token(handshake)
        if not found and self.cookie is not None:
            found = handshake.cookies.get(self.cookie)
        if not found and self.query is not None:
            found = handshake.query_param(self.query)
        return found or None


def bearer_token(handshake: Handshake) -> str | None:
    """The token of an ``Authorization: Bearer`` header, or ``None``."""
    value = handshake.header("authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token
