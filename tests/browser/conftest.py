"""roomcast.js in headless Chromium, on a blank page, against a real server over loopback.

The server is a Starlette app on uvicorn, run on a thread of the test process with
its own event loop, so that a test can publish through its hub, disconnect users
and stop and start it on the same port. It serves a blank page at ``/``,
``roomcast.js`` at ``/roomcast.js`` (through ``roomcast.starlette.client_script``),
the hub at ``/ws``, and JWTs at ``/token?user=...``. The browser is the system's
Chromium (Debian's ``chromium`` package), as in tests/docs/test_browser.py: without
it the tests skip, except in CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import jwt
import pytest
import redis
import uvicorn
from playwright.sync_api import Browser, Page
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute

import roomcast.starlette
from roomcast import DefaultAuthorizer, History, Hub, RoomOptions
from roomcast.backends import Backend
from roomcast.jwt import JWTAuthenticator

from .chromium import launch_chromium

T = TypeVar("T")

#: Seconds for the server to start or stop, or for a call into its loop.
SERVER_TIMEOUT = 15
#: Milliseconds any one wait on a page may take.
PAGE_TIMEOUT = 10_000
REDIS_URL = os.environ.get("ROOMCAST_REDIS_URL", "redis://127.0.0.1:6379/0")
SECRET = "browser-tests-" + "k" * 32

BLANK = "<!doctype html><html><head><meta charset=utf-8><link rel=icon href='data:,'>" \
    "<title>blank</title></head><body></body></html>"  # fmt: skip

#: Rooms ``chat:*`` keep history and clients may publish there; ``team:*`` have
#: presence and clients may publish there; ``live:*`` have neither.
NAMESPACES = {
    "chat": RoomOptions(history=History(size=100, ttl=600)),
    "team": RoomOptions(presence=True),
    "live": RoomOptions(),
}


def make_token(user: str, ttl: float = 600) -> str:
    # A token of its own each time (jti), as an issuer's are: the client tells a new
    # token from the one the server refused by comparing them.
    claims = {"sub": user, "exp": int(time.time() + ttl), "jti": secrets.token_hex(8)}
    return jwt.encode(claims, SECRET, algorithm="HS256")


class Server:
    """A roomcast hub behind uvicorn, on a thread of its own, on one loopback port.

    ``stop()`` closes every client with 1001 (the hub first, as the examples do) and
    stops listening; ``start()`` starts a new hub (from ``make_backend``) on the
    same port.
    """

    def __init__(
        self,
        make_backend: Callable[[], Backend | None] = lambda: None,
        *,
        token_expiry_warning: float | None = None,
    ) -> None:
        self._make_backend = make_backend
        self._warning = token_expiry_warning
        self.port = 0
        self.token_requests: list[str] = []
        self.token_ttl = 600.0
        self.hub: Hub | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _app(self, hub: Hub) -> Starlette:
        async def blank(request: Request) -> HTMLResponse:
            return HTMLResponse(BLANK)

        async def token(request: Request) -> PlainTextResponse:
            user = request.query_params.get("user", "")
            if not user:
                return PlainTextResponse("no user", status_code=400)
            self.token_requests.append(user)
            return PlainTextResponse(make_token(user, self.token_ttl))

        return Starlette(
            routes=[
                Route("/", blank),
                Route("/token", token),
                roomcast.starlette.client_script("/roomcast.js"),
                WebSocketRoute("/ws", roomcast.starlette.endpoint(hub)),
            ],
            lifespan=roomcast.starlette.lifespan(hub),
        )

    def start(self) -> None:
        started = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            options: dict[str, Any] = {}
            if self._warning is not None:
                options["token_expiry_warning"] = self._warning
            hub = Hub(
                authenticator=JWTAuthenticator(SECRET, algorithms=["HS256"]),
                authorizer=DefaultAuthorizer(publish=["chat", "team"]),
                backend=self._make_backend(),
                namespaces=NAMESPACES,
                **options,
            )
            config = uvicorn.Config(
                self._app(hub),
                host="127.0.0.1",
                port=self.port,
                ws_max_size=hub.max_message_size,
                ws_per_message_deflate=False,
                log_level="warning",
            )
            server = uvicorn.Server(config)
            self.hub, self._server, self._loop = hub, server, asyncio.get_running_loop()
            serving = asyncio.ensure_future(server.serve())
            while not server.started and not serving.done():
                await asyncio.sleep(0.01)
            if server.started:
                self.port = server.servers[0].sockets[0].getsockname()[1]
            started.set()
            await serving

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # reported by start() or stop()
                failure.append(exc)
                started.set()

        self._failure = failure
        self._thread = threading.Thread(target=run, name="roomcast test server", daemon=True)
        self._thread.start()
        assert started.wait(SERVER_TIMEOUT), "the server did not start"
        assert not failure, failure
        assert self._server is not None
        assert self._server.started, "the server did not listen"

    def call(self, factory: Callable[[Hub], Coroutine[Any, Any, T]]) -> T:
        """Run ``factory(hub)`` on the server's loop; return its result."""
        assert self._loop is not None
        assert self.hub is not None
        hub = self.hub
        future: Future[T] = asyncio.run_coroutine_threadsafe(factory(hub), self._loop)
        return future.result(SERVER_TIMEOUT)

    def publish(self, room: str, type: str, payload: object = None) -> str:
        async def publish(hub: Hub) -> str:
            return await hub.publish(room, type, payload)

        return self.call(publish)

    def stop(self) -> None:
        """Close every client with 1001, stop listening, and wait for the thread to end."""
        if self._thread is None:
            return
        server = self._server

        async def shut(hub: Hub) -> None:
            await hub.aclose()
            assert server is not None
            server.should_exit = True

        self.call(shut)
        self._thread.join(SERVER_TIMEOUT)
        assert not self._thread.is_alive(), "the server did not stop"
        self._thread = None
        self._loop = None
        self.hub = None
        assert not self._failure, self._failure


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launch_chromium()


@pytest.fixture
def server() -> Iterator[Server]:
    """The server on the memory backend."""
    running = Server()
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test alone on the local Redis, cleaned up after."""
    prefix = f"roomcast-browser-{secrets.token_hex(6)}"
    yield prefix
    with redis.Redis.from_url(REDIS_URL, socket_timeout=5) as client:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(PAGE_TIMEOUT)
        yield page
    finally:
        context.close()
