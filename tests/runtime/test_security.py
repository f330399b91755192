"""Token sources, live expiry and refresh, origin, limits and authorization, in memory."""

from __future__ import annotations

import logging
import time

import anyio
import pytest

from roomcast import (
    AuthenticationError,
    ConnectionClosed,
    ConnectionLimits,
    Handshake,
    HeartbeatPolicy,
    Hub,
    NamespaceAuthorizer,
    Principal,
    TokenSources,
)
from roomcast.limits import ConnectionTracker
from roomcast.testing import ManualClock, TestClient

pytestmark = pytest.mark.anyio

SECRET_TOKEN = "tok-9f8e7d6c5b4a"


#: token -> (user id, seconds until expiry or None, claims)
Tokens = dict[str, tuple[str, "float | None", dict[str, object]]]


class TableAuthenticator:
    """Tokens are looked up in a table: token -> (user id, seconds until expiry, claims)."""

    def __init__(self, table: Tokens) -> None:
        self.table = table
        self.seen: list[str | None] = []

    async def authenticate(self, handshake: Handshake, token: str | None) -> Principal:
        self.seen.append(token)
        if token is None or token not in self.table:
            raise AuthenticationError("invalid token")
        user, lifetime, claims = self.table[token]
        expires = None if lifetime is None else time.time() + lifetime
        return Principal(user, claims, expires)


def handshake(
    *,
    headers: tuple[tuple[str, str], ...] = (),
    query: tuple[tuple[str, str], ...] = (),
    cookies: dict[str, str] | None = None,
    subprotocols: tuple[str, ...] = ("roomcast.v1",),
    ip: str = "127.0.0.1",
) -> Handshake:
    return Handshake(
        path="/ws",
        headers=headers,
        query=query,
        cookies=cookies or {},
        client=(ip, 40000),
        subprotocols=subprotocols,
    )


def hub_with(
    tokens: dict[str, tuple[str, float | None, dict[str, object]]], **kwargs: object
) -> Hub:
    return Hub(authenticator=TableAuthenticator(tokens), **kwargs)  # type: ignore[arg-type]


ALICE: Tokens = {SECRET_TOKEN: ("alice", None, {})}
# Heartbeats out of the way of tests that move the clock by minutes.
# The first ping falls anywhere in the first interval: one of years keeps it out of the way.
QUIET = HeartbeatPolicy(interval=1e9, timeout=2e9)


# ----------------------------------------------------------------------------- token sources


async def test_token_in_a_subprotocol_entry_authenticates_and_only_v1_is_echoed() -> None:
    async with hub_with(ALICE) as hub:
        admission = await hub.admit(
            handshake(subprotocols=("roomcast.v1", f"roomcast.bearer.{SECRET_TOKEN}"))
        )
        assert admission.accepted
        assert admission.principal is not None
        assert admission.principal.user_id == "alice"
        assert admission.subprotocol == "roomcast.v1"


async def test_token_in_the_authorization_header_authenticates() -> None:
    async with hub_with(ALICE) as hub:
        admission = await hub.admit(
            handshake(headers=(("authorization", f"Bearer {SECRET_TOKEN}"),))
        )
        assert admission.principal is not None


async def test_cookie_and_query_are_used_only_when_named() -> None:
    async with hub_with(ALICE) as hub:
        by_cookie = await hub.admit(handshake(cookies={"session": SECRET_TOKEN}))
        by_query = await hub.admit(handshake(query=(("token", SECRET_TOKEN),)))
        assert by_cookie.accepted
        assert by_cookie.principal is None
        assert by_query.accepted
        assert by_query.principal is None
    sources = TokenSources(cookie="session", query="token")
    async with hub_with(ALICE, token_sources=sources) as hub:
        by_cookie = await hub.admit(handshake(cookies={"session": SECRET_TOKEN}))
        by_query = await hub.admit(handshake(query=(("token", SECRET_TOKEN),)))
        assert by_cookie.principal is not None
        assert by_query.principal is not None


async def test_sources_are_tried_in_order() -> None:
    table: Tokens = {"sub": ("a", None, {}), "hdr": ("b", None, {})}
    auth = TableAuthenticator(table)
    async with Hub(authenticator=auth, token_sources=TokenSources(cookie="c", query="q")) as hub:
        await hub.admit(
            handshake(
                subprotocols=("roomcast.v1", "roomcast.bearer.sub"),
                headers=(("authorization", "Bearer hdr"),),
                cookies={"c": "cookie"},
                query=(("q", "query"),),
            )
        )
        await hub.admit(
            handshake(headers=(("authorization", "Bearer hdr"),), cookies={"c": "cookie"})
        )
        await hub.admit(handshake(cookies={"c": "cookie"}, query=(("q", "query"),)))
        assert auth.seen == ["sub", "hdr", "cookie"]


