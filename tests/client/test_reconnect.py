"""Reconnecting: the close-code rules, backoff, liveness, pongs and token refresh.

A scripted peer plays the server, so that each close code and frame comes exactly
when the test wants it; the last tests use a real hub.
"""

from __future__ import annotations

import http
import json
import random

import anyio
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

import roomcast.client
from adapters.contract.servers import KINDS, ServerKind
from roomcast import (
    AuthenticationError,
    CloseCode,
    ConnectionClosedError,
    ConnectionClosedOK,
    HeartbeatPolicy,
    RateLimited,
    RoomcastError,
    ServerError,
)
from roomcast.client import Backoff, Recovery, StateChange
from roomcast.client._session import LIVENESS_MARGIN

from .conftest import TIMEOUT, Peer, ack, fast_backoff, hub_kwargs, scripted, token

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the scripted peer is a websockets asyncio server


def script_closing(code: int) -> object:
    async def script(peer: Peer, ws: ServerConnection, n: int) -> None:
        frame = await peer.next_frame(ws)
        assert frame["action"] == "auth"
        await ack(ws)
        if n == 0:
            await ws.close(code, "scripted")
        else:
            await ws.wait_closed()

    return script


def states_of(conn: roomcast.client.Connection) -> list[StateChange]:
    changes: list[StateChange] = []
    conn.on_state_change(changes.append)
    return changes


@pytest.mark.parametrize("code", [1000, 1009])
async def test_a_never_code_closes_the_client(code: int) -> None:
    async with scripted(script_closing(code)) as peer:  # type: ignore[arg-type]
        conn = roomcast.client.connect(peer.url, token="t0", backoff=fast_backoff())
        changes = states_of(conn)
        async with conn:
            with anyio.fail_after(TIMEOUT):
                await conn.wait_state("closed")
            await anyio.sleep(0.2)  # no reconnect follows
        assert len(peer.received) == 1
        expected = ConnectionClosedOK if code == 1000 else ConnectionClosedError
        assert isinstance(conn.error, expected)
        assert conn.error.code == code
        assert [change.state for change in changes] == ["connected", "closed"]


@pytest.mark.parametrize("code", [1001, 1011, 1013, 4008, 4009, 4029, 4999, 3000])
async def test_an_after_delay_code_reconnects_with_the_same_token(code: int) -> None:
    async with scripted(script_closing(code)) as peer:  # type: ignore[arg-type]
        conn = roomcast.client.connect(peer.url, token="t0", backoff=fast_backoff())
        changes = states_of(conn)
        async with conn:
            with anyio.fail_after(TIMEOUT):
                while len(peer.received) < 2 or conn.state != "connected":
                    await conn.wait_state("connected", "closed")
                    await anyio.sleep(0.01)
        assert [frames[0]["token"] for frames in peer.received] == ["t0", "t0"]
        lost = next(change for change in changes if change.state == "disconnected")
        assert lost.code == code
        assert lost.delay is not None
        assert 0 <= lost.delay <= 0.01  # attempt 0 after an acknowledged connection


@pytest.mark.parametrize("code", [4001, 4002, 1008])
async def test_a_with_new_token_code_reconnects_only_with_a_new_token(code: int) -> None:
    tokens = iter(["t1", "t2", "t3"])

    async def provider() -> str:
        return next(tokens)

    async with scripted(script_closing(code)) as peer:  # type: ignore[arg-type]
        conn = roomcast.client.connect(peer.url, token_provider=provider, backoff=fast_backoff())
        async with conn:
            with anyio.fail_after(TIMEOUT):
                while len(peer.received) < 2 or conn.state != "connected":
                    await anyio.sleep(0.01)
        # The provider was asked for the first connection, then after the refusal.
        assert [frames[0]["token"] for frames in peer.received] == ["t1", "t2"]


@pytest.mark.parametrize("code", [4001, 4002, 1008])
async def test_a_with_new_token_code_without_a_provider_closes_the_client(code: int) -> None:
    async with scripted(script_closing(code)) as peer:  # type: ignore[arg-type]
        conn = roomcast.client.connect(peer.url, token="t0", backoff=fast_backoff())
        async with conn:
            with anyio.fail_after(TIMEOUT):
                await conn.wait_state("closed")
        assert len(peer.received) == 1
        assert isinstance(conn.error, AuthenticationError)
        assert conn.error.close_code == code


async def test_a_provider_that_returns_the_refused_token_closes_the_client() -> None:
    async def provider() -> str:
        return "same"

    async with scripted(script_closing(4001)) as peer:  # type: ignore[arg-type]
        async with roomcast.client.connect(peer.url, token_provider=provider) as conn:
            with anyio.fail_after(TIMEOUT):
                await conn.wait_state("closed")
        assert len(peer.received) == 1
        assert isinstance(conn.error, AuthenticationError)


