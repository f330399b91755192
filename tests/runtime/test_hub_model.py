"""Delivery properties of the hub: a model of membership, and replay racing live publishes."""

from __future__ import annotations

import gc
import sys
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roomcast import History, Hub, MemoryBackend, Publication, RoomOptions, StreamPosition
from roomcast.backends import ChannelKind, HistoryResult
from roomcast.testing import TestClient

ROOMS = ("team:a", "team:b", "room:c")
CLIENTS = 3

# An operation on the model: (kind, client index, room index).
operations = st.lists(
    st.tuples(
        st.sampled_from(["connect", "disconnect", "join", "leave", "publish"]),
        st.integers(0, CLIENTS - 1),
        st.integers(0, len(ROOMS) - 1),
    ),
    max_size=40,
)


async def _run_model(ops: list[tuple[str, int, int]]) -> None:
    """Drive a real hub and a plain model side by side, then compare deliveries."""
    options = RoomOptions(history=History(size=1000, ttl=600))
    async with Hub(namespaces={"team": options}) as hub, anyio.create_task_group() as tg:
        clients: dict[int, TestClient] = {}
        member_of: dict[int, set[str]] = {}
        expected: dict[int, list[tuple[str, int]]] = {}
        received: dict[int, list[tuple[str, int]]] = {}
        serial = 0

        def collect(index: int) -> None:
            for frame in clients[index].drain():
                if frame.get("type") == "model.event":
                    received[index].append((frame["room"], frame["payload"]))

        for kind, index, room_index in ops:
            room = ROOMS[room_index]
            client = clients.get(index)
            if kind == "connect" and client is None:
                client = TestClient(hub, task_group=tg)
                await client.__aenter__()
                clients[index] = client
                member_of[index] = set()
                expected.setdefault(index, [])
                received.setdefault(index, [])
            elif client is None:
                continue
            elif kind == "disconnect":
                collect(index)
                await client.__aexit__(None, None, None)
                del clients[index]
            elif kind == "join":
                await client.subscribe(room)
                member_of[index].add(room)
            elif kind == "leave":
                await client.request({"action": "unsubscribe", "rooms": [room]})
                member_of[index].discard(room)
            elif kind == "publish":
                serial += 1
                await hub.publish(room, "model.event", serial)
                for other, rooms in member_of.items():
                    if other in clients and room in rooms:
                        expected[other].append((room, serial))
        for index, client in list(clients.items()):
            await client.request({"action": "ping"})
            collect(index)
            await client.__aexit__(None, None, None)
        # Every member got every message of its rooms, in order; nobody else got any.
        assert received == expected
        stats = hub.stats()
        assert stats.clients == 0
        assert stats.rooms == 0


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations)
def test_model_of_membership_and_delivery(backend: str, ops: list[tuple[str, int, int]]) -> None:
    anyio.run(_run_model, ops, backend=backend)


class YieldingBackend(MemoryBackend):
    """A memory backend whose reads yield to other tasks, as a network backend's would."""

    async def subscribe(self, kind: ChannelKind, key: str) -> None:
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        await super().subscribe(kind, key)

    async def history(
        self,
        room: str,
        since: StreamPosition | None,
        history: History,
        *,
        limit: int | None = None,
    ) -> HistoryResult:
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        result = await super().history(room, since, history, limit=limit)
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        return result

    async def publish(
        self, kind: ChannelKind, key: str, publication: Publication, history: History | None
    ) -> Publication:
        await anyio.lowlevel.checkpoint()
        return await super().publish(kind, key, publication, history)


