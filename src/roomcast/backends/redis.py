"""RedisBackend: several roomcast nodes share rooms, history and presence through Redis.

Install the extra: ``pip install "roomcast[redis]"``. This backend runs on
asyncio only, because redis-py's asyncio client does: a hub that uses it
under trio fails to start with a [`BackendError`][roomcast.BackendError].
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import zlib
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..config import (
    DEFAULT_MAX_RECONNECT_DELAY,
    DEFAULT_PRESENCE_LEASE,
    DEFAULT_PROBE_INTERVAL,
    DEFAULT_PROBE_TIMEOUT,
    DEFAULT_PUBLISH_TIMEOUT,
    DEFAULT_RECONNECT_DELAY,
    check_positive,
)
from ..exceptions import BackendError
from ..options import History
from ..wire import StreamPosition
from ._redis_codec import VERSION, decode_body, encode_body, plain_message
from ._redis_pipeline import Writer
from ._redis_presence import Leases
from ._redis_supervise import Reader, Shard, aggregate
from .base import (
    DEFAULT_POSITION_TTL,
    Backend,
    BackendStatus,
    ChannelKind,
    Delivery,
    HistoryResult,
    PresenceEntry,
    Publication,
)

__all__ = ["RedisBackend"]

logger = logging.getLogger("roomcast.backends.redis")


_T = TypeVar("_T")


class RedisBackend(Backend):
    """Rooms shared by several nodes through Redis, with the promises of one node.

    Each room, user and node is one Redis pub/sub channel; a node subscribes
    only to the channels it has local members for, so it receives no traffic
    for other rooms. A publish to a room with history runs one Lua script that
    assigns the next offset, creates the epoch when missing, appends to the
    room's stream (trimmed to `History.size`, expiring after `History.ttl`) and
    publishes, atomically: offsets have no gaps and every node agrees on them.
    The room's position outlives its messages by ``position_ttl``. Publishes
    made while one is on its way to the same Redis go out together, as one
    pipeline, in the order they were made.

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
        probe_interval: seconds between two probes of each pub/sub connection:
            a message to the node's own channel, expected back within
            ``probe_timeout``, or the connection is dropped and made again
            (it was black-holed: open, but delivering nothing).
        probe_timeout: seconds a probe may take to come back.
        presence_lease: seconds within which the presence entries of a node
            that died (without leaving its rooms) disappear, each with a
            `presence.leave` event; live nodes hold theirs again every third
            of it.

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
        probe_interval: float = DEFAULT_PROBE_INTERVAL,
        probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
        presence_lease: float = DEFAULT_PRESENCE_LEASE,
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
        self.probe_interval = check_positive("probe_interval", probe_interval)
        self.probe_timeout = check_positive("probe_timeout", probe_timeout)
        self.presence_lease = check_positive("presence_lease", presence_lease)
        # Names this backend's own channel, where only its probes go.
        self._probe = secrets.token_hex(4)
        self._leases = Leases(
            prefix, self.presence_lease, self._probe, self._shard, self._command, self._leave
        )
        if client is not None:
            if not isinstance(client, Redis):
                raise ValueError(f"client must be a redis.asyncio.Redis, got {client!r}")
            self._shards = [Shard(client, owned=False)]
        else:
            urls = [url] if url is not None else list(shards or ())
            if not urls:
                raise ValueError("shards must name at least one Redis URL")
            self._shards = [Shard(self._connect(u), owned=True) for u in urls]
        # Each shard's publishes, sent as one pipeline when several wait at once.
        self._writers = [Writer(s.client, self.publish_timeout) for s in self._shards]

    def _connect(self, url: object) -> Redis:
        if not isinstance(url, str):
            raise ValueError(f"a Redis URL must be a string, got {url!r}")
        try:
            return Redis.from_url(
                url, socket_connect_timeout=self.publish_timeout, socket_keepalive=True
            )
        except (ValueError, RedisError) as exc:
            raise ValueError(f"not a Redis URL Redis accepts: {exc}") from None

    _readers: list[Reader] = []  # noqa: RUF012 - replaced, never mutated
    _tasks: list[asyncio.Task[None]] = []  # noqa: RUF012 - replaced, never mutated

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
        self._readers = [self._reader(shard, deliver) for shard in self._shards]
        for writer in self._writers:
            writer.open()
        # The readers and the presence leases are this backend's own tasks,
        # started here and cancelled and awaited by aclose(): the Backend seam
        # hands start() no task group, and a task group entered here could not
        # be left from aclose(), which the hub calls inside scopes of its own.
        self._tasks = [
            *(asyncio.create_task(r.run(), name="roomcast redis pub/sub") for r in self._readers),
            asyncio.create_task(self._leases.hold(), name="roomcast redis presence"),
            *(asyncio.create_task(w.run(), name="roomcast redis writer") for w in self._writers),
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
        for reader in self._readers:
            reader.deliver = None
        for writer in self._writers:
            writer.stop()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            if tasks:
                await asyncio.wait(tasks)
            for writer in self._writers:
                writer.close()
            for shard in self._shards:
                shard.channels.clear()
                if shard.owned:
                    await shard.client.aclose()

    # ------------------------------------------------------------------ channels

    def _shard(self, key: str) -> Shard:
        return self._shards[self._index(key)]

    def _index(self, key: str) -> int:
        count = len(self._shards)
        return 0 if count == 1 else zlib.crc32(key.encode()) % count

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

    def _reader(self, shard: Shard, deliver: Delivery) -> Reader:
        reader = Reader(
            shard,
            f"{self.prefix}:probe:{self._probe}".encode(),
            probe_interval=self.probe_interval,
            probe_timeout=self.probe_timeout,
            reconnect_delay=self.reconnect_delay,
            max_reconnect_delay=self.max_reconnect_delay,
            close_timeout=self.publish_timeout,
            resynced=self._resynced,
        )
        reader.deliver = deliver
        return reader

    def status(self) -> BackendStatus:
        """The link to every Redis: connected only when every shard's pub/sub is up.

        ``reconnects`` counts every shard's, ``last_error`` is the latest
        failure of any, and ``lag`` the slowest shard's last probe.
        """
        return aggregate(self._shards)

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
        index = self._index(key)
        shard, writer = self._shards[index], self._writers[index]
        channel = self._channel(kind, key)
        body = encode_body(publication)
        if history is None or kind != "room" or publication.ephemeral:
            await self._command(writer.send("PUBLISH", channel, plain_message(body)))
            return publication
        stream_ms, position_s = self._ttls(history)
        args = (body, history.size, stream_ms, position_s, _new_epoch(), channel, VERSION)
        offset, epoch = await self._command(
            writer.send(2, *self._keys(key), *args, script=shard.publish)
        )
        return publication._replace(offset=int(offset), epoch=_text(epoch))

    async def history(
        self,
        room: str,
        since: StreamPosition | None,
        history: History,
        *,
        limit: int | None = None,
    ) -> HistoryResult:
        """The messages right after ``since`` (at most ``limit``), or none and ``recovered: False``.

        Without ``since``, the room's last ``limit`` messages (none without a
        limit). One script reads the position and the messages, atomically.

        Raises:
            BackendError: Redis failed or did not answer in time.
        """
        _, position_s = self._ttls(history)
        args: list[Any] = [_new_epoch(), position_s, "", "", "" if limit is None else limit]
        if since is not None:
            args[2:4] = [since.offset, since.epoch]
        top, epoch, entries = await self._command(
            self._shard(room).history(keys=self._keys(room), args=args)
        )
        position = StreamPosition(int(top), _text(epoch))
        epoch = position.epoch
        publications = tuple(
            decode_body(_bytes(fields[1]), room, int(_text(entry_id).partition("-")[0]), epoch)
            for entry_id, fields in entries
        )
        if since is None:
            return HistoryResult(True, publications[::-1], position)
        missed = position.offset - since.offset
        if since.epoch != position.epoch or missed < 0:
            return HistoryResult(False, (), position)
        expected = missed if limit is None else min(missed, limit)
        # Never partial: exactly the offsets since+1 .. since+expected, or nothing at all.
        if len(publications) != expected or (
            publications and publications[0].offset != since.offset + 1
        ):
            return HistoryResult(False, (), position)
        return HistoryResult(True, publications, position)

    # ------------------------------------------------------------------ presence

    async def presence_add(self, room: str, entry: PresenceEntry) -> None:
        """Record ``entry`` in ``room``, held by this node's lease.

        Raises:
            BackendError: Redis failed or did not answer in time.
        """
        await self._leases.add(room, entry)

    async def presence_remove(self, room: str, client_id: str) -> None:
        """Forget ``client_id`` in ``room``.

        Raises:
            BackendError: Redis failed or did not answer in time.
        """
        await self._leases.remove(room, client_id)

    async def presence(self, room: str) -> list[PresenceEntry]:
        """Every connection present in ``room``, on every node, one entry per connection.

        A user with two connections has two entries with the same ``user_id``.
        Entries whose lease ran out are removed first, and their
        `presence.leave` published.

        Raises:
            BackendError: Redis failed or did not answer in time.
        """
        return await self._leases.entries(room)

    async def _leave(self, room: str, publication: Publication) -> None:
        await self.publish("room", room, publication, None)


def _new_epoch() -> str:
    return secrets.token_hex(8)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value
