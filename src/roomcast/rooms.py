"""Rooms: this node's rooms — backend channels, joins with replay, presence, publishing, fan-out."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import anyio
from anyio.abc import TaskGroup

from ._frames import splice_event
from ._names import USER_DISCONNECT
from .backends.base import Backend, ChannelKind, HistoryResult, PresenceEntry, Publication
from .backends.memory import _backend_publish_now, _publishes_in_place, _receives_everything
from .clock import Clock
from .membership import Membership, Room
from .options import History
from .peer import Client, ClientId, deliver_all
from .settings import Settings
from .wire import StreamPosition, dumps, encode_room_reset

__all__ = ["Rooms", "encode", "room_error"]

logger = logging.getLogger("roomcast.rooms")

#: No client excluded.
NOBODY: Final[frozenset[str]] = frozenset()


def _now_ms() -> int:
    """Wall-clock milliseconds since the epoch: a message's ``timestamp``."""
    return int(time.time() * 1000)


def room_error(code: str, message: str) -> dict[str, Any]:
    """One room's failed entry in a ``subscribe`` or ``unsubscribe`` reply."""
    return {"ok": False, "error": {"code": code, "message": message}}


def encode(publication: Publication) -> str:
    """The event frame of ``publication``: the same text for every member."""
    room, type_, message_id, payload_json, timestamp, user_id, _, _, offset, epoch, _ = publication
    return splice_event(type_, room, message_id, payload_json, timestamp, user_id, offset, epoch)


_new_tuple: Final = tuple.__new__

_PublishNow = Callable[[tuple[str, ...], str, str, str | None, frozenset[str], bool], str]


