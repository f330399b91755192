"""RedisBackend's pub/sub readers: one per Redis, reconnecting, probing and reporting.

Each shard's reader owns that shard's pub/sub connection. It makes it again
(exponential backoff, full jitter) whenever it fails; it never lets redis-py
make it again by itself, since messages published meanwhile are lost and the
hub must hear that (the resync callback). A probe task publishes to the
reader's own channel every ``probe_interval`` and expects it back within
``probe_timeout``: a connection that silently stops delivering is dropped.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Final

import anyio
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from ._redis_codec import MalformedMessage, decode_message
from ._redis_scripts import HISTORY, PRESENCE, PUBLISH
from .base import BackendStatus, ChannelKind, Delivery

__all__ = ["FAILURES", "Reader", "Shard", "aggregate"]

logger = logging.getLogger("roomcast.backends.redis")

# What a stopped or failed broker raises underneath redis-py, besides its own errors.
FAILURES: Final = (RedisError, OSError, TimeoutError)


class _Lost(Exception):
    """The pub/sub connection was made again underneath, or stopped delivering."""


class Shard:
    """One Redis: a client for commands, one pub/sub connection, the channels it carries."""

    __slots__ = (
        "channels",
        "client",
        "connected",
        "history",
        "lag",
        "last_error",
        "owned",
        "presence",
        "probe",
        "publish",
        "pubsub",
        "reconnects",
        "resync_due",
        "unconfirmed",
        "waiting",
    )

    def __init__(self, client: Redis, owned: bool) -> None:
        self.client = client
        self.owned = owned
        self.publish = client.register_script(PUBLISH)
        self.history = client.register_script(HISTORY)
        self.presence = client.register_script(PRESENCE)
        # Channel name -> (kind, key) of every channel this node receives from here.
        self.channels: dict[bytes, tuple[ChannelKind, str]] = {}
        self.pubsub: PubSub | None = None
        # Subscriptions sent and not yet confirmed by Redis, by channel.
        self.waiting: dict[bytes, list[anyio.Event]] = {}
        # Set while the pub/sub connection is up and subscribed to every channel.
        self.connected = anyio.Event()
        self.reconnects = 0
        self.last_error: tuple[float, str] | None = None
        self.lag: float | None = None
        # The probe on its way (its payload, and what it sets when back), if any.
        self.probe: tuple[bytes, anyio.Event] | None = None
        # After a reconnect: the channels whose subscription Redis has yet to
        # confirm before the hub is told to resynchronize.
        self.resync_due = False
        self.unconfirmed: set[bytes] = set()

    def failed(self, error: str) -> None:
        self.last_error = (time.time(), error)


def aggregate(shards: list[Shard]) -> BackendStatus:
    """Every shard's link as one: connected only when every shard is."""
    errors = [shard.last_error for shard in shards if shard.last_error is not None]
    lags = [shard.lag for shard in shards if shard.lag is not None]
    return BackendStatus(
        connected=all(shard.connected.is_set() for shard in shards),
        reconnects=sum(shard.reconnects for shard in shards),
        last_error=max(errors)[1] if errors else None,
        lag=max(lags) if lags else None,
    )


