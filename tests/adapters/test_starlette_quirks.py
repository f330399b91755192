"""What only the Starlette adapter does: uvicorn on asyncio, hypercorn on trio, on 127.0.0.1.

The behaviour every adapter shares is in ``contract/``; here are the eager send,
the lifespan, refusals through ASGI, permessage-deflate and FastAPI.

The client is the ``websockets`` library's: its asyncio implementation under
uvicorn and its trio implementation under hypercorn, which share one API.
"""

from __future__ import annotations

import json
from collections.abc import Callable, MutableMapping
from typing import Any

import anyio
import pytest
import uvicorn
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

import roomcast.starlette
from roomcast import (
    AuthenticationError,
    ConnectionClosed,
    Handshake,
    Hub,
    Principal,
)
from roomcast.starlette import StarletteTransport

from .asgi import Client, close_code, connect, serving

pytestmark = pytest.mark.anyio

TIMEOUT = 10
V1 = [Subprotocol("roomcast.v1")]
SERVERS = {"asyncio": "uvicorn", "trio": "hypercorn"}


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="uvicorn-asyncio"),
        pytest.param("trio", id="hypercorn-trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Each server on the event loop it is built for: uvicorn on asyncio, hypercorn on trio."""
    backend: str = request.param
    return backend


def starlette_app(hub: Hub) -> Starlette:
    return Starlette(
        routes=[WebSocketRoute("/ws", roomcast.starlette.endpoint(hub))],
        lifespan=roomcast.starlette.lifespan(hub),
    )


async def next_frame(client: Client, type_: str) -> dict[str, Any]:
    """Return the next frame of ``type_``, answering and skipping heartbeats."""
    while True:
        frame: dict[str, Any] = json.loads(await client.recv())
        if frame["type"] == type_:
            return frame
        if frame["type"] == "ping":
            await client.send(json.dumps({"action": "pong"}))


async def subscribe(client: Client, room: str) -> dict[str, Any]:
    await client.send(json.dumps({"action": "subscribe", "rooms": [room], "ref": 1}))
    return await next_frame(client, "reply")


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` to hold; the caller's ``fail_after`` bounds the wait."""
    while not condition():
        await anyio.sleep(0.01)


# The transport alone


class FakeASGI:
    """An accepted ASGI WebSocket in memory: sends are recorded, or fail, or wait."""

    def __init__(self) -> None:
        self.sent: list[MutableMapping[str, Any]] = []
        self.gone = False
        self.gate: anyio.Event | None = None

    async def receive(self) -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.gone:
            raise OSError("the server reports the socket gone")
        self.sent.append(message)

    async def transport(self, *, direct: bool = True) -> StarletteTransport:
        websocket = WebSocket(
            {"type": "websocket", "path": "/ws", "headers": []}, self.receive, self.send
        )
        await websocket.accept()
        self.sent.clear()  # the accept message
        transport = StarletteTransport(websocket)
        if not direct:
            transport._send = None  # as if WebSocket kept no ASGI send of its own
        return transport


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "through-websocket-send"])
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_begin_send_sends_in_place_and_reports_a_lost_socket(direct: bool) -> None:
    asgi = FakeASGI()
    transport = await asgi.transport(direct=direct)
    assert transport.begin_send("one") is None
    await transport.send(["two", "three"])
    assert [m["text"] for m in asgi.sent] == ["one", "two", "three"]
    assert all(m["type"] == "websocket.send" for m in asgi.sent)
    asgi.gone = True
    with pytest.raises(ConnectionClosed) as info:
        transport.begin_send("four")
    assert info.value.code == 1006
    # As WebSocket.send itself does: the socket is gone for good.
    assert transport._websocket.application_state.name == "DISCONNECTED"
    with pytest.raises(ConnectionClosed):
        transport.begin_send("five")
    with pytest.raises(ConnectionClosed):
        await transport.send(["six"])
    await transport.close(1000)  # nothing to do, and no error


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_begin_send_hands_back_the_rest_of_a_send_that_waits() -> None:
    asgi = FakeASGI()
    transport = await asgi.transport()
    gate = asgi.gate = anyio.Event()
    rest = transport.begin_send("slow")
    assert rest is not None
    assert asgi.sent == []
    gate.set()
    await rest
    assert [m["text"] for m in asgi.sent] == ["slow"]
    asgi.gone, asgi.gate = True, anyio.Event()
    rest = transport.begin_send("lost")
    assert rest is not None
    asgi.gate.set()
    with pytest.raises(ConnectionClosed) as info:
        await rest
    assert info.value.code == 1006


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_after_close_data_frames_are_refused_not_sent() -> None:
    asgi = FakeASGI()
    transport = await asgi.transport()
    await transport.close(4009, "slow consumer")
    assert asgi.sent[-1] == {"type": "websocket.close", "code": 4009, "reason": "slow consumer"}
    with pytest.raises(ConnectionClosed):
        transport.begin_send("late")
    assert asgi.sent[-1]["type"] == "websocket.close"


# Through a hub


class RecordingAuthenticator:
    """Lets everyone in as ``u1`` and keeps the handshakes; refuses the token ``bad``."""

    def __init__(self) -> None:
        self.handshakes: list[Handshake] = []

    async def authenticate(self, handshake: Handshake, token: str | None) -> Principal:
        self.handshakes.append(handshake)
        if token == "bad":
            raise AuthenticationError()
        return Principal("u1")


async def test_lifespan_runs_the_hub_while_the_app_runs() -> None:
    hub = Hub()
    with anyio.fail_after(TIMEOUT):
        async with serving(starlette_app(hub)):
            assert hub.running
        await eventually(lambda: not hub.running)


@pytest.mark.parametrize("anyio_backend", [pytest.param("asyncio", id="uvicorn-asyncio")])
@pytest.mark.parametrize("ws", ["none", "auto-without-a-library"])
async def test_lifespan_fails_the_startup_of_a_uvicorn_without_websocket_support(
    ws: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    if ws != "none":
        # What `pip install uvicorn` gives: neither websockets nor wsproto to pick.
        import uvicorn.protocols.websockets.auto as auto

        monkeypatch.setattr(auto, "AutoWebSocketsProtocol", None)
        ws = "auto"
    hub = Hub()
    config = uvicorn.Config(
        starlette_app(hub), host="127.0.0.1", port=0, log_config=None, lifespan="on", ws=ws
    )
    with anyio.fail_after(TIMEOUT), pytest.raises(SystemExit) as exited:
        await uvicorn.Server(config).serve()
    assert exited.value.code == 3  # uvicorn's status for a failed startup
    assert "without WebSocket support" in caplog.text
    assert "pip install 'uvicorn[standard]'" in caplog.text
    assert not hub.running


async def test_a_frame_over_the_hub_limit_closes_with_1009() -> None:
    # The servers' own limits stay at their 16 MiB defaults: the transport enforces the hub's.
    hub = Hub()
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(starlette_app(hub)) as base,
            connect(base + "/ws", subprotocols=V1) as client,
        ):
            await next_frame(client, "connection.ack")
            await client.send("x" * (hub.max_message_size + 1))
            assert await close_code(client) == 1009
            await eventually(lambda: hub.stats().clients == 0)


def without_denial_responses(app: ASGIApp) -> ASGIApp:
    """``app`` behind a server that lacks the ``websocket.http.response`` extension."""

    async def stripped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            extensions = dict(scope.get("extensions") or {})
            extensions.pop("websocket.http.response", None)
            scope = {**scope, "extensions": extensions}
        await app(scope, receive, send)

    return stripped


@pytest.mark.parametrize(
    ("denial_responses", "expected"),
    [
        pytest.param(True, (403, 401), id="with-denial-responses"),
        # Closing before accept is all ASGI offers then; both servers answer 403.
        pytest.param(False, (403, 403), id="without-denial-responses"),
    ],
)
async def test_a_refused_handshake_gets_an_http_status(
    denial_responses: bool, expected: tuple[int, int]
) -> None:
    hub = Hub(authenticator=RecordingAuthenticator(), allowed_origins=["https://app.example.com"])
    app: ASGIApp = starlette_app(hub)
    if not denial_responses:
        app = without_denial_responses(app)
    refusals: list[dict[str, Any]] = [
        {"origin": "https://evil.example"},
        {
            "origin": "https://app.example.com",
            "additional_headers": {"Authorization": "Bearer bad"},
        },
    ]
    statuses = []
    with anyio.fail_after(TIMEOUT):
        async with serving(app) as base:
            for kwargs in refusals:
                with pytest.raises(InvalidStatus) as excinfo:
                    async with connect(base + "/ws", subprotocols=V1, **kwargs):
                        pass
                statuses.append(excinfo.value.response.status_code)
            async with connect(
                base + "/ws", subprotocols=V1, origin="https://app.example.com"
            ) as client:
                await next_frame(client, "connection.ack")
    assert tuple(statuses) == expected
    assert hub.stats().clients == 0


async def test_permessage_deflate_is_off_under_uvicorn_and_always_on_under_hypercorn(
    anyio_backend: str,
) -> None:
    hub = Hub()
    options = {"ws_per_message_deflate": False} if anyio_backend == "asyncio" else {}
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(starlette_app(hub), **options) as base,
            connect(base + "/ws", subprotocols=V1) as client,
        ):
            await next_frame(client, "connection.ack")
            header = client.response.headers.get("Sec-WebSocket-Extensions")  # type: ignore[attr-defined]
            if SERVERS[anyio_backend] == "uvicorn":
                assert header is None
            else:
                # hypercorn accepts a client's offer and has no setting to refuse it.
                assert header is not None
                assert header.startswith("permessage-deflate")


# FastAPI


def fastapi_app(hub: Hub, how: str) -> FastAPI:
    app = FastAPI(lifespan=roomcast.starlette.lifespan(hub))
    handler = roomcast.starlette.endpoint(hub)
    if how == "add_api_websocket_route":
        app.add_api_websocket_route("/ws", handler)
    elif how == "decorator":
        app.websocket("/ws")(handler)
    else:

        @app.websocket("/ws")
        async def wrapper(websocket: WebSocket) -> None:
            await handler(websocket)

    return app


@pytest.mark.parametrize("how", ["add_api_websocket_route", "decorator", "wrapper"])
async def test_fastapi_app_relays_a_publish(how: str) -> None:
    hub = Hub()
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(fastapi_app(hub, how)) as base,
            connect(base + "/ws", subprotocols=V1) as client,
        ):
            assert client.subprotocol == "roomcast.v1"
            await next_frame(client, "connection.ack")
            assert (await subscribe(client, "team:t1"))["ok"] is True
            await hub.publish("team:t1", "issue.created", {"id": "i1"})
            event = await next_frame(client, "issue.created")
            assert event["payload"] == {"id": "i1"}