class _ChannelLock:
    """The lock of one backend channel, and how many tasks hold it or wait for it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.users = 0


class Rooms:
    """This node's clients in their rooms, and the backend channels that feed them.

    Subscribes this node to a backend channel while it has a client that needs
    it: a room with members here, a user with connections here, and the node's
    own channel (for [`Hub.send_to_client()`][roomcast.Hub.send_to_client]).
    Subscriptions are serialized per channel, so a leave and a join racing on
    one room cannot leave a room with members unsubscribed, while joins to
    different rooms never wait for each other.

    The backend calls back into the fan-out, which hands each publication's
    frame, encoded once, to every member of its room without waiting.

    Attributes:
        membership: who is connected here, and in which rooms.
        clients: connected clients by id (the membership's map, read directly).
        users: each user's connected clients (the membership's map).
        rooms: rooms with members or clients joining here (the membership's map).
        published: publications delivered to this node.
        messages_out: frames handed to clients by the fan-out and replays.
        dropped: frames a client could not take (closing, or its queue overflowed).
        gaps: times a history room's messages did not follow on from the last
            one delivered here (or its position moved without them).
        resets: gaps that history could not fill, told to the members with ``room.reset``.
    """

    def __init__(self, settings: Settings, backend: Backend, node: str) -> None:
        self._settings = settings
        self._backend = backend
        self._node = node
        self._sequence = 0
        self.membership: Membership[Client] = Membership()
        # Read directly on the fan-out path; changed only through the membership.
        self.clients = self.membership.clients
        self.users = self.membership.users
        self.rooms = self.membership.rooms
        # Channels this node is subscribed to at the backend, by kind.
        self._channels: dict[ChannelKind, set[str]] = {"room": set(), "user": set(), "node": set()}
        # One lock per channel while someone changes its subscription; removed after.
        self._locks: dict[tuple[ChannelKind, str], _ChannelLock] = {}
        # A MemoryBackend delivers every publication to its one node: subscribing
        # does nothing there, and a set of this node's channels would only cost
        # memory per room (unless a subclass overrides subscribing).
        self._tracks_channels = not _receives_everything(backend)
        self._task_group: TaskGroup | None = None
        # A MemoryBackend publishes synchronously: `publish()` then calls it without a
        # coroutine, unless a subclass overrides its publish() (then always honoured).
        synchronous = _publishes_in_place(backend)
        self._backend_publish_now = synchronous or _backend_publish_now
        #: `publish()` without a coroutine, where the backend allows it; else ``None``.
        self.publish_now: _PublishNow | None = None if synchronous is None else self._publish_now
        self.published = 0
        self.messages_out = 0
        self.dropped = 0
        self.gaps = 0
        self.resets = 0

    async def start(self, task_group: TaskGroup) -> None:
        """Start the backend, delivering to this node, and subscribe the node's own channel.

        Gap fills, position checks after a backend resync and the publishes of
        `disconnect_user()` run in ``task_group``.
        """
        self._task_group = task_group
        self._backend.on_resync(self._on_resync)
        await self._backend.start(self._on_publication)
        await self.sync_channel("node", self._node)

    # ------------------------------------------------------------------ channels

    async def sync_channel(self, kind: ChannelKind, key: str) -> None:
        """Bring the backend's subscription for one channel in line with local demand.

        Serialized per channel. A channel is in ``_channels`` only once its
        subscription is complete and until its unsubscription starts, so a
        join to a room this node already receives takes no lock at all.
        """
        if not self._tracks_channels:
            return
        channels = self._channels[kind]
        if key in channels and self._wants(kind, key):
            return
        held = self._locks.get((kind, key))
        if held is None:
            held = self._locks[kind, key] = _ChannelLock()
        held.users += 1
        try:
            async with held.lock:
                wanted = self._wants(kind, key)
                have = key in channels
                if wanted and not have:
                    await self._backend.subscribe(kind, key)
                    channels.add(key)
                elif not wanted and have:
                    channels.discard(key)
                    await self._backend.unsubscribe(kind, key)
        finally:
            held.users -= 1
            if not held.users:
                del self._locks[kind, key]

    def _wants(self, kind: ChannelKind, key: str) -> bool:
        if kind == "room":
            return key in self.rooms
        if kind == "user":
            return key in self.users
        return key == self._node

    # ------------------------------------------------------------------ clients

    def add(self, client: Client) -> None:
        """Register a connected client; subscribing its user's channel is `sync_channel()`'s."""
        self.membership.add(client)

    async def remove(self, client: Client) -> None:
        """Forget a closed client: its user's channel when it was the last, and its rooms."""
        last_of_user = self.membership.remove(client)
        if last_of_user is not None:
            await self.sync_channel("user", last_of_user)
        rooms = list(client.rooms)
        for name in rooms:
            self.membership.leave(client, name)
        for name in rooms:
            await self._after_leave(client, name)

    def stop_delivery(self, client: Client) -> None:
        """A client started closing: no more fan-out to it, before its task ends."""
        self.membership.stop_delivery(client)

    # ------------------------------------------------------------------ joining, leaving

    async def position(self, name: str) -> dict[str, Any]:
        """The reply for a room the client is already in: its position, where it keeps history."""
        history = self._settings.room_options(name).history
        result: dict[str, Any] = {"ok": True}
        if history is not None:
            found = await self._backend.history(name, None, history)
            result.update(offset=found.position.offset, epoch=found.position.epoch)
        return result

    async def join(
        self, client: Client, name: str, since: StreamPosition | None, last: int | None = None
    ) -> dict[str, Any]:
        """Make ``client`` a member of room ``name``, replaying what it missed since ``since``.

        Without ``since``, ``last`` replays the room's last messages instead
        (at most that many). Live frames published meanwhile are held and
        handed over after the replay, so nothing is lost or repeated. Returns
        the room's entry of the ``subscribe`` reply.
        """
        options = self._settings.room_options(name)
        room, held = self.membership.start_join(client, name, options)
        try:
            await self.sync_channel("room", name)
            result: dict[str, Any] = {"ok": True}
            replay: tuple[Publication, ...] = ()
            top: int | None = None
            if options.history is not None:
                limit = last if since is None else None
                found = await self._backend.history(name, since, options.history, limit=limit)
                top = found.position.offset
                result.update(offset=top, epoch=found.position.epoch)
                if since is not None:
                    result["recovered"] = found.recovered
                replay = found.publications
            if client.closing:
                return room_error("internal", "connection closing")
            # No await from here on: replay, then what arrived meanwhile, then live.
            if top is not None:
                cap = room.align(top, found.position.epoch)
                if cap is not None:
                    replay = tuple(p for p in replay if (p.offset or 0) <= cap)
                    result["offset"] = top = cap
            for publication in replay:
                self._count(client.deliver(encode(publication), name))
            for offset, frame in held:
                if top is None or offset is None or offset > top:
                    self._count(client.deliver(frame, name))
            self.membership.join(client, room)
        finally:
            if self.membership.end_join(client, room):
                with anyio.CancelScope(shield=True):
                    await self.sync_channel("room", name)
        if options.presence:
            await self._backend.presence_add(name, PresenceEntry(client.id, client.user_id))
            await self._presence_event(name, "presence.join", client)
        return result

    async def leave(self, client: Client, name: str) -> bool:
        """Take ``client`` out of room ``name``; whether it was in it."""
        if not self.membership.leave(client, name):
            return False
        await self._after_leave(client, name)
        return True

    async def _after_leave(self, client: Client, name: str) -> None:
        if self._settings.room_options(name).presence:
            await self._backend.presence_remove(name, client.id)
            await self._presence_event(name, "presence.leave", client)
        if name not in self.rooms:
            await self.sync_channel("room", name)

    async def history(
        self, name: str, limit: int | None, since: StreamPosition | None
    ) -> HistoryResult | None:
        """The kept messages of room ``name``; ``None`` when its namespace keeps no history.

        Without ``since``, the last ``limit`` messages (every kept one without a
        limit); with ``since``, at most ``limit`` messages after it.
        """
        history = self._settings.room_options(name).history
        if history is None:
            return None
        if since is None and limit is None:
            limit = history.size
        return await self._backend.history(name, since, history, limit=limit)

    async def presence(self, name: str) -> list[dict[str, Any]]:
        """Who is in room ``name``, on every node."""
        entries = await self._backend.presence(name)
        return [{"userId": e.user_id, "clientId": e.client_id, "info": e.info} for e in entries]

    async def _presence_event(self, room: str, type_: str, client: Client) -> None:
        payload = dumps({"userId": client.user_id, "clientId": client.id, "info": None})
        publication = self._publication(room, type_, payload, client.user_id)
        await self._backend.publish("room", room, publication, None)

    # ------------------------------------------------------------------ publishing

    def _next_id(self) -> str:
        """A new message id: the one place they are minted (this node's id, a sequence)."""
        self._sequence += 1
        return f"{self._node}-{self._sequence:x}"

    def _publication(
        self, room: str | None, type_: str, payload_json: str, user_id: str | None
    ) -> Publication:
        """A new ephemeral publication that excludes nobody."""
        return Publication(
            room, type_, self._next_id(), payload_json, _now_ms(), user_id, True, NOBODY
        )

    def _history(self, room: str) -> History | None:
        local = self.rooms.get(room)  # its options, without parsing the name again
        return (local.options if local is not None else self._settings.room_options(room)).history

    async def publish(
        self,
        rooms: tuple[str, ...],
        type_: str,
        payload_json: str,
        user_id: str | None,
        exclude: frozenset[str],
        ephemeral: bool,
    ) -> str:
        """Publish one message to each of ``rooms`` (one id for every copy); return its id."""
        if self.publish_now is not None:
            return self.publish_now(rooms, type_, payload_json, user_id, exclude, ephemeral)
        message_id = self._next_id()
        timestamp = _now_ms()
        for room in rooms:
            publication = Publication(
                room, type_, message_id, payload_json, timestamp, user_id, ephemeral, exclude
            )
            await self._backend.publish("room", room, publication, self._history(room))
        return message_id

    def _publish_now(
        self,
        rooms: tuple[str, ...],
        type_: str,
        payload: str,
        user: str | None,
        exclude: frozenset[str],
        ephemeral: bool,
    ) -> str:
        """`publish()` on a backend that publishes in place: no coroutine at all."""
        self._sequence += 1
        mid = f"{self._node}-{self._sequence:x}"
        ts = int(time.time() * 1000)
        backend_publish = self._backend_publish_now
        local_rooms = self.rooms
        for room in rooms:
            local = local_rooms.get(room)  # its options, without parsing the name again
            options = local.options if local is not None else self._settings.room_options(room)
            # Publication(...) without its __new__, a Python function (offset, epoch
            # and client: none yet).
            fields = (room, type_, mid, payload, ts, user, ephemeral, exclude, None, None, None)
            backend_publish("room", room, _new_tuple(Publication, fields), options.history)
        return mid

    async def send_to_user(self, user_id: str, type_: str, payload_json: str) -> str:
        """Send a message to every connection of ``user_id`` on every node; return its id."""
        publication = self._publication(None, type_, payload_json, None)
        await self._backend.publish("user", user_id, publication, None)
        return publication.id

    def disconnect_user(self, user_id: str, code: int, reason: str, *, remote: bool) -> int:
        """Close the connections of ``user_id`` here and, with ``remote``, ask the other nodes to.

        Returns:
            How many connections of the user this node closed.
        """
        clients = list(self.users.get(user_id, {}).values())
        for client in clients:
            client.close(code, reason)
        if remote and self._task_group is not None:
            payload = dumps({"code": code, "reason": reason})
            publication = self._publication(None, USER_DISCONNECT, payload, None)
            self._task_group.start_soon(self._publish_quietly, "user", user_id, publication)
        return len(clients)

    async def _publish_quietly(self, kind: ChannelKind, key: str, publication: Publication) -> None:
        try:
            await self._backend.publish(kind, key, publication, None)
        except Exception:  # the caller returned long ago: nobody to raise to
            logger.warning("could not publish %s to %s %s", publication.type, kind, key)

    def _disconnect_here(self, user_id: str, publication: Publication) -> None:
        """Another node's `disconnect_user()`: close this user's connections here."""
        if publication.id.startswith(self._node + "-"):
            return  # this node closed its own before publishing
        request = json.loads(publication.payload_json)
        for client in tuple(self.users.get(user_id, {}).values()):
            client.close(int(request["code"]), str(request["reason"]))

    async def send_to_client(self, client_id: str, type_: str, payload_json: str) -> str:
        """Send a message to one connection, through the channel of the node holding it."""
        publication = self._publication(None, type_, payload_json, None)
        node, dot, _ = client_id.partition(".")
        if dot:
            await self._backend.publish("node", node, publication._replace(client=client_id), None)
        return publication.id

    # ------------------------------------------------------------------ delivery

    def _on_publication(self, kind: ChannelKind, key: str, publication: Publication) -> None:
        """Fan one publication out to this node's clients; never waits, never raises."""
        try:
            if kind == "room":
                room = self.rooms.get(key)
                if room is not None:
                    self._fan_out(room, publication)
                return
            if kind == "user":
                if publication.type == USER_DISCONNECT:
                    self._disconnect_here(key, publication)
                    return
                targets: tuple[Client, ...] = tuple(self.users.get(key, {}).values())
            elif kind == "node":
                client = self.clients.get(ClientId(publication.client or ""))
                targets = () if client is None else (client,)
            else:
                return
            dropped = deliver_all(targets, encode(publication))
            self.messages_out += len(targets) - dropped
            self.dropped += dropped
        except Exception:  # a bug here must not take down the backend's reader
            logger.exception("fan-out failed for a %s publication", kind)

    def _count(self, delivered: bool) -> None:
        if delivered:
            self.messages_out += 1
        else:
            self.dropped += 1

    def _fan_out(self, room: Room[Client], publication: Publication) -> None:
        name, type_, message_id, payload_json, timestamp, user_id, _, exclude, offset, epoch, _ = (
            publication
        )
        # The one check of a room's order: anything but the next offset of the
        # same epoch (a gap, a repeat, a new epoch, a fill under way) goes aside.
        if offset is not None and (offset != room.next_offset or epoch != room.epoch):
            verdict = room.out_of_line(offset, epoch, publication)
            if verdict == "gap":
                self._start_fill(room)
            if verdict != "deliver":
                return
        # The frame, once (as `encode()` makes it).
        frame = splice_event(
            type_, name, message_id, payload_json, timestamp, user_id, offset, epoch
        )
        # A snapshot, kept until the members change: a member closing mid-loop
        # leaves the room at once.
        members = room.recipients
        if members is None:
            members = room.recipients = tuple(room.members.values())
        if exclude:
            members = tuple(client for client in members if client.id not in exclude)
        # The hot path: one frame string for every member, no per-member
        # allocation, task or call beyond the transport's.
        dropped = deliver_all(members, frame, room.name)
        if room.joining is not None:
            for client_id, held in room.joining.items():
                if client_id not in exclude:
                    held.append((offset, frame))
        if offset is not None:  # in line, or the first: the room is now at this one
            if epoch == room.epoch:
                room.offset = offset
                room.next_offset = offset + 1
            else:
                room.advance(offset, epoch)
        self.published += 1
        self.messages_out += len(members) - dropped
        if dropped:
            self.dropped += dropped

    # ------------------------------------------------------------------ gaps

    def _start_fill(self, room: Room[Client]) -> None:
        """Fill ``room``'s gap from history, in the background; live messages wait in `filling`."""
        self.gaps += 1
        if room.filling is None:
            room.filling = []
            room.next_offset = -1
        if self._task_group is not None:
            self._task_group.start_soon(self._fill, room)

    async def _fill(self, room: Room[Client]) -> None:
        """Read what this node missed of ``room`` and deliver it, or tell its members."""
        since = StreamPosition(room.offset, room.epoch or "")
        history = room.options.history
        found: HistoryResult | None = None
        if history is not None:
            try:
                found = await self._backend.history(room.name, since, history)
            except Exception:
                logger.warning("could not read the history of %s to fill a gap", room.name)
        pending = room.filling or []
        room.filling = None
        room.next_offset = room.offset + 1
        if self.rooms.get(room.name) is not room:
            return  # the last member left meanwhile
        try:
            if found is not None and found.recovered:
                for publication in found.publications:
                    self._fan_out(room, publication)
            else:
                self._reset(room, found, pending)
            for publication in pending:
                self._fan_out(room, publication)
        except Exception:  # a bug here must not take down the hub's task group
            logger.exception("filling a gap of %s failed", room.name)

    def _reset(
        self, room: Room[Client], found: HistoryResult | None, pending: list[Publication]
    ) -> None:
        """Messages of ``room`` are lost to this node: tell its members where it goes on from."""
        epoch = found.position.epoch if found is not None else None
        live = [p for p in pending if epoch is None or p.epoch == epoch]
        if live:  # the live messages held meanwhile follow the notice
            offset, epoch = (live[0].offset or 1) - 1, live[0].epoch
        elif found is not None:
            offset = found.position.offset
        else:
            return  # nothing known: the next check tries again
        if epoch is None:
            return
        self.resets += 1
        room.advance(offset, epoch)
        frame = encode_room_reset(room.name, offset, epoch)
        members = tuple(room.members.values())
        dropped = deliver_all(members, frame, room.name)
        self.messages_out += len(members) - dropped
        self.dropped += dropped

    def _on_resync(self) -> None:
        """The backend may have missed publications: check every history room now."""
        if self._task_group is not None:
            self._task_group.start_soon(self.check_positions)

    async def check_positions(self) -> None:
        """Compare each history room's position here with the backend's; fill what is missing.

        Catches a lost last message, which no later one would reveal.
        """
        for room in tuple(self.rooms.values()):
            history = room.options.history
            if history is None or room.epoch is None or room.filling is not None:
                continue
            try:
                found = await self._backend.history(room.name, None, history)
            except Exception:
                logger.warning("could not read the position of %s", room.name)
                continue
            position = found.position
            if (
                self.rooms.get(room.name) is room
                and room.filling is None
                and (position.epoch != room.epoch or position.offset > room.offset)
            ):
                self._start_fill(room)

    async def check_positions_every(self, clock: Clock) -> None:
        """Run `check_positions()` every ``position_check`` seconds; forever."""
        while True:
            await clock.sleep_until(clock.now() + self._settings.position_check)
            await self.check_positions()
