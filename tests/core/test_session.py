"""Session: the phase table, bad-request and rate strikes, and the verdict on each frame."""

from __future__ import annotations

import json
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast.protocol import CloseCode
from roomcast.ratelimit import RateLimiter
from roomcast.session import (
    RULES,
    Authenticate,
    Close,
    Fail,
    Handle,
    Reply,
    Rule,
    Session,
    SessionLimits,
)
from roomcast.wire import Auth, HistoryRequest, Ping, Request, Subscribe, WireLimits

LIMITS = SessionLimits(
    wire=WireLimits(),
    messages=RateLimiter(3, 60.0, 3),
    strikes=RateLimiter(2, 60.0, 2),
    bad_requests=RateLimiter(2, 60.0, 2),
)

AUTH = '{"action":"auth","token":"t"}'
PING = '{"action":"ping","ref":"p"}'
PONG = '{"action":"pong"}'
SUBSCRIBE = '{"action":"subscribe","rooms":["team:t1"],"ref":"s"}'
HISTORY = '{"action":"history","room":"team:t1","limit":5,"ref":"h"}'
GARBAGE = "{not json"


def opened(now: float = 0.0) -> Session:
    session = Session(LIMITS)
    session.open(now)
    return session


def payload(verdict: object) -> dict[str, Any]:
    assert isinstance(verdict, Reply)
    frame: dict[str, Any] = json.loads(verdict.frame)
    return frame


def test_every_phase_has_a_rule_for_every_request() -> None:
    kinds = set(get_args(Request))
    for phase, rules in RULES.items():
        assert set(rules) == kinds, phase


# ----------------------------------------------------------------------------- awaiting auth


def test_a_session_starts_waiting_for_auth_and_hands_it_over() -> None:
    session = Session(LIMITS)
    assert session.phase == "awaiting_auth"
    verdict = session.receive(AUTH, 0.0)
    assert verdict == Authenticate(token="t")
    assert RULES["awaiting_auth"][Auth] is Rule.HANDLE


@pytest.mark.parametrize("frame", [PING, PONG])
def test_pings_and_pongs_before_auth_are_ignored(frame: str) -> None:
    assert Session(LIMITS).receive(frame, 0.0) is None


def test_any_other_request_before_auth_fails_authentication() -> None:
    assert Session(LIMITS).receive(SUBSCRIBE, 0.0) == Fail("authenticate before any other request")


def test_a_history_request_before_auth_fails_authentication() -> None:
    assert Session(LIMITS).receive(HISTORY, 0.0) == Fail("authenticate before any other request")


def test_an_open_session_hands_history_requests_over_within_the_rate_limit() -> None:
    session = opened()
    for _ in range(3):
        verdict = session.receive(HISTORY, 0.0)
        assert isinstance(verdict, Handle)
        assert verdict.request == HistoryRequest("team:t1", 5, None, "h")
    verdict = session.receive(HISTORY, 0.0)
    assert isinstance(verdict, Reply)
    assert verdict.strike == "rate_limited"
    assert json.loads(verdict.frame)["ref"] == "h"


def test_a_malformed_frame_before_auth_fails_authentication() -> None:
    assert Session(LIMITS).receive(GARBAGE, 0.0) == Fail("expected an auth frame")


# ----------------------------------------------------------------------------- open


def test_an_open_session_hands_requests_over() -> None:
    verdict = opened().receive(SUBSCRIBE, 0.0)
    assert isinstance(verdict, Handle)
    assert isinstance(verdict.request, Subscribe)
    assert isinstance(opened().receive(PING, 0.0), Handle)
    assert isinstance(opened().receive(PING, 0.0).request, Ping)  # type: ignore[union-attr]


def test_auth_on_an_open_session_is_a_bad_request_in_band() -> None:
    error = payload(opened().receive(AUTH, 0.0))["error"]
    assert (error["code"], error["message"]) == ("bad_request", "already authenticated")


def test_malformed_frames_are_answered_then_close_1008() -> None:
    session = opened()
    for _ in range(2):
        verdict = session.receive(GARBAGE, 0.0)
        assert isinstance(verdict, Reply)
        assert verdict.strike == "bad_request"
        assert json.loads(verdict.frame)["type"] == "error"  # no ref: not a reply
    assert session.receive(GARBAGE, 0.0) == Close(
        CloseCode.POLICY_VIOLATION, "too many bad requests", "bad_request"
    )


def test_over_the_rate_requests_are_refused_then_close_4029() -> None:
    session = opened()
    for _ in range(3):
        assert isinstance(session.receive(SUBSCRIBE, 0.0), Handle)
    for _ in range(2):
        verdict = session.receive(SUBSCRIBE, 0.0)
        assert isinstance(verdict, Reply)
        assert verdict.strike == "rate_limited"
        reply = json.loads(verdict.frame)
        assert (reply["ref"], reply["error"]["code"]) == ("s", "rate_limited")
        assert reply["error"]["retryAfterMs"] == 20_000
    assert session.receive(SUBSCRIBE, 0.0) == Close(
        CloseCode.RATE_LIMITED, "rate limit exceeded", "rate_limited"
    )


def test_pongs_are_never_rate_limited() -> None:
    session = opened()
    for _ in range(3):
        session.receive(SUBSCRIBE, 0.0)
    for _ in range(10):
        assert session.receive(PONG, 0.0) is None


def test_the_rate_limit_starts_when_the_session_opens() -> None:
    session = Session(LIMITS)
    for _ in range(10):
        session.receive(PING, 0.0)  # before auth: ignored, not counted
    session.open(100.0)
    for _ in range(3):
        assert isinstance(session.receive(SUBSCRIBE, 100.0), Handle)


# ----------------------------------------------------------------------------- closing


@pytest.mark.parametrize("frame", [AUTH, PING, PONG, SUBSCRIBE, HISTORY, GARBAGE])
def test_a_closing_session_ignores_everything(frame: str) -> None:
    session = opened()
    session.close()
    assert session.phase == "closing"
    assert session.receive(frame, 0.0) is None


@settings(max_examples=200, deadline=None)
@given(
    frames=st.lists(
        st.one_of(
            st.sampled_from([AUTH, PING, PONG, SUBSCRIBE, HISTORY, GARBAGE]),
            st.text(max_size=40),
            st.binary(max_size=40),
        ),
        max_size=30,
    )
)
def test_any_frames_get_a_verdict_the_table_allows(frames: list[str | bytes]) -> None:
    session = Session(LIMITS)
    for index, frame in enumerate(frames):
        if index == len(frames) // 2:
            session.open(0.0)
        phase = session.phase
        verdict = session.receive(frame, 0.0)
        if isinstance(verdict, Handle):
            assert phase == "open"
            assert RULES[phase][type(verdict.request)] is Rule.HANDLE
        elif isinstance(verdict, Authenticate):
            assert phase == "awaiting_auth"
            assert RULES[phase][Auth] is Rule.HANDLE
        elif isinstance(verdict, Fail):
            assert phase == "awaiting_auth"
        elif isinstance(verdict, (Reply, Close)):
            assert phase == "open"
