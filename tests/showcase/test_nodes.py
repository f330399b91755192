"""Several issue tracker nodes on one Redis: one token secret, so any node takes any token."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from .tracker import APP, REDIS_URL, TIMEOUT, Tracker, redis_prefix, running

SECRET_VARIABLE = "ROOMCAST_TRACKER_SECRET"


@pytest.fixture
def anyio_backend() -> str:
    """The example runs on uvicorn (asyncio); its clients here run on asyncio too."""
    return "asyncio"


async def output_of(tracker: Tracker) -> str:
    """Stop ``tracker`` with SIGTERM; what it wrote after the line with its URL."""
    tracker.process.send_signal(signal.SIGTERM)
    with anyio.fail_after(5):
        assert await tracker.process.wait() == 0
    assert tracker.process.stdout is not None
    assert tracker.process.stderr is not None
    written = [chunk async for chunk in tracker.process.stdout]
    written += [chunk async for chunk in tracker.process.stderr]
    return b"".join(written).decode()


@pytest.mark.anyio
async def test_nodes_sharing_a_secret_accept_each_others_tokens(tmp_path: Path) -> None:
    secret = secrets.token_urlsafe(48)
    db = str(tmp_path / "tracker.db")
    with redis_prefix() as prefix, anyio.fail_after(TIMEOUT * 2):
        options = ("--db", db, "--redis", REDIS_URL, "--redis-prefix", prefix)
        # One node takes it from the environment, the other from the command line.
        async with (
            running(*options, capture_stderr=True, env={SECRET_VARIABLE: secret}) as node_a,
            running(*options, "--secret", secret, capture_stderr=True) as node_b,
        ):
            alice, bob = await node_a.login("alice"), await node_a.login("bob")
            # REST: node B reads and writes with node A's tokens.
            status, issues = await node_b.api("GET", "/api/v1/teams/t1/issues", token=bob)
            assert (status, type(issues)) == (200, list)
            # WebSocket: node B acknowledges node A's token, and its client is sent what
            # node A publishes.
            async with node_b.connect(bob) as peer:
                assert (await peer.subscribe("team:t1"))["team:t1"]["ok"] is True
                issue_id = await node_a.create_issue(alice, title="Filed on node A")
                event = await peer.next("issue.created")
                status, issue = await node_b.api("GET", f"/api/v1/issues/{issue_id}", token=bob)
            assert event["payload"]["issue"]["id"] == issue_id
            assert event["userId"] == "alice"
            assert (status, issue["title"]) == (200, "Filed on node A")
            # The secret is never printed or logged.
            for node in (node_a, node_b):
                assert secret not in node.url
                assert secret not in await output_of(node)


@pytest.mark.anyio
async def test_nodes_without_a_shared_secret_refuse_each_others_tokens() -> None:
    with anyio.fail_after(TIMEOUT * 2):
        async with running() as node_a, running() as node_b:
            bob = await node_a.login("bob")
            status, body = await node_b.api("GET", "/api/v1/teams/t1/issues", token=bob)
            assert (status, body) == (401, {"error": "invalid or expired token"})


def test_a_short_secret_is_refused_without_being_shown() -> None:
    secret = "too-short-" + secrets.token_hex(4)
    for args, env in [(["--secret", secret], {}), ([], {SECRET_VARIABLE: secret})]:
        result = subprocess.run(
            [sys.executable, str(APP), "--port", "0", *args],
            capture_output=True,
            env={**os.environ, **env},
            timeout=TIMEOUT,
            check=False,
        )
        errors = result.stderr.decode()
        assert result.returncode == 2, errors
        assert "must be at least 32 bytes long" in errors
        assert secret not in errors + result.stdout.decode()
    # Nor does --help show the one in the environment.
    secret = secrets.token_urlsafe(48)
    shown = subprocess.run(
        [sys.executable, str(APP), "--help"],
        capture_output=True,
        env={**os.environ, SECRET_VARIABLE: secret},
        timeout=TIMEOUT,
        check=True,
    )
    assert SECRET_VARIABLE in shown.stdout.decode()
    assert secret not in shown.stdout.decode()