def script_closing_first(code: int | None) -> object:
    """Connection 0 is acknowledged then closed with ``code`` (aborted if ``None``)."""

    async def script(peer: Peer, ws: ServerConnection, n: int) -> None:
        await peer.next_frame(ws)
        await ack(ws)
        if n > 0:
            await ws.wait_closed()
        elif code is None:
            ws.transport.abort()  # no close frame: 1006
        else:
            await ws.close(code, "scripted")

    return script


@pytest.mark.parametrize("code", [1001, None, 1011, 4001, 4002, 1008])
async def test_a_provider_that_fails_on_a_reconnect_is_asked_again_after_a_delay(
    code: int | None,
) -> None:
    # The token service is often the server that restarts: its failure is a failed
    # attempt, retried with backoff, after a lost connection and after a refusal alike.
    answers: list[str | Exception] = ["t1", RuntimeError("down"), OSError("down"), "t2"]

    async def provider() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async with scripted(script_closing_first(code)) as peer:  # type: ignore[arg-type]
        backoff = RecordingBackoff(0.01, 0.05)
        conn = roomcast.client.connect(peer.url, token_provider=provider, backoff=backoff)
        changes = states_of(conn)
        async with conn:
            with anyio.fail_after(TIMEOUT):
                while len(peer.received) < 2 or conn.state != "connected":
                    await conn.wait_state("connected", "closed")
                    assert conn.state != "closed", conn.error
                    await anyio.sleep(0.01)
    assert answers == []
    assert [frames[0]["token"] for frames in peer.received] == ["t1", "t2"]
    # Each failure widened the window: attempts 0, 1, then 2 for the one that connected.
    assert backoff.attempts == [0, 1, 2]
    assert "closed" not in [change.state for change in changes[:-1]]


@pytest.mark.parametrize("code", [1001, None, 4001, 4002, 1008])
async def test_a_provider_raising_authentication_error_closes_the_client(code: int | None) -> None:
    # AuthenticationError from the provider means "signed out": no token will come.
    signed_out = AuthenticationError("signed out")
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise signed_out
        return "t1"

    async with scripted(script_closing_first(code)) as peer:  # type: ignore[arg-type]
        conn = roomcast.client.connect(peer.url, token_provider=provider, backoff=fast_backoff())
        async with conn:
            with anyio.fail_after(TIMEOUT):
                await conn.wait_state("closed")
            await anyio.sleep(0.1)  # no attempt follows
        assert conn.error is signed_out
        assert calls == 2
        assert len(peer.received) == 1


async def test_a_provider_that_fails_on_the_first_connection_is_asked_again() -> None:
    answers: list[str | Exception] = [RuntimeError("down"), "t1"]

    async def provider() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async with scripted(script_closing_first(1001)) as peer:  # type: ignore[arg-type]
        conn = roomcast.client.connect(peer.url, token_provider=provider, backoff=fast_backoff())
        changes = states_of(conn)
        async with conn:
            with anyio.fail_after(TIMEOUT):
                assert await conn.wait_state("connected", "closed") == "connected"
    assert peer.received[0][0] == {"action": "auth", "token": "t1"}
    lost = next(change for change in changes if change.state == "disconnected")
    assert "the token provider failed: RuntimeError" in lost.reason


async def test_a_lost_connection_without_a_close_frame_reconnects() -> None:
    async def script(peer: Peer, ws: ServerConnection, n: int) -> None:
        await peer.next_frame(ws)
        await ack(ws)
        if n == 0:
            ws.transport.abort()  # no close frame: 1006
        else:
            await ws.wait_closed()

    async with scripted(script) as peer:
        conn = roomcast.client.connect(peer.url, token="t", backoff=fast_backoff())
        changes = states_of(conn)
        async with conn:
            with anyio.fail_after(TIMEOUT):
                while len(peer.received) < 2 or conn.state != "connected":
                    await anyio.sleep(0.01)
        lost = next(change for change in changes if change.state == "disconnected")
        assert lost.code == 1006


async def test_the_backoff_grows_with_failed_attempts_and_is_seedable() -> None:
    windows = [Backoff(0.5, 20).window(attempt) for attempt in range(8)]
    assert windows == [0.5, 1, 2, 4, 8, 16, 20, 20]
    assert Backoff(0.5, 20).window(10_000) == 20
    first = [Backoff(rng=random.Random(7)).delay(n) for n in range(6)]
    again = [Backoff(rng=random.Random(7)).delay(n) for n in range(6)]
    assert first == again
    assert all(0 <= delay <= window for delay, window in zip(first, windows, strict=False))
    with pytest.raises(ValueError, match="max_delay"):
        Backoff(2, 1)
    with pytest.raises(ValueError, match="min_delay"):
        Backoff(0, 1)


