"""The issue tracker example, run as its own process and driven over real HTTP and WebSocket."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from .tracker import APP, REDIS_URL, TIMEOUT, Peer, publish_elsewhere, redis_prefix, running


@pytest.fixture
def anyio_backend() -> str:
    """The example runs on uvicorn (asyncio); its clients here run on asyncio too."""
    return "asyncio"


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
            assert event["payload"]["issue"]["key"].startswith("PLA-")
            # Server events carry the user who acted.
            assert event["userId"] == "alice"
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
                    action="publish", room=f"issue:{issue_id}", type="user.typing", ephemeral=True
                )
            assert results["team:t1"]["error"]["code"] == "forbidden"
            assert results[f"issue:{issue_id}"]["error"]["code"] == "forbidden"
            assert results["team:t2"]["ok"] is True
            assert typing["error"]["code"] == "forbidden"
            for method, path in [
                ("GET", "/api/v1/teams/t1/issues"),
                ("DELETE", f"/api/v1/issues/{issue_id}"),
                ("POST", f"/api/v1/issues/{issue_id}/archive"),
                ("PATCH", "/api/v1/projects/p1"),
                ("PATCH", "/api/v1/cycles/c1"),
                ("POST", "/api/v1/teams/t1/issues"),
                ("GET", f"/api/v1/issues/{issue_id}"),
                ("PATCH", f"/api/v1/issues/{issue_id}"),
                ("POST", f"/api/v1/issues/{issue_id}/comments"),
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
                    "POST", f"/api/v1/issues/{issue_id}/comments", {"body": "<b>seen</b>"}, alice
                )
                assert status == 201
                event = await peer.next("comment.created")
            assert event["room"] == f"issue:{issue_id}"
            assert event["userId"] == "alice"
            assert event["payload"]["comment"]["author"] == "alice"
            assert event["payload"]["comment"]["body"] == "<b>seen</b>"


@pytest.mark.anyio
async def test_assigning_an_issue_notifies_the_assignee_and_updates_both_rooms() -> None:
    with anyio.fail_after(TIMEOUT):
        async with running() as tracker:
            alice, bob = await tracker.login("alice"), await tracker.login("bob")
            issue_id = await tracker.create_issue(alice, title="Crash on save")
            async with tracker.connect(bob) as peer:
                await peer.subscribe("team:t1", f"issue:{issue_id}", "user:bob")
                status, issue = await tracker.api(
                    "PATCH", f"/api/v1/issues/{issue_id}", {"assignee": "bob"}, alice
                )
                assert status == 200
                on_board = await peer.next("issue.updated", room="team:t1")
                on_issue = await peer.next("issue.updated", room=f"issue:{issue_id}")
                notification = await peer.next("notification.created")
            assert issue["assignee"] == "bob"
            assert on_board["id"] == on_issue["id"]
            assert on_board["payload"] == on_issue["payload"]
            assert on_board["payload"]["changes"] == ["assignee"]
            assert on_board["userId"] == "alice"
            assert (notification["room"], notification["userId"]) == ("user:bob", "alice")
            note = notification["payload"]["notification"]
            assert (note["kind"], note["issueId"], note["actor"]) == ("assigned", issue_id, "alice")
            assert note["title"] == "Crash on save"
            # Kept, for a page opened later.
            status, kept = await tracker.api("GET", "/api/v1/notifications", token=bob)
            assert (status, [n["id"] for n in kept]) == (200, [note["id"]])


@pytest.mark.anyio
async def test_assignees_must_belong_to_the_issues_team() -> None:
    with anyio.fail_after(TIMEOUT):
        async with running() as tracker:
            alice = await tracker.login("alice")
            issue_id = await tracker.create_issue(alice)
            path = f"/api/v1/issues/{issue_id}"
            status, body = await tracker.api("PATCH", path, {"assignee": "carol"}, alice)
            assert status == 400
            assert "member" in body["error"]


@pytest.mark.anyio
async def test_stats_show_the_connected_clients_to_admins_only() -> None:
    with anyio.fail_after(TIMEOUT):
        async with running() as tracker:
            alice, bob = await tracker.login("alice"), await tracker.login("bob")
            assert (await tracker.api("GET", "/api/v1/ws/stats", token=bob))[0] == 403
            issue_id = await tracker.create_issue(alice)
            async with tracker.connect(alice) as first, tracker.connect(bob) as second:
                for peer in (first, second):
                    await peer.subscribe(f"issue:{issue_id}")
                status, stats = await tracker.api("GET", "/api/v1/ws/stats", token=alice)
            assert status == 200
            assert stats["clients"] == 2
            assert stats["members"] == {f"issue:{issue_id}": 2}
            assert stats["connections_total"] == 2
            assert (await tracker.api("GET", "/api/v1/ws/stats"))[0] == 401


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
                    action="publish",
                    room=room,
                    type="user.typing",
                    payload={"typing": True},
                    ephemeral=True,
                )
                assert reply["ok"] is True
                event = await viewer.next("user.typing")
                typed = [frame for frame in await typist.drain() if frame["type"] == "user.typing"]
                assert not typed
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
            issue_id = await tracker.create_issue(alice)
            since = {"team:t1": {"offset": 0, "epoch": "from-before-a-restart"}}
            async with tracker.connect(bob) as peer:
                result = (await peer.subscribe("team:t1", since=since))["team:t1"]
                replayed = [frame for frame in peer.backlog if frame["type"] == "issue.created"]
            assert result["recovered"] is False
            assert replayed == []
            status, issues = await tracker.api("GET", "/api/v1/teams/t1/issues", token=bob)
            assert status == 200
            assert issue_id in [issue["id"] for issue in issues]


@pytest.mark.anyio
async def test_logout_closes_every_connection_of_the_user() -> None:
    with anyio.fail_after(TIMEOUT):
        async with running() as tracker:
            alice, bob = await tracker.login("alice"), await tracker.login("bob")
            async with tracker.connect(alice) as tab, tracker.connect(bob) as other:
                status, body = await tracker.api("POST", "/api/v1/logout", token=alice)
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
    # Pages are warned at 80 % of a token's lifetime: 8 seconds into a 10-second one.
    with anyio.fail_after(TIMEOUT):
        async with running("--token-ttl", "10") as tracker:
            async with tracker.connect(await tracker.login("alice")) as peer:
                warning = await peer.next("token.expiring")
                reply = await peer.request(action="refresh", token=await tracker.login("alice"))
            assert 1_000 <= warning["payload"]["expiresInMs"] <= 2_000
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


@pytest.mark.anyio
async def test_every_change_is_published_to_its_rooms_with_the_acting_user() -> None:
    with anyio.fail_after(TIMEOUT):
        async with running() as tracker:
            alice, bob = await tracker.login("alice"), await tracker.login("bob")
            issue_id = await tracker.create_issue(alice, title="Flaky deploy")
            async with tracker.connect(bob) as peer:
                await peer.subscribe("team:t1", f"issue:{issue_id}", "project:p1", "cycle:c1")
                _, comment = await tracker.api(
                    "POST", f"/api/v1/issues/{issue_id}/comments", {"body": "first"}, alice
                )
                edit = await tracker.api(
                    "PATCH", f"/api/v1/comments/{comment['id']}", {"body": "second"}, alice
                )
                delete = await tracker.api(
                    "DELETE", f"/api/v1/comments/{comment['id']}", None, alice
                )
                project = await tracker.api(
                    "PATCH", "/api/v1/projects/p1", {"state": "paused"}, alice
                )
                cycle = await tracker.api("PATCH", "/api/v1/cycles/c1", {"goal": "Ship it"}, alice)
                archive = await tracker.api(
                    "POST", f"/api/v1/issues/{issue_id}/archive", None, alice
                )
                gone = await tracker.api("DELETE", f"/api/v1/issues/{issue_id}", None, alice)
                assert [edit[0], delete[0], project[0], cycle[0], archive[0], gone[0]] == [
                    200, 204, 200, 200, 200, 204,
                ]  # fmt: skip
                expected = [
                    ("comment.created", "team:t1"),
                    ("comment.created", f"issue:{issue_id}"),
                    ("comment.updated", "team:t1"),
                    ("comment.updated", f"issue:{issue_id}"),
                    ("comment.deleted", "team:t1"),
                    ("comment.deleted", f"issue:{issue_id}"),
                    ("project.updated", "project:p1"),
                    ("project.updated", "team:t1"),
                    ("cycle.updated", "cycle:c1"),
                    ("cycle.updated", "team:t1"),
                    ("issue.archived", "team:t1"),
                    ("issue.archived", f"issue:{issue_id}"),
                    ("issue.deleted", "team:t1"),
                    ("issue.deleted", f"issue:{issue_id}"),
                ]
                frames = [await peer.next(type_, room=room) for type_, room in expected]
            assert {frame["userId"] for frame in frames} == {"alice"}
            assert frames[2]["payload"]["comment"]["body"] == "second"
            assert frames[4]["payload"] == {"commentId": comment["id"], "issueId": issue_id}
            assert frames[6]["payload"]["project"]["state"] == "paused"
            assert frames[6]["payload"]["changes"] == ["state"]
            assert frames[8]["payload"]["cycle"]["goal"] == "Ship it"
            assert frames[10]["payload"]["issue"]["archived"] is True
            assert frames[12]["payload"]["issueId"] == issue_id
            status, _ = await tracker.api("GET", f"/api/v1/issues/{issue_id}", token=bob)
            assert status == 404


@pytest.mark.anyio
async def test_the_workspace_feed_names_issues_by_key_for_every_member() -> None:
    # carol is in another team: she sees that something happened, not what.
    with anyio.fail_after(TIMEOUT):
        async with running() as tracker:
            alice, carol = await tracker.login("alice"), await tracker.login("carol")
            async with tracker.connect(carol) as peer:
                results = await peer.subscribe("workspace:w1", "workspace:w2")
                issue_id = await tracker.create_issue(alice, title="Secret roadmap item")
                event = await peer.next("activity.created")
            assert results["workspace:w1"]["ok"] is True
            assert results["workspace:w2"]["error"]["code"] == "forbidden"
            assert (event["room"], event["userId"]) == ("workspace:w1", "alice")
            entry = event["payload"]["entry"]
            assert (entry["verb"], entry["issueId"], entry["actor"]) == (
                "created",
                issue_id,
                "alice",
            )
            assert "Secret" not in str(event)
            status, feed = await tracker.api("GET", "/api/v1/activity", token=carol)
            assert (status, feed[-1]) == (200, entry)


@pytest.mark.anyio
async def test_a_mention_notifies_the_member_it_names() -> None:
    with anyio.fail_after(TIMEOUT):
        async with running() as tracker:
            alice, bob = await tracker.login("alice"), await tracker.login("bob")
            issue_id = await tracker.create_issue(alice)
            async with tracker.connect(bob) as peer:
                await peer.subscribe("user:bob")
                for body in ("@carol is in another team", "@alice talks to herself", "@bob look"):
                    status, _ = await tracker.api(
                        "POST", f"/api/v1/issues/{issue_id}/comments", {"body": body}, alice
                    )
                    assert status == 201
                event = await peer.next("notification.created")
                others = [f for f in await peer.drain() if f["type"] == "notification.created"]
            note = event["payload"]["notification"]
            assert (note["kind"], note["issueId"], note["actor"]) == (
                "mentioned",
                issue_id,
                "alice",
            )
            assert others == []


@pytest.mark.anyio
async def test_only_a_comments_author_edits_it_and_only_clients_typing_is_published() -> None:
    with anyio.fail_after(TIMEOUT):
        async with running() as tracker:
            alice, bob = await tracker.login("alice"), await tracker.login("bob")
            issue_id = await tracker.create_issue(alice)
            _, comment = await tracker.api(
                "POST", f"/api/v1/issues/{issue_id}/comments", {"body": "mine"}, alice
            )
            path = f"/api/v1/comments/{comment['id']}"
            assert (await tracker.api("PATCH", path, {"body": "theirs"}, bob))[0] == 403
            assert (await tracker.api("DELETE", path, None, bob))[0] == 403
            async with tracker.connect(bob) as peer:
                forged = await peer.request(
                    action="publish", room=f"issue:{issue_id}", type="comment.created", payload={}
                )
                board = await peer.request(
                    action="publish", room="team:t1", type="user.typing", ephemeral=True
                )
            assert forged["error"]["code"] == "forbidden"
            assert board["error"]["code"] == "forbidden"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"status": "someday"}, "status must be one of"),
        ({"priority": 7}, "priority must be one of"),
        ({"project": "p3"}, "no such project in the issue's team"),
        ({"owner": "bob"}, "issues have no field 'owner'"),
        ({"title": "  "}, "title must be 1 to 200 characters"),
    ],
)
async def test_bad_issue_changes_are_refused_with_a_reason(body: object, error: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with running() as tracker:
            alice = await tracker.login("alice")
            issue_id = await tracker.create_issue(alice)
            status, reply = await tracker.api("PATCH", f"/api/v1/issues/{issue_id}", body, alice)
            assert (status, reply["error"][: len(error)]) == (400, error)


@pytest.mark.anyio
async def test_an_sqlite_file_keeps_the_data_across_a_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "tracker.db")
    with anyio.fail_after(TIMEOUT * 2):
        async with running("--db", db) as tracker:
            alice = await tracker.login("alice")
            issue_id = await tracker.create_issue(alice, title="Survives restarts")
            await tracker.api("POST", f"/api/v1/issues/{issue_id}/comments", {"body": "hi"}, alice)
        async with running("--db", db) as tracker:
            status, issue = await tracker.api(
                "GET", f"/api/v1/issues/{issue_id}", token=await tracker.login("alice")
            )
        async with running() as tracker:
            alice = await tracker.login("alice")
            elsewhere = await tracker.api("GET", f"/api/v1/issues/{issue_id}", token=alice)
    assert (status, issue["title"]) == (200, "Survives restarts")
    assert [comment["body"] for comment in issue["comments"]] == ["hi"]
    # Without --db nothing is kept: the seeded issues alone.
    assert elsewhere[0] == 404


@pytest.mark.anyio
async def test_on_redis_another_process_publishes_to_the_apps_clients(tmp_path: Path) -> None:
    db = tmp_path / "tracker.db"
    with redis_prefix() as prefix, anyio.fail_after(TIMEOUT):
        options = ("--db", str(db), "--redis", REDIS_URL, "--redis-prefix", prefix)
        async with running(*options) as tracker:
            async with tracker.connect(await tracker.login("bob")) as peer:
                await peer.subscribe("team:t1")
                await anyio.to_thread.run_sync(
                    publish_elsewhere,
                    db,
                    prefix,
                    "dana",
                    [{"do": "create", "team": "t1", "title": "Filed by a worker"}],
                )
                event = await peer.next("issue.created")
    assert event["userId"] == "dana"
    assert event["payload"]["issue"]["title"] == "Filed by a worker"
    assert isinstance(event["offset"], int)


@pytest.mark.anyio
async def test_an_archived_issue_is_read_only() -> None:
    with anyio.fail_after(TIMEOUT):
        async with running() as tracker:
            alice = await tracker.login("alice")
            issue_id = await tracker.create_issue(alice, title="Old news")
            _, comment = await tracker.api(
                "POST", f"/api/v1/issues/{issue_id}/comments", {"body": "before"}, alice
            )
            status, archived = await tracker.api(
                "POST", f"/api/v1/issues/{issue_id}/archive", None, alice
            )
            assert (status, archived["archived"]) == (200, True)
            async with tracker.connect(alice) as peer:
                await peer.subscribe("team:t1", f"issue:{issue_id}")
                refused = [
                    await tracker.api(
                        "PATCH", f"/api/v1/issues/{issue_id}", {"status": "done"}, alice
                    ),
                    await tracker.api(
                        "POST", f"/api/v1/issues/{issue_id}/comments", {"body": "after"}, alice
                    ),
                    await tracker.api(
                        "PATCH", f"/api/v1/comments/{comment['id']}", {"body": "edited"}, alice
                    ),
                    await tracker.api("DELETE", f"/api/v1/comments/{comment['id']}", None, alice),
                ]
                assert [status for status, _ in refused] == [409, 409, 409, 409]
                assert all("is archived" in str(body) for _, body in refused)
                # Nothing changed, so nothing was published.
                assert [
                    f["type"]
                    for f in await peer.drain()
                    if f["type"].startswith(("issue.", "comment."))
                ] == []
            status, issue = await tracker.api("GET", f"/api/v1/issues/{issue_id}", None, alice)
            assert status == 200
            assert (issue["status"], issue["version"]) == (archived["status"], archived["version"])
            assert [c["body"] for c in issue["comments"]] == ["before"]
            # Reading it and deleting it remain possible.
            status, _ = await tracker.api("DELETE", f"/api/v1/issues/{issue_id}", None, alice)
            assert status == 204


def test_a_busy_port_is_one_clear_line_and_status_1() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, str(APP), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"127.0.0.1:{port}" in lines[0]
    assert "already in use" in lines[0]
    assert "--port" in lines[0]
    assert "Traceback" not in done.stderr
