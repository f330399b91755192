"""Who a connection is (Authenticator) and what it may do in each room (Authorizer)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

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
    "Principal",
    "bearer_token",
]

#: What a client asks to do in a room.
Action = Literal["subscribe", "publish", "presence"]


@dataclass(frozen=True, slots=True)
class Principal:
    """The identity behind a connection.

    Attributes:
        user_id: the user, or ``None`` for an anonymous connection.
        claims: whatever the authenticator learned (JWT claims, session data).
        expires_at: when the credentials expire, in seconds since the epoch, or ``None``.
    """

    user_id: str | None
    claims: Mapping[str, Any] = field(default_factory=dict)
    expires_at: float | None = None


#: The principal of every connection when no authenticator is configured.
ANONYMOUS = Principal(None)


@runtime_checkable
class Authenticator(Protocol):
    """Turns handshake facts and a token into a :class:`Principal`."""

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
    """Accepts every connection as :data:`ANONYMOUS` (the default)."""

    async def authenticate(self, handshake: Handshake, token: str | None) -> Principal:
        """Return :data:`ANONYMOUS`."""
        return ANONYMOUS


@runtime_checkable
class Authorizer(Protocol):
    """Decides each ``subscribe``, ``publish`` and ``presence`` request, per room."""

    async def authorize(self, principal: Principal, action: Action, room: str) -> bool:
        """Return whether ``principal`` may do ``action`` in ``room``."""
        ...


#: A plain function may stand in for an :class:`Authorizer`, sync or async.
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


class _FunctionAuthorizer:
    def __init__(self, function: AuthorizerFunction) -> None:
        self._function = function

    async def authorize(self, principal: Principal, action: Action, room: str) -> bool:
        result = self._function(principal, action, room)
        if inspect.isawaitable(result):
            result = await result
        return result is True


def as_authorizer(value: Authorizer | AuthorizerFunction | None) -> Authorizer:
    """Return an :class:`Authorizer` for an authorizer object, a function or ``None``."""
    if value is None:
        return DefaultAuthorizer()
    if isinstance(value, Authorizer):
        return value
    if callable(value):
        return _FunctionAuthorizer(value)
    raise TypeError(f"authorizer must be an Authorizer or a callable, not {type(value).__name__}")


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