async def test_failed_attempts_widen_the_window_and_an_ack_resets_it() -> None:
    # Connections 1-3 are refused before the handshake completes; 0 and 4 are acknowledged.
    async def script(peer: Peer, ws: ServerConnection, n: int) -> None:
        if n in (1, 2, 3):
            ws.transport.abort()
            return
        await peer.next_frame(ws)
        await ack(ws)
        if n == 0 or n == 4:
            await ws.close(CloseCode.TRY_AGAIN_LATER)
        else:
            await ws.wait_closed()

    async with scripted(script) as peer:
        backoff = RecordingBackoff(0.01, 10)
        async with roomcast.client.connect(peer.url, token="t", backoff=backoff):
            with anyio.fail_after(TIMEOUT):
                while len(peer.received) < 6:
                    await anyio.sleep(0.01)
        # After each acknowledged connection the count starts again from 0.
        recorded = backoff.attempts
        assert recorded[:5] == [0, 1, 2, 3, 0]


class RecordingBackoff(Backoff):
    """A backoff that remembers the attempts it was asked about."""

    def __init__(self, min_delay: float, max_delay: float) -> None:
        super().__init__(min_delay, max_delay)
        self.attempts: list[int] = []

    def delay(self, attempt: int) -> float:
        self.attempts.append(attempt)
        return super().delay(attempt)


async def test_server_pings_are_answered_and_silence_means_a_lost_connection() -> None:
    # heartbeatMs=100: the client gives up after 2 x 0.1 + 5 s without a frame.
    async def script(peer: Peer, ws: ServerConnection, n: int) -> None:
        await peer.next_frame(ws)
        await ack(ws, heartbeat_ms=100)
        if n == 0:
            await ws.send('{"type":"ping"}')
            assert await peer.next_frame(ws) == {"action": "pong"}
            await ws.wait_closed()  # silence, with the socket open
        else:
            await ws.wait_closed()

    async with scripted(script) as peer:
        conn = roomcast.client.connect(peer.url, token="t", backoff=fast_backoff())
        changes = states_of(conn)
        async with conn:
            with anyio.fail_after(TIMEOUT):
                while len(peer.received) < 2:
                    await anyio.sleep(0.05)
        lost = next(change for change in changes if change.state == "disconnected")
        assert "no frame from the server" in lost.reason
        assert peer.received[0][1] == {"action": "pong"}


async def test_token_expiring_is_answered_with_a_refresh_from_the_provider() -> None:
    async def script(peer: Peer, ws: ServerConnection, n: int) -> None:
        await peer.next_frame(ws)
        await ack(ws)
        await ws.send('{"type":"token.expiring","payload":{"expiresInMs":1000}}')
        frame = await peer.next_frame(ws)
        reply = {"type": "reply", "ref": frame["ref"], "ok": True, "payload": {"expiresAt": None}}
        await ws.send(json.dumps(reply))
        await ws.wait_closed()

    tokens = iter(["first", "second"])

    async def provider() -> str:
        return next(tokens)

    async with scripted(script) as peer:
        async with roomcast.client.connect(peer.url, token_provider=provider) as conn:
            with anyio.fail_after(TIMEOUT):
                while len(peer.received[0]) < 2 if peer.received else True:
                    await anyio.sleep(0.01)
            assert conn.state == "connected"
    assert peer.received[0][0] == {"action": "auth", "token": "first"}
    assert peer.received[0][1]["action"] == "refresh"
    assert peer.received[0][1]["token"] == "second"


async def test_a_room_reset_reaches_the_subscription_as_a_recovery() -> None:
    async def script(peer: Peer, ws: ServerConnection, n: int) -> None:
        await ack(ws)
        frame = await peer.next_frame(ws)
        result = {"ok": True, "offset": 3, "epoch": "e1"}
        reply = {"type": "reply", "ref": frame["ref"], "ok": True,
                 "payload": {"rooms": {"team:t1": result}}}  # fmt: skip
        await ws.send(json.dumps(reply))
        reset = {"type": "room.reset", "room": "team:t1",
                 "payload": {"recovered": False, "offset": 9, "epoch": "e2"}}  # fmt: skip
        await ws.send(json.dumps(reset))
        await ws.wait_closed()

    async with scripted(script) as peer:
        async with roomcast.client.connect(peer.url) as conn:
            sub = await conn.subscribe("team:t1")
            with anyio.fail_after(TIMEOUT):
                notice = await anext(aiter(sub))
            assert notice == Recovery("team:t1", False, 9, "e2")
            assert sub.position is not None
            assert (sub.position.offset, sub.position.epoch) == (9, "e2")


