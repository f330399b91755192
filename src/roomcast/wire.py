"""Wire protocol v1: strict decoding of client frames and encoding of server frames (pure)."""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .config import check_positive_int
from .exceptions import LocalProtocolError, RemoteProtocolError
from .protocol import MAX_TOKEN_LENGTH as MAX_TOKEN_LENGTH
from .protocol import PING_FRAME as PING_FRAME
from .protocol import PONG_FRAME as PONG_FRAME
from .protocol import PROTOCOL as PROTOCOL

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_DEPTH",
    "MAX_MESSAGE_SIZE",
    "MAX_REF_LENGTH",
    "MAX_ROOMS_PER_REQUEST",
    "MAX_ROOM_NAME_LENGTH",
    "MAX_TOKEN_LENGTH",
    "MAX_TYPE_LENGTH",
    "PING_FRAME",
    "PONG_FRAME",
    "PROTOCOL",
    "Auth",
    "Ping",
    "Pong",
    "Presence",
    "Publish",
    "Ref",
    "Refresh",
    "Request",
    "StreamPosition",
    "Subscribe",
    "Unsubscribe",
    "WireLimits",
    "decode",
    "dumps",
    "encode_ack",
    "encode_error",
    "encode_event",
    "encode_frame",
    "encode_gap",
    "encode_reply",
    "namespace_of",
    "validate_event_type",
    "validate_room",
]

#: Largest accepted client frame, in bytes of UTF-8.
MAX_MESSAGE_SIZE: Final = 64 * 1024
#: Deepest accepted nesting of arrays and objects in a client frame (the frame itself is 1).
MAX_DEPTH: Final = 32
#: Longest room name, in characters.
MAX_ROOM_NAME_LENGTH: Final = 128
#: Longest event type, in characters.
MAX_TYPE_LENGTH: Final = 64
#: Longest string ``ref``, in characters.
MAX_REF_LENGTH: Final = 64
#: Most rooms in one ``subscribe`` or ``unsubscribe``.
MAX_ROOMS_PER_REQUEST: Final = 100

# Integers a JavaScript client can hold exactly (Number.MAX_SAFE_INTEGER).
_MAX_SAFE_INTEGER: Final = 2**53 - 1
# Most digits in a JSON integer. Parsing is superlinear in the digit count, and the
# interpreter's own bound (sys.set_int_max_str_digits) is process-wide and may be off.
_MAX_INT_DIGITS: Final = 4300

#: Room names: 1-128 characters from ``A-Z a-z 0-9 _ - . : @ = /``; the namespace is
#: the part before the first ``:``.
_ROOM_RE: Final = re.compile(rf"[A-Za-z0-9_\-.:@=/]{{1,{MAX_ROOM_NAME_LENGTH}}}")
#: Event types: a letter, then up to 63 of ``A-Z a-z 0-9 _ - . :``.
_TYPE_RE: Final = re.compile(rf"[A-Za-z][A-Za-z0-9_\-.:]{{0,{MAX_TYPE_LENGTH - 1}}}")
#: Types the server itself sends; applications may not publish them.
_RESERVED_TYPES: Final = frozenset({"reply", "error", "ping", "pong", "gap"})
_RESERVED_PREFIXES: Final = ("connection.", "presence.", "token.", "roomcast.")

#: A request's ``ref``, echoed in its reply or error so the client can match them.
Ref = str | int


@dataclass(frozen=True, slots=True)
class WireLimits:
    """Limits applied while decoding client frames.

    Attributes:
        max_message_size: largest frame, in bytes of UTF-8 (default 64 KiB).
        max_depth: deepest nesting of arrays and objects (default 32).
        max_rooms_per_request: most rooms in one subscribe/unsubscribe (default 100).
    """

    max_message_size: int = MAX_MESSAGE_SIZE
    max_depth: int = MAX_DEPTH
    max_rooms_per_request: int = MAX_ROOMS_PER_REQUEST

    def __post_init__(self) -> None:
        for name in ("max_message_size", "max_depth", "max_rooms_per_request"):
            check_positive_int(f"WireLimits.{name}", getattr(self, name))