async def test_bad_handshake_token_is_refused_with_401_and_counted() -> None:
    async with hub_with(ALICE) as hub:
        admission = await hub.admit(handshake(headers=(("authorization", "Bearer nope"),)))
        assert (admission.status, admission.close_code) == (401, 4001)
        assert hub.stats().auth_failures == 1


async def test_first_message_auth_then_other_frames_before_auth_close_4001() -> None:
    async with hub_with(ALICE) as hub:
        async with TestClient(hub, auth_token=SECRET_TOKEN) as client:
            assert client.ack["payload"]["userId"] == "alice"
        client = TestClient(hub)
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.serve, client.transport)
            await client.send_json({"action": "subscribe", "rooms": ["room:a"]})
            assert await client.wait_closed() == 4001
        await client.end.close()
        assert hub.stats().rooms == 0


async def test_no_auth_frame_within_the_timeout_closes_4008() -> None:
    async with hub_with(ALICE, auth_timeout=0.05) as hub:
        client = TestClient(hub)
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.serve, client.transport)
            assert await client.wait_closed() == 4008
        await client.end.close()


# ----------------------------------------------------------------------------- expiry, refresh


async def test_expiring_token_is_warned_then_closed_4002() -> None:
    clock = ManualClock()
    tokens: Tokens = {SECRET_TOKEN: ("alice", 120.0, {})}
    async with hub_with(tokens, clock=clock, token_expiry_warning=60, heartbeat=QUIET) as hub:
        async with TestClient(hub, auth_token=SECRET_TOKEN) as client:
            assert client.ack["payload"]["expiresAt"] is not None
            # Token lifetimes are wall-clock: leave slack for a slow machine.
            await clock.advance(55)
            assert client.drain() == []
            await clock.advance(6)
            warning = await client.receive()
            assert warning["type"] == "token.expiring"
            assert 55_000 < warning["payload"]["expiresInMs"] <= 60_000
            await clock.advance(60)
            assert await client.wait_closed() == 4002
        assert hub.stats().token_expirations == 1


async def test_a_token_shorter_than_the_warning_is_warned_halfway_not_at_once() -> None:
    clock = ManualClock()
    tokens: Tokens = {SECRET_TOKEN: ("alice", 30.0, {})}
    async with hub_with(tokens, clock=clock, token_expiry_warning=60, heartbeat=QUIET) as hub:
        async with TestClient(hub, auth_token=SECRET_TOKEN) as client:
            await clock.advance(10)
            assert client.drain() == []
            # Token lifetimes are wall-clock: leave slack for a slow machine.
            await clock.advance(6)
            warning = await client.receive()
            assert warning["type"] == "token.expiring"
            assert 10_000 < warning["payload"]["expiresInMs"] <= 15_000


async def test_a_token_expiring_sooner_than_the_next_poll_is_warned_on_time() -> None:
    clock = ManualClock()
    tokens: Tokens = {SECRET_TOKEN: ("alice", 0.5, {})}
    async with hub_with(tokens, clock=clock, token_expiry_warning=0.3, heartbeat=QUIET) as hub:
        # The hub's loop now sleeps until its next poll, up to a second away.
        await clock.advance(0)
        async with TestClient(hub, auth_token=SECRET_TOKEN) as client:
            await clock.advance(0.3)
            warning = client.drain()
            assert [frame["type"] for frame in warning] == ["token.expiring"]
            await clock.advance(0.3)
            assert await client.wait_closed() == 4002


async def test_refresh_with_the_same_subject_extends_the_connection() -> None:
    clock = ManualClock()
    tokens: Tokens = {SECRET_TOKEN: ("alice", 120.0, {}), "fresh": ("alice", 3600.0, {})}
    async with hub_with(tokens, clock=clock, heartbeat=QUIET) as hub:
        async with TestClient(hub, auth_token=SECRET_TOKEN) as client:
            reply = await client.request({"action": "refresh", "token": "fresh"})
            assert reply["ok"] is True
            assert reply["payload"]["removed"] == []
            await clock.advance(200)
            assert (await client.request({"action": "ping"}))["type"] == "pong"
            assert hub.stats().token_expirations == 0


