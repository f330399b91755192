"""The issue tracker run as its own process, and what its tests drive it with.

The example is ``app.py`` and the modules it imports: ``api.py`` (the REST API),
``auth.py`` (tokens and room rules), ``events.py`` (the domain module) and ``store.py``.

``running()`` starts ``examples/issue_tracker/app.py`` on a free port (async, for the
API tests); ``serving()`` does the same for the browser tests (sync). ``publish_elsewhere``
changes the data and publishes through the example's domain module from another
process, as a worker or a second node would.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import redis
from anyio.abc import Process
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin, Subprotocol

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "issue_tracker"
APP = EXAMPLE / "app.py"
#: Seconds any one API test may take, server start and stop included.
TIMEOUT = 20
#: Seconds for a server to start or stop.
SERVER_TIMEOUT = 15
#: The Redis the tests use, as in tests/backends.
REDIS_URL = os.environ.get("ROOMCAST_REDIS_URL", "redis://127.0.0.1:6379/0")


def call(
    origin: str, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    """One REST call: its status and its decoded JSON body (``None`` when empty)."""
    request = urllib.request.Request(
        origin + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            data = response.read()
            return response.status, json.loads(data) if data else None
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def login(origin: str, user: str) -> str:
    status, body = call(origin, "POST", "/api/v1/login", {"user": user})
    assert status == 200, body
    token: str = body["token"]
    return token


class Peer:
    """One browser-like connection: frames not yet asked for wait in a backlog."""

    def __init__(self, websocket: ClientConnection) -> None:
        self.websocket = websocket
        self.backlog: list[dict[str, Any]] = []
        self._ref = 0

    async def next(self, type_: str, **fields: Any) -> dict[str, Any]:
        """The next frame of ``type_`` whose top-level fields equal ``fields``."""

        def wanted(frame: dict[str, Any]) -> bool:
            return frame["type"] == type_ and all(frame.get(k) == v for k, v in fields.items())

        for index, queued in enumerate(self.backlog):
            if wanted(queued):
                return self.backlog.pop(index)
        while True:
            frame: dict[str, Any] = json.loads(await self.websocket.recv())
            if wanted(frame):
                return frame
            self.backlog.append(frame)

    async def request(self, **message: Any) -> dict[str, Any]:
        self._ref += 1
        await self.websocket.send(json.dumps({**message, "ref": self._ref}))
        return await self.next("reply", ref=self._ref)

    async def subscribe(self, *rooms: str, since: Any = None) -> dict[str, Any]:
        reply = await self.request(action="subscribe", rooms=list(rooms), since=since)
        assert reply["ok"] is True
        results: dict[str, Any] = reply["payload"]["rooms"]
        return results

    async def drain(self) -> list[dict[str, Any]]:
        """Every frame that arrives before the answer to a ping sent now."""
        await self.websocket.send(json.dumps({"action": "ping", "ref": "drain"}))
        await self.next("pong", ref="drain")
        frames, self.backlog = self.backlog, []
        return frames

    async def close_code(self) -> int | None:
        frame = await self.close_frame()
        return None if frame is None else frame[0]

    async def close_frame(self) -> tuple[int, str] | None:
        try:
            while True:
                await self.websocket.recv()
        except ConnectionClosed as exc:
            return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd is not None else None


class Tracker:
    """The running example: its REST API and its WebSocket endpoint."""

    def __init__(self, url: str, process: Process) -> None:
        self.url = url
        self.origin = url.rstrip("/")
        self.process = process

    async def api(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        return await anyio.to_thread.run_sync(call, self.origin, method, path, body, token)

    async def login(self, user: str) -> str:
        return await anyio.to_thread.run_sync(login, self.origin, user)

    async def create_issue(self, token: str, team: str = "t1", title: str = "Crash") -> str:
        status, issue = await self.api(
            "POST", f"/api/v1/teams/{team}/issues", {"title": title}, token
        )
        assert status == 201, issue
        issue_id: str = issue["id"]
        return issue_id

    @asynccontextmanager
    async def connect(self, token: str, origin: str | None = None) -> AsyncIterator[Peer]:
        """A connection that authenticates with its first message, as the page does."""
        async with connect(
            "ws" + self.origin.removeprefix("http") + "/ws",
            subprotocols=[Subprotocol("roomcast.v1")],
            origin=Origin(origin or self.origin),
            open_timeout=TIMEOUT,
        ) as websocket:
            await websocket.send(json.dumps({"action": "auth", "token": token}))
            peer = Peer(websocket)
            await peer.next("connection.ack")
            yield peer


@asynccontextmanager
async def running(
    *args: str, capture_stderr: bool = False, env: Mapping[str, str] | None = None
) -> AsyncIterator[Tracker]:
    """Start the example on a free port; it is killed on the way out if it still runs.

    ``env`` adds to the test's own environment.
    """
    process = await anyio.open_process(
        [sys.executable, str(APP), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if capture_stderr else None,
        env={**os.environ, **env} if env is not None else None,
    )
    try:
        assert process.stdout is not None
        line = b""
        while b"\n" not in line:
            line += await process.stdout.receive()
        url = line.decode().split()[-1]
        assert url.startswith("http://127.0.0.1:")
        yield Tracker(url, process)
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.CancelScope(shield=True):
            await process.aclose()


class Server:
    """The example as a process the browser tests start, stop and start again."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.port = 0
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        """Start it (on the port it had before, after a stop); return its URL."""
        self.process = subprocess.Popen(
            [sys.executable, str(APP), "--port", str(self.port), *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.process.stdout is not None
        # Read the raw pipe: a buffered readline could wait for more.
        fd = self.process.stdout.fileno()
        text = b""
        while b"\n" not in text:
            ready, _, _ = select.select([fd], [], [], SERVER_TIMEOUT)
            assert ready, f"the tracker did not start within {SERVER_TIMEOUT} s"
            chunk = os.read(fd, 4096)
            assert chunk, f"the tracker exited before it listened: {self._errors()}"
            text += chunk
        self.url = text.decode().split()[-1]
        assert self.url.startswith("http://127.0.0.1:"), self.url
        self.port = int(self.url.rstrip("/").rsplit(":", 1)[1])
        return self.url

    def _errors(self) -> str:
        assert self.process is not None
        self.process.kill()
        _, errors = self.process.communicate()
        return errors.decode()

    def stop(self) -> None:
        """SIGTERM, then check that it exited with status 0 and no traceback."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        _, errors = self.process.communicate(timeout=SERVER_TIMEOUT)
        assert self.process.returncode == 0, errors.decode()
        assert b"Traceback" not in errors, errors.decode()
        self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.communicate()
        self.process = None


@contextmanager
def serving(*args: str) -> Iterator[Server]:
    """The example on a free port, stopped with SIGTERM and checked on the way out."""
    server = Server(*args)
    server.start()
    try:
        yield server
        if server.process is not None:
            server.stop()
    finally:
        server.kill()


@contextmanager
def redis_prefix() -> Iterator[str]:
    """A Redis key prefix of the caller's alone, its keys deleted afterwards."""
    prefix = f"tracker-test-{secrets.token_hex(6)}"
    try:
        yield prefix
    finally:
        with redis.Redis.from_url(REDIS_URL, socket_timeout=5) as client:
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                client.delete(*keys)


#: Runs in another process: changes the data in the SQLite file and publishes through
#: the example's domain module, on a hub of its own on the same Redis and prefix.
PUBLISHER = """
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
from issue_tracker import events
from issue_tracker.store import Store
from roomcast import Hub
from roomcast.backends.redis import RedisBackend

async def main(db, redis_url, prefix, actor, steps):
    store = Store(db)
    async with Hub(backend=RedisBackend(redis_url, prefix=prefix),
                   namespaces=events.NAMESPACES) as hub:
        for step in steps:
            if step["do"] == "create":
                issue = store.create_issue(step["team"], step["title"], actor)
                await events.issue_created(hub, store, issue, actor=actor)
            elif step["do"] == "comment":
                issue = store.issue(step["issue"])
                comment = store.add_comment(issue["id"], actor, step["body"])
                await events.comment_created(hub, store, issue, comment, actor=actor)
            elif step["do"] == "update":
                issue = store.update_issue(step["issue"], step["changes"])
                await events.issue_updated(hub, store, issue, list(step["changes"]), actor=actor)
    store.close()

asyncio.run(main(*sys.argv[2:6], json.loads(sys.argv[6])))
"""


def publish_elsewhere(db: Path, prefix: str, actor: str, steps: list[dict[str, Any]]) -> None:
    """Run ``steps`` in another process, through the example's store and domain module."""
    subprocess.run(
        [
            sys.executable,
            "-c",
            PUBLISHER,
            str(EXAMPLE.parent),
            str(db),
            REDIS_URL,
            prefix,
            actor,
            json.dumps(steps),
        ],
        check=True,
        timeout=SERVER_TIMEOUT,
    )