@pytest.mark.anyio
async def test_recovery_racing_live_publishes_loses_and_repeats_nothing() -> None:
    total = 300
    options = RoomOptions(history=History(size=1000, ttl=600))
    async with Hub(backend=YieldingBackend(), namespaces={"team": options}) as hub:
        async with TestClient(hub) as first:
            epoch = (await first.subscribe("team:t1"))["team:t1"]["epoch"]
        results: list[list[int]] = []
        done = anyio.Event()
        published = 0

        async def publisher() -> None:
            nonlocal published
            for n in range(1, total + 1):
                await hub.publish("team:t1", "seq.item", n)
                published = n
            done.set()

        async def late_subscriber(after: int) -> None:
            while published < after:
                await anyio.lowlevel.checkpoint()
            async with TestClient(hub) as client:
                since = {"team:t1": {"offset": after // 2, "epoch": epoch}}
                result = await client.subscribe("team:t1", since=since)
                assert result["team:t1"]["recovered"] is True
                await done.wait()
                await client.request({"action": "ping"})
                offsets = [f["offset"] for f in client.drain() if f.get("type") == "seq.item"]
                results.append(offsets)

        async with anyio.create_task_group() as tg:
            for after in (10, 50, 120, 200, 280):
                tg.start_soon(late_subscriber, after)
            tg.start_soon(publisher)
        assert len(results) == 5
        for offsets in results:
            start = offsets[0]
            assert offsets == list(range(start, total + 1))


@pytest.mark.anyio
async def test_a_join_with_history_racing_live_publishes_loses_and_repeats_nothing() -> None:
    total, last = 300, 20
    options = RoomOptions(history=History(size=1000, ttl=600))
    async with Hub(backend=YieldingBackend(), namespaces={"team": options}) as hub:
        results: list[tuple[int, list[int], dict[str, Any]]] = []
        done = anyio.Event()
        published = 0

        async def publisher() -> None:
            nonlocal published
            for n in range(1, total + 1):
                await hub.publish("team:t1", "seq.item", n)
                published = n
            done.set()

        async def fresh_page(after: int) -> None:
            while published < after:
                await anyio.lowlevel.checkpoint()
            async with TestClient(hub) as client:
                seen = published
                result = await client.subscribe("team:t1", history={"team:t1": last})
                await done.wait()
                await client.request({"action": "ping"})
                offsets = [f["offset"] for f in client.drain() if f.get("type") == "seq.item"]
                results.append((seen, offsets, result["team:t1"]))

        async with anyio.create_task_group() as tg:
            for after in (0, 5, 50, 120, 200, 280):
                tg.start_soon(fresh_page, after)
            tg.start_soon(publisher)
        assert len(results) == 6
        for seen, offsets, result in results:
            # From where the replay starts to the end, every offset once, in order.
            assert offsets == list(range(offsets[0], total + 1)), offsets
            # The replay holds the last `last` messages kept when history was read:
            # it starts no later than `last` before the position in the reply.
            assert offsets[0] == max(1, result["offset"] - last + 1)
            assert result["offset"] >= seen
            assert "recovered" not in result


@pytest.mark.anyio
async def test_memory_returns_to_baseline_after_many_connections() -> None:
    options = RoomOptions(history=History(size=10, ttl=600))

    async def cycle(hub: Hub, n: int) -> None:
        async with TestClient(hub) as client:
            await client.subscribe(f"team:t{n % 7}", f"room:r{n}", "room:shared")

    async with Hub(namespaces={"team": options}) as hub:
        for n in range(500):  # warm caches, free lists and history streams
            await cycle(hub, n)
        gc.collect()
        # Live allocator blocks: exact, and free to read (tracemalloc would
        # slow the 10,000 cycles several times over).
        baseline = sys.getallocatedblocks()
        for n in range(500, 10_500):
            await cycle(hub, n)
        gc.collect()
        grown = sys.getallocatedblocks() - baseline
        stats = hub.stats()
        assert (stats.clients, stats.rooms) == (0, 0)
        assert stats.connections_total == 10_500
        # A leak of a single object per cycle would leave 10,000 blocks behind.
        assert grown < 1_000, f"{grown} more memory blocks after 10,000 cycles"
