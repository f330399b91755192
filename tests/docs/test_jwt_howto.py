"""The JWT how-to's mounting code, run: one hub with JWT auth behind each adapter.

Each section the page shows carries its own imports, so that it can be pasted as shown;
hence the imports below the top of the module.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import jwt as pyjwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

pytestmark = pytest.mark.anyio

SECRET = "a-test-secret-of-at-least-32-bytes-length"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --8<-- [start:hub]
from roomcast import Hub
from roomcast.jwt import JWTAuthenticator


def make_hub(secret: str) -> Hub:
    return Hub(authenticator=JWTAuthenticator(secret, algorithms=["HS256"]))


# --8<-- [end:hub]


# --8<-- [start:websockets]
import roomcast.websockets


async def serve_websockets(hub: Hub, host: str, port: int) -> None:
    async with hub, await roomcast.websockets.serve(hub, host, port) as server:
        await server.serve_forever()


# --8<-- [end:websockets]


# --8<-- [start:starlette]
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute

import roomcast.starlette


def starlette_app(hub: Hub) -> Starlette:
    return Starlette(
        routes=[WebSocketRoute("/ws", roomcast.starlette.endpoint(hub))],
        lifespan=roomcast.starlette.lifespan(hub),
    )


def fastapi_app(hub: Hub) -> FastAPI:
    app = FastAPI(lifespan=roomcast.starlette.lifespan(hub))
    app.add_api_websocket_route("/ws", roomcast.starlette.endpoint(hub))
    return app


# --8<-- [end:starlette]


# --8<-- [start:aiohttp]
from aiohttp import web

import roomcast.aiohttp


def aiohttp_app(hub: Hub) -> web.Application:
    app = web.Application()
    app.router.add_get("/ws", roomcast.aiohttp.handler(hub))
    app.cleanup_ctx.append(roomcast.aiohttp.cleanup_ctx(hub))
    return app


# --8<-- [end:aiohttp]


def token(sub: str) -> str:
    return pyjwt.encode({"sub": sub, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")


async def check(url: str) -> None:
    """A good token in the subprotocol entry gets in; a bad one gets 401 before the upgrade."""
    with anyio.fail_after(10):
        good = ["roomcast.v1", "roomcast.bearer." + token("alice")]
        async with connect(url, subprotocols=good) as ws:  # type: ignore[arg-type]
            ack = json.loads(await ws.recv())
            assert ack["payload"]["userId"] == "alice"
            assert ws.subprotocol == "roomcast.v1"
        bad = ["roomcast.v1", "roomcast.bearer.not-a-token"]
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, subprotocols=bad):  # type: ignore[arg-type]
                pass
        assert info.value.response.status_code == 401


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_websockets_adapter_with_jwt() -> None:
    port = free_port()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(serve_websockets, make_hub(SECRET), "127.0.0.1", port)
        with anyio.fail_after(10):
            while True:
                try:
                    probe = await anyio.connect_tcp("127.0.0.1", port)
                except OSError:
                    await anyio.sleep(0.05)
                else:
                    await probe.aclose()
                    break
        await check(f"ws://127.0.0.1:{port}/ws")
        tasks.cancel_scope.cancel()


async def test_aiohttp_adapter_with_jwt() -> None:
    runner = web.AppRunner(aiohttp_app(make_hub(SECRET)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        await check(f"ws://127.0.0.1:{port}/ws")
    finally:
        await runner.cleanup()


@asynccontextmanager
async def uvicorn_serving(app: object) -> AsyncIterator[int]:
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.01)
        yield server.servers[0].sockets[0].getsockname()[1]
        server.should_exit = True


@pytest.mark.parametrize("make_app", [starlette_app, fastapi_app])
async def test_starlette_and_fastapi_with_jwt(make_app: Callable[[Hub], object]) -> None:
    app = make_app(make_hub(SECRET))
    async with uvicorn_serving(app) as port:
        await check(f"ws://127.0.0.1:{port}/ws")
