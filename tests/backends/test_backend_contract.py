"""One contract, every backend: the same tests against MemoryBackend and RedisBackend.

A "node" here is one started backend and the publications it delivered. The
memory backend is one node by nature; Redis nodes share one key prefix.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from roomcast import History, MemoryBackend, Publication, StreamPosition
from roomcast.backends import Backend, ChannelKind, PresenceEntry
from roomcast.backends.redis import RedisBackend
from roomcast.testing import ManualClock

from .conftest import REDIS_URL

pytestmark = pytest.mark.anyio

TIMEOUT = 10


@dataclass
class Node:
    """A started backend and what it delivered, in order."""

    backend: Backend
    delivered: list[tuple[ChannelKind, str, Publication]] = field(default_factory=list)

    def deliver(self, kind: ChannelKind, key: str, publication: Publication) -> None:
        self.delivered.append((kind, key, publication))

    def of(self, key: str) -> list[Publication]:
        return [p for _, k, p in self.delivered if k == key]

    async def wait_for(self, key: str, count: int) -> list[Publication]:
        with anyio.fail_after(TIMEOUT):
            while len(self.of(key)) < count:
                await anyio.sleep(0.005)
        return self.of(key)


@dataclass
class Cluster:
    """Starts nodes of one kind of backend, sharing their state; ``wait`` lets time pass."""

    kind: str
    start: Callable[..., Awaitable[Node]]
    wait: Callable[[float], Awaitable[None]]


@pytest.fixture(params=["memory", "redis"])
async def cluster(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Cluster]:
    clock = ManualClock()
    async with AsyncExitStack() as stack:
        started: list[Node] = []

        async def start(position_ttl: float = 86_400.0) -> Node:
            backend: Backend
            if request.param == "memory":
                if started:  # one process, one node
                    return started[0]
                backend = MemoryBackend(clock=clock.now, position_ttl=position_ttl)
            else:
                backend = RedisBackend(REDIS_URL, prefix=prefix, position_ttl=position_ttl)
            node = Node(backend)
            await backend.start(node.deliver)
            stack.push_async_callback(backend.aclose)
            started.append(node)
            return node

        async def wait(seconds: float) -> None:
            if request.param == "memory":
                await clock.advance(seconds)
            else:
                await anyio.sleep(seconds)

        yield Cluster(request.param, start, wait)


def publication(room: str | None, n: int, **fields: Any) -> Publication:
    return Publication(room, "seq.item", f"m{n}", str(n), 1_700_000_000_000 + n)._replace(**fields)


HISTORY = History(size=100, ttl=600)


# ----------------------------------------------------------------------------- ordering


async def test_every_publication_is_delivered_once_in_offset_order(cluster: Cluster) -> None:
    node = await cluster.start()
    await node.backend.subscribe("room", "team:t1")
    publishers, each = 5, 30
    sent: dict[int, list[str]] = {}

    async def publish_from(who: int) -> None:
        for n in range(each):
            published = await node.backend.publish(
                "room", "team:t1", publication("team:t1", who * 1000 + n), HISTORY
            )
            sent.setdefault(who, []).append(published.id)

    async with anyio.create_task_group() as tasks:
        for who in range(publishers):
            tasks.start_soon(publish_from, who)
    got = await node.wait_for("team:t1", publishers * each)
    assert [p.offset for p in got] == list(range(1, publishers * each + 1))
    for ids in sent.values():  # each publisher's messages in the order it sent them
        assert [p.id for p in got if p.id in set(ids)] == ids


async def test_offsets_have_no_gaps_under_concurrent_publishers(cluster: Cluster) -> None:
    nodes = [await cluster.start(), await cluster.start()]
    offsets: list[int] = []

    async def publish_from(node: Node, who: int) -> None:
        for n in range(25):
            published = await node.backend.publish(
                "room", "team:t2", publication("team:t2", who * 100 + n), HISTORY
            )
            assert published.offset is not None
            offsets.append(published.offset)

    async with anyio.create_task_group() as tasks:
        for who in range(4):
            tasks.start_soon(publish_from, nodes[who % 2], who)
    assert sorted(offsets) == list(range(1, 101))


async def test_publications_without_history_keep_each_publishers_order(cluster: Cluster) -> None:
    node = await cluster.start()
    await node.backend.subscribe("room", "chat:c1")
    for n in range(20):
        sent = await node.backend.publish("room", "chat:c1", publication("chat:c1", n), None)
        assert sent.offset is None
    got = await node.wait_for("chat:c1", 20)
    assert [p.payload_json for p in got] == [str(n) for n in range(20)]
    assert all(p.offset is None and p.epoch is None for p in got)


async def test_a_publication_arrives_with_every_field(cluster: Cluster) -> None:
    node = await cluster.start()
    await node.backend.subscribe("room", "team:t3")
    sent = publication(
        "team:t3", 1, user_id="u1", exclude=frozenset({"c1", "c2"}), payload_json='{"é":[1]}'
    )
    stored = await node.backend.publish("room", "team:t3", sent, HISTORY)
    (got,) = await node.wait_for("team:t3", 1)
    assert got == stored == sent._replace(offset=1, epoch=stored.epoch)


async def test_user_and_node_channels_carry_no_room(cluster: Cluster) -> None:
    node = await cluster.start()
    await node.backend.subscribe("user", "u1")
    await node.backend.subscribe("node", "n1")
    await node.backend.publish("user", "u1", publication(None, 1, ephemeral=True), None)
    await node.backend.publish("node", "n1", publication(None, 2, client="n1.c9"), None)
    (to_user,) = await node.wait_for("u1", 1)
    (to_client,) = await node.wait_for("n1", 1)
    assert (to_user.room, to_user.ephemeral) == (None, True)
    assert (to_client.room, to_client.client) == (None, "n1.c9")


# ----------------------------------------------------------------------------- history


async def published(node: Node, room: str, count: int, history: History = HISTORY) -> str:
    """Publish ``count`` messages to ``room``; return its epoch."""
    epoch = ""
    for n in range(count):
        sent = await node.backend.publish("room", room, publication(room, n), history)
        epoch = sent.epoch or ""
    return epoch


async def test_history_returns_exactly_what_was_missed(cluster: Cluster) -> None:
    node = await cluster.start()
    epoch = await published(node, "team:h1", 10)
    found = await node.backend.history("team:h1", StreamPosition(4, epoch), HISTORY)
    assert found.recovered is True
    assert [p.offset for p in found.publications] == [5, 6, 7, 8, 9, 10]
    assert [p.payload_json for p in found.publications] == [str(n) for n in range(4, 10)]
    assert all(p.room == "team:h1" and p.epoch == epoch for p in found.publications)
    assert found.position == StreamPosition(10, epoch)


async def test_history_read_on_another_node_agrees(cluster: Cluster) -> None:
    first, second = await cluster.start(), await cluster.start()
    epoch = await published(first, "team:h2", 3)
    found = await second.backend.history("team:h2", StreamPosition(1, epoch), HISTORY)
    assert (found.recovered, [p.offset for p in found.publications]) == (True, [2, 3])


async def test_nothing_missed_is_recovered_with_no_messages(cluster: Cluster) -> None:
    node = await cluster.start()
    epoch = await published(node, "team:h3", 3)
    found = await node.backend.history("team:h3", StreamPosition(3, epoch), HISTORY)
    assert (found.recovered, found.publications) == (True, ())


async def test_without_since_only_the_position_is_read(cluster: Cluster) -> None:
    node = await cluster.start()
    fresh = await node.backend.history("team:h4", None, HISTORY)
    assert (fresh.recovered, fresh.publications, fresh.position.offset) == (True, (), 0)
    sent = await node.backend.publish("room", "team:h4", publication("team:h4", 1), HISTORY)
    # Reading first created the epoch that the first message then carries.
    assert sent.epoch == fresh.position.epoch
    assert sent.offset == 1


async def test_another_epoch_is_not_recovered(cluster: Cluster) -> None:
    node = await cluster.start()
    await published(node, "team:h5", 3)
    found = await node.backend.history("team:h5", StreamPosition(1, "another"), HISTORY)
    assert (found.recovered, found.publications, found.position.offset) == (False, (), 3)


async def test_an_offset_beyond_the_top_is_not_recovered(cluster: Cluster) -> None:
    node = await cluster.start()
    epoch = await published(node, "team:h6", 3)
    found = await node.backend.history("team:h6", StreamPosition(7, epoch), HISTORY)
    assert (found.recovered, found.publications) == (False, ())


async def test_pruned_history_is_not_recovered_at_all(cluster: Cluster) -> None:
    node = await cluster.start()
    small = History(size=3, ttl=600)
    epoch = await published(node, "team:h7", 5, small)
    pruned = await node.backend.history("team:h7", StreamPosition(1, epoch), small)
    assert (pruned.recovered, pruned.publications) == (False, ())
    kept = await node.backend.history("team:h7", StreamPosition(2, epoch), small)
    assert [p.offset for p in kept.publications] == [3, 4, 5]


async def test_expired_messages_are_not_recovered_but_the_position_stays(
    cluster: Cluster,
) -> None:
    node = await cluster.start()
    brief = History(size=10, ttl=0.2)
    epoch = await published(node, "team:h8", 2, brief)
    await cluster.wait(0.5)
    missed = await node.backend.history("team:h8", StreamPosition(1, epoch), brief)
    assert (missed.recovered, missed.publications) == (False, ())
    assert missed.position == StreamPosition(2, epoch)
    # A client that had everything is told so, though every message expired.
    caught_up = await node.backend.history("team:h8", StreamPosition(2, epoch), brief)
    assert (caught_up.recovered, caught_up.publications) == (True, ())
    sent = await node.backend.publish("room", "team:h8", publication("team:h8", 9), brief)
    assert (sent.offset, sent.epoch) == (3, epoch)


async def test_a_position_quiet_for_longer_than_position_ttl_starts_a_new_epoch(
    cluster: Cluster,
) -> None:
    node = await cluster.start(position_ttl=1)
    brief = History(size=10, ttl=0.2)
    epoch = await published(node, "team:h9", 2, brief)
    await cluster.wait(1.5)
    found = await node.backend.history("team:h9", StreamPosition(2, epoch), brief)
    assert found.recovered is False
    assert found.position.epoch != epoch
    assert found.position.offset == 0


async def test_ephemeral_publications_take_no_offset(cluster: Cluster) -> None:
    node = await cluster.start()
    await node.backend.subscribe("room", "team:h10")
    sent = await node.backend.publish(
        "room", "team:h10", publication("team:h10", 1, ephemeral=True), HISTORY
    )
    assert (sent.offset, sent.epoch) == (None, None)
    (got,) = await node.wait_for("team:h10", 1)
    assert got.offset is None
    assert (await node.backend.history("team:h10", None, HISTORY)).position.offset == 0


# ----------------------------------------------------------------------------- last N, pages


async def test_without_since_a_limit_reads_the_last_messages_oldest_first(
    cluster: Cluster,
) -> None:
    node = await cluster.start()
    epoch = await published(node, "team:n1", 10)
    found = await node.backend.history("team:n1", None, HISTORY, limit=3)
    assert found.recovered is True
    assert [p.offset for p in found.publications] == [8, 9, 10]
    assert [p.payload_json for p in found.publications] == ["7", "8", "9"]
    assert all(p.room == "team:n1" and p.epoch == epoch for p in found.publications)
    assert found.position == StreamPosition(10, epoch)


async def test_a_limit_above_what_is_kept_reads_every_kept_message(cluster: Cluster) -> None:
    node = await cluster.start()
    small = History(size=4, ttl=600)
    await published(node, "team:n2", 6, small)
    found = await node.backend.history("team:n2", None, small, limit=50)
    assert [p.offset for p in found.publications] == [3, 4, 5, 6]
    empty = await node.backend.history("team:n3", None, small, limit=50)
    assert (empty.recovered, empty.publications, empty.position.offset) == (True, (), 0)


async def test_the_last_messages_leave_out_ephemeral_and_expired_ones(cluster: Cluster) -> None:
    node = await cluster.start()
    brief = History(size=10, ttl=0.2)
    epoch = await published(node, "team:n4", 2, brief)
    await cluster.wait(0.5)
    await node.backend.publish("room", "team:n4", publication("team:n4", 7, ephemeral=True), brief)
    gone = await node.backend.history("team:n4", None, brief, limit=5)
    assert (gone.publications, gone.position) == ((), StreamPosition(2, epoch))
    await node.backend.publish("room", "team:n4", publication("team:n4", 8), brief)
    kept = await node.backend.history("team:n4", None, brief, limit=5)
    assert [p.offset for p in kept.publications] == [3]


async def test_with_since_a_limit_reads_a_page_and_the_next_page_follows_on(
    cluster: Cluster,
) -> None:
    node = await cluster.start()
    epoch = await published(node, "team:n5", 7)
    pages: list[list[int]] = []
    since = StreamPosition(1, epoch)
    while True:
        found = await node.backend.history("team:n5", since, HISTORY, limit=2)
        assert found.recovered is True
        assert found.position == StreamPosition(7, epoch)
        if not found.publications:
            break
        pages.append([p.offset or 0 for p in found.publications])
        since = StreamPosition(pages[-1][-1], epoch)
    assert pages == [[2, 3], [4, 5], [6, 7]]


async def test_a_page_after_a_pruned_position_is_not_recovered(cluster: Cluster) -> None:
    node = await cluster.start()
    small = History(size=3, ttl=600)
    epoch = await published(node, "team:n6", 6, small)
    pruned = await node.backend.history("team:n6", StreamPosition(1, epoch), small, limit=2)
    assert (pruned.recovered, pruned.publications) == (False, ())
    other = await node.backend.history("team:n6", StreamPosition(4, "another"), small, limit=2)
    assert (other.recovered, other.publications) == (False, ())
    kept = await node.backend.history("team:n6", StreamPosition(3, epoch), small, limit=2)
    assert (kept.recovered, [p.offset for p in kept.publications]) == (True, [4, 5])


# ----------------------------------------------------------------------------- presence


async def test_presence_lists_every_node_and_forgets_on_remove(cluster: Cluster) -> None:
    first, second = await cluster.start(), await cluster.start()
    await first.backend.presence_add("doc:d1", PresenceEntry("a.1", "u1"))
    await second.backend.presence_add("doc:d1", PresenceEntry("b.1", "u2", {"tab": 2}))
    await second.backend.presence_add("doc:d2", PresenceEntry("b.2", None))
    listed = await first.backend.presence("doc:d1")
    assert sorted(listed, key=lambda e: e.client_id) == [
        PresenceEntry("a.1", "u1"),
        PresenceEntry("b.1", "u2", {"tab": 2}),
    ]
    await second.backend.presence_remove("doc:d1", "a.1")
    await second.backend.presence_remove("doc:d1", "missing")
    assert await first.backend.presence("doc:d1") == [PresenceEntry("b.1", "u2", {"tab": 2})]
    assert await first.backend.presence("doc:none") == []


# ----------------------------------------------------------------------------- channels


async def test_publications_are_delivered_once_subscribe_returns(cluster: Cluster) -> None:
    first, second = await cluster.start(), await cluster.start()
    await second.backend.subscribe("room", "room:c1")
    await first.backend.publish("room", "room:c1", publication("room:c1", 1), None)
    assert [p.payload_json for p in await second.wait_for("room:c1", 1)] == ["1"]