async def test_refresh_to_credentials_that_never_expire_ends_the_old_expiry() -> None:
    clock = ManualClock()
    tokens: Tokens = {SECRET_TOKEN: ("alice", 120.0, {}), "forever": ("alice", None, {})}
    async with hub_with(tokens, clock=clock, heartbeat=QUIET) as hub:
        async with TestClient(hub, auth_token=SECRET_TOKEN) as client:
            reply = await client.request({"action": "refresh", "token": "forever"})
            assert reply["payload"]["expiresAt"] is None
            await clock.advance(200)
            assert (await client.request({"action": "ping"}))["type"] == "pong"
            assert client.drain() == []
            assert hub.stats().token_expirations == 0


async def test_refresh_as_another_subject_closes_4001() -> None:
    tokens: Tokens = {SECRET_TOKEN: ("alice", None, {}), "mallory": ("mallory", None, {})}
    async with hub_with(tokens) as hub, TestClient(hub, auth_token=SECRET_TOKEN) as client:
        await client.send_json({"action": "refresh", "token": "mallory"})
        assert await client.wait_closed() == 4001


async def test_refresh_with_an_invalid_token_is_refused_in_band() -> None:
    async with hub_with(ALICE) as hub, TestClient(hub, auth_token=SECRET_TOKEN) as client:
        reply = await client.request({"action": "refresh", "token": "garbage"})
        assert reply["error"]["code"] == "unauthorized"


async def test_refresh_removes_rooms_the_new_claims_no_longer_allow() -> None:
    tokens: Tokens = {
        SECRET_TOKEN: ("alice", None, {"teams": ["t1", "t2"]}),
        "demoted": ("alice", None, {"teams": ["t1"]}),
    }
    rules = NamespaceAuthorizer(
        {"team": lambda principal, action, team: team in principal.claims.get("teams", ())}
    )
    async with hub_with(tokens, authorizer=rules) as hub:
        async with TestClient(hub, auth_token=SECRET_TOKEN) as client:
            await client.subscribe("team:t1", "team:t2")
            reply = await client.request({"action": "refresh", "token": "demoted"})
            assert reply["payload"]["removed"] == ["team:t2"]
            assert hub.stats().members == {"team:t1": 1}
            await hub.publish("team:t2", "issue.created", {})
            await client.request({"action": "ping"})
            assert [f for f in client.drain() if f.get("type") == "issue.created"] == []


async def test_disconnect_user_refuses_codes_that_cannot_be_sent() -> None:
    async with Hub() as hub:
        with pytest.raises(ValueError, match="cannot be sent"):
            hub.disconnect_user("u1", 1006)


# ----------------------------------------------------------------------------- authorization


async def test_namespace_rules_decide_their_rooms_and_defaults_keep_user_rooms_private() -> None:
    rules = NamespaceAuthorizer(
        {
            "team": lambda principal, action, team: (
                action != "publish" and team in principal.claims.get("teams", ())
            ),
            "chat": lambda principal, action, room: True,
        }
    )
    tokens: Tokens = {SECRET_TOKEN: ("alice", None, {"teams": ["t1"]})}
    async with hub_with(tokens, authorizer=rules) as hub:
        async with TestClient(hub, auth_token=SECRET_TOKEN) as client:
            result = await client.subscribe("team:t1", "team:t2", "user:alice", "user:bob")
            assert result["team:t1"]["ok"] is True
            assert result["team:t2"]["error"]["code"] == "forbidden"
            assert result["user:alice"]["ok"] is True
            assert result["user:bob"]["error"]["code"] == "forbidden"
            assert (await client.publish("chat:x", "chat.message", {}))["ok"] is True
            assert (await client.publish("team:t1", "chat.message", {}))["ok"] is False


def test_namespace_authorizer_rejects_bad_rules() -> None:
    with pytest.raises(ValueError, match="namespace"):
        NamespaceAuthorizer({"a:b": lambda principal, action, room: True})
    with pytest.raises(TypeError, match="callable"):
        NamespaceAuthorizer({"a": True})  # type: ignore[dict-item]


# ----------------------------------------------------------------------------- origin