async def test_a_real_hub_keeps_a_refreshed_connection_past_the_first_token() -> None:
    # The first token expires in 2 s; the hub warns 1.5 s before; the provider renews.
    issued: list[str] = []

    async def provider() -> str:
        issued.append(token("u1", ttl=2 if not issued else 600))
        return issued[-1]

    async with KINDS[0].start(hub_kwargs(token_expiry_warning=1.5)) as served:
        async with roomcast.client.connect(served.url, token_provider=provider) as conn:
            await conn.wait_state("connected")
            client_id = conn.client_id
            await anyio.sleep(3.5)
            assert conn.state == "connected"
            assert conn.client_id == client_id  # the same connection, never closed
            await conn.subscribe("chat:a")
    assert len(issued) == 2


async def test_a_real_hub_closing_an_expired_fixed_token_closes_the_client() -> None:
    # Without a provider the fixed token runs out, the hub closes with 4002, and the
    # client has no new token to come back with.
    async with KINDS[0].start(hub_kwargs(token_expiry_warning=0.5)) as served:
        async with roomcast.client.connect(served.url, token=token("u1", ttl=1.5)) as conn:
            with anyio.fail_after(TIMEOUT):
                await conn.wait_state("closed")
            assert isinstance(conn.error, AuthenticationError)
            assert conn.error.close_code == CloseCode.TOKEN_EXPIRED


@pytest.mark.parametrize("kind", [kind.param() for kind in KINDS])
async def test_an_idle_client_stays_connected_whatever_pings_the_server_sends(
    kind: ServerKind,
) -> None:
    # The websockets and aiohttp adapters ping with protocol pings, which never reach
    # the client's reads: the client's own pings keep its liveness check fed.
    policy = HeartbeatPolicy(interval=0.5, timeout=3, jitter=0)
    async with kind.start(hub_kwargs(heartbeat=policy)) as served:
        async with roomcast.client.connect(served.url, token=token("u1")) as conn:
            await conn.wait_state("connected")
            changes = states_of(conn)
            assert conn.heartbeat == 0.5
            client_id = conn.client_id
            await anyio.sleep(2 * 0.5 + LIVENESS_MARGIN + 1)
            assert conn.client_id == client_id
            assert changes == []