class Reader:
    """Reads one shard's pub/sub connection for as long as it runs (cancel it to stop)."""

    def __init__(
        self,
        shard: Shard,
        own_channel: bytes,
        *,
        probe_interval: float,
        probe_timeout: float,
        reconnect_delay: float,
        max_reconnect_delay: float,
        close_timeout: float,
        resynced: Callable[[], None],
    ) -> None:
        self.shard = shard
        self.own_channel = own_channel
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.reconnect_delay = reconnect_delay
        self.max_reconnect_delay = max_reconnect_delay
        self.close_timeout = close_timeout
        self.resynced = resynced
        #: Where publications go; ``None`` once the backend is closing.
        self.deliver: Delivery | None = None
        self._probes = 0

    async def run(self) -> None:
        """Keep the connection up, reconnecting with backoff and full jitter."""
        shard = self.shard
        failures = 0
        ever = False
        while True:
            pubsub = shard.client.pubsub()
            try:
                # A channel of its own, so that the connection is in subscribed
                # mode (and can be read) before the hub subscribes anything.
                channels = set(shard.channels)
                shard.unconfirmed = {self.own_channel, *channels}
                await pubsub.subscribe(self.own_channel, *channels)
                # A reconnect redis-py would make by itself loses messages unseen:
                # refuse it, and make it here, where it is counted and reported.
                if pubsub.connection is not None:
                    pubsub.connection.register_connect_callback(self._relinked)
                shard.pubsub = pubsub
                # Those that subscribe() registered while the first was on its way.
                if missed := shard.channels.keys() - channels:
                    await pubsub.subscribe(*missed)
                if ever:
                    shard.reconnects += 1
                    shard.resync_due = True
                    # Idle command connections may lead to the Redis that went
                    # away (a restart): the next command gets a fresh one.
                    await shard.client.connection_pool.disconnect(inuse_connections=False)
                ever = True
                shard.connected.set()
                failures = 0
                await self._supervise(pubsub)
            except (*FAILURES, _Lost) as exc:
                failures += 1
                shard.failed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
                logger.warning("Redis pub/sub connection lost (%s); reconnecting", exc)
            except Exception as exc:  # a bug must not stop delivery for good
                failures += 1
                shard.failed(f"{type(exc).__name__}: {exc}")
                logger.exception("Redis pub/sub reader failed; reconnecting")
            finally:
                shard.pubsub = None
                shard.probe = None
                if shard.connected.is_set():
                    shard.connected = anyio.Event()
                if pubsub.connection is not None:  # back to the pool: not ours any more
                    pubsub.connection.deregister_connect_callback(self._relinked)
                with anyio.CancelScope(shield=True), anyio.move_on_after(self.close_timeout):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            ceiling = min(self.max_reconnect_delay, self.reconnect_delay * 2 ** min(failures, 30))
            await anyio.sleep(random.uniform(0, ceiling))

    def _relinked(self, connection: object) -> None:
        raise _Lost("the connection was made again underneath")

    async def _supervise(self, pubsub: PubSub) -> None:
        """Read until the connection fails, or the probe finds it silent."""
        lost: list[str] = []
        failure: Exception | None = None
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._probe, lost, tasks.cancel_scope)
            try:
                await self._receive(pubsub)
            except Exception as exc:  # raised below, not wrapped in an exception group
                failure = exc
            tasks.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if lost:
            raise _Lost(lost[0])

    async def _probe(self, lost: list[str], reader: anyio.CancelScope) -> None:
        shard = self.shard
        while True:
            await anyio.sleep(self.probe_interval)
            self._probes += 1
            token = str(self._probes).encode()
            back = anyio.Event()
            shard.probe = (token, back)
            sent = time.monotonic()
            try:
                with anyio.fail_after(self.probe_timeout):
                    await shard.client.publish(self.own_channel, token)
                    await back.wait()
            except TimeoutError:
                lost.append(f"no probe came back within {self.probe_timeout:g} s")
            except (RedisError, OSError) as exc:
                lost.append(f"the probe failed: {type(exc).__name__}: {exc}")
            else:
                shard.lag = time.monotonic() - sent
                continue
            reader.cancel()
            return

    async def _receive(self, pubsub: PubSub) -> None:
        shard = self.shard
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
                    self._confirmed(channel)
                continue
            target = channels.get(channel)
            deliver = self.deliver
            if target is None or deliver is None:
                if channel == self.own_channel:
                    self._probe_back(data)
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

    def _confirmed(self, channel: bytes) -> None:
        shard = self.shard
        for confirmed in shard.waiting.pop(channel, ()):
            confirmed.set()
        shard.unconfirmed.discard(channel)
        if shard.resync_due and not shard.unconfirmed:
            # Every channel is back: what was published meanwhile never came.
            shard.resync_due = False
            try:
                self.resynced()
            except Exception:
                logger.exception("the resync callback failed")

    def _probe_back(self, data: bytes | str) -> None:
        probe = self.shard.probe
        if isinstance(data, str):
            data = data.encode()
        if probe is not None and probe[0] == data:
            probe[1].set()