#: The limits applied when none are given: every default above.
DEFAULT_LIMITS: Final = WireLimits()


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """A position in a room's history: the last ``offset`` seen in stream ``epoch``."""

    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Auth:
    """``auth``: first-message authentication."""

    token: str
    ref: Ref | None = None


@dataclass(frozen=True, slots=True)
class Subscribe:
    """``subscribe``: join ``rooms``; with ``since``, replay what was missed."""

    rooms: tuple[str, ...]
    since: Mapping[str, StreamPosition]
    ref: Ref | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """``unsubscribe``: leave ``rooms``."""

    rooms: tuple[str, ...]
    ref: Ref | None = None


@dataclass(frozen=True, slots=True)
class Publish:
    """``publish``: a client publishes ``payload`` as event ``type`` to ``room``."""

    room: str
    type: str
    payload: Any
    ephemeral: bool = False
    ref: Ref | None = None


@dataclass(frozen=True, slots=True)
class Presence:
    """``presence``: list who is in ``room``."""

    room: str
    ref: Ref | None = None


@dataclass(frozen=True, slots=True)
class Refresh:
    """``refresh``: replace the connection's token."""

    token: str
    ref: Ref | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    """``ping``: the client checks the server is alive; answered with ``pong``."""

    ref: Ref | None = None


@dataclass(frozen=True, slots=True)
class Pong:
    """``pong``: the client answers a server ``ping``."""

    ref: Ref | None = None


#: Any client frame [`decode`][roomcast.wire.decode] returns.
Request = Auth | Subscribe | Unsubscribe | Publish | Presence | Refresh | Ping | Pong


# --------------------------------------------------------------------------- names


def validate_room(name: object) -> str:
    """Return ``name`` if it is a valid room name.

    Raises:
        LocalProtocolError: (a ``ValueError``) it is not.
    """
    problem = _cached_room_problem(name) if type(name) is str else _room_problem(name)
    if problem is not None:
        raise LocalProtocolError(problem)
    return name  # type: ignore[return-value]


def validate_event_type(name: object) -> str:
    """Return ``name`` if applications may publish it as an event type.

    Raises:
        LocalProtocolError: (a ``ValueError``) it is malformed or reserved.
    """
    problem = _cached_type_problem(name) if type(name) is str else _type_problem(name)
    if problem is not None:
        raise LocalProtocolError(problem)
    return name  # type: ignore[return-value]


def namespace_of(room: str) -> str:
    """The namespace of ``room``: the part before the first ``:`` (``""`` if none)."""
    head, sep, _ = room.partition(":")
    return head if sep else ""


def _room_problem(name: object) -> str | None:
    if not isinstance(name, str):
        return "room name must be a string"
    if not name:
        return "room name must not be empty"
    if len(name) > MAX_ROOM_NAME_LENGTH:
        return f"room name longer than {MAX_ROOM_NAME_LENGTH} characters"
    if _ROOM_RE.fullmatch(name) is None:
        return "room name may only contain A-Z a-z 0-9 _ - . : @ = /"
    return None


# Servers publish to the same rooms and types over and over: remember the verdicts.
@functools.lru_cache(maxsize=4096)
def _cached_room_problem(name: str) -> str | None:
    return _room_problem(name)


@functools.lru_cache(maxsize=1024)
def _cached_type_problem(name: str) -> str | None:
    return _type_problem(name)


def _type_problem(name: object) -> str | None:
    if not isinstance(name, str):
        return "event type must be a string"
    if _TYPE_RE.fullmatch(name) is None:
        return (
            f"event type must start with a letter and have at most {MAX_TYPE_LENGTH} "
            "characters from A-Z a-z 0-9 _ - . :"
        )
    if name in _RESERVED_TYPES or name.startswith(_RESERVED_PREFIXES):
        return f"event type {name!r} is reserved by the protocol"
    return None


# --------------------------------------------------------------------------- decoding


