"""The publish path's shortcuts keep every behaviour: member snapshots, the memory backend's
in-place publish and its channel table, and the same frame text as `encode_event`."""

from __future__ import annotations

import anyio
import pytest

from roomcast import History, Hub, RoomOptions
from roomcast.backends import ChannelKind, Publication
from roomcast.backends.memory import MemoryBackend
from roomcast.rooms import encode
from roomcast.testing import TestClient
from roomcast.wire import encode_event

pytestmark = pytest.mark.anyio


async def test_members_who_join_leave_or_close_between_publishes_are_seen_at_once() -> None:
    async with Hub() as hub:
        async with TestClient(hub) as a, TestClient(hub) as b, TestClient(hub) as c:
            await a.subscribe("chat:c")
            await b.subscribe("chat:c")
            await hub.publish("chat:c", "m.one", 1)  # the room keeps its members' snapshot
            assert (await a.receive_event())["payload"] == 1
            assert (await b.receive_event())["payload"] == 1
            await c.subscribe("chat:c")
            await hub.publish("chat:c", "m.two", 2)
            assert [(await x.receive_event())["payload"] for x in (a, b, c)] == [2, 2, 2]
            await b.unsubscribe("chat:c")
            await hub.publish("chat:c", "m.three", 3)
            assert [(await x.receive_event())["payload"] for x in (a, c)] == [3, 3]
            c.abort()  # its network died: the server closes it
            with anyio.fail_after(5):
                while hub.stats().members.get("chat:c", 0) > 1:
                    await anyio.sleep(0.01)
            await hub.publish("chat:c", "m.four", 4)
            assert (await a.receive_event())["payload"] == 4
            assert [f for f in b.drain() if f["type"].startswith("m.")] == []
            assert hub.stats().dropped == 0


class CountingBackend(MemoryBackend):
    """Overrides publish() and subscribe(): both must still be called for every use."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[str] = []
        self.subscribed: list[tuple[ChannelKind, str]] = []

    async def publish(
        self, kind: ChannelKind, key: str, publication: Publication, history: History | None
    ) -> Publication:
        self.published.append(key)
        return await super().publish(kind, key, publication, history)

    async def subscribe(self, kind: ChannelKind, key: str) -> None:
        self.subscribed.append((kind, key))


async def test_a_memory_backend_subclass_that_overrides_publish_or_subscribe_is_called() -> None:
    backend = CountingBackend()
    async with Hub(backend=backend) as hub:
        async with TestClient(hub) as client:
            await client.subscribe("chat:c")
            await hub.publish(["chat:c", "chat:d"], "m.x", 1)
            assert (await client.receive_event())["room"] == "chat:c"
    assert backend.published == ["chat:c", "chat:d"]
    assert ("room", "chat:c") in backend.subscribed


async def test_the_plain_memory_backend_publishes_in_place_with_history_and_exclusions() -> None:
    options = RoomOptions(history=History(size=10, ttl=60))
    async with Hub(namespaces={"team": options}) as hub:
        async with TestClient(hub) as a, TestClient(hub) as b:
            await a.subscribe("team:t1")
            await b.subscribe("team:t1")
            first = await hub.publish("team:t1", "m.x", 1, exclude=[a.client_id])
            second = await hub.publish("team:t1", "m.x", 2, user_id="u1")
            got_b = [await b.receive_event(), await b.receive_event()]
            assert [(f["id"], f["offset"], f["payload"]) for f in got_b] == [
                (first, 1, 1),
                (second, 2, 2),
            ]
            got_a = await a.receive_event()
            assert (got_a["id"], got_a["offset"], got_a["userId"]) == (second, 2, "u1")
            found = await hub.history("team:t1")
            assert [p.payload_json for p in found.publications] == ["1", "2"]
            # Every member got the same text the wire's encoder makes for it.
            publication = found.publications[1]
            assert encode(publication) == encode_event(
                type_=publication.type,
                room=publication.room,
                message_id=publication.id,
                payload_json=publication.payload_json,
                timestamp=publication.timestamp,
                user_id=publication.user_id,
                offset=publication.offset,
                epoch=publication.epoch,
            )
