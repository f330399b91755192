"""Several hubs share rooms through one Redis, tested through the public API only.

Three hubs in one process, each with its own Redis connections; clients of one
room split across them; several publishers at once. A checker records every
publish and every delivery and asserts nothing was lost, repeated, reordered or
delivered to a non-member, and that a node without members in a room received
none of its traffic.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup

from roomcast import (
    ConnectionClosed,
    DefaultAuthorizer,
    History,
    Hub,
    Publication,
    RoomOptions,
)
from roomcast.backends import ChannelKind, Delivery
from roomcast.backends.redis import RedisBackend
from roomcast.testing import TestClient

from .conftest import REDIS_URL, UserAuthenticator
from .conftest import connect as connect_user

pytestmark = pytest.mark.anyio

TIMEOUT = 20
NAMESPACES = {"team": RoomOptions(history=History(size=1000, ttl=600))}


class CountingBackend(RedisBackend):
    """Counts what reaches this node, per channel key, before the hub sees it."""

    received: Counter[str]

    async def start(self, deliver: Delivery) -> None:
        self.received = Counter()

        def counting(kind: ChannelKind, key: str, publication: Publication) -> None:
            self.received[key] += 1
            deliver(kind, key, publication)

        await super().start(counting)


@asynccontextmanager
async def nodes(prefix: str, count: int) -> AsyncIterator[list[Hub]]:
    async with AsyncExitStack() as stack:
        hubs = []
        for _ in range(count):
            hub = Hub(
                backend=CountingBackend(REDIS_URL, prefix=prefix),
                authenticator=UserAuthenticator(),
                authorizer=DefaultAuthorizer(publish=["team", "chat"]),
                namespaces=NAMESPACES,
            )
            hubs.append(await stack.enter_async_context(hub))
        yield hubs


def backend_of(hub: Hub) -> CountingBackend:
    backend = hub._backend
    assert isinstance(backend, CountingBackend)
    return backend


def connect(hub: Hub, user: str, tasks: TaskGroup) -> TestClient:
    return connect_user(hub, user, tasks, TIMEOUT)


async def events(client: TestClient, count: int) -> list[dict[str, Any]]:
    """The next ``count`` application events the client receives."""
    return [await client.receive_event() for _ in range(count)]


async def test_many_publishers_many_nodes_nothing_lost_repeated_reordered_or_misdelivered(
    prefix: str,
) -> None:
    publishers, each = 4, 40
    rooms = {"team:r1": [0, 1], "team:r2": [1, 2], "chat:c1": [0, 2]}  # room -> member nodes
    async with (
        nodes(prefix, 3) as hubs,
        anyio.create_task_group() as tasks,
        AsyncExitStack() as clients,
    ):
        members: dict[str, list[TestClient]] = {room: [] for room in rooms}
        for room, on in rooms.items():
            for n, node in enumerate(on * 2):  # two members per node
                client = await clients.enter_async_context(connect(hubs[node], f"u{n}", tasks))
                await client.subscribe(room)
                members[room].append(client)
        bystander = await clients.enter_async_context(connect(hubs[2], "by", tasks))

        sent: dict[str, list[str]] = {room: [] for room in rooms}

        async def publish(publisher: int) -> None:
            hub = hubs[publisher % 3]
            for n in range(each):
                room = list(rooms)[(publisher + n) % len(rooms)]
                payload = {"publisher": publisher, "n": n}
                sent[room].append(await hub.publish(room, "load.item", payload))

        async with anyio.create_task_group() as publishing:
            for publisher in range(publishers):
                publishing.start_soon(publish, publisher)

        for room, clients_of_room in members.items():
            for client in clients_of_room:
                got = await events(client, len(sent[room]))
                assert {event["room"] for event in got} == {room}, "delivered to a non-member"
                ids = [event["id"] for event in got]
                assert Counter(ids) == Counter(sent[room]), "lost or repeated"
                if room.startswith("team:"):  # history: every member sees offset order
                    assert [event["offset"] for event in got] == list(range(1, len(got) + 1))
                for publisher in range(publishers):  # each publisher's own order
                    own = [e["payload"]["n"] for e in got if e["payload"]["publisher"] == publisher]
                    assert own == sorted(own)
        await anyio.sleep(0.2)
        for client in [*members["team:r1"], *members["team:r2"], *members["chat:c1"], bystander]:
            assert client.drain() == [], "more than was published"
        # A node with no member in a room received none of its publications.
        assert backend_of(hubs[2]).received["team:r1"] == 0
        assert backend_of(hubs[0]).received["team:r2"] == 0
        assert backend_of(hubs[1]).received["chat:c1"] == 0
        assert backend_of(hubs[1]).received["team:r1"] == len(sent["team:r1"])


async def test_every_member_sees_one_order_per_room(prefix: str) -> None:
    async with (
        nodes(prefix, 2) as hubs,
        anyio.create_task_group() as tasks,
        connect(hubs[0], "a", tasks) as first,
        connect(hubs[1], "b", tasks) as second,
    ):
        await first.subscribe("chat:c2")
        await second.subscribe("chat:c2")

        async def publish(hub: Hub, tag: str) -> None:
            for n in range(30):
                await hub.publish("chat:c2", "load.item", f"{tag}{n}")

        async with anyio.create_task_group() as publishing:
            publishing.start_soon(publish, hubs[0], "x")
            publishing.start_soon(publish, hubs[1], "y")
        order = [event["payload"] for event in await events(first, 60)]
        assert [event["payload"] for event in await events(second, 60)] == order


async def test_send_to_user_and_to_client_reach_other_nodes_exactly_once(prefix: str) -> None:
    async with (
        nodes(prefix, 3) as hubs,
        anyio.create_task_group() as tasks,
        connect(hubs[0], "ana", tasks) as ana_here,
        connect(hubs[2], "ana", tasks) as ana_there,
        connect(hubs[1], "bob", tasks) as bob,
    ):
        await hubs[1].send_to_user("ana", "note.new", {"n": 1})
        await hubs[0].send_to_client(bob.client_id, "note.direct", {"n": 2})
        for client in (ana_here, ana_there):
            event = await client.receive_event("note.new")
            assert (event["room"], event["payload"]) == (None, {"n": 1})
        direct = await bob.receive_event("note.direct")
        assert direct["payload"] == {"n": 2}
        await anyio.sleep(0.2)
        for client in (ana_here, ana_there, bob):
            assert client.drain() == []


async def test_a_client_recovers_on_another_node_exactly_what_it_missed(prefix: str) -> None:
    async with nodes(prefix, 2) as hubs, anyio.create_task_group() as tasks:
        async with connect(hubs[0], "ana", tasks) as before:
            await before.subscribe("team:t1")
            for n in range(3):
                await hubs[1].publish("team:t1", "seq.item", n)
            seen = await events(before, 3)
        last = seen[-1]
        for n in range(3, 8):  # missed while away
            await hubs[0].publish("team:t1", "seq.item", n)
        async with connect(hubs[1], "ana", tasks) as after:
            since = {"team:t1": {"offset": last["offset"], "epoch": last["epoch"]}}
            result = await after.subscribe("team:t1", since=since)
            assert result["team:t1"]["recovered"] is True
            assert result["team:t1"]["offset"] == 8
            await hubs[0].publish("team:t1", "seq.item", 8)  # live, after the replay
            got = await events(after, 6)
            assert [event["payload"] for event in got] == [3, 4, 5, 6, 7, 8]
            assert [event["offset"] for event in got] == [4, 5, 6, 7, 8, 9]


async def test_recovery_from_another_epoch_on_another_node_replays_nothing(prefix: str) -> None:
    async with nodes(prefix, 2) as hubs, anyio.create_task_group() as tasks:
        await hubs[0].publish("team:t2", "seq.item", 1)
        async with connect(hubs[1], "ana", tasks) as client:
            since = {"team:t2": {"offset": 0, "epoch": "from-another-redis"}}
            result = await client.subscribe("team:t2", since=since)
            assert result["team:t2"]["recovered"] is False
            assert client.drain() == []


async def test_send_to_user_reaches_each_connection_once_with_several_on_one_node(
    prefix: str,
) -> None:
    async with (
        nodes(prefix, 2) as hubs,
        anyio.create_task_group() as tasks,
        connect(hubs[0], "ana", tasks) as tab1,
        connect(hubs[0], "ana", tasks) as tab2,
        connect(hubs[1], "ana", tasks) as phone,
        connect(hubs[1], "bob", tasks) as bob,
    ):
        sent = [await hubs[n % 2].send_to_user("ana", "note.new", {"n": n}) for n in range(4)]
        for client in (tab1, tab2, phone):
            got = [await client.receive_event("note.new") for _ in range(4)]
            assert [event["id"] for event in got] == sent
        await anyio.sleep(0.2)
        for client in (tab1, tab2, phone, bob):
            assert client.drain() == []


async def test_disconnect_user_closes_their_connections_on_every_node(prefix: str) -> None:
    async with (
        nodes(prefix, 2) as hubs,
        anyio.create_task_group() as tasks,
        connect(hubs[0], "ana", tasks) as here,
        connect(hubs[1], "ana", tasks) as there,
        connect(hubs[1], "ana", tasks) as there_too,
        connect(hubs[1], "bob", tasks) as bob,
    ):
        await there.subscribe("chat:c1")
        assert hubs[0].disconnect_user("ana", 4001, "logged out") == 1  # this node's only
        with anyio.fail_after(5):
            for client in (here, there, there_too):
                frames, code = await frames_until_closed(client)
                assert code == 4001
                assert all(frame["type"] != "roomcast.disconnect" for frame in frames)
        await hubs[1].publish("chat:c1", "still.here")
        await hubs[0].send_to_user("bob", "still.here")
        assert (await bob.receive_event("still.here"))["room"] is None
        await anyio.sleep(0.2)
        assert bob.drain() == []


async def frames_until_closed(client: TestClient) -> tuple[list[dict[str, Any]], int]:
    """Every frame the client receives until the hub closes it, and the close code."""
    frames = []
    while True:
        try:
            frames.append(await client.receive())
        except ConnectionClosed as exc:
            return frames, exc.code


async def test_disconnect_user_counts_none_when_the_user_is_only_on_other_nodes(
    prefix: str,
) -> None:
    async with (
        nodes(prefix, 2) as hubs,
        anyio.create_task_group() as tasks,
        connect(hubs[1], "ana", tasks) as there,
    ):
        assert hubs[0].disconnect_user("ana") == 0
        with anyio.fail_after(5):
            assert await there.wait_closed() == 1000


@pytest.mark.parametrize("count", [1, 2])
async def test_fresh_pages_joining_with_history_racing_publishes_lose_and_repeat_nothing(
    prefix: str, count: int
) -> None:
    total, last = 200, 15
    async with nodes(prefix, count) as hubs, anyio.create_task_group() as tasks:
        published = 0
        results: list[tuple[int, list[int], dict[str, Any]]] = []

        async def publish(hub: Hub, share: int) -> None:
            nonlocal published
            for n in range(share):
                await hub.publish("team:race", "seq.item", n)
                published += 1

        async def fresh_page(index: int, after: int) -> None:
            while published < after:
                await anyio.sleep(0.001)
            async with connect(hubs[index % count], f"page{index}", tasks) as client:
                seen = published
                result = (await client.subscribe("team:race", history={"team:race": last}))[
                    "team:race"
                ]
                offsets: list[int] = []
                with anyio.fail_after(TIMEOUT):
                    while not offsets or offsets[-1] < total:
                        offsets.append((await client.receive_event("seq.item"))["offset"])
                await anyio.sleep(0.1)  # nothing repeated after the last one
                offsets += [f["offset"] for f in client.drain() if f.get("type") == "seq.item"]
                results.append((seen, offsets, result))

        async with anyio.create_task_group() as racing:
            for index, after in enumerate((0, 3, 20, 60, 61, 110, 150, 190)):
                racing.start_soon(fresh_page, index, after)
            for hub in hubs:
                racing.start_soon(publish, hub, total // count)
        assert len(results) == 8
        for seen, offsets, result in results:
            assert offsets == list(range(offsets[0], total + 1)), "lost or repeated"
            assert "recovered" not in result
            assert result["offset"] >= seen
            # The replay is the last `last` messages of history when it was read,
            # which may be ahead of the reply's offset: the node had not yet
            # delivered the newest, so they came live, after the reply.
            assert offsets[0] >= max(1, result["offset"] - last + 1, seen - last + 1)
