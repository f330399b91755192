"""The client connection's life: connect, authenticate, resubscribe, read, reconnect (anyio).

One task runs `run` for the whole life of a
[`Connection`][roomcast.client.Connection]: each attempt opens a socket,
authenticates with the first message, resubscribes every room and reads until
the socket ends; then the close code's advice decides between reconnecting
after a backoff delay, asking the token provider for a new token first, and
closing for good.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import anyio
from websockets.exceptions import ConnectionClosed as WebSocketClosed
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from ..exceptions import AuthenticationError, ConnectionClosed, RoomcastError
from ..protocol import CLOSE_ABNORMAL, CloseCode, Reconnect
from ..wire import MAX_ROOMS_PER_REQUEST, dumps
from ._events import Recovery
from ._requests import Pending
from ._router import Stalled, decode, deliver, dispatch
from ._rules import reconnect_advice, server_error
from ._socket import WebSocket, open_websocket
from ._tokens import NoToken, provide

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["DEFAULT_MAX_SERVER_FRAME", "LIVENESS_MARGIN", "run"]

logger = logging.getLogger("roomcast.client")

#: The largest server frame the client reads, in bytes (a long history reply).
DEFAULT_MAX_SERVER_FRAME: Final = 32 * 2**20
#: Seconds of silence beyond two heartbeats after which the connection is lost.
LIVENESS_MARGIN: Final = 5.0
_PING: Final = '{"action":"ping"}'


@dataclass
class _Ending:
    """How one connection attempt ended, for the reconnect decision."""

    code: int = CLOSE_ABNORMAL
    reason: str = ""
    acked: bool = False
    advice: Reconnect | None = None  # set when the attempt itself decided
    error: RoomcastError | None = None


async def run(conn: Connection) -> None:
    """Connect and reconnect until the connection closes for good."""
    assert conn._run_done is not None
    try:
        with anyio.CancelScope() as conn._run_scope:
            await _reconnect_forever(conn)
    finally:
        conn._run_done.set()


async def _reconnect_forever(conn: Connection) -> None:
    attempt = 0
    token = conn._token
    while True:
        ending = await _attempt(conn, token)
        if conn._closing:
            return
        token = conn._token
        if ending.acked:
            attempt = 0
        advice = ending.advice or reconnect_advice(ending.code)
        if ending.error is not None:
            conn._finish(ending.error, ending.code, ending.reason)
            return
        if advice == "never":
            error = ConnectionClosed.from_code(ending.code, ending.reason)
            conn._finish(error, ending.code, ending.reason)
            return
        while advice == "with_new_token":
            # Only a token other than the refused one may reconnect.
            try:
                token = await _new_token(conn, conn._in_force, ending)
                break
            except AuthenticationError as exc:
                conn._finish(exc, ending.code, ending.reason)
                return
            except NoToken as exc:
                delay = conn._backoff.delay(attempt)
                attempt += 1
                reason = str(exc)
                conn._set_state("disconnected", code=ending.code, reason=reason, delay=delay)
                await anyio.sleep(delay)
        delay = conn._backoff.delay(attempt)
        attempt += 1
        conn._set_state("disconnected", code=ending.code, reason=ending.reason, delay=delay)
        await anyio.sleep(delay)


async def _new_token(conn: Connection, refused: str | None, ending: _Ending) -> str:
    """A token other than `refused`, after a `with_new_token` close.

    Raises:
        AuthenticationError: no provider, the provider returned the refused
            token, or it raised `AuthenticationError` itself.
        NoToken: the provider failed: ask again after a delay.
    """
    code, reason = ending.code, ending.reason
    detail = f"({code}{' ' + reason if reason else ''})"
    if conn._provider is None:
        raise AuthenticationError(
            f"the server refused the credentials {detail} and there is no token provider",
            close_code=code,
        )
    token = await provide(conn)
    if token == refused:
        raise AuthenticationError(
            f"the server refused the credentials {detail} and the token provider "
            "returned the same token",
            close_code=code,
        )
    return token


async def _attempt(conn: Connection, token: str | None) -> _Ending:
    """One connection, from opening the socket to its end."""
    ending = _Ending()
    conn._set_state("connecting")
    conn._lost = None
    if token is None and conn._provider is not None:
        try:
            token = await provide(conn)
        except AuthenticationError as exc:
            ending.error, ending.reason = exc, "no token"
            return ending
        except NoToken as exc:
            ending.reason, ending.advice = str(exc), "after_delay"
            return ending
    conn._in_force = token
    try:
        async with open_websocket(
            conn.url,
            headers=conn._headers,
            origin=conn._origin,
            open_timeout=conn._open_timeout,
            max_size=DEFAULT_MAX_SERVER_FRAME,
        ) as ws:
            if token is not None:
                await ws.send(dumps({"action": "auth", "token": token}))
            with anyio.fail_after(conn._open_timeout):
                await _read_ack(conn, ws)
            ending.acked = True
            conn._ws = ws
            await _resubscribe(conn, ws)
            if conn._closing:
                return ending
            conn._set_state("connected")
            await _read_loop(conn, ws)
            ending.reason = conn._lost or "connection lost"
    except Stalled as exc:
        ending.code, ending.reason = exc.code, exc.reason
        logger.warning("roomcast client: %s; reconnecting", exc.reason)
    except WebSocketClosed as exc:
        received = exc.rcvd
        if conn._lost is not None:
            ending.code, ending.reason = CLOSE_ABNORMAL, conn._lost
        elif received is None:
            ending.code, ending.reason = CLOSE_ABNORMAL, "no close frame"
        else:
            ending.code, ending.reason = received.code, received.reason
    except InvalidStatus as exc:
        status = exc.response.status_code
        ending.reason = f"HTTP {status}"
        # 401: the credentials; 403: refused for good (origin, path); others: retry.
        ending.advice = (
            "with_new_token" if status == 401 else "never" if status == 403 else "after_delay"
        )
    except InvalidURI as exc:
        ending.error = ConnectionClosed.from_code(CLOSE_ABNORMAL, "invalid URL")
        ending.reason = str(exc)
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        ending.reason = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        conn._ws = None
        error = ConnectionClosed.from_code(ending.code, ending.reason)
        conn._requests.fail_all(error)
        for sub in [sub for sub in conn._subs.values() if not sub._active]:
            # A subscribe in flight fails with its connection; the room is not kept.
            del conn._subs[sub.room]
            sub._buffer.end(error)
        conn._leaving.clear()
    return ending


async def _read_ack(conn: Connection, ws: WebSocket) -> None:
    while True:
        frame = decode(await ws.recv())
        if frame is None or frame.get("type") != "connection.ack":
            continue  # a ping before the ack, or a frame this client does not know
        payload = frame.get("payload")
        if isinstance(payload, dict):
            client_id, user_id = payload.get("clientId"), payload.get("userId")
            heartbeat = payload.get("heartbeatMs")
            conn.client_id = client_id if isinstance(client_id, str) else None
            conn.user_id = user_id if isinstance(user_id, str) else None
            if type(heartbeat) is int and heartbeat > 0:
                conn.heartbeat = heartbeat / 1000
        return


async def _read_loop(conn: Connection, ws: WebSocket) -> None:
    """Read until the socket closes (raises) or falls silent (returns).

    Servers whose transport has protocol pings (the `websockets` and aiohttp
    adapters) never send `{"type":"ping"}`, and protocol pings never reach
    `recv()`: after a heartbeat interval without a frame the client sends
    its own `ping`, which the server answers with a `pong` frame. Nothing
    received for two heartbeats plus a margin means the connection is lost.
    """
    limit = conn._liveness_limit()
    while True:
        data: str | bytes | None = None
        with anyio.move_on_after(conn.heartbeat):
            data = await ws.recv()
        if data is None:
            await ws.send(_PING)
            with anyio.move_on_after(limit - conn.heartbeat):
                data = await ws.recv()
        if data is None:
            conn._lost = f"no frame from the server in {limit:g} s"
            logger.warning("roomcast client: %s; reconnecting", conn._lost)
            return
        await dispatch(conn, ws, data)


async def _resubscribe(conn: Connection, ws: WebSocket) -> None:
    rooms = [room for room, sub in conn._subs.items() if sub._active]
    for start in range(0, len(rooms), MAX_ROOMS_PER_REQUEST):
        chunk = rooms[start : start + MAX_ROOMS_PER_REQUEST]
        since: dict[str, dict[str, Any]] = {}
        history: dict[str, int] = {}
        for room in chunk:
            sub = conn._subs[room]
            if sub.position is not None:
                since[room] = {"offset": sub.position.offset, "epoch": sub.position.epoch}
            elif sub.history is not None:
                history[room] = sub.history
        fields: dict[str, Any] = {"rooms": chunk}
        if since:
            fields["since"] = since
        if history:
            fields["history"] = history
        ref = conn._requests.next_ref()
        text = conn._requests.encode({"action": "subscribe", "ref": ref, **fields})

        async def on_reply(payload: Any, chunk: list[str] = chunk, since: Any = since) -> None:
            await _resubscribed(conn, ws, payload, chunk, since)

        conn._requests.pending[ref] = pending = Pending(on_reply)
        _watch_resubscribe(conn, pending, ws)
        await ws.send(text)


def _watch_resubscribe(conn: Connection, pending: Pending, ws: WebSocket) -> None:
    """A failed resubscribe must not leave rooms the app thinks it is in: reconnect."""
    assert conn._task_group is not None

    async def watch() -> None:
        await pending.done.wait()
        if pending.error is not None and not isinstance(pending.error, ConnectionClosed):
            conn._lost = f"resubscribing failed: {pending.error}"
            logger.warning("roomcast client: %s; reconnecting", conn._lost)
            with anyio.move_on_after(conn._open_timeout):
                await ws.close(CloseCode.NORMAL, "resubscribe failed")

    conn._task_group.start_soon(watch)


async def _resubscribed(
    conn: Connection, ws: WebSocket, payload: Any, rooms: list[str], since: Mapping[str, Any]
) -> None:
    results = payload.get("rooms") if isinstance(payload, dict) else None
    if not isinstance(results, dict):
        results = {}
    for room in rooms:
        sub = conn._subs.get(room)
        if sub is None or not sub._active:
            continue
        result = results.get(room)
        if not isinstance(result, dict) or result.get("ok") is not True:
            error = server_error(result.get("error") if isinstance(result, dict) else None)
            logger.warning("roomcast client: resubscribing %s was refused: %s", room, error)
            del conn._subs[room]
            sub._buffer.end(error)
            continue
        sub._advance(result.get("offset"), result.get("epoch"))
        if room in since and sub.position is not None:
            recovered = result.get("recovered") is True
            notice = Recovery(room, recovered, sub.position.offset, sub.position.epoch)
            await deliver(conn, ws, room, notice)
