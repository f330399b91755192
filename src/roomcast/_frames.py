"""Encoding of server frames: compact JSON, with payloads encoded once per publish (pure)."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from typing import Any, Final

from ._requests import Ref
from .exceptions import LocalProtocolError
from .protocol import PROTOCOL

# No __all__: roomcast.wire re-exports these, and its __all__ is the public list.

_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def dumps(value: Any) -> str:
    """Encode ``value`` as compact JSON, refusing NaN, Infinity and lone surrogates.

    Raises:
        LocalProtocolError: (a ``ValueError``) ``value`` is not JSON-serializable.
    """
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise LocalProtocolError(f"payload is not JSON-serializable: {exc}") from exc
    # With ensure_ascii off a lone surrogate passes through, and the frame could then
    # not be sent as UTF-8 text; the ASCII test skips the scan in the common case.
    if not text.isascii() and _has_lone_surrogate(text):
        raise LocalProtocolError("payload is not JSON-serializable: lone surrogate in a string")
    return text


def encode_frame(type_: str, **fields: Any) -> str:
    """Encode a server frame ``{"type": type_, **fields}`` (fields with ``None`` are kept).

    Raises:
        LocalProtocolError: (a ``ValueError``) a field is not JSON-serializable.
    """
    return dumps({"type": type_, **fields})


def encode_ack(
    *,
    client_id: str,
    user_id: str | None,
    heartbeat_ms: int,
    expires_at: int | None,
    protocol: str = PROTOCOL,
) -> str:
    """Encode ``connection.ack``.

    Raises:
        LocalProtocolError: (a ``ValueError``) a field is not JSON-serializable.
    """
    return dumps(
        {
            "type": "connection.ack",
            "payload": {
                "clientId": client_id,
                "userId": user_id,
                "heartbeatMs": heartbeat_ms,
                "expiresAt": expires_at,
                "protocol": protocol,
            },
        }
    )


def encode_reply(ref: Ref | None, payload: Any = None) -> str:
    """Encode a successful ``reply`` echoing ``ref``.

    Raises:
        LocalProtocolError: (a ``ValueError``) a field is not JSON-serializable.
    """
    return dumps({"type": "reply", "ref": ref, "ok": True, "payload": payload})


def encode_history_reply(
    ref: Ref | None,
    room: str,
    events: Sequence[str],
    offset: int,
    epoch: str,
    recovered: bool | None = None,
) -> str:
    """Encode the successful reply to a ``history`` request around already-encoded events.

    ``events`` are event frames as [`encode_event`][roomcast.wire.encode_event]
    makes them, spliced in as they are: exactly what a member of the room
    receives. ``recovered`` is left out when ``None`` (a request without ``since``).

    Raises:
        LocalProtocolError: (a ``ValueError``) a field is not JSON-serializable.
    """
    tail = "" if recovered is None else ',"recovered":' + ("true" if recovered else "false")
    return (
        '{"type":"reply","ref":'
        + dumps(ref)
        + ',"ok":true,"payload":{"room":'
        + _quote_name(room)
        + ',"publications":['
        + ",".join(events)
        + '],"offset":'
        + str(int(offset))
        + ',"epoch":'
        + dumps(epoch)
        + tail
        + "}}"
    )


def encode_error(
    code: str, message: str, *, ref: Ref | None = None, reply: bool = True, **extra: Any
) -> str:
    """Encode an error.

    With ``reply`` (the default) it is a failed ``reply`` echoing ``ref``;
    otherwise a standalone ``error`` frame. ``extra`` adds fields to the error
    object (for example ``retryAfterMs``).

    Raises:
        LocalProtocolError: (a ``ValueError``) a field is not JSON-serializable.
    """
    error = {"code": code, "message": message, **extra}
    if reply:
        return dumps({"type": "reply", "ref": ref, "ok": False, "error": error})
    return dumps({"type": "error", "ref": ref, "payload": error})


def encode_gap(dropped: int, rooms: list[str]) -> str:
    """Encode ``gap``: ``dropped`` messages for ``rooms`` were discarded for this client.

    Raises:
        LocalProtocolError: (a ``ValueError``) a field is not JSON-serializable.
    """
    return dumps({"type": "gap", "payload": {"dropped": dropped, "rooms": rooms}})


def encode_room_reset(room: str, offset: int, epoch: str) -> str:
    """Encode ``room.reset``: this client missed messages of ``room`` that cannot be recovered.

    ``offset`` and ``epoch`` are the room's position from which the client's
    messages continue, as in a ``subscribe`` reply with ``recovered: false``.

    Raises:
        LocalProtocolError: (a ``ValueError``) a field is not JSON-serializable.
    """
    payload = {"recovered": False, "offset": offset, "epoch": epoch}
    return dumps({"type": "room.reset", "room": room, "payload": payload})


#: Strings JSON encodes as themselves between quotes: no escapes needed.
_PLAIN: Final = re.compile(r"[A-Za-z0-9_\-.:@=/]*")
_plain = _PLAIN.fullmatch


def _json_string(text: str) -> str:
    return '"' + text + '"' if _plain(text) else dumps(text)


@functools.lru_cache(maxsize=4096)
def _quote_name(name: str) -> str:
    """A room name or event type as a JSON string; cached, since the same few recur."""
    return '"' + name + '"' if _plain(name) else dumps(name)


def encode_event(
    *,
    type_: str,
    room: str | None,
    message_id: str,
    payload_json: str,
    timestamp: int,
    user_id: str | None,
    offset: int | None = None,
    epoch: str | None = None,
) -> str:
    """Encode an application event around an already-encoded payload.

    The payload is encoded once per publish and spliced into the frame of each
    room, so fan-out never encodes JSON per recipient.

    Raises:
        LocalProtocolError: (a ``ValueError``) a string field holds a lone surrogate.
    """
    return splice_event(type_, room, message_id, payload_json, timestamp, user_id, offset, epoch)


def splice_event(
    type_: str,
    room: str | None,
    message_id: str,
    payload_json: str,
    timestamp: int,
    user_id: str | None,
    offset: int | None,
    epoch: str | None,
) -> str:
    """`encode_event()` with positional arguments: the fan-out's once-per-publish call."""
    # One f-string each way: a single string is built.
    if offset is None:
        return (
            f'{{"type":{_quote_name(type_)}'
            f',"room":{"null" if room is None else _quote_name(room)}'
            f',"id":{_json_string(message_id)}'
            f',"payload":{payload_json}'
            f',"timestamp":{timestamp}'
            f',"userId":{"null" if user_id is None else _json_string(user_id)}}}'
        )
    return (
        f'{{"type":{_quote_name(type_)}'
        f',"room":{"null" if room is None else _quote_name(room)}'
        f',"id":{_json_string(message_id)}'
        f',"payload":{payload_json}'
        f',"timestamp":{timestamp}'
        f',"userId":{"null" if user_id is None else _json_string(user_id)}'
        f',"offset":{offset},"epoch":{dumps(epoch)}}}'
    )
