"""Presence across nodes without ghosts: entries held by per-node leases.

A node killed with SIGKILL (a subprocess) leaves entries behind; within the
lease they disappear, and every member on the live nodes gets exactly one
``presence.leave`` for each.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import Process

from roomcast import Hub, RoomOptions
from roomcast.backends import PresenceEntry
from roomcast.backends.redis import RedisBackend
from roomcast.testing import TestClient

from .conftest import REDIS_URL, connect, hubs_on

pytestmark = pytest.mark.anyio

TIMEOUT = 10
LEASE = 1.5
ROOM = "lobby:main"

#: A node that joins a room and is then killed: no leave, no cleanup.
DEAD_NODE = """
import asyncio, sys
from roomcast.backends import PresenceEntry
from roomcast.backends.redis import RedisBackend

async def main() -> None:
    backend = RedisBackend(sys.argv[1], prefix=sys.argv[2], presence_lease=float(sys.argv[3]))
    await backend.start(lambda kind, key, publication: None)
    for client_id in ("dead-1", "dead-2"):
        entry = PresenceEntry(client_id, "u-dead", {"tab": client_id})
        await backend.presence_add(sys.argv[4], entry)
    print("ready", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def nodes(prefix: str, count: int) -> AbstractAsyncContextManager[list[Hub]]:
    return hubs_on(
        lambda: RedisBackend(REDIS_URL, prefix=prefix, presence_lease=LEASE),
        count,
        {"lobby": RoomOptions(presence=True)},
    )


async def members(client: TestClient) -> list[dict[str, Any]]:
    reply = await client.request({"action": "presence", "room": ROOM})
    assert reply["ok"], reply
    found: list[dict[str, Any]] = reply["payload"]["members"]
    return found


def by_user(found: list[dict[str, Any]]) -> dict[str, set[str]]:
    grouped: dict[str, set[str]] = {}
    for member in found:
        grouped.setdefault(member["userId"], set()).add(member["clientId"])
    return grouped


@asynccontextmanager
async def dead_node(prefix: str) -> AsyncIterator[Process]:
    """A node in another process, with two entries in ``ROOM``, until killed."""
    command = [sys.executable, "-c", DEAD_NODE, REDIS_URL, prefix, str(LEASE), ROOM]
    async with await anyio.open_process(command, stdout=subprocess.PIPE) as process:
        try:
            assert process.stdout is not None
            with anyio.fail_after(TIMEOUT):
                line = b""
                while not line.endswith(b"\n"):
                    line += await process.stdout.receive()
            assert line == b"ready\n"
            yield process
        finally:
            if process.returncode is None:
                process.kill()
            with anyio.CancelScope(shield=True), anyio.fail_after(TIMEOUT):
                await process.wait()


async def test_a_killed_nodes_entries_leave_within_the_lease_exactly_once(prefix: str) -> None:
    async with (
        nodes(prefix, 2) as hubs,
        anyio.create_task_group() as tasks,
        AsyncExitStack() as stack,
        dead_node(prefix) as process,
    ):
        watchers = []
        for n, hub in enumerate(hubs):
            watcher = await stack.enter_async_context(connect(hub, f"u{n}", tasks))
            await watcher.subscribe(ROOM)
            watchers.append(watcher)
        # Two tabs of one user are one user with two connections.
        listed = by_user(await members(watchers[0]))
        assert listed["u-dead"] == {"dead-1", "dead-2"}
        assert set(listed) == {"u-dead", "u0", "u1"}

        process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        for watcher in watchers:
            left = set()
            for _ in range(2):
                event = await watcher.receive_event("presence.leave")
                assert event["room"] == ROOM
                assert event["payload"]["userId"] == "u-dead"
                left.add(event["payload"]["clientId"])
            assert left == {"dead-1", "dead-2"}
        # Gone within the lease (and a little scheduling on a busy machine).
        assert time.monotonic() - killed_at < LEASE + 0.5
        assert set(by_user(await members(watchers[1]))) == {"u0", "u1"}
        # Exactly once: no second leave from the other live node, or later.
        await anyio.sleep(LEASE)
        for watcher in watchers:
            extra = [f for f in watcher.drain() if f.get("type") == "presence.leave"]
            assert extra == []


async def test_live_entries_are_held_past_the_lease_and_leave_once_when_they_leave(
    prefix: str,
) -> None:
    async with (
        nodes(prefix, 2) as hubs,
        anyio.create_task_group() as tasks,
        AsyncExitStack() as stack,
    ):
        watcher = await stack.enter_async_context(connect(hubs[0], "w", tasks))
        await watcher.subscribe(ROOM)
        tabs = []
        for _ in range(2):
            tab = await stack.enter_async_context(connect(hubs[1], "u2", tasks))
            await tab.subscribe(ROOM)
            tabs.append(tab)
        await anyio.sleep(LEASE * 2)  # held again by the live node, never expired
        assert by_user(await members(watcher)) == {
            "w": {watcher.client_id},
            "u2": {tab.client_id for tab in tabs},
        }
        assert [f for f in watcher.drain() if f.get("type") == "presence.leave"] == []
        await tabs[0].unsubscribe(ROOM)
        event = await watcher.receive_event("presence.leave")
        assert event["payload"]["clientId"] == tabs[0].client_id
        await anyio.sleep(LEASE)  # removed for good: no lease runs out for it later
        assert [f for f in watcher.drain() if f.get("type") == "presence.leave"] == []
        assert by_user(await members(watcher))["u2"] == {tabs[1].client_id}


async def test_a_node_closed_without_cleanup_leaves_no_ghost(prefix: str) -> None:
    live = RedisBackend(REDIS_URL, prefix=prefix, presence_lease=LEASE)
    dying = RedisBackend(REDIS_URL, prefix=prefix, presence_lease=LEASE)
    got: list[Any] = []
    await live.start(lambda kind, key, publication: got.append(publication))
    try:
        await live.subscribe("room", ROOM)
        await dying.start(lambda kind, key, publication: None)
        await dying.presence_add(ROOM, PresenceEntry("ghost", "u9"))
        await live.presence_add(ROOM, PresenceEntry("alive", "u1"))
        await dying.aclose()  # its tasks stop, its entries stay behind
        assert {e.client_id for e in await live.presence(ROOM)} == {"ghost", "alive"}
        with anyio.fail_after(LEASE + 0.5):
            while not got:
                await anyio.sleep(0.02)
        assert [(p.type, p.user_id) for p in got] == [("presence.leave", "u9")]
        assert '"clientId":"ghost"' in got[0].payload_json
        assert [e.client_id for e in await live.presence(ROOM)] == ["alive"]
    finally:
        await live.aclose()
