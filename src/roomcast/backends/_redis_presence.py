"""RedisBackend's presence: entries held by per-node leases, so a dead node leaves no ghosts.

A room's entries are a hash (client id -> ``[user_id, info]``) and a sorted set
of lease expiries on Redis's own clock. Each node holds its own entries again
every ``presence_lease / 3``, for ``2/3`` of the lease; every call on a room
(and each node's background pass over the rooms it has entries in) first
removes, in one Lua step, the entries whose lease ran out. The one caller that
removed an entry publishes its ``presence.leave``: exactly once, within the
lease of the node's death.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

from ._redis_supervise import Shard
from .base import PresenceEntry, Publication

__all__ = ["Leases"]

logger = logging.getLogger("roomcast.backends.redis")

_T = TypeVar("_T")
_NOBODY: frozenset[str] = frozenset()


class Leases:
    """This node's presence entries, and the leases that hold them in Redis."""

    def __init__(
        self,
        prefix: str,
        lease: float,
        node: str,
        shard: Callable[[str], Shard],
        command: Callable[[Awaitable[Any]], Awaitable[Any]],
        publish: Callable[[str, Publication], Awaitable[object]],
    ) -> None:
        self.prefix = prefix
        self.lease = lease
        self._held_ms = max(1, math.ceil(lease * 2000 / 3))
        self._key_ttl = max(1, math.ceil(lease * 2))
        self._node = node
        self._shard = shard
        self._command = command
        self._publish = publish
        self._ids = itertools.count(1)
        #: room -> client id -> the entry as stored, for every entry of this node.
        self.local: dict[str, dict[str, str]] = {}

    def _keys(self, room: str) -> list[str]:
        return [f"{self.prefix}:presence:{room}", f"{self.prefix}:presence-lease:{room}"]

    async def _run(self, room: str, hold: dict[str, str], everything: bool) -> list[Any]:
        args: list[Any] = [self._held_ms, self._key_ttl, "1" if everything else "0"]
        for pair in hold.items():
            args.extend(pair)
        expired, found = await self._command(
            self._shard(room).presence(keys=self._keys(room), args=args)
        )
        for client_id, value in zip(expired[::2], expired[1::2], strict=True):
            await self._leave(room, _text(client_id), value)
        return list(zip(found[::2], found[1::2], strict=True))

    async def _leave(self, room: str, client_id: str, value: bytes | str) -> None:
        user_id, info = json.loads(value)
        payload = json.dumps(
            {"userId": user_id, "clientId": client_id, "info": info}, separators=(",", ":")
        )
        publication = Publication(
            room,
            "presence.leave",
            f"{self._node}-l{next(self._ids):x}",
            payload,
            int(time.time() * 1000),
            user_id,
            True,
            _NOBODY,
        )
        await self._publish(room, publication)

    async def add(self, room: str, entry: PresenceEntry) -> None:
        value = json.dumps([entry.user_id, entry.info], separators=(",", ":"))
        self.local.setdefault(room, {})[entry.client_id] = value
        await self._run(room, {entry.client_id: value}, False)

    async def remove(self, room: str, client_id: str) -> None:
        held = self.local.get(room)
        if held is not None:
            held.pop(client_id, None)
            if not held:
                del self.local[room]
        await self._forget(room, client_id)

    async def _forget(self, room: str, client_id: str) -> None:
        client = self._shard(room).client
        hash_key, lease_key = self._keys(room)
        async with client.pipeline(transaction=True) as pipe:
            pipe.hdel(hash_key, client_id)
            pipe.zrem(lease_key, client_id)
            await self._command(pipe.execute())

    async def entries(self, room: str) -> list[PresenceEntry]:
        found = await self._run(room, {}, True)
        entries = []
        for client_id, value in found:
            user_id, info = json.loads(value)
            entries.append(PresenceEntry(_text(client_id), user_id, info))
        return entries

    async def hold(self) -> None:
        """Hold this node's entries again, and sweep their rooms, every third of the lease."""
        while True:
            await anyio.sleep(self.lease / 3)
            for room, held in list(self.local.items()):
                holding = dict(held)
                try:
                    await self._run(room, holding, False)
                    # Removed while held again: remove it again, or it would linger.
                    for client_id in holding.keys() - self.local.get(room, {}).keys():
                        await self._forget(room, client_id)
                except Exception:  # Redis away: the next pass tries again
                    logger.warning("could not hold the presence of %r", room, exc_info=True)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
