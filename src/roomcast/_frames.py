"""Encoding of server frames: compact JSON, with payloads encoded once per publish (pure).

JSON is written by orjson when it is installed (the ``speedups`` extra) and by the
standard library otherwise, and both give the same text for the same value, or the
same error. orjson alone would not: it writes NaN and the infinities as ``null``,
serializes UUIDs, enums and its own ``Fragment`` that the standard library refuses,
refuses integers beyond 64 bits and keys that are not ``str`` that the standard
library accepts, and may spell some floats another way (``1e-5`` for ``1e-05``). So
orjson's text is used only when a cheap check (`_plain`) finds nothing in the value but
``dict``, ``list``, ``tuple``, ``str``, ``int``, ``bool``, ``None`` and floats that
both write alike; anything else, and anything orjson refuses, is encoded by the
standard library, which gives the result (or the error) roomcast always gave.
"""

from __future__ import annotations

import functools
import gc
import itertools
import json
import logging
import math
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

from ._requests import Ref
from .exceptions import LocalProtocolError
from .protocol import PROTOCOL

# No __all__: roomcast.wire re-exports these, and its __all__ is the public list.

logger = logging.getLogger("roomcast.wire")

_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _dumps_stdlib(value: Any) -> str:
    """Encode ``value`` with the standard library: the reference for every result."""
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise LocalProtocolError(f"payload is not JSON-serializable: {exc}") from exc
    # With ensure_ascii off a lone surrogate passes through, and the frame could then
    # not be sent as UTF-8 text; the ASCII test skips the scan in the common case.
    if not text.isascii() and _has_lone_surrogate(text):
        raise LocalProtocolError("payload is not JSON-serializable: lone surrogate in a string")
    return text


# --------------------------------------------------------------------------- orjson

#: The types whose JSON orjson and the standard library write alike (floats within
#: `_FLOAT_RANGE`); a value holding anything else is left to the standard library.
_PLAIN_TYPES: Final = frozenset({dict, list, tuple, str, int, bool, type(None), float})
_NESTED_TYPES: Final = frozenset({dict, list, tuple})
#: Magnitudes both write in positional notation with the same digits: from 1e-4 up to,
#: not including, 1e16, Python's ``repr`` switches to an exponent (``1e-05``,
#: ``1e+16``) where orjson's may differ (``1e-5`` or ``0.00001``; ``1e16`` before 3.11.7).
_FLOAT_RANGE: Final = (1e-4, 1e16)
#: orjson refuses nesting deeper than 255 levels, cycles included, before the walk
#: runs; the walk stops there too.
_MAX_PLAIN_DEPTH: Final = 255

_is_float: Final = float.__instancecheck__
_referents: Final = gc.get_referents
_chain: Final = itertools.chain.from_iterable
#: Whether ``gc.get_referents`` gives every value of every ``dict``. From 3.13, a dict
#: that shares an object's inline values (``vars(obj)``) gives none: the object visits
#: them. There, dicts are read with ``dict.values()``, lists and tuples still in C.
#: (Tests switch it, to run both walks.)
_REFERENTS_HOLD_DICT_VALUES = sys.version_info < (3, 13)


def _plain_floats(level: Sequence[Any]) -> bool:
    magnitudes = list(map(abs, filter(_is_float, level)))
    # A sum of magnitudes is finite exactly when each is (no NaN, no infinity), or
    # overflows only past the upper bound anyway; zero is written "0.0" by both.
    low, high = _FLOAT_RANGE
    return (
        math.isfinite(sum(magnitudes))
        and max(magnitudes) < high
        and min(filter(None, magnitudes), default=low) >= low
    )


def _items(level: Sequence[Any], kinds: set[type]) -> list[Any]:
    """The items of every container of ``level``, dict values read with ``dict.values()``."""
    if len(kinds) == 1:  # dicts only: a list of records, say
        return list(_chain(map(dict.values, level)))
    items: list[Any] = []
    for item in level:
        kind = type(item)
        if kind is dict:
            items += item.values()
        elif kind is list or kind is tuple:
            items += item
    return items


def _plain(value: Any) -> bool:
    """Whether orjson wrote ``value`` exactly as the standard library would.

    Runs only after orjson wrote ``value``: so it holds no cycle, is at most 255
    levels deep, and the walk visits no more objects than orjson did.

    Walks the value one nesting level at a time, in C: ``gc.get_referents`` gives
    the items of every ``list`` and ``tuple`` of a level, and the values of every
    ``dict`` (and its keys unless all are ``str``; orjson refuses any other key;
    from Python 3.13, `_items` reads dicts), and nothing for the scalars. Every
    object is of one of `_PLAIN_TYPES` (exactly, not a subclass: enums, ``str``
    and ``int`` subclasses go to the standard library), and every float is finite
    and within `_FLOAT_RANGE` or zero.
    """
    kind = type(value)
    if kind not in _NESTED_TYPES:
        return kind in _PLAIN_TYPES and (kind is not float or _plain_floats((value,)))
    complete = _REFERENTS_HOLD_DICT_VALUES
    level = _referents(value) if complete or kind is not dict else list(value.values())
    for _ in range(_MAX_PLAIN_DEPTH):
        if not level:
            return True
        kinds = set(map(type, level))
        if not kinds <= _PLAIN_TYPES:
            return False
        if float in kinds and not _plain_floats(level):
            return False
        level = _referents(*level) if complete or dict not in kinds else _items(level, kinds)
    return False