@pytest.mark.parametrize(
    ("status", "outcome"), [(503, "retried"), (429, "retried"), (401, "closed"), (403, "closed")]
)
async def test_a_refused_handshake_follows_the_status(status: int, outcome: str) -> None:
    # The first handshake is refused with ``status``; the next one would be accepted.
    handshakes = 0

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        nonlocal handshakes
        handshakes += 1
        if handshakes == 1:
            return connection.respond(http.HTTPStatus(status), "refused\n")
        return None

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ack(ws)
        await ws.wait_closed()

    async with serve(
        handler,
        "127.0.0.1",
        0,
        subprotocols=[Subprotocol("roomcast.v1")],
        process_request=process_request,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        conn = roomcast.client.connect(
            f"ws://127.0.0.1:{port}/ws", token="fixed", backoff=fast_backoff()
        )
        async with conn:
            with anyio.fail_after(TIMEOUT):
                state = await conn.wait_state("connected", "closed")
    assert state == ("connected" if outcome == "retried" else "closed")
    if status == 401:
        assert isinstance(conn.error, AuthenticationError)  # a fixed token: no new one
    if status == 403:
        assert isinstance(conn.error, ConnectionClosedError)


async def test_a_refused_refresh_then_4002_reconnects_with_the_next_token() -> None:
    async def script(peer: Peer, ws: ServerConnection, n: int) -> None:
        await peer.next_frame(ws)
        await ack(ws)
        if n == 0:
            await ws.send('{"type":"token.expiring","payload":{"expiresInMs":100}}')
            frame = await peer.next_frame(ws)
            error = {"code": "unauthorized", "message": "invalid token"}
            await ws.send(
                json.dumps({"type": "reply", "ref": frame["ref"], "ok": False, "error": error})
            )
            await ws.close(CloseCode.TOKEN_EXPIRED, "token expired")
        else:
            await ws.wait_closed()

    tokens = iter(["first", "refused", "third"])

    async def provider() -> str:
        return next(tokens)

    async with scripted(script) as peer:
        conn = roomcast.client.connect(peer.url, token_provider=provider, backoff=fast_backoff())
        async with conn:
            with anyio.fail_after(TIMEOUT):
                while len(peer.received) < 2 or conn.state != "connected":
                    await anyio.sleep(0.01)
    assert peer.received[0][1] == {"action": "refresh", "ref": 1, "token": "refused"}
    assert peer.received[1][0] == {"action": "auth", "token": "third"}


async def test_a_token_refused_after_its_refresh_is_not_sent_again() -> None:
    # "second" replaced "first" in band; the server then closes with 4002: a provider
    # that still returns "second" has no new token to offer.
    async def script(peer: Peer, ws: ServerConnection, n: int) -> None:
        await peer.next_frame(ws)
        await ack(ws)
        await ws.send('{"type":"token.expiring","payload":{"expiresInMs":100}}')
        frame = await peer.next_frame(ws)
        await ws.send(json.dumps({"type": "reply", "ref": frame["ref"], "ok": True, "payload": {}}))
        await ws.close(CloseCode.TOKEN_EXPIRED, "token expired")

    tokens = iter(["first", "second", "second"])

    async def provider() -> str:
        return next(tokens)

    async with scripted(script) as peer:
        conn = roomcast.client.connect(peer.url, token_provider=provider, backoff=fast_backoff())
        async with conn:
            with anyio.fail_after(TIMEOUT):
                await conn.wait_state("closed")
    assert len(peer.received) == 1
    assert isinstance(conn.error, AuthenticationError)


def failing_listener(error: RoomcastError) -> None:
    raise RuntimeError("a bug in the application's listener")


async def test_server_error_frames_reach_the_error_listeners() -> None:
    async def script(peer: Peer, ws: ServerConnection, n: int) -> None:
        await ack(ws)
        error = {"code": "rate_limited", "message": "too many messages", "retryAfterMs": 1500}
        await ws.send(json.dumps({"type": "error", "ref": None, "payload": error}))
        bad = {"code": "bad_request", "message": "invalid JSON"}
        await ws.send(json.dumps({"type": "error", "ref": None, "payload": bad}))
        await ws.wait_closed()

    errors: list[RoomcastError] = []
    async with scripted(script) as peer:
        conn = roomcast.client.connect(peer.url)
        conn.on_error(failing_listener)  # a failing listener does not stop the others
        stop = conn.on_error(errors.append)
        async with conn:
            with anyio.fail_after(TIMEOUT):
                while len(errors) < 2:
                    await anyio.sleep(0.01)
            stop()
            assert conn.state == "connected"
    limited, bad = errors
    assert isinstance(limited, RateLimited)
    assert limited.retry_after == 1.5
    assert isinstance(bad, ServerError)
    assert bad.code == "bad_request"
    assert bad.message == "invalid JSON"


async def test_a_reader_held_by_an_unread_stream_past_the_liveness_limit_reconnects() -> None:
    # heartbeatMs=100: the limit is 2 x 0.1 + 5 s. The application never reads its
    # subscription; the connection stays open but nothing more can be read from it.
    async def script(peer: Peer, ws: ServerConnection, n: int) -> None:
        await ack(ws, heartbeat_ms=100)
        frame = await peer.next_frame(ws)
        result = {"ok": True, "offset": 0, "epoch": "e1"}
        reply = {"type": "reply", "ref": frame["ref"], "ok": True,
                 "payload": {"rooms": {"team:t1": result}}}  # fmt: skip
        await ws.send(json.dumps(reply))
        if n == 0:
            for offset in range(1, 41):
                event = {"type": "tick.sent", "room": "team:t1", "id": f"m{offset}",
                         "payload": {"n": offset}, "timestamp": 1, "userId": None,
                         "offset": offset, "epoch": "e1"}  # fmt: skip
                await ws.send(json.dumps(event))
        await ws.wait_closed()

    async with scripted(script) as peer:
        conn = roomcast.client.connect(peer.url, buffer_size=5, backoff=fast_backoff())
        changes = states_of(conn)
        async with conn:
            sub = await conn.subscribe("team:t1")
            with anyio.fail_after(TIMEOUT):
                while len(peer.received) < 2 or conn.state != "connected":
                    await anyio.sleep(0.05)
            lost = next(change for change in changes if change.state == "disconnected")
            assert "waited" in lost.reason
            # It resubscribed from the last event it kept: nothing received was dropped.
            since = peer.received[1][0]["since"]["team:t1"]
            kept = [item for item in sub._buffer._items if not isinstance(item, Recovery)]
            assert since["offset"] == len(kept) == 6