class _RejectError(Exception):
    """Raised inside the JSON parser's hooks; turned into RemoteProtocolError."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RejectError(f"duplicate key {key[:32]!r}")
            seen.add(key)
    return result


def _no_constant(name: str) -> Any:
    raise _RejectError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    # 1e400 parses to inf, which could never be encoded again for the other members.
    if value in (math.inf, -math.inf):
        raise _RejectError("number out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise _RejectError(f"integer with more than {_MAX_INT_DIGITS} digits")
    return int(text)


_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_no_duplicates,
    parse_constant=_no_constant,
    parse_float=_finite_float,
    parse_int=_bounded_int,
)


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_structure(value: Any, max_depth: int) -> None:
    """Enforce the depth limit and reject lone surrogates in every string."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > max_depth:
                raise _RejectError(f"nesting deeper than {max_depth}")
            for key, child in item.items():
                if _has_lone_surrogate(key):
                    raise _RejectError("lone surrogate in a string")
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            if depth > max_depth:
                raise _RejectError(f"nesting deeper than {max_depth}")
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str) and _has_lone_surrogate(item):
            raise _RejectError("lone surrogate in a string")


def decode(data: str | bytes, limits: WireLimits = DEFAULT_LIMITS) -> Request:
    """Decode one client frame.

    Decoding is total: every input either becomes a request or raises
    [`RemoteProtocolError`][roomcast.RemoteProtocolError] with code ``bad_request`` and a message
    naming the problem (and ``ref`` set when the frame's ``ref`` could be read).

    Raises:
        RemoteProtocolError: the frame is not a valid protocol v1 request.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        raise RemoteProtocolError("binary frames are not accepted; send JSON in a text frame")
    if not isinstance(data, str):
        raise RemoteProtocolError("a frame must be text")
    # Cheap bound first: every character is at least one byte of UTF-8.
    if len(data) > limits.max_message_size:
        raise RemoteProtocolError(f"frame larger than {limits.max_message_size} bytes")
    try:
        size = len(data.encode("utf-8"))
    except UnicodeEncodeError:
        raise RemoteProtocolError("frame is not valid UTF-8 (lone surrogate)") from None
    if size > limits.max_message_size:
        raise RemoteProtocolError(f"frame larger than {limits.max_message_size} bytes")
    try:
        obj, end = _DECODER.raw_decode(data, _skip_ws(data, 0))
        if _skip_ws(data, end) != len(data):
            raise _RejectError("extra data after the JSON value")
        if not isinstance(obj, dict):
            raise _RejectError("a frame must be a JSON object")
    except _RejectError as exc:
        raise RemoteProtocolError(str(exc)) from None
    except RecursionError:
        raise RemoteProtocolError(f"nesting deeper than {limits.max_depth}") from None
    except ValueError as exc:  # JSONDecodeError, and int() refusing huge numbers
        raise RemoteProtocolError(f"invalid JSON: {_short(exc)}") from None
    try:
        _check_structure(obj, limits.max_depth)
    except _RejectError as exc:
        # The frame parsed, so its ref may still be readable and worth echoing.
        raise RemoteProtocolError(str(exc), ref=_peek_ref(obj)) from None
    return _parse_request(obj, limits)


_WS: Final = " \t\n\r"


def _skip_ws(text: str, index: int) -> int:
    length = len(text)
    while index < length and text[index] in _WS:
        index += 1
    return index


def _short(exc: ValueError) -> str:
    text = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
    return text[:80]


def _parse_request(obj: dict[str, Any], limits: WireLimits) -> Request:
    ref = _read_ref(obj)
    try:
        action = obj.get("action")
        if action is None:
            raise _RejectError("missing field 'action'")
        parser = _PARSERS.get(action) if isinstance(action, str) else None
        if parser is None:
            raise _RejectError(f"unknown action {str(action)[:32]!r}")
        fields, parse = parser
        for key in obj:
            if key not in fields:
                raise _RejectError(f"unknown field {key[:32]!r} for action {action!r}")
        return parse(obj, ref, limits)
    except _RejectError as exc:
        raise RemoteProtocolError(str(exc), ref=ref) from None


def _read_ref(obj: dict[str, Any]) -> Ref | None:
    ref = obj.get("ref")
    if ref is None:
        return None
    if isinstance(ref, bool) or not isinstance(ref, (str, int)):
        raise RemoteProtocolError("'ref' must be a string or an integer")
    if isinstance(ref, str) and len(ref) > MAX_REF_LENGTH:
        raise RemoteProtocolError(f"'ref' longer than {MAX_REF_LENGTH} characters")
    if isinstance(ref, int) and abs(ref) > _MAX_SAFE_INTEGER:
        raise RemoteProtocolError("'ref' is outside the safe integer range")
    return ref


def _peek_ref(obj: dict[str, Any]) -> Ref | None:
    """The frame's ref if it is valid, else ``None``; never raises."""
    try:
        ref = _read_ref(obj)
    except RemoteProtocolError:
        return None
    if isinstance(ref, str) and _has_lone_surrogate(ref):
        return None
    return ref


