"""Fixtures for the backend tests: the local Redis, one key prefix per test, cleaned up after.

Tests that need Redis fail, never skip, when it cannot be reached: CI starts one
on 127.0.0.1:6379 (``ROOMCAST_REDIS_URL`` names another).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import redis
from anyio.abc import TaskGroup

from roomcast import Handshake, Hub, Principal, RoomOptions
from roomcast.backends import Backend
from roomcast.testing import TestClient

#: The Redis the tests use; its database 1 is the second shard of the sharding tests.
REDIS_URL = os.environ.get("ROOMCAST_REDIS_URL", "redis://127.0.0.1:6379/0")
SECOND_DB_URL = REDIS_URL.rsplit("/", 1)[0] + "/1"


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's asyncio client runs on asyncio only; the trio test asks for trio itself."""
    return "asyncio"


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key and channel prefix of this test alone; its keys are deleted afterwards."""
    name = f"roomcast-test-{secrets.token_hex(6)}"
    yield name
    for url in (REDIS_URL, SECOND_DB_URL):
        with redis.Redis.from_url(url, socket_timeout=5) as client:
            keys = list(client.scan_iter(match=f"{name}:*", count=1000))
            if keys:
                client.delete(*keys)


class RedisServer:
    """A ``redis-server`` of the test's own, on a free loopback port, without persistence.

    ``kill()`` stops it at once (SIGKILL: its data is gone); ``start()`` starts
    it again on the same port, empty.
    """

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [
                "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(port=self.port, socket_timeout=1) as client:
                    client.ping()
                    return
            except redis.ConnectionError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on {self.port}") from None
                time.sleep(0.02)

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A running ``redis-server`` of this test alone, killed afterwards."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.kill()


class UserAuthenticator:
    """Takes the user id from the ``x-user`` header."""

    async def authenticate(self, handshake: Handshake, token: str | None) -> Principal:
        return Principal(handshake.header("x-user"))


@asynccontextmanager
async def hubs_on(
    backends: Callable[[], Backend], count: int, namespaces: Mapping[str, RoomOptions]
) -> AsyncIterator[list[Hub]]:
    """``count`` running hubs, each on a backend of its own, closed in reverse order."""
    async with AsyncExitStack() as stack:
        hubs = []
        for _ in range(count):
            hub = Hub(backend=backends(), authenticator=UserAuthenticator(), namespaces=namespaces)
            hubs.append(await stack.enter_async_context(hub))
        yield hubs


def connect(hub: Hub, user: str, tasks: TaskGroup, timeout: float = 10) -> TestClient:
    """A client of user ``user`` on ``hub``, served in ``tasks``."""
    return TestClient(
        hub, handshake=Handshake(headers=(("x-user", user),)), task_group=tasks, timeout=timeout
    )