@pytest.mark.parametrize(
    "origins",
    [
        ("https://app.example.com.evil.com",),
        ("http://app.example.com",),
        ("https://app.example.com:8443",),
        ("null",),
        ("https://app.example.com", "https://app.example.com"),
        ("https://app.example.com", "https://evil.example.com"),
    ],
)
@pytest.mark.parametrize("allow_missing_origin", [True, False])
async def test_origin_must_match_the_allowlist_exactly(
    origins: tuple[str, ...], allow_missing_origin: bool
) -> None:
    async with Hub(
        allowed_origins=["https://app.example.com"], allow_missing_origin=allow_missing_origin
    ) as hub:
        refused = await hub.admit(handshake(headers=tuple(("origin", o) for o in origins)))
        assert (refused.status, refused.close_code) == (403, 1008)
        assert refused.reason == "origin not allowed"
        accepted = await hub.admit(handshake(headers=(("origin", "https://app.example.com"),)))
        assert accepted.accepted
        assert hub.stats().origin_refusals == 1


async def test_a_handshake_without_origin_is_not_a_browser_and_is_admitted() -> None:
    async with Hub(allowed_origins=["https://app.example.com"]) as hub:
        assert (await hub.admit(handshake())).accepted
        assert hub.stats().origin_refusals == 0


async def test_a_handshake_without_origin_is_refused_when_origin_is_required() -> None:
    async with Hub(allowed_origins=["https://app.example.com"], allow_missing_origin=False) as hub:
        refused = await hub.admit(handshake())
        assert (refused.status, refused.close_code, refused.reason) == (
            403,
            1008,
            "origin required",
        )
        assert hub.stats().origin_refusals == 1


async def test_allow_missing_origin_has_no_effect_without_an_allowlist() -> None:
    async with Hub(allow_missing_origin=False) as hub:
        assert (await hub.admit(handshake())).accepted


@pytest.mark.parametrize("bad", [None, 0, 1, "no"])
def test_allow_missing_origin_must_be_a_bool(bad: object) -> None:
    with pytest.raises(TypeError, match="allow_missing_origin"):
        Hub(allow_missing_origin=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["app.example.com", "https://app.example.com/", "ftp://x", ""])
def test_allowed_origins_are_checked_at_configuration(bad: str) -> None:
    with pytest.raises(ValueError, match="origin"):
        Hub(allowed_origins=[bad])


# ----------------------------------------------------------------------------- limits


async def test_connections_per_ip_are_capped() -> None:
    async with Hub(limits=ConnectionLimits(max_connections_per_ip=2)) as hub:
        async with TestClient(hub), TestClient(hub):
            refused = await hub.admit(handshake())
            assert (refused.status, refused.close_code) == (503, 1013)
            other_ip = await hub.admit(handshake(ip="10.0.0.9"))
            assert other_ip.accepted
        assert (await hub.admit(handshake())).accepted


async def test_connections_per_user_are_capped() -> None:
    limits = ConnectionLimits(max_connections_per_user=1)
    async with hub_with(ALICE, limits=limits) as hub:
        async with TestClient(hub, auth_token=SECRET_TOKEN):
            by_header = await hub.admit(
                handshake(headers=(("authorization", f"Bearer {SECRET_TOKEN}"),))
            )
            assert by_header.status == 503
            second = TestClient(hub, auth_token=SECRET_TOKEN)
            with pytest.raises(ConnectionClosed) as info:
                await second.__aenter__()
            assert info.value.code == 1013


async def test_failed_authentications_per_ip_lock_the_address_out() -> None:
    clock = ManualClock()
    limits = ConnectionLimits(auth_failures_per_minute=3)
    async with hub_with(ALICE, limits=limits, clock=clock) as hub:
        bad = handshake(headers=(("authorization", "Bearer wrong"),))
        good = handshake(headers=(("authorization", f"Bearer {SECRET_TOKEN}"),))
        for _ in range(3):
            assert (await hub.admit(bad)).status == 401
        assert (await hub.admit(good)).status == 429
        assert (await hub.admit(handshake(ip="10.0.0.2"))).accepted
        await clock.advance(20)  # one failure's worth refills
        assert (await hub.admit(good)).accepted


class GatedAuthenticator(TableAuthenticator):
    """A table authenticator that awaits a gate first, as one asking a database would."""

    def __init__(self, table: Tokens) -> None:
        super().__init__(table)
        self.gate = anyio.Event()
        self.waiting = 0

    async def authenticate(self, handshake: Handshake, token: str | None) -> Principal:
        if token is not None:
            self.waiting += 1
            await self.gate.wait()
        return await super().authenticate(handshake, token)