def _required(obj: dict[str, Any], key: str) -> Any:
    if key not in obj:
        raise _RejectError(f"missing field {key!r}")
    return obj[key]


def _room_field(obj: dict[str, Any], key: str = "room") -> str:
    value = _required(obj, key)
    problem = _room_problem(value)
    if problem is not None:
        raise _RejectError(f"{key!r}: {problem}")
    return value  # type: ignore[no-any-return]


def _rooms_field(obj: dict[str, Any], limits: WireLimits) -> tuple[str, ...]:
    value = _required(obj, "rooms")
    if not isinstance(value, list):
        raise _RejectError("'rooms' must be an array of room names")
    if not value:
        raise _RejectError("'rooms' must not be empty")
    if len(value) > limits.max_rooms_per_request:
        raise _RejectError(f"'rooms' has more than {limits.max_rooms_per_request} entries")
    rooms: dict[str, None] = {}
    for item in value:
        problem = _room_problem(item)
        if problem is not None:
            raise _RejectError(f"'rooms': {problem}")
        rooms[item] = None  # keep order, drop repeats
    return tuple(rooms)


def _token_field(obj: dict[str, Any]) -> str:
    value = _required(obj, "token")
    if not isinstance(value, str) or not value:
        raise _RejectError("'token' must be a non-empty string")
    if len(value) > MAX_TOKEN_LENGTH:
        raise _RejectError(f"'token' longer than {MAX_TOKEN_LENGTH} characters")
    return value


def _parse_subscribe(obj: dict[str, Any], ref: Ref | None, limits: WireLimits) -> Subscribe:
    rooms = _rooms_field(obj, limits)
    since: dict[str, StreamPosition] = {}
    raw = obj.get("since")
    if raw is not None:
        if not isinstance(raw, dict):
            raise _RejectError("'since' must be an object of room -> {offset, epoch}")
        for room, position in raw.items():
            if room not in rooms:
                raise _RejectError("'since' names a room that is not in 'rooms'")
            if not isinstance(position, dict) or set(position) != {"offset", "epoch"}:
                raise _RejectError(
                    "'since' entries must be objects with exactly 'offset' and 'epoch'"
                )
            offset, epoch = position["offset"], position["epoch"]
            if isinstance(offset, bool) or not isinstance(offset, int):
                raise _RejectError("'since' offset must be an integer")
            if not 0 <= offset <= _MAX_SAFE_INTEGER:
                raise _RejectError("'since' offset out of range")
            if not isinstance(epoch, str) or not 0 < len(epoch) <= 64:
                raise _RejectError(
                    "'since' epoch must be a non-empty string of at most 64 characters"
                )
            since[room] = StreamPosition(offset, epoch)
    return Subscribe(rooms, since, ref)


def _parse_unsubscribe(obj: dict[str, Any], ref: Ref | None, limits: WireLimits) -> Unsubscribe:
    return Unsubscribe(_rooms_field(obj, limits), ref)


def _parse_publish(obj: dict[str, Any], ref: Ref | None, limits: WireLimits) -> Publish:
    room = _room_field(obj)
    type_ = _required(obj, "type")
    problem = _type_problem(type_)
    if problem is not None:
        raise _RejectError(f"'type': {problem}")
    payload = obj.get("payload")
    ephemeral = obj.get("ephemeral", False)
    if not isinstance(ephemeral, bool):
        raise _RejectError("'ephemeral' must be true or false")
    return Publish(room, type_, payload, ephemeral, ref)


