"""RedisBackend: several roomcast nodes share rooms, history and presence through Redis.

Install the extra: ``pip install "roomcast[redis]"``. This backend runs on
asyncio only, because redis-py's asyncio client does: a hub that uses it
under trio fails to start with a [`BackendError`][roomcast.BackendError].
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import secrets
import zlib
from collections.abc import Awaitable, Sequence
from typing import Any, Final, TypeVar

import anyio
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from ..config import (
    DEFAULT_MAX_RECONNECT_DELAY,
    DEFAULT_PUBLISH_TIMEOUT,
    DEFAULT_RECONNECT_DELAY,
    check_positive,
)
from ..exceptions import BackendError
from ..options import History
from ..wire import StreamPosition
from ._redis_codec import (
    VERSION,
    MalformedMessage,
    decode_body,
    decode_message,
    encode_body,
    plain_message,
)
from ._redis_scripts import HISTORY, PUBLISH
from .base import (
    DEFAULT_POSITION_TTL,
    Backend,
    ChannelKind,
    Delivery,
    HistoryResult,
    PresenceEntry,
    Publication,
)

__all__ = ["RedisBackend"]

logger = logging.getLogger("roomcast.backends.redis")


_T = TypeVar("_T")
# What a stopped or failed broker raises underneath redis-py, besides its own errors.
_FAILURES: Final = (RedisError, OSError, TimeoutError)


class _Shard:
    """One Redis: a client for commands, one pub/sub connection, the channels it carries."""

    __slots__ = (
        "channels",
        "client",
        "connected",
        "history",
        "owned",
        "publish",
        "pubsub",
        "waiting",
    )

    def __init__(self, client: Redis, owned: bool) -> None:
        self.client = client
        self.owned = owned
        self.publish = client.register_script(PUBLISH)
        self.history = client.register_script(HISTORY)
        # Channel name -> (kind, key) of every channel this node receives from here.
        self.channels: dict[bytes, tuple[ChannelKind, str]] = {}
        self.pubsub: PubSub | None = None
        # Subscriptions sent and not yet confirmed by Redis, by channel.
        self.waiting: dict[bytes, list[anyio.Event]] = {}
        # Set while the pub/sub connection is up and subscribed to every channel.
        self.connected = anyio.Event()


class RedisBackend(Backend):
    """Rooms shared by several nodes through Redis, with the promises of one node.

    Each room, user and node is one Redis pub/sub channel; a node subscribes
    only to the channels it has local members for, so it receives no traffic
    for other rooms. A publish to a room with history runs one Lua script that
    assigns the next offset, creates the epoch when missing, appends to the
    room's stream (trimmed to `History.size`, expiring after `History.ttl`) and
    publishes, atomically: offsets have no gaps and every node agrees on them.
    The room's position outlives its messages by ``position_ttl``.

    Give exactly one of ``url``, ``client`` and ``shards``.

    Args:
        url: a Redis URL, such as ``redis://127.0.0.1:6379/0``.
        prefix: the start of every key and channel name, so that several
            applications (or test runs) can share one Redis.
        client: a `redis.asyncio.Redis` the application already has; it is
            used and never closed.
        shards: several Redis URLs: each room, user and node lives on one of
            them, by a stable hash of its name.
        position_ttl: seconds a room's position (offset and epoch) is kept
            after its last publish or read.
        publish_timeout: seconds a publish, subscribe, history or presence
            call may take before it fails with
            [`BackendError`][roomcast.BackendError].
        reconnect_delay: seconds of the first pause before the pub/sub
            connection is made again; each failure doubles it, up to
            ``max_reconnect_delay``, and each pause is drawn at random below it
            (full jitter).
        max_reconnect_delay: the longest pause between two attempts.

    Raises:
        ValueError: not exactly one of ``url``, ``client`` and ``shards``, an
            empty ``prefix``, a URL Redis does not accept, or a number that is
            not positive.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "roomcast",
        client: Redis | None = None,
        shards: Sequence[str] | None = None,
        position_ttl: float = DEFAULT_POSITION_TTL,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
        reconnect_delay: float = DEFAULT_RECONNECT_DELAY,
        max_reconnect_delay: float = DEFAULT_MAX_RECONNECT_DELAY,
    ) -> None:
        if sum(given is not None for given in (url, client, shards)) != 1:
            raise ValueError("give exactly one of url, client and shards")
        if not isinstance(prefix, str) or not prefix or any(c.isspace() for c in prefix):
            raise ValueError(f"prefix must be a non-empty string without spaces, got {prefix!r}")
        self.prefix = prefix
        self.position_ttl = check_positive("position_ttl", position_ttl)
        self.publish_timeout = check_positive("publish_timeout", publish_timeout)
        self.reconnect_delay = check_positive("reconnect_delay", reconnect_delay)
        self.max_reconnect_delay = check_positive("max_reconnect_delay", max_reconnect_delay)
        # Names this backend's own channel, which nobody publishes to.
        self._probe = secrets.token_hex(4)
        if client is not None:
            if not isinstance(client, Redis):
                raise ValueError(f"client must be a redis.asyncio.Redis, got {client!r}")
            self._shards = [_Shard(client, owned=False)]
            return
        urls = [url] if url is not None else list(shards or ())
        if not urls:
            raise ValueError("shards must name at least one Redis URL")
        self._shards = [_Shard(self._connect(u), owned=True) for u in urls]

    def _connect(self, url: object) -> Redis:
        if not isinstance(url, str):
            raise ValueError(f"a Redis URL must be a string, got {url!r}")
        try:
            return Redis.from_url(
                url, socket_connect_timeout=self.publish_timeout, socket_keepalive=True
            )
        except (ValueError, RedisError) as exc:
            raise ValueError(f"not a Redis URL Redis accepts: {exc}") from None

    _deliver: Delivery | None = None
    _readers: list[asyncio.Task[None]] = []  # noqa: RUF012 - replaced, never mutated

    # ------------------------------------------------------------------ lifecycle

    async def start(self, deliver: Delivery) -> None:
        """Check that every Redis answers, then start one pub/sub reader per shard.

        Raises:
            BackendError: a Redis cannot be reached, or the hub does not run on
                asyncio (redis-py's asyncio client needs it).
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise BackendError(
                "RedisBackend runs on asyncio only (redis-py's asyncio client), and this "
                "hub runs on another event loop, such as trio: run the app on asyncio, "
                "or use another backend"
            ) from None
        for shard in self._shards:
            await self._command(shard.client.ping())
        self._deliver = deliver
        # The readers are this backend's own tasks, started here and cancelled and
        # awaited by aclose(): the Backend seam hands start() no task group, and a
        # task group entered here could not be left from aclose(), which the hub
        # calls inside scopes of its own.
        self._readers = [
            asyncio.create_task(self._read(shard), name="roomcast redis pub/sub")
            for shard in self._shards
        ]
        try:
            for shard in self._shards:
                with anyio.fail_after(self.publish_timeout):
                    await shard.connected.wait()
        except TimeoutError:
            await self.aclose()
            raise BackendError("Redis pub/sub did not connect in time") from None

    async def aclose(self) -> None:
        """Stop the readers and close the connections this backend opened."""
        self._deliver = None
        readers, self._readers = self._readers, []
        for reader in readers:
            reader.cancel()
        with anyio.CancelScope(shield=True):
            if readers:
                await asyncio.wait(readers)
            for shard in self._shards:
                shard.channels.clear()
                if shard.owned:
                    await shard.client.aclose()

    # ------------------------------------------------------------------ channels

    def _shard(self, key: str) -> _Shard:
        shards = self._shards
        if len(shards) == 1:
            return shards[0]
        return shards[zlib.crc32(key.encode()) % len(shards)]

    def _channel(self, kind: ChannelKind, key: str) -> bytes:
        return f"{self.prefix}:{kind}:{key}".encode()

    async def subscribe(self, kind: ChannelKind, key: str) -> None:
        """Receive the channel here; returns once Redis has confirmed the subscription.

        Raises:
            BackendError: Redis did not confirm it within ``publish_timeout``.
        """
        shard = self._shard(key)
        channel = self._channel(kind, key)
        shard.channels[channel] = (kind, key)
        # A publish on another connection is ordered after the subscription
        # only once Redis has confirmed it, which the reader sees.
        confirmed = anyio.Event()
        shard.waiting.setdefault(channel, []).append(confirmed)
        try:
            pubsub = shard.pubsub
            if pubsub is not None:  # else reconnecting: the reader subscribes to all
                await self._command(pubsub.subscribe(channel))
            await self._command(confirmed.wait())
        except BaseException:
            shard.channels.pop(channel, None)
            waiting = shard.waiting.get(channel, [])
            if confirmed in waiting:
                waiting.remove(confirmed)
            raise

    async def unsubscribe(self, kind: ChannelKind, key: str) -> None:
        """Stop receiving the channel; nothing of it is delivered from now on."""
        shard = self._shard(key)
        channel = self._channel(kind, key)
        if shard.channels.pop(channel, None) is None:
            return
        pubsub = shard.pubsub
        if pubsub is not None:
            try:
                await self._command(pubsub.unsubscribe(channel))
            except BackendError:
                logger.debug("unsubscribe failed; the reconnect will leave it out")

    async def _read(self, shard: _Shard) -> None:
        """Read one shard's pub/sub connection, reconnecting with backoff and full jitter."""
        failures = 0
        while True:
            pubsub = shard.client.pubsub()
            try:
                # A channel of its own, so that the connection is in subscribed
                # mode (and can be read) before the hub subscribes anything.
                # The pub/sub object remembers them too: a reconnect redis-py
                # makes by itself (its retries) subscribes them again.
                channels = set(shard.channels)
                await pubsub.subscribe(self._own_channel(), *channels)
                shard.pubsub = pubsub
                # Those that subscribe() registered while the first was on its way.
                if missed := shard.channels.keys() - channels:
                    await pubsub.subscribe(*missed)
                shard.connected.set()
                failures = 0
                await self._receive(shard, pubsub)
            except _FAILURES as exc:
                failures += 1
                logger.warning("Redis pub/sub connection lost (%s); reconnecting", exc)
            except Exception:  # a bug must not stop delivery for good
                failures += 1
                logger.exception("Redis pub/sub reader failed; reconnecting")
            finally:
                shard.pubsub = None
                if shard.connected.is_set():
                    shard.connected = anyio.Event()
                with anyio.CancelScope(shield=True):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            ceiling = min(self.max_reconnect_delay, self.reconnect_delay * 2 ** min(failures, 30))
            await anyio.sleep(random.uniform(0, ceiling))

    def _own_channel(self) -> bytes:
        return f"{self.prefix}:probe:{self._probe}".encode()

    async def _receive(self, shard: _Shard, pubsub: PubSub) -> None:
        channels = shard.channels
        while True:
            response = await pubsub.parse_response(block=True)
            if not isinstance(response, list) or len(response) != 3:
                continue
            kind_of_reply, channel, data = response
            if isinstance(channel, str):
                channel = channel.encode()
            if kind_of_reply not in (b"message", "message"):
                # Subscription replies keep redis-py's own bookkeeping right.
                await pubsub.handle_message(response)  # type: ignore[no-untyped-call]
                if kind_of_reply in (b"subscribe", "subscribe"):
                    for confirmed in shard.waiting.pop(channel, ()):
                        confirmed.set()
                continue
            target = channels.get(channel)
            deliver = self._deliver
            if target is None or deliver is None:
                continue  # unsubscribed meanwhile: nothing after unsubscribe()
            kind, key = target
            if isinstance(data, str):
                data = data.encode()
            try:
                publication = decode_message(data, key if kind == "room" else None)
            except MalformedMessage:
                logger.warning("dropped a message this roomcast cannot read on %r", channel)
                continue
            deliver(kind, key, publication)

    # ------------------------------------------------------------------ publishing

    async def _command(self, call: Awaitable[_T]) -> _T:
        """Await one broker call, bounded by ``publish_timeout``; failures become BackendError."""
        try:
            with anyio.fail_after(self.publish_timeout):
                return await call
        except TimeoutError:
            raise BackendError(f"Redis did not answer within {self.publish_timeout:g} s") from None
        except (RedisError, OSError) as exc:
            raise BackendError(f"Redis failed: {type(exc).__name__}: {exc}") from exc

    def _keys(self, room: str) -> list[str]:
        return [f"{self.prefix}:position:{room}", f"{self.prefix}:stream:{room}"]

    def _ttls(self, history: History) -> tuple[int, int]:
        """The stream's ttl in milliseconds and the position's in seconds (never shorter)."""
        stream_ms = max(1, math.ceil(history.ttl * 1000))
        return stream_ms, math.ceil(max(self.position_ttl, history.ttl))

    async def publish(
        self, kind: ChannelKind, key: str, publication: Publication, history: History | None
    ) -> Publication:
        """Send ``publication``; with history, append it and send it in one atomic step.

        Raises:
            BackendError: Redis failed or did not answer within
                ``publish_timeout``; the publication may have been sent.
        """
        shard = self._shard(key)
        channel = self._channel(kind, key)
        body = encode_body(publication)
        if history is None or kind != "room" or publication.ephemeral:
            await self._command(shard.client.publish(channel, plain_message(body)))
            return publication
        stream_ms, position_s = self._ttls(history)
        offset, epoch = await self._command(
            shard.publish(
                keys=self._keys(key),
                args=[body, history.size, stream_ms, position_s, _new_epoch(), channel, VERSION],
            )
        )
        return publication._replace(offset=int(offset), epoch=_text(epoch))

    async def history(
        self, room: str, since: StreamPosition | None, history: History
    ) -> HistoryResult:
        """Exactly the messages after ``since``, or none and ``recovered: False``.

        Raises:
            BackendError: Redis failed or did not answer in time.
        """
        _, position_s = self._ttls(history)
        args: list[Any] = [_new_epoch(), position_s, "", ""]
        if since is not None:
            args[2:] = [since.offset, since.epoch]
        top, epoch, entries = await self._command(
            self._shard(room).history(keys=self._keys(room), args=args)
        )
        position = StreamPosition(int(top), _text(epoch))
        if since is None:
            return HistoryResult(True, (), position)
        missed = position.offset - since.offset
        if since.epoch != position.epoch or missed < 0:
            return HistoryResult(False, (), position)
        epoch = position.epoch
        publications = tuple(
            decode_body(_bytes(fields[1]), room, int(_text(entry_id).partition("-")[0]), epoch)
            for entry_id, fields in entries
        )
        # Never partial: exactly the offsets since+1 .. top, or nothing at all.
        if len(publications) != missed or (
            publications and publications[0].offset != since.offset + 1
        ):
            return HistoryResult(False, (), position)
        return HistoryResult(True, publications, position)

    # ------------------------------------------------------------------ presence

    def _presence_key(self, room: str) -> str:
        return f"{self.prefix}:presence:{room}"

    async def presence_add(self, room: str, entry: PresenceEntry) -> None:
        """Record ``entry`` in ``room``; the room's entries expire after ``position_ttl``.

        Raises:
            BackendError: Redis failed or did not answer in time.
        """
        client = self._shard(room).client
        key = self._presence_key(room)
        value = json.dumps([entry.user_id, entry.info], separators=(",", ":"))
        async with client.pipeline(transaction=True) as pipe:
            pipe.hset(key, entry.client_id, value)
            pipe.expire(key, math.ceil(self.position_ttl))
            await self._command(pipe.execute())

    async def presence_remove(self, room: str, client_id: str) -> None:
        """Forget ``client_id`` in ``room``.

        Raises:
            BackendError: Redis failed or did not answer in time.
        """
        await self._command(self._shard(room).client.hdel(self._presence_key(room), client_id))

    async def presence(self, room: str) -> list[PresenceEntry]:
        """Every connection present in ``room``, on every node.

        Raises:
            BackendError: Redis failed or did not answer in time.
        """
        found: dict[Any, Any] = await self._command(
            self._shard(room).client.hgetall(self._presence_key(room))
        )
        entries = []
        for client_id, value in found.items():
            user_id, info = json.loads(value)
            entries.append(PresenceEntry(_text(client_id), user_id, info))
        return entries


def _new_epoch() -> str:
    return secrets.token_hex(8)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value
