"""What RedisBackend adds to the contract: channels per room, configuration, sharding, faults."""

from __future__ import annotations

import math
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
import redis
import redis.asyncio

from roomcast import BackendError, History, Hub, Publication, StreamPosition
from roomcast.backends import ChannelKind
from roomcast.backends._redis_codec import (
    MalformedMessage,
    decode_body,
    decode_message,
    encode_body,
    plain_message,
)
from roomcast.backends.redis import RedisBackend

from .conftest import REDIS_URL, SECOND_DB_URL
from .proxy import proxy_to

pytestmark = pytest.mark.anyio

TIMEOUT = 10
HISTORY = History(size=100, ttl=600)
REDIS_PORT = int(REDIS_URL.rsplit(":", 1)[1].split("/", 1)[0])


class Inbox:
    def __init__(self) -> None:
        self.got: list[tuple[ChannelKind, str, Publication]] = []

    def __call__(self, kind: ChannelKind, key: str, publication: Publication) -> None:
        self.got.append((kind, key, publication))

    def keys(self) -> list[str]:
        return [key for _, key, _ in self.got]

    async def wait_for(self, count: int) -> None:
        with anyio.fail_after(TIMEOUT):
            while len(self.got) < count:
                await anyio.sleep(0.005)


@asynccontextmanager
async def started(backend: RedisBackend) -> AsyncIterator[Inbox]:
    inbox = Inbox()
    await backend.start(inbox)
    try:
        yield inbox
    finally:
        await backend.aclose()


def item(room: str | None, n: int) -> Publication:
    return Publication(room, "seq.item", f"m{n}", str(n), n)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# ----------------------------------------------------------------------------- channels


async def test_a_node_receives_only_the_rooms_it_subscribed_to(prefix: str) -> None:
    member_node = RedisBackend(REDIS_URL, prefix=prefix)
    other_node = RedisBackend(REDIS_URL, prefix=prefix)
    async with started(member_node) as member, started(other_node) as other:
        await member_node.subscribe("room", "room:a")
        await other_node.subscribe("room", "room:b")
        for n in range(10):  # from both nodes, to the room only one of them has
            node = member_node if n % 2 else other_node
            await node.publish("room", "room:a", item("room:a", n), HISTORY)
        await other_node.publish("room", "room:b", item("room:b", 0), None)
        await member.wait_for(10)
        await other.wait_for(1)
        assert member.keys() == ["room:a"] * 10
        assert other.keys() == ["room:b"]


async def test_no_publication_arrives_after_unsubscribe(prefix: str) -> None:
    backend = RedisBackend(REDIS_URL, prefix=prefix)
    async with started(backend) as inbox:
        await backend.subscribe("room", "room:a")
        await backend.publish("room", "room:a", item("room:a", 1), None)
        await inbox.wait_for(1)
        await backend.unsubscribe("room", "room:a")
        for n in range(2, 20):
            await backend.publish("room", "room:a", item("room:a", n), None)
        # A marker on a channel still subscribed: everything before it has been read.
        await backend.subscribe("room", "room:marker")
        await backend.publish("room", "room:marker", item("room:marker", 0), None)
        await inbox.wait_for(2)
        assert inbox.keys() == ["room:a", "room:marker"]


# ----------------------------------------------------------------------------- scripts


async def test_a_flushed_script_is_loaded_again(prefix: str) -> None:
    backend = RedisBackend(REDIS_URL, prefix=prefix)
    async with started(backend):
        first = await backend.publish("room", "team:s", item("team:s", 1), HISTORY)
        # As after a Redis restart: the SHA the backend holds is unknown to Redis.
        for shard in backend._shards:
            shard.publish.sha = "0" * 40
        second = await backend.publish("room", "team:s", item("team:s", 2), HISTORY)
        assert (first.offset, second.offset) == (1, 2)
        assert first.epoch == second.epoch


