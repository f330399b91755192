"""Rooms: this node's rooms — backend channels, joins with replay, presence, publishing, fan-out."""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import anyio

from .backends.base import Backend, ChannelKind, PresenceEntry, Publication
from .membership import Membership, Room
from .peer import Client, ClientId, deliver_all
from .settings import Settings
from .wire import StreamPosition, dumps, encode_event

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
    return encode_event(
        type_=publication.type,
        room=publication.room,
        message_id=publication.id,
        payload_json=publication.payload_json,
        timestamp=publication.timestamp,
        user_id=publication.user_id,
        offset=publication.offset,
        epoch=publication.epoch,
    )


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
        self.published = 0
        self.messages_out = 0
        self.dropped = 0

    async def start(self) -> None:
        """Start the backend, delivering to this node, and subscribe the node's own channel."""
        await self._backend.start(self._on_publication)
        await self.sync_channel("node", self._node)

    # ------------------------------------------------------------------ channels

    async def sync_channel(self, kind: ChannelKind, key: str) -> None:
        """Bring the backend's subscription for one channel in line with local demand.

        Serialized per channel. A channel is in ``_channels`` only once its
        subscription is complete and until its unsubscription starts, so a
        join to a room this node already receives takes no lock at all.
        """
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

    async def join(self, client: Client, name: str, since: StreamPosition | None) -> dict[str, Any]:
        """Make ``client`` a member of room ``name``, replaying what it missed since ``since``.

        Live frames published meanwhile are held and handed over after the
        replay, so nothing is lost or repeated. Returns the room's entry of
        the ``subscribe`` reply.
        """
        options = self._settings.room_options(name)
        room, held = self.membership.start_join(client, name, options)
        try:
            await self.sync_channel("room", name)
            result: dict[str, Any] = {"ok": True}
            replay: tuple[Publication, ...] = ()
            top: int | None = None
            if options.history is not None:
                found = await self._backend.history(name, since, options.history)
                top = found.position.offset
                result.update(offset=top, epoch=found.position.epoch)
                if since is not None:
                    result["recovered"] = found.recovered
                    replay = found.publications
            if client.closing:
                return room_error("internal", "connection closing")
            # No await from here on: replay, then what arrived meanwhile, then live.
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
        message_id = self._next_id()
        timestamp = _now_ms()
        for room in rooms:
            publication = Publication(
                room, type_, message_id, payload_json, timestamp, user_id, ephemeral, exclude
            )
            history = self._settings.room_options(room).history
            await self._backend.publish("room", room, publication, history)
        return message_id

    async def send_to_user(self, user_id: str, type_: str, payload_json: str) -> str:
        """Send a message to every connection of ``user_id`` on every node; return its id."""
        publication = self._publication(None, type_, payload_json, None)
        await self._backend.publish("user", user_id, publication, None)
        return publication.id

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
        frame = encode(publication)
        exclude = publication.exclude
        # A snapshot: a member closing mid-loop leaves the room at once.
        members = tuple(room.members.values())
        if exclude:
            members = tuple(client for client in members if client.id not in exclude)
        # The hot path: one frame string for every member, no per-member
        # allocation, task or call beyond the transport's.
        dropped = deliver_all(members, frame, room.name)
        if room.joining is not None:
            for client_id, held in room.joining.items():
                if client_id not in exclude:
                    held.append((publication.offset, frame))
        self.published += 1
        self.messages_out += len(members) - dropped
        self.dropped += dropped
