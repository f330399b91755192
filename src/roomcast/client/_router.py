"""What the client does with each server frame, and which stream each item goes to (anyio).

The reading task calls `dispatch` for every frame after `connection.ack`. Items
for a room go to the room's subscription; the connection's own stream gets
room-less events, what no subscription takes, and everything once the
application iterates the connection. A stream the application does not read
never holds the reader back: room-less items with no reader are counted,
logged and discarded (they were not taken, so the application is told), and a
full stream that is being read waits for the application only while the
connection is alive.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

import anyio

from ..protocol import CLOSE_ABNORMAL
from ..wire import StreamPosition
from ._events import (
    BadFrame,
    Received,
    parse_event,
    parse_gap,
    parse_presence_change,
    parse_reset,
)
from ._rules import server_error
from ._socket import WebSocket
from ._stream import EventBuffer
from ._tokens import start_refresh

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["PONG", "Stalled", "decode", "deliver", "dispatch"]

logger = logging.getLogger("roomcast.client")

PONG: Final = '{"action":"pong"}'


class Stalled(Exception):
    """The connection ended, or fell silent, while the reader waited for the application.

    Internal: it ends a connection attempt like a close, and the client
    reconnects by the close code's advice.

    Attributes:
        code: the close code (1006 when there is none).
        reason: what happened.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def decode(data: str | bytes) -> dict[str, Any] | None:
    """A server frame as a dict with a `type`, or `None` (logged) when it is not one."""
    if isinstance(data, bytes):
        logger.warning("roomcast client: a binary frame from the server was ignored")
        return None
    try:
        frame = json.loads(data)
    except ValueError:
        logger.warning("roomcast client: a frame that is not JSON was ignored")
        return None
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
        logger.warning("roomcast client: a frame without a type was ignored")
        return None
    return frame


async def dispatch(conn: Connection, ws: WebSocket, data: str | bytes) -> None:
    """Act on one server frame.

    Raises:
        Stalled: the connection ended while a full stream waited for the application.
    """
    frame = decode(data)
    if frame is None:
        return
    kind = frame["type"]
    try:
        if kind == "reply":
            await conn._requests.on_reply(frame)
        elif kind == "ping":
            await ws.send(PONG)
        elif kind in ("pong", "connection.ack"):
            pass
        elif kind == "error":
            conn._report_error(server_error(frame.get("payload")))
        elif kind == "token.expiring":
            start_refresh(conn)
        elif kind == "gap":
            gap = parse_gap(frame)
            logger.warning("roomcast client: the server dropped %d events", gap.dropped)
            await _deliver_to_rooms(conn, ws, gap.rooms, gap)
        elif kind == "room.reset":
            reset = parse_reset(frame)
            sub = conn._subs.get(reset.room)
            if sub is not None:
                sub.position = StreamPosition(reset.offset, reset.epoch)
            await deliver(conn, ws, reset.room, reset)
        elif kind in ("presence.join", "presence.leave"):
            change = parse_presence_change(frame)
            await deliver(conn, ws, change.room, change)
        else:
            event = parse_event(frame)
            if event.room is not None:
                sub = conn._subs.get(event.room)
                if sub is not None:
                    # Delivered even if the connection ends meanwhile (see `_put`).
                    sub._advance(event.offset, event.epoch)
            await deliver(conn, ws, event.room, event)
    except BadFrame as exc:
        logger.warning("roomcast client: a malformed %r frame was ignored: %s", kind, exc)


async def deliver(conn: Connection, ws: WebSocket, room: str | None, item: Received) -> None:
    """Put `item` in the streams it belongs to.

    Raises:
        Stalled: the connection ended while a full stream waited for the application.
    """
    if room is not None and room in conn._leaving:
        return  # unsubscribed by the application
    sub = conn._subs.get(room) if room is not None else None
    listening = conn._stream.listening
    if sub is not None and (sub._buffer.listening or not listening):
        try:
            await _put(conn, ws, sub._buffer, item)
        except Stalled:
            if listening:
                conn._stream.append(item)
            raise
        if listening:
            await _put(conn, ws, conn._stream, item)
    elif listening:
        await _put(conn, ws, conn._stream, item)
    else:
        _unclaimed(conn, item)


async def _deliver_to_rooms(
    conn: Connection, ws: WebSocket, rooms: Iterable[str], item: Received
) -> None:
    listening = conn._stream.listening
    taken = False
    for room in rooms:
        sub = conn._subs.get(room)
        if sub is not None and (sub._buffer.listening or not listening):
            await _put(conn, ws, sub._buffer, item)
            taken = True
    if listening:
        await _put(conn, ws, conn._stream, item)
    elif not taken:
        _unclaimed(conn, item)


def _unclaimed(conn: Connection, item: Received) -> None:
    conn._unclaimed += 1
    logger.warning(
        "roomcast client: a %s for no subscription arrived while the application does not "
        "iterate the connection; discarded (%d so far)",
        type(item).__name__,
        conn._unclaimed,
    )


async def _put(conn: Connection, ws: WebSocket, buffer: EventBuffer, item: Received) -> None:
    if buffer.full:
        try:
            await _wait_for_room(conn, ws, buffer)
        except Stalled:
            buffer.append(item)  # received: it is kept, one over the size
            raise
    buffer.append(item)


def _closed_waiter(ws: WebSocket) -> tuple[Callable[[], Awaitable[None]] | None, Any]:
    """The `wait_closed` of the `websockets` connection behind `ws`, and that connection."""
    socket = getattr(ws.recv, "__self__", None)
    wait_closed = getattr(socket, "wait_closed", None)
    return (wait_closed if callable(wait_closed) else None), socket


async def _wait_for_room(conn: Connection, ws: WebSocket, buffer: EventBuffer) -> None:
    """Wait for the application to take an item while the connection lives.

    Raises:
        Stalled: the socket closed meanwhile, or nothing could be read for the
            liveness limit (two heartbeats plus a margin), after which the
            server has given up on this connection anyway.
    """
    limit = conn._liveness_limit()
    logger.warning(
        "%s: %d events wait to be read; reading from the server paused until the "
        "application takes one (for up to %g s)",
        buffer.name,
        len(buffer),
        limit,
    )
    wait_closed, socket = _closed_waiter(ws)
    closed = False
    with anyio.move_on_after(limit):
        async with anyio.create_task_group() as tasks:

            async def watch_close(wait: Callable[[], Awaitable[None]]) -> None:
                nonlocal closed
                await wait()
                closed = True
                tasks.cancel_scope.cancel()

            if wait_closed is not None:
                tasks.start_soon(watch_close, wait_closed)
            await buffer.wait_writable()
            tasks.cancel_scope.cancel()
    if closed:
        code = getattr(socket, "close_code", None)
        raise Stalled(
            code if type(code) is int else CLOSE_ABNORMAL,
            f"the connection closed while {buffer.name} waited for the application",
        )
    if buffer.full:
        raise Stalled(CLOSE_ABNORMAL, f"{buffer.name} waited {limit:g} s for the application")
