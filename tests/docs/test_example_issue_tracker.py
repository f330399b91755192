"""The issue tracker example, run as its own process and driven over real HTTP and WebSocket."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from anyio.abc import Process
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin, Subprotocol

APP = Path(__file__).resolve().parents[2] / "examples" / "issue_tracker" / "app.py"
#: Seconds any one test may take, server start and stop included.
TIMEOUT = 20


@pytest.fixture
def anyio_backend() -> str:
    """The example runs on uvicorn (asyncio); its clients here run on asyncio too."""
    return "asyncio"


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
        request = urllib.request.Request(
            self.origin + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")

        def call() -> tuple[int, Any]:
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as exc:
                with exc:
                    return exc.code, json.loads(exc.read())

        return await anyio.to_thread.run_sync(call)

    async def login(self, user: str) -> str:
        status, body = await self.api("POST", "/api/login", {"user": user})
        assert status == 200
        token: str = body["token"]
        return token

    async def create_issue(self, token: str, team: str = "t1", title: str = "Crash") -> str:
        status, issue = await self.api("POST", f"/api/teams/{team}/issues", {"title": title}, token)
        assert status == 201
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
async def running(*args: str, capture_stderr: bool = False) -> AsyncIterator[Tracker]:
    """Start the example on a free port; it is killed on the way out if it still runs."""
    process = await anyio.open_process(
        [sys.executable, str(APP), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if capture_stderr else None,
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


@pytest.mark.anyio
async def test_team_members_receive_issues_created_over_rest() -> None:
    with anyio.fail_after(TIMEOUT):
        async with running() as tracker:
            alice, bob = await tracker.login("alice"), await tracker.login("bob")
            async with tracker.connect(bob) as peer:
                assert (await peer.subscribe("team:t1"))["team:t1"]["ok"] is True
                issue_id = await tracker.create_issue(alice, title="Crash on save")
                event = await peer.next("issue.created")
            assert event["room"] == "team:t1"
            assert event["payload"]["issue"]["id"] == issue_id
            assert event["payload"]["issue"]["title"] == "Crash on save"
            assert event["payload"]["by"] == "alice"
            # Server events carry no userId: that is how pages tell them apart.
            assert event["userId"] is None
            assert isinstance(event["offset"], int)


@pytest.mark.anyio
async def test_other_teams_are_refused_on_the_socket_and_over_rest() -> None:
    with anyio.fail_after(TIMEOUT):
        async with running() as tracker:
            alice, carol = await tracker.login("alice"), await tracker.login("carol")
            issue_id = await tracker.create_issue(alice)
            async with tracker.connect(carol) as peer:
                results = await peer.subscribe("team:t1", f"issue:{issue_id}", "team:t2")
                typing = await peer.request(
                    action="publish", room=f"issue:{issue_id}", type="typing", ephemeral=True
                )
            assert results["team:t1"]["error"]["code"] == "forbidden"
            assert results[f"issue:{issue_id}"]["error"]["code"] == "forbidden"
            assert results["team:t2"]["ok"] is True
            assert typing["error"]["code"] == "forbidden"
            for method, path in [
                ("GET", "/api/teams/t1/issues"),
                ("POST", "/api/teams/t1/issues"),
                ("GET", f"/api/issues/{issue_id}"),
                ("PATCH", f"/api/issues/{issue_id}"),
                ("POST", f"/api/issues/{issue_id}/comments"),
            ]:
                status, _ = await tracker.api(method, path, {"title": "x", "body": "x"}, carol)
                assert (method, path, status) == (method, path, 403)


@pytest.mark.anyio
async def test_comments_reach_everyone_viewing_the_issue() -> None:
    with anyio.fail_after(TIMEOUT):
        async with running() as tracker:
            alice, bob = await tracker.login("alice"), await tracker.login("bob")
            issue_id = await tracker.create_issue(alice)
            async with tracker.connect(bob) as peer:
                await peer.subscribe(f"issue:{issue_id}")
                status, _ = await tracker.api(
                    "POST", f"/api/issues/{issue_id}/comments", {"body": "<b>seen</b>"}, alice
                )
                assert status == 201
                event = await peer.next("comment.created")
            assert event["room"] == f"issue:{issue_id}"
            assert event["payload"]["comment"]["author"] == "alice"
            assert event["payload"]["comment"]["body"] == "<b>seen</b>"


@pytest.mark.anyio
async def test_assigning_an_issue_notifies_the_assignee_and_updates_both_rooms() -> None:
    with anyio.fail_after(TIMEOUT):
        async with running() as tracker:
            alice, bob = await tracker.login("alice"), await tracker.login("bob")
            issue_id = await tracker.create_issue(alice, title="Crash on save")
            async with tracker.connect(bob) as peer:
                await peer.subscribe("team:t1", f"issue:{issue_id}")
                status, issue = await tracker.api(
                    "PATCH", f"/api/issues/{issue_id}", {"assignee": "bob"}, alice
                )
                assert status == 200
                on_board = await peer.next("issue.updated", room="team:t1")
                on_issue = await peer.next("issue.updated", room=f"issue:{issue_id}")
                notification = await peer.next("notification")
            assert issue["assignee"] == "bob"
            assert on_board["id"] == on_issue["id"]
            assert on_board["payload"] == on_issue["payload"]
            assert on_board["payload"]["changes"] == ["assignee"]
            assert notification["room"] is None
            assert notification["payload"]["issue"]["id"] == issue_id
            assert "alice assigned you" in notification["payload"]["text"]


@pytest.mark.anyio
async def test_assignees_must_belong_to_the_issues_team() -> None:
    with anyio.fail_after(TIMEOUT):
        async with running() as tracker:
            alice = await tracker.login("alice")
            issue_id = await tracker.create_issue(alice)
            path = f"/api/issues/{issue_id}"
            status, body = await tracker.api("PATCH", path, {"assignee": "carol"}, alice)
            assert status == 400
            assert "member" in body["error"]


@pytest.mark.anyio
async def test_stats_show_the_connected_clients() -> None:
    with anyio.fail_after(TIMEOUT):
        async with running() as tracker:
            alice, bob = await tracker.login("alice"), await tracker.login("bob")
            issue_id = await tracker.create_issue(alice)
            async with tracker.connect(alice) as first, tracker.connect(bob) as second:
                for peer in (first, second):
                    await peer.subscribe(f"issue:{issue_id}")
                status, stats = await tracker.api("GET", "/api/stats", token=alice)
            assert status == 200
            assert stats["clients"] == 2
            assert stats["members"] == {f"issue:{issue_id}": 2}
            assert stats["connections_total"] == 2
            assert (await tracker.api("GET", "/api/stats"))[0] == 401


@pytest.mark.anyio
async def test_typing_reaches_other_viewers_but_not_the_typist() -> None:
    with anyio.fail_after(TIMEOUT):
        async with running() as tracker:
            alice, bob = await tracker.login("alice"), await tracker.login("bob")
            issue_id = await tracker.create_issue(alice)
            room = f"issue:{issue_id}"
            async with tracker.connect(alice) as typist, tracker.connect(bob) as viewer:
                for peer in (typist, viewer):
                    await peer.subscribe(room)
                reply = await typist.request(
                    action="publish", room=room, type="typing", payload={}, ephemeral=True
                )
                assert reply["ok"] is True
                event = await viewer.next("typing")
                assert not [frame for frame in await typist.drain() if frame["type"] == "typing"]
            assert (event["room"], event["userId"]) == (room, "alice")
            assert "offset" not in event  # ephemeral: never replayed from history


@pytest.mark.anyio
async def test_presence_lists_who_views_an_issue() -> None:
    with anyio.fail_after(TIMEOUT):
        async with running() as tracker:
            alice, bob = await tracker.login("alice"), await tracker.login("bob")
            issue_id = await tracker.create_issue(alice)
            room = f"issue:{issue_id}"
            async with tracker.connect(alice) as first:
                await first.subscribe(room)
                async with tracker.connect(bob) as second:
                    await second.subscribe(room)
                    # Her own join comes first: she subscribed first.
                    joins = [await first.next("presence.join", room=room) for _ in "ab"]
                    reply = await first.request(action="presence", room=room)
                left = await first.next("presence.leave", room=room)
            assert [join["payload"]["userId"] for join in joins] == ["alice", "bob"]
            assert sorted(m["userId"] for m in reply["payload"]["members"]) == ["alice", "bob"]
            assert left["payload"]["userId"] == "bob"


@pytest.mark.anyio
async def test_a_reconnecting_page_recovers_what_it_missed() -> None:
    with anyio.fail_after(TIMEOUT):
        async with running() as tracker:
            alice, bob = await tracker.login("alice"), await tracker.login("bob")
            async with tracker.connect(bob) as peer:
                position = (await peer.subscribe("team:t1"))["team:t1"]
            missed = [await tracker.create_issue(alice, title=f"missed {n}") for n in range(2)]
            since = {"team:t1": {"offset": position["offset"], "epoch": position["epoch"]}}
            async with tracker.connect(bob) as peer:
                result = (await peer.subscribe("team:t1", since=since))["team:t1"]
                replayed = [frame for frame in peer.backlog if frame["type"] == "issue.created"]
            assert result["recovered"] is True
            assert [frame["payload"]["issue"]["id"] for frame in replayed] == missed


@pytest.mark.anyio
async def test_a_page_that_cannot_recover_is_told_to_refetch() -> None:
    with anyio.fail_after(TIMEOUT):
        async with running() as tracker:
            alice, bob = await tracker.login("alice"), await tracker.login("bob")
            await tracker.create_issue(alice)
            since = {"team:t1": {"offset": 0, "epoch": "from-before-a-restart"}}
            async with tracker.connect(bob) as peer:
                result = (await peer.subscribe("team:t1", since=since))["team:t1"]
                replayed = [frame for frame in peer.backlog if frame["type"] == "issue.created"]
            assert result["recovered"] is False
            assert replayed == []
            status, issues = await tracker.api("GET", "/api/teams/t1/issues", token=bob)
            assert (status, len(issues)) == (200, 1)


@pytest.mark.anyio
async def test_logout_closes_every_connection_of_the_user() -> None:
    with anyio.fail_after(TIMEOUT):
        async with running() as tracker:
            alice, bob = await tracker.login("alice"), await tracker.login("bob")
            async with tracker.connect(alice) as tab, tracker.connect(bob) as other:
                status, body = await tracker.api("POST", "/api/logout", token=alice)
                assert (status, body) == (200, {"closed": 1})
                assert await tab.close_code() == 4001
                still = await other.request(action="subscribe", rooms=["team:t1"])
                assert still["ok"] is True


@pytest.mark.anyio
async def test_pages_from_other_origins_cannot_connect() -> None:
    with anyio.fail_after(TIMEOUT):
        async with running() as tracker:
            alice = await tracker.login("alice")
            with pytest.raises(InvalidStatus) as refused:
                async with tracker.connect(alice, origin="http://evil.example"):
                    pass
            assert refused.value.response.status_code == 403


@pytest.mark.anyio
async def test_an_expiring_token_is_replaced_on_the_live_connection() -> None:
    # Pages are warned a minute before expiry: a 62-second token is warned at once.
    with anyio.fail_after(TIMEOUT):
        async with running("--token-ttl", "62") as tracker:
            async with tracker.connect(await tracker.login("alice")) as peer:
                warning = await peer.next("token.expiring")
                reply = await peer.request(action="refresh", token=await tracker.login("alice"))
            assert warning["payload"]["expiresInMs"] <= 60_000
            assert reply["ok"] is True
            assert reply["payload"]["removed"] == []


@pytest.mark.anyio
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_a_signal_closes_clients_with_1001_and_exits_0(stop: signal.Signals) -> None:
    with anyio.fail_after(TIMEOUT):
        async with running(capture_stderr=True) as tracker:
            alice, bob = await tracker.login("alice"), await tracker.login("bob")
            async with tracker.connect(alice) as first, tracker.connect(bob) as second:
                await first.subscribe("team:t1")
                tracker.process.send_signal(stop)
                assert await first.close_frame() == (1001, "server shutting down")
                assert await second.close_frame() == (1001, "server shutting down")
            with anyio.fail_after(5):
                assert await tracker.process.wait() == 0
            assert tracker.process.stderr is not None
            errors = b"".join([chunk async for chunk in tracker.process.stderr]).decode()
            assert "Traceback" not in errors, errors


@pytest.mark.anyio
async def test_a_client_without_origin_connects_with_the_authorization_header() -> None:
    # What the tutorial tells scripts and services to do: they send no Origin.
    with anyio.fail_after(TIMEOUT):
        async with running() as tracker:
            alice = await tracker.login("alice")
            async with connect(
                "ws" + tracker.origin.removeprefix("http") + "/ws",
                subprotocols=[Subprotocol("roomcast.v1")],
                additional_headers={"Authorization": f"Bearer {alice}"},
                open_timeout=TIMEOUT,
            ) as websocket:
                ack = await Peer(websocket).next("connection.ack")
            assert ack["payload"]["userId"] == "alice"
