"""Wire protocol v1: strict decoding of client frames and encoding of server frames (pure).

Frames are decoded here; the request types, the server frame encoders and the
checks of room names and event types live in private modules and are re-exported,
so `roomcast.wire` stays the one public module of the protocol's codec.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ._frames import _has_lone_surrogate
from ._frames import dumps as dumps
from ._frames import encode_ack as encode_ack
from ._frames import encode_error as encode_error
from ._frames import encode_event as encode_event
from ._frames import encode_frame as encode_frame
from ._frames import encode_gap as encode_gap
from ._frames import encode_history_reply as encode_history_reply
from ._frames import encode_reply as encode_reply
from ._frames import encode_room_reset as encode_room_reset
from ._frames import json_encoder as json_encoder
from ._names import MAX_ROOM_NAME_LENGTH as MAX_ROOM_NAME_LENGTH
from ._names import MAX_TYPE_LENGTH as MAX_TYPE_LENGTH
from ._names import _room_problem, _type_problem
from ._names import namespace_of as namespace_of
from ._names import validate_event_type as validate_event_type
from ._names import validate_room as validate_room
from ._requests import Auth as Auth
from ._requests import HistoryRequest as HistoryRequest
from ._requests import Ping as Ping
from ._requests import Pong as Pong
from ._requests import Presence as Presence
from ._requests import Publish as Publish
from ._requests import Ref as Ref
from ._requests import Refresh as Refresh
from ._requests import Request as Request
from ._requests import StreamPosition as StreamPosition
from ._requests import Subscribe as Subscribe
from ._requests import Unsubscribe as Unsubscribe
from .config import DEFAULT_MAX_MESSAGE_SIZE, check_positive_int
from .exceptions import RemoteProtocolError
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
    "MAX_HISTORY_LIMIT",
    "Auth",
    "HistoryRequest",
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
    "encode_history_reply",
    "encode_reply",
    "encode_room_reset",
    "json_encoder",
    "namespace_of",
    "validate_event_type",
    "validate_room",
]

#: Largest accepted client frame, in bytes of UTF-8.
MAX_MESSAGE_SIZE: Final = DEFAULT_MAX_MESSAGE_SIZE
#: Deepest accepted nesting of arrays and objects in a client frame (the frame itself is 1).
MAX_DEPTH: Final = 32
#: Longest string ``ref``, in characters.
MAX_REF_LENGTH: Final = 64
#: Most rooms in one ``subscribe`` or ``unsubscribe``.
MAX_ROOMS_PER_REQUEST: Final = 100
#: Most messages one ``history`` request or one room's ``history`` in ``subscribe`` asks for.
MAX_HISTORY_LIMIT: Final = 10_000

# Integers a JavaScript client can hold exactly (Number.MAX_SAFE_INTEGER).
_MAX_SAFE_INTEGER: Final = 2**53 - 1
# Most digits in a JSON integer. Parsing is superlinear in the digit count, and the
# interpreter's own bound (sys.set_int_max_str_digits) is process-wide and may be off.
_MAX_INT_DIGITS: Final = 4300


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


def _position(value: Any, shape: str, name: str = "'since'") -> StreamPosition:
    """A ``{offset, epoch}`` object; ``shape`` is the message when it is not one."""
    if not isinstance(value, dict) or set(value) != {"offset", "epoch"}:
        raise _RejectError(shape)
    offset, epoch = value["offset"], value["epoch"]
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise _RejectError(f"{name} offset must be an integer")
    if not 0 <= offset <= _MAX_SAFE_INTEGER:
        raise _RejectError(f"{name} offset out of range")
    if not isinstance(epoch, str) or not 0 < len(epoch) <= 64:
        raise _RejectError(f"{name} epoch must be a non-empty string of at most 64 characters")
    return StreamPosition(offset, epoch)


def _count(value: Any, name: str) -> int:
    """A message count: an integer from 1 to `MAX_HISTORY_LIMIT` (``true`` is not one)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _RejectError(f"{name} must be an integer")
    if not 1 <= value <= MAX_HISTORY_LIMIT:
        raise _RejectError(f"{name} must be between 1 and {MAX_HISTORY_LIMIT}")
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
            since[room] = _position(
                position, "'since' entries must be objects with exactly 'offset' and 'epoch'"
            )
    history: dict[str, int] = {}
    raw = obj.get("history")
    if raw is not None:
        if not isinstance(raw, dict):
            raise _RejectError("'history' must be an object of room -> number of messages")
        for room, count in raw.items():
            if room not in rooms:
                raise _RejectError("'history' names a room that is not in 'rooms'")
            if room in since:
                raise _RejectError("a room is in both 'since' and 'history'; give one")
            history[room] = _count(count, "'history' values")
    return Subscribe(rooms, since, ref, history)


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


def _parse_history(obj: dict[str, Any], ref: Ref | None, limits: WireLimits) -> HistoryRequest:
    room = _room_field(obj)
    limit = obj.get("limit")
    if limit is not None:
        limit = _count(limit, "'limit'")
    since = obj.get("since")
    if since is not None:
        since = _position(since, "'since' must be an object with exactly 'offset' and 'epoch'")
    return HistoryRequest(room, limit, since, ref)


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
    "subscribe": (_BASE | {"rooms", "since", "history"}, _parse_subscribe),
    "unsubscribe": (_BASE | {"rooms"}, _parse_unsubscribe),
    "publish": (_BASE | {"room", "type", "payload", "ephemeral"}, _parse_publish),
    "presence": (_BASE | {"room"}, _parse_presence),
    "history": (_BASE | {"room", "limit", "since"}, _parse_history),
    "refresh": (_BASE | {"token"}, _parse_refresh),
    "ping": (_BASE, _parse_ping),
    "pong": (_BASE, _parse_pong),
}
