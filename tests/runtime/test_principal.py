"""Principals built from claims an issuer signed, or returned by any authenticator, are input:
what the hub cannot carry is refused (401 / 4001), never a crash."""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast import AuthenticationError, ConnectionClosed, Handshake, Hub, Principal
from roomcast.auth import MAX_EXPIRES_AT, MAX_USER_ID_LENGTH, check_principal
from roomcast.testing import TestClient

#: Values an issuer could sign (JSON, and what Python's JSON parser also accepts).
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**400, -(10**400), 1.5e308, -1.5e308, MAX_EXPIRES_AT + 1]),
    st.floats(),
    st.text(max_size=8),
    # Lone surrogates: json.loads turns "\ud800" into one.
    st.text(alphabet=st.characters(categories=["Cs", "Ll"]), min_size=1, max_size=4),
    st.sampled_from(["", "x" * MAX_USER_ID_LENGTH, "x" * (MAX_USER_ID_LENGTH + 1)]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)
claim_sets = st.dictionaries(
    st.sampled_from(["sub", "exp", "uid"]) | st.text(max_size=3), values, max_size=5
)


def acceptable_user_id(value: object) -> bool:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_USER_ID_LENGTH:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def from_claims(claims: dict[str, Any], user_claim: str) -> Principal | AuthenticationError:
    try:
        return Principal.from_claims(claims, user_claim=user_claim)
    except AuthenticationError as exc:
        return exc


def checked(principal: Principal) -> Principal | AuthenticationError:
    try:
        return check_principal(principal)
    except AuthenticationError as exc:
        return exc


@settings(max_examples=300, deadline=None)
@given(claims=claim_sets, user_claim=st.sampled_from(["sub", "uid"]))
def test_from_claims_returns_a_servable_principal_or_raises_authentication_error(
    claims: dict[str, Any], user_claim: str
) -> None:
    principal = from_claims(claims, user_claim)
    if isinstance(principal, AuthenticationError):
        assert principal.close_code == 4001
        assert len(str(principal).encode()) <= 123
        return
    assert checked(principal) is principal
    assert acceptable_user_id(principal.user_id)
    assert principal.user_id == claims[user_claim]
    if principal.expires_at is not None:
        assert math.isfinite(principal.expires_at)
        assert 0 <= principal.expires_at <= MAX_EXPIRES_AT


@settings(max_examples=300, deadline=None)
@given(user_id=scalars, expires_at=scalars)
def test_check_principal_accepts_or_raises_authentication_error(
    user_id: Any, expires_at: Any
) -> None:
    principal = Principal(user_id, expires_at=expires_at)
    result = checked(principal)
    if isinstance(result, AuthenticationError):
        assert result.close_code == 4001
        return
    assert user_id is None or acceptable_user_id(user_id)
    assert expires_at is None or 0 <= expires_at <= MAX_EXPIRES_AT


class Returns:
    """An authenticator that returns whatever it was given, for every token."""

    def __init__(self, principal: Any) -> None:
        self.principal = principal

    async def authenticate(self, handshake: Handshake, token: str | None) -> Any:
        if token is None:
            raise AuthenticationError("missing token")
        return self.principal


async def ack_or_close_code(hub: Hub, **client: Any) -> dict[str, Any] | int:
    try:
        async with TestClient(hub, **client) as test_client:
            return test_client.ack
    except ConnectionClosed as exc:
        return exc.code


async def serve_both_ways(principal: Any) -> list[dict[str, Any] | int]:
    bearer = Handshake(headers=(("authorization", "Bearer t"),), client=("10.0.0.1", 1))
    async with Hub(authenticator=Returns(principal)) as hub:
        outcomes = [
            await ack_or_close_code(hub, handshake=bearer),
            await ack_or_close_code(hub, auth_token="t"),
        ]
        # Nothing is left behind, and the hub still serves.
        assert hub.stats().clients == 0
        assert hub.running
    return outcomes


@settings(max_examples=80, deadline=None)
@given(claims=claim_sets)
def test_hub_acks_or_refuses_4001_whatever_principal_the_authenticator_returns(
    claims: dict[str, Any],
) -> None:
    try:
        principal: Any = Principal.from_claims(claims)
    except AuthenticationError:
        # A custom authenticator need not check: the hub does.
        principal = Principal(claims.get("sub"), claims, expires_at=claims.get("exp"))
    for outcome in anyio.run(serve_both_ways, principal):
        if isinstance(outcome, int):
            assert outcome == 4001
        else:
            assert outcome["payload"]["userId"] == principal.user_id


#: What the outside probe made the hub raise on, and its neighbours.
UNSERVABLE: dict[str, Any] = {
    "exp-1.5e308": Principal("alice", expires_at=1.5e308),
    "exp-negative-huge": Principal("alice", expires_at=-1.5e308),
    "exp-nan": Principal("alice", expires_at=math.nan),
    "exp-infinite": Principal("alice", expires_at=math.inf),
    "exp-string": Principal("alice", expires_at="soon"),  # type: ignore[arg-type]
    "exp-bool": Principal("alice", expires_at=True),
    "sub-lone-surrogate": Principal("\ud800"),
    "sub-empty": Principal(""),
    "sub-too-long": Principal("x" * (MAX_USER_ID_LENGTH + 1)),
    "sub-number": Principal(42),  # type: ignore[arg-type]
    "not-a-principal": {"user_id": "alice"},
}


@pytest.mark.parametrize("name", list(UNSERVABLE))
def test_unservable_principal_is_refused_with_401_and_4001(name: str) -> None:
    assert anyio.run(serve_both_ways, UNSERVABLE[name]) == [4001, 4001]


def test_refusal_says_which_claim_is_wrong_and_nothing_more() -> None:
    with pytest.raises(AuthenticationError) as exp:
        Principal.from_claims({"sub": "alice", "exp": 1.5e308})
    with pytest.raises(AuthenticationError) as sub:
        Principal.from_claims({"sub": "\ud800", "exp": 1})
    assert str(exp.value) == "invalid exp claim: out of range"
    assert str(sub.value) == "invalid sub claim: not valid Unicode"


class ReturnsWithoutToken:
    """Identifies connections without a token (as from a session), badly."""

    async def authenticate(self, handshake: Handshake, token: str | None) -> Principal:
        return Principal("\ud800")


async def refused_without_a_token() -> int:
    async with Hub(authenticator=ReturnsWithoutToken(), auth_timeout=30) as hub:
        with anyio.fail_after(10):
            outcome = await ack_or_close_code(hub)
    assert isinstance(outcome, int)
    return outcome


def test_unservable_principal_found_without_a_token_is_refused_at_once() -> None:
    # Not left waiting for an auth frame until the auth timeout.
    assert anyio.run(refused_without_a_token) == 4001
