"""Admission: the origin rule, connection counts and the failed-login budget, without a hub."""

from __future__ import annotations

import pytest

from roomcast import AuthenticationError, ConnectionLimits, Handshake, Principal
from roomcast.admission import (
    Admission,
    Gatekeeper,
    HubState,
    LockedOut,
    parse_origins,
    refusal_reason,
)
from roomcast.testing import ManualClock

pytestmark = pytest.mark.anyio

APP = "https://app.example.com"


class Tokens:
    """Accepts ``ok-<user>`` tokens; a session cookie ``sid`` identifies ``cookie-user``."""

    async def authenticate(self, handshake: Handshake, token: str | None) -> Principal:
        if token is None and handshake.cookies.get("sid"):
            return Principal("cookie-user")
        if token is None or not token.startswith("ok-"):
            raise AuthenticationError("invalid token")
        return Principal(token[3:])


def handshake(
    *, origins: tuple[str, ...] = (), token: str | None = None, ip: str = "127.0.0.1"
) -> Handshake:
    headers = tuple(("origin", origin) for origin in origins)
    if token is not None:
        headers += (("authorization", f"Bearer {token}"),)
    return Handshake(
        path="/ws",
        headers=headers,
        query=(),
        cookies={},
        client=(ip, 40000),
        subprotocols=("roomcast.v1",),
    )


def gatekeeper(clock: ManualClock | None = None, **kwargs: object) -> Gatekeeper:
    return Gatekeeper(authenticator=Tokens(), clock=clock or ManualClock(), **kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- Admission


@pytest.mark.parametrize(
    ("status", "close_code"), [(401, 4001), (403, 1008), (408, 4008), (429, 1013), (503, 1013)]
)
def test_a_refusal_gets_the_close_code_of_its_status(status: int, close_code: int) -> None:
    refused = Admission(status, "no")
    assert (refused.accepted, refused.close_code) == (False, close_code)


def test_an_acceptance_has_no_close_code() -> None:
    assert (Admission().accepted, Admission().close_code) == (True, 0)


def test_a_refusal_reason_fits_a_close_frame() -> None:
    assert len(refusal_reason(ValueError("x" * 500)).encode()) <= 123


# ----------------------------------------------------------------------------- origin rule


@pytest.mark.parametrize(
    ("origins", "allow_missing", "why"),
    [
        ((APP,), True, None),
        ((APP,), False, None),
        ((), True, None),
        ((), False, "origin required"),
        (("https://evil.example.com",), True, "origin not allowed"),
        ((APP, APP), True, "origin not allowed"),
    ],
)
def test_the_origin_rule(origins: tuple[str, ...], allow_missing: bool, why: str | None) -> None:
    gate = gatekeeper(allowed_origins=[APP], allow_missing_origin=allow_missing)
    assert gate.origin_refusal(list(origins)) == why


def test_without_an_allowlist_every_origin_passes() -> None:
    gate = gatekeeper(allow_missing_origin=False)
    assert gate.origin_refusal([]) is None
    assert gate.origin_refusal(["https://evil.example.com"]) is None


@pytest.mark.parametrize("bad", ["app.example.com", f"{APP}/", f"{APP}?q", "ftp://x", ""])
def test_malformed_origins_are_refused_at_configuration(bad: str) -> None:
    with pytest.raises(ValueError, match="origin"):
        parse_origins([bad])


def test_a_single_string_is_not_a_list_of_origins() -> None:
    with pytest.raises(TypeError, match="allowed_origins"):
        parse_origins(APP)


# ----------------------------------------------------------------------------- admit


@pytest.mark.parametrize(
    ("state", "reason", "close_code"),
    [
        ("new", "server not started", 1013),
        ("closing", "server shutting down", 1001),
        ("closed", "server shutting down", 1001),
    ],
)
async def test_a_hub_that_is_not_running_admits_nobody(
    state: HubState, reason: str, close_code: int
) -> None:
    gate = gatekeeper()
    admission = await gate.admit(handshake(token="ok-alice"), state)
    assert (admission.status, admission.reason, admission.close_code) == (503, reason, close_code)
    assert (gate.auth_failures, gate.limit_refusals) == (0, 0)  # nothing was looked at


async def test_admit_refuses_a_foreign_origin_before_looking_at_the_token() -> None:
    gate = gatekeeper(allowed_origins=[APP])
    refused = await gate.admit(
        handshake(origins=("https://evil.example.com",), token="bad"), "running"
    )
    assert (refused.status, refused.reason) == (403, "origin not allowed")
    assert (gate.origin_refusals, gate.auth_failures) == (1, 0)


async def test_admit_verifies_a_token_and_selects_the_subprotocol() -> None:
    admission = await gatekeeper().admit(handshake(token="ok-alice"), "running")
    assert admission.accepted
    assert admission.principal == Principal("alice")
    assert admission.subprotocol == "roomcast.v1"


async def test_admit_without_credentials_leaves_them_to_a_first_message() -> None:
    admission = await gatekeeper().admit(handshake(), "running")
    assert (admission.accepted, admission.principal) == (True, None)


async def test_failed_logins_spend_the_address_budget_until_it_refills() -> None:
    clock = ManualClock()
    gate = gatekeeper(clock, limits=ConnectionLimits(auth_failures_per_minute=2))
    for _ in range(2):
        assert (await gate.admit(handshake(token="bad"), "running")).status == 401
    assert gate.auth_failures == 2
    locked = await gate.admit(handshake(token="ok-alice"), "running")
    assert (locked.status, locked.reason) == (429, "too many failed authentications")
    assert gate.limit_refusals == 1
    # Another address is not locked out.
    assert (await gate.admit(handshake(token="ok-alice", ip="10.0.0.9"), "running")).accepted
    await clock.advance(60)
    assert (await gate.admit(handshake(token="ok-alice"), "running")).accepted
    assert gate.limit_refusals == 1


async def test_connections_are_counted_per_address_and_per_user() -> None:
    limits = ConnectionLimits(max_connections_per_ip=1, max_connections_per_user=1)
    gate = gatekeeper(limits=limits)
    gate.opened("127.0.0.1", None)
    assert (await gate.admit(handshake(), "running")).status == 503
    assert (await gate.admit(handshake(ip="10.0.0.9"), "running")).accepted
    gate.opened(None, "alice")
    assert gate.user_refused("alice")
    refused = await gate.admit(handshake(token="ok-alice", ip="10.0.0.9"), "running")
    assert (refused.status, refused.reason) == (503, "too many connections for this user")
    assert gate.limit_refusals == 3
    gate.closed("127.0.0.1", "alice")
    assert not gate.user_refused("alice")
    assert (await gate.admit(handshake(token="ok-alice"), "running")).accepted


async def test_an_implicit_principal_is_found_without_a_token() -> None:
    gate = gatekeeper()
    with_cookie = Handshake(
        path="/ws", headers=(), query=(), cookies={"sid": "1"}, client=None, subprotocols=()
    )
    assert await gate.implicit_principal(with_cookie) == Principal("cookie-user")
    assert await gate.implicit_principal(handshake()) is None
    assert gate.auth_failures == 0


def test_locked_out_is_an_authentication_error_that_says_try_again() -> None:
    exc = LockedOut()
    assert isinstance(exc, AuthenticationError)
    assert (exc.status, exc.close_code) == (429, 1013)