async def test_handshakes_verified_at_once_cannot_overspend_the_failure_budget() -> None:
    authenticator = GatedAuthenticator(ALICE)
    limits = ConnectionLimits(auth_failures_per_minute=10)
    async with Hub(authenticator=authenticator, limits=limits, clock=ManualClock()) as hub:
        bad = handshake(headers=(("authorization", "Bearer wrong"),))
        statuses: list[int] = []

        async def admit() -> None:
            statuses.append((await hub.admit(bad)).status)

        async with anyio.create_task_group() as tg:
            for _ in range(30):
                tg.start_soon(admit)
            # The first ten are being verified; the other twenty were refused unverified.
            with anyio.fail_after(5):
                while len(statuses) < 20:
                    await anyio.sleep(0.001)
            assert authenticator.waiting == 10
            authenticator.gate.set()
        assert sorted(statuses) == [401] * 10 + [429] * 20
        assert (hub.stats().auth_failures, hub.stats().limit_refusals) == (10, 20)


async def test_auth_frames_verified_at_once_cannot_overspend_the_failure_budget() -> None:
    authenticator = GatedAuthenticator(ALICE)
    limits = ConnectionLimits(auth_failures_per_minute=3)
    async with Hub(authenticator=authenticator, limits=limits, clock=ManualClock()) as hub:
        clients = [TestClient(hub) for _ in range(9)]
        codes: list[int] = []

        async def attempt(client: TestClient) -> None:
            await client.send_json({"action": "auth", "token": "wrong"})
            codes.append(await client.wait_closed())

        async with anyio.create_task_group() as tg:
            for client in clients:
                tg.start_soon(hub.serve, client.transport)
                tg.start_soon(attempt, client)
            with anyio.fail_after(5):
                while len(codes) < 6:
                    await anyio.sleep(0.001)
            assert authenticator.waiting == 3
            authenticator.gate.set()
        for client in clients:
            await client.end.close()
        assert sorted(codes) == [1013] * 6 + [4001] * 3


async def test_credentials_that_verify_give_their_share_of_the_budget_back() -> None:
    limits = ConnectionLimits(auth_failures_per_minute=3)
    async with hub_with(ALICE, limits=limits, clock=ManualClock()) as hub:
        good = handshake(headers=(("authorization", f"Bearer {SECRET_TOKEN}"),))
        bad = handshake(headers=(("authorization", "Bearer wrong"),))
        for _ in range(10):
            assert (await hub.admit(good)).accepted
        assert [(await hub.admit(bad)).status for _ in range(4)] == [401, 401, 401, 429]


def test_failure_table_stays_bounded_for_many_addresses() -> None:
    tracker = ConnectionTracker(ConnectionLimits(max_tracked_ips=1000))
    for n in range(100_000):
        tracker.failed(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", float(n) / 1000)
    assert tracker.tracked_ips <= 1000


async def test_queued_bytes_are_capped_per_client() -> None:
    limits = ConnectionLimits(max_queue_bytes=10_000)
    async with Hub(limits=limits, max_queue=1000) as hub:
        async with TestClient(hub, buffer=1) as slow:
            await slow.subscribe("room:a")
            for _ in range(5):
                await hub.publish("room:a", "blob", "x" * 4000)
            assert await slow.wait_closed() == 4009


# ----------------------------------------------------------------------------- logs


async def test_logs_never_contain_the_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sources = TokenSources(cookie="session", query="token")
    async with hub_with(ALICE, token_sources=sources) as hub:
        for leaked in (
            handshake(subprotocols=("roomcast.v1", f"roomcast.bearer.{SECRET_TOKEN}x")),
            handshake(headers=(("authorization", f"Bearer {SECRET_TOKEN}x"),)),
            handshake(cookies={"session": SECRET_TOKEN + "x"}),
            handshake(query=(("token", SECRET_TOKEN + "x"),)),
        ):
            assert (await hub.admit(leaked)).status == 401
        async with TestClient(hub, handshake=handshake(query=(("token", SECRET_TOKEN),))) as client:
            await client.request({"action": "refresh", "token": SECRET_TOKEN + "y"})
            await client.end.send('{"action":"auth","token":"' + SECRET_TOKEN + '"}')
            await client.request({"action": "ping"})
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert caplog.records, "expected some log output to check"
    assert SECRET_TOKEN not in text