def _parse_presence(obj: dict[str, Any], ref: Ref | None, limits: WireLimits) -> Presence:
    return Presence(_room_field(obj), ref)


def _parse_auth(obj: dict[str, Any], ref: Ref | None, limits: WireLimits) -> Auth:
    return Auth(_token_field(obj), ref)


def _parse_refresh(obj: dict[str, Any], ref: Ref | None, limits: WireLimits) -> Refresh:
    return Refresh(_token_field(obj), ref)


def _parse_ping(obj: dict[str, Any], ref: Ref | None, limits: WireLimits) -> Ping:
    return Ping(ref)


def _parse_pong(obj: dict[str, Any], ref: Ref | None, limits: WireLimits) -> Pong:
    return Pong(ref)


_BASE: Final = frozenset({"action", "ref"})
_Parser = Callable[[dict[str, Any], Ref | None, WireLimits], Request]
_PARSERS: Final[dict[str, tuple[frozenset[str], _Parser]]] = {
    "auth": (_BASE | {"token"}, _parse_auth),
    "subscribe": (_BASE | {"rooms", "since"}, _parse_subscribe),
    "unsubscribe": (_BASE | {"rooms"}, _parse_unsubscribe),
    "publish": (_BASE | {"room", "type", "payload", "ephemeral"}, _parse_publish),
    "presence": (_BASE | {"room"}, _parse_presence),
    "refresh": (_BASE | {"token"}, _parse_refresh),
    "ping": (_BASE, _parse_ping),
    "pong": (_BASE, _parse_pong),
}


# --------------------------------------------------------------------------- encoding

_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


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
    """Encode a server frame ``{"type": type_, **fields}`` (fields with ``None`` are kept)."""
    return dumps({"type": type_, **fields})


def encode_ack(
    *,
    client_id: str,
    user_id: str | None,
    heartbeat_ms: int,
    expires_at: int | None,
    protocol: str = PROTOCOL,
) -> str:
    """Encode ``connection.ack``."""
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
    """Encode a successful ``reply`` echoing ``ref``."""
    return dumps({"type": "reply", "ref": ref, "ok": True, "payload": payload})


def encode_error(
    code: str, message: str, *, ref: Ref | None = None, reply: bool = True, **extra: Any
) -> str:
    """Encode an error.

    With ``reply`` (the default) it is a failed ``reply`` echoing ``ref``;
    otherwise a standalone ``error`` frame. ``extra`` adds fields to the error
    object (for example ``retryAfterMs``).
    """
    error = {"code": code, "message": message, **extra}
    if reply:
        return dumps({"type": "reply", "ref": ref, "ok": False, "error": error})
    return dumps({"type": "error", "ref": ref, "payload": error})


def encode_gap(dropped: int, rooms: list[str]) -> str:
    """Encode ``gap``: ``dropped`` messages for ``rooms`` were discarded for this client."""
    return dumps({"type": "gap", "payload": {"dropped": dropped, "rooms": rooms}})


#: Strings JSON encodes as themselves between quotes: no escapes needed.
_PLAIN: Final = re.compile(r"[A-Za-z0-9_\-.:@=/]*")


def _json_string(text: str) -> str:
    return '"' + text + '"' if _PLAIN.fullmatch(text) else dumps(text)


@functools.lru_cache(maxsize=4096)
def _quote_name(name: str) -> str:
    """A room name or event type as a JSON string; cached, since the same few recur."""
    return '"' + name + '"' if _PLAIN.fullmatch(name) else dumps(name)


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
    head = (
        '{"type":'
        + _quote_name(type_)
        + ',"room":'
        + ("null" if room is None else _quote_name(room))
        + ',"id":'
        + _json_string(message_id)
        + ',"payload":'
        + payload_json
        + ',"timestamp":'
        + str(timestamp)
        + ',"userId":'
        + ("null" if user_id is None else _json_string(user_id))
    )
    if offset is None:
        return head + "}"
    return head + ',"offset":' + str(offset) + ',"epoch":' + dumps(epoch) + "}"
