"""MemoryBackend: one process, no broker; history and presence kept in memory."""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Final

from ..config import check_positive
from ..options import History
from ..wire import StreamPosition
from .base import (
    DEFAULT_POSITION_TTL,
    Backend,
    ChannelKind,
    Delivery,
    HistoryResult,
    PresenceEntry,
    Publication,
)

__all__ = ["MemoryBackend"]

#: Rooms with history whose streams are checked for expiry per publish (amortized sweep).
_SWEEP_BATCH: Final = 8


class _Stream:
    __slots__ = ("entries", "epoch", "idle_until", "top")

    def __init__(self, size: int, idle_until: float) -> None:
        self.epoch = secrets.token_hex(8)
        self.top = 0
        # The position of a stream nobody publishes to or reads is forgotten
        # after position_ttl; its messages expire sooner, after one ttl each.
        self.idle_until = idle_until
        # (expires_at, publication), oldest first; maxlen prunes by size.
        self.entries: deque[tuple[float, Publication]] = deque(maxlen=size)


class MemoryBackend(Backend):
    """The embedded default: delivery, history and presence inside one process.

    Publishing is synchronous underneath: an offset is assigned, the message
    stored and handed to the hub in one step, so order and recovery need no
    locks. History is bounded by each namespace's ``History.size`` and ``ttl``.
    A room's position (its latest offset and its epoch) outlives the messages:
    it is kept for ``position_ttl`` after the room's last publish or read, so
    that a client coming back after a quiet period in which every message
    expired, but which missed none of them, is told `recovered: true`. Only
    a room quiet for longer than ``position_ttl`` is forgotten, and its next
    publish starts a new epoch.

    Args:
        clock: monotonic seconds, for history expiry (tests pass a manual clock).
        position_ttl: seconds a room's position is kept after its last publish
            or read (a day by default). Never shorter than the namespace's
            `History.ttl` in effect: a position is kept at least as long as
            its messages.

    Raises:
        ValueError: ``position_ttl`` is not a positive number.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        position_ttl: float = DEFAULT_POSITION_TTL,
    ) -> None:
        self._clock = clock
        self.position_ttl = check_positive("position_ttl", position_ttl)
        self._deliver: Delivery | None = None
        self._streams: dict[str, _Stream] = {}
        self._presence: dict[str, dict[str, PresenceEntry]] = {}

    async def start(self, deliver: Delivery) -> None:
        """Start handing publications to ``deliver``."""
        self._deliver = deliver

    async def aclose(self) -> None:
        """Stop delivering and drop every subscription."""
        self._deliver = None

    async def subscribe(self, kind: ChannelKind, key: str) -> None:
        """Nothing to do: the one node receives every publication.

        The hub drops publications for rooms and users it has no members for,
        so tracking subscriptions here would only cost memory.
        """

    async def unsubscribe(self, kind: ChannelKind, key: str) -> None:
        """Nothing to do (see [`subscribe()`][roomcast.backends.memory.MemoryBackend.subscribe])."""

    async def publish(
        self, kind: ChannelKind, key: str, publication: Publication, history: History | None
    ) -> Publication:
        """Store (when the room keeps history) and deliver ``publication``, in one step."""
        return self.publish_now(kind, key, publication, history)

    def publish_now(
        self, kind: ChannelKind, key: str, publication: Publication, history: History | None
    ) -> Publication:
        """[`publish()`][roomcast.backends.memory.MemoryBackend.publish] without a coroutine.

        The hub calls this directly, which saves a coroutine per publish, when
        ``publish`` is not overridden: a subclass that overrides ``publish``
        is always called through it.
        """
        if history is not None and kind == "room" and not publication.ephemeral:
            publication = self._append(key, publication, history)
        deliver = self._deliver
        if deliver is not None:
            deliver(kind, key, publication)
        return publication

    def _append(self, room: str, publication: Publication, history: History) -> Publication:
        now = self._clock()
        stream = self._stream(room, now, history)
        stream.top += 1
        publication = publication._replace(offset=stream.top, epoch=stream.epoch)
        stream.entries.append((now + history.ttl, publication))
        self._sweep(now)
        return publication

    def _stream(self, room: str, now: float, history: History) -> _Stream:
        """The room's live stream (expired entries pruned), started anew if it was lost."""
        stream = self._live_stream(room, now)
        keep_until = now + max(self.position_ttl, history.ttl)
        if stream is None:
            stream = self._streams[room] = _Stream(history.size, keep_until)
        else:
            stream.idle_until = keep_until
        return stream

    def _live_stream(self, room: str, now: float) -> _Stream | None:
        """The room's stream with expired entries pruned; ``None`` once forgotten."""
        stream = self._streams.get(room)
        if stream is None:
            return None
        entries = stream.entries
        while entries and entries[0][0] <= now:
            entries.popleft()
        if not entries and stream.idle_until <= now:
            del self._streams[room]
            return None
        return stream

    def _sweep(self, now: float) -> None:
        # Bound memory without a background task: each publish checks a few
        # streams round-robin (live ones move to the back of the dict).
        for room in list(islice(self._streams, _SWEEP_BATCH)):
            stream = self._live_stream(room, now)
            if stream is not None:
                del self._streams[room]
                self._streams[room] = stream

    async def history(
        self,
        room: str,
        since: StreamPosition | None,
        history: History,
        *,
        limit: int | None = None,
    ) -> HistoryResult:
        """The messages after ``since`` (all, the first ``limit``, or none), or the last ones."""
        # Reading starts the stream when there is none, so the client learns the
        # epoch the next messages will carry.
        stream = self._stream(room, self._clock(), history)
        position = StreamPosition(stream.top, stream.epoch)
        entries = stream.entries
        if since is None:
            if not limit:
                return HistoryResult(True, (), position)
            last = [p for _, p in islice(reversed(entries), limit)]
            return HistoryResult(True, tuple(reversed(last)), position)
        if since.epoch != stream.epoch or since.offset > stream.top:
            return HistoryResult(False, (), position)
        oldest = stream.top + 1 - len(entries)
        if since.offset + 1 < oldest:
            return HistoryResult(False, (), position)
        # Offsets in the stream follow each other: the one after since is at this index.
        start = since.offset + 1 - oldest
        stop = None if limit is None else start + limit
        return HistoryResult(True, tuple(p for _, p in islice(entries, start, stop)), position)

    async def presence_add(self, room: str, entry: PresenceEntry) -> None:
        """Record ``entry`` in ``room``."""
        self._presence.setdefault(room, {})[entry.client_id] = entry

    async def presence_remove(self, room: str, client_id: str) -> None:
        """Forget ``client_id`` in ``room``."""
        entries = self._presence.get(room)
        if entries is not None:
            entries.pop(client_id, None)
            if not entries:
                del self._presence[room]

    async def presence(self, room: str) -> list[PresenceEntry]:
        """Every connection present in ``room``."""
        return list(self._presence.get(room, {}).values())


#: `MemoryBackend.publish_now()`'s signature.
_PublishNow = Callable[[ChannelKind, str, Publication, History | None], Publication]


def _publishes_in_place(backend: Backend) -> _PublishNow | None:
    """``backend.publish_now``, for a MemoryBackend whose ``publish()`` no subclass overrides.

    The hub then publishes without a coroutine; an overridden ``publish()``
    is always called through.
    """
    if isinstance(backend, MemoryBackend) and type(backend).publish is MemoryBackend.publish:
        return backend.publish_now
    return None


def _backend_publish_now(
    kind: ChannelKind, key: str, publication: Publication, history: History | None
) -> Publication:
    """What `_publishes_in_place()` stands for when it found nothing: never called."""
    raise RuntimeError("the backend does not publish in place")


def _receives_everything(backend: Backend) -> bool:
    """Whether ``backend`` hands its node every publication, subscribed or not.

    True of a MemoryBackend whose ``subscribe()`` and ``unsubscribe()`` no
    subclass overrides: the hub then keeps no table of its channels.
    """
    cls = type(backend)
    return (
        isinstance(backend, MemoryBackend)
        and cls.subscribe is MemoryBackend.subscribe
        and cls.unsubscribe is MemoryBackend.unsubscribe
    )