async def test_keys_expire_the_stream_after_ttl_and_the_position_after_position_ttl(
    prefix: str,
) -> None:
    backend = RedisBackend(REDIS_URL, prefix=prefix, position_ttl=3600)
    async with started(backend):
        await backend.publish("room", "team:k", item("team:k", 1), History(size=2, ttl=30))
    with redis.Redis.from_url(REDIS_URL) as client:
        assert 0 < client.pttl(f"{prefix}:stream:team:k") <= 30_000
        assert 3000 < client.ttl(f"{prefix}:position:team:k") <= 3600
        assert client.xlen(f"{prefix}:stream:team:k") == 1


# ----------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("args", "options"),
    [
        ((), {}),
        ((REDIS_URL,), {"shards": [REDIS_URL]}),
        ((), {"shards": []}),
        ((REDIS_URL,), {"prefix": ""}),
        ((REDIS_URL,), {"prefix": "with space"}),
        (("http://127.0.0.1:6379",), {}),
        ((REDIS_URL,), {"position_ttl": 0}),
        ((REDIS_URL,), {"publish_timeout": -1}),
        ((REDIS_URL,), {"reconnect_delay": math.inf}),
        ((REDIS_URL,), {"max_reconnect_delay": True}),
        ((REDIS_URL,), {"probe_interval": 0}),
        ((REDIS_URL,), {"probe_timeout": -1}),
        ((REDIS_URL,), {"presence_lease": math.inf}),
        ((), {"client": object()}),
        ((), {"shards": [REDIS_URL, 6379]}),
    ],
)
def test_bad_arguments_are_refused_when_the_backend_is_built(
    args: tuple[object, ...], options: dict[str, object]
) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        RedisBackend(*args, **options)  # type: ignore[arg-type]


async def test_an_application_client_is_used_and_left_open(prefix: str) -> None:
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        backend = RedisBackend(client=client, prefix=prefix)
        async with started(backend) as inbox:
            await backend.subscribe("room", "room:c")
            await backend.publish("room", "room:c", item("room:c", 1), None)
            await inbox.wait_for(1)
        assert await client.ping() is True
    finally:
        await client.aclose()


async def test_rooms_are_spread_over_shards_by_a_stable_hash(prefix: str) -> None:
    backend = RedisBackend(shards=[REDIS_URL, SECOND_DB_URL], prefix=prefix)
    rooms = [f"team:t{n}" for n in range(16)]
    async with started(backend) as inbox:
        for room in rooms:
            await backend.subscribe("room", room)
            await backend.publish("room", room, item(room, 1), HISTORY)
        await inbox.wait_for(len(rooms))
    with (
        redis.Redis.from_url(REDIS_URL) as first,
        redis.Redis.from_url(SECOND_DB_URL) as second,
    ):
        on_first = {room for room in rooms if first.exists(f"{prefix}:stream:{room}")}
        on_second = {room for room in rooms if second.exists(f"{prefix}:stream:{room}")}
    assert on_first
    assert on_second
    assert on_first | on_second == set(rooms)
    assert not on_first & on_second
    # Another node (another process) puts every room on the same shard.
    again = RedisBackend(shards=[REDIS_URL, SECOND_DB_URL], prefix=prefix)
    assert {room for room in rooms if again._shard(room) is again._shards[0]} == on_first


# ----------------------------------------------------------------------------- asyncio only


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_hub_on_trio_fails_to_start_with_a_clear_error(prefix: str) -> None:
    hub = Hub(backend=RedisBackend(REDIS_URL, prefix=prefix))
    with anyio.fail_after(TIMEOUT), pytest.raises(BackendError, match="asyncio only"):
        async with hub:
            pass
    assert not hub.running


# ----------------------------------------------------------------------------- faults


async def test_start_fails_when_redis_cannot_be_reached() -> None:
    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", publish_timeout=2)
    with anyio.fail_after(TIMEOUT), pytest.raises(BackendError):
        await backend.start(Inbox())