def _refuse(value: Any) -> Any:
    """orjson's ``default``: whatever it does not write natively, it does not write."""
    raise TypeError(type(value).__name__)


#: orjson's ``dumps`` when orjson is installed and writes like the standard library
#: (`_orjson_matches`); ``None`` otherwise. Tests set it to ``None`` to run the
#: standard library's path.
_orjson_dumps: Callable[..., bytes] | None = None
#: Subclasses, datetimes and dataclasses go to `_refuse` rather than being written:
#: `_plain` keeps them away already; this keeps orjson from ever guessing.
_ORJSON_OPTIONS = 0

#: Values on which orjson must write what the standard library writes, checked once at
#: import: the float notation limits, every escaped character, the widest integers.
_PROBES: Final[tuple[Any, ...]] = (
    {"type": "reply", "ref": None, "ok": True, "payload": {"a": [1, -2, 0.5, False]}},
    [0.0, -0.0, 1e-4, 0.00012345, 0.1, 1 / 3, 2.5, 1e15, 9999999999999998.0, -123.456],
    [2**63 - 1, -(2**63), 2**64 - 1, 2**53 + 1, 0],
    "".join(map(chr, range(0x80))) + "\u00e9\u2028\u2029\ufeff\U0001f600",
    {'\n\t\\"': ("tuple", [[], {}]), "é": {"": None}},
)


def _orjson_matches(dumps: Callable[..., bytes], options: int) -> bool:
    try:
        written = [dumps(probe, _refuse, options).decode() for probe in _PROBES]
    except Exception:  # an orjson that cannot even write these is not used
        return False
    return written == [_ENCODER.encode(probe) for probe in _PROBES]


def _load_orjson() -> None:
    global _orjson_dumps, _ORJSON_OPTIONS
    try:
        import orjson
    except ImportError:
        return
    options = (
        orjson.OPT_PASSTHROUGH_SUBCLASS
        | orjson.OPT_PASSTHROUGH_DATETIME
        | orjson.OPT_PASSTHROUGH_DATACLASS
    )
    if _orjson_matches(orjson.dumps, options):
        _orjson_dumps, _ORJSON_OPTIONS = orjson.dumps, options
    else:
        logger.warning(
            "orjson %s writes JSON unlike the standard library; frames are encoded "
            "with the standard library",
            getattr(orjson, "__version__", "?"),
        )


_load_orjson()


def json_encoder() -> Literal["orjson", "json"]:
    """Which library writes server frames in this process: ``"orjson"`` or ``"json"``.

    ``"orjson"`` when orjson is installed (the ``speedups`` extra) and wrote the
    import-time probe values exactly as the standard library does; ``"json"`` (the
    standard library) otherwise. Either way, frames are the same text.
    """
    return "json" if _orjson_dumps is None else "orjson"


def dumps(value: Any) -> str:
    """Encode ``value`` as compact JSON, refusing NaN, Infinity and lone surrogates.

    With orjson installed (the ``speedups`` extra), plain values are written by
    orjson; the text is the same either way.

    Raises:
        LocalProtocolError: (a ``ValueError``) ``value`` is not JSON-serializable.
    """
    fast = _orjson_dumps
    if fast is not None:
        # orjson first: it refuses a cycle at once (the walk would not end), and
        # bounds the walk's work by its own.
        try:
            data = fast(value, _refuse, _ORJSON_OPTIONS)
        except TypeError:
            pass  # orjson.JSONEncodeError: a lone surrogate, a huge integer, a key not a str
        else:
            if _plain(value):
                return data.decode()
    return _dumps_stdlib(value)


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
_plain_string = _PLAIN.fullmatch


def _json_string(text: str) -> str:
    return '"' + text + '"' if _plain_string(text) else dumps(text)


@functools.lru_cache(maxsize=4096)
def _quote_name(name: str) -> str:
    """A room name or event type as a JSON string; cached, since the same few recur."""
    return '"' + name + '"' if _plain_string(name) else dumps(name)


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
    # One f-string: a single string is built; the position, when kept, closes it.
    position = "}" if offset is None else f',"offset":{offset},"epoch":{dumps(epoch)}}}'
    return (
        f'{{"type":{_quote_name(type_)}'
        f',"room":{"null" if room is None else _quote_name(room)}'
        f',"id":{_json_string(message_id)}'
        f',"payload":{payload_json}'
        f',"timestamp":{timestamp}'
        f',"userId":{"null" if user_id is None else _json_string(user_id)}{position}'
    )