async def test_a_publish_to_a_stalled_redis_fails_within_publish_timeout(prefix: str) -> None:
    async with proxy_to(REDIS_PORT) as proxy:
        backend = RedisBackend(
            f"redis://127.0.0.1:{proxy.port}/0", prefix=prefix, publish_timeout=0.5
        )
        async with started(backend):
            proxy.stalled = True
            before = anyio.current_time()
            with anyio.fail_after(TIMEOUT), pytest.raises(BackendError, match=r"0\.5 s"):
                await backend.publish("room", "team:f", item("team:f", 1), HISTORY)
            assert anyio.current_time() - before < 2
            with pytest.raises(BackendError):
                await backend.history("team:f", None, HISTORY)
            proxy.stalled = False


async def test_the_reader_reconnects_and_resubscribes_every_channel(prefix: str) -> None:
    async with proxy_to(REDIS_PORT) as proxy:
        backend = RedisBackend(
            f"redis://127.0.0.1:{proxy.port}/0",
            prefix=prefix,
            reconnect_delay=0.05,
            max_reconnect_delay=0.2,
        )
        publisher = RedisBackend(REDIS_URL, prefix=prefix)
        async with started(backend) as inbox, started(publisher):
            for room in ("room:a", "room:b"):
                await backend.subscribe("room", room)
            await publisher.publish("room", "room:a", item("room:a", 1), None)
            await inbox.wait_for(1)
            accepted = proxy.accepted
            proxy.refusing = True
            proxy.cut()
            await anyio.sleep(0.3)  # a few refused attempts, backing off
            assert proxy.accepted > accepted
            proxy.refusing = False
            with anyio.fail_after(TIMEOUT):
                while backend._shards[0].pubsub is None:
                    await anyio.sleep(0.01)
            # Resubscribed: publications on both channels arrive again.
            with anyio.fail_after(TIMEOUT):
                while len(inbox.got) < 3:
                    for room in ("room:a", "room:b"):
                        if room not in inbox.keys()[1:]:
                            await publisher.publish("room", room, item(room, 2), None)
                    await anyio.sleep(0.05)
            assert set(inbox.keys()[1:]) == {"room:a", "room:b"}


# ----------------------------------------------------------------------------- encoding


def test_the_encoding_carries_every_field_and_the_payload_untouched() -> None:
    sent = Publication(
        "team:t1", "a.b", "n-1", '{"x":"é\\n"}', 5, "u1", True, frozenset({"c1"}), None, None, "c"
    )
    body = encode_body(sent)
    assert body.count(b"\n") == 1
    assert decode_message(plain_message(body), "team:t1") == sent
    assert decode_body(body, "team:t1", 7, "e1") == sent._replace(offset=7, epoch="e1")
    assert decode_message(b"r1:7:e1:" + body, "team:t1") == sent._replace(offset=7, epoch="e1")


@pytest.mark.parametrize(
    "message",
    [b"", b"r2:::x\n1", b"r1:::", b"r1:::[1]\n2", b"r1:x:e:" + b'["t","i",1,null,0,null,0]\n1'],
)
def test_a_message_of_another_version_or_shape_is_refused(message: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_message(message, "room:a")


async def test_publishing_goes_on_after_the_connection_is_cut(prefix: str) -> None:
    async with proxy_to(REDIS_PORT) as proxy:
        backend = RedisBackend(
            f"redis://127.0.0.1:{proxy.port}/0", prefix=prefix, publish_timeout=2
        )
        async with started(backend):
            first = await backend.publish("room", "team:g", item("team:g", 1), HISTORY)
            proxy.cut()
            with anyio.fail_after(TIMEOUT):
                while True:
                    try:
                        second = await backend.publish("room", "team:g", item("team:g", 2), HISTORY)
                        break
                    except BackendError:  # the cut connection's command, at most
                        await anyio.sleep(0.05)
            # Offsets stay consecutive across the cut: nothing is assigned twice.
            assert second.epoch == first.epoch
            found = await backend.history("team:g", StreamPosition(0, first.epoch or ""), HISTORY)
            assert [p.offset for p in found.publications] == list(
                range(1, found.position.offset + 1)
            )
