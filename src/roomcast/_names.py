"""Room names, event types and namespaces: what protocol v1 accepts as each (pure)."""

from __future__ import annotations

import functools
import re
from typing import Final

from .exceptions import LocalProtocolError

# No __all__: roomcast.wire re-exports these, and its __all__ is the public list.

#: Longest room name, in characters.
MAX_ROOM_NAME_LENGTH: Final = 128
#: Longest event type, in characters.
MAX_TYPE_LENGTH: Final = 64

#: Room names: 1-128 characters from ``A-Z a-z 0-9 _ - . : @ = /``; the namespace is
#: the part before the first ``:``.
_ROOM_RE: Final = re.compile(rf"[A-Za-z0-9_\-.:@=/]{{1,{MAX_ROOM_NAME_LENGTH}}}")
#: Event types: a letter, then up to 63 of ``A-Z a-z 0-9 _ - . :``.
_TYPE_RE: Final = re.compile(rf"[A-Za-z][A-Za-z0-9_\-.:]{{0,{MAX_TYPE_LENGTH - 1}}}")
#: The notice that a room's messages were lost for good on this node (see the protocol).
ROOM_RESET: Final = "room.reset"
#: A control message on a user's channel: close that user's connections on every node.
#: Handled by each node, never sent to a client.
USER_DISCONNECT: Final = "roomcast.disconnect"
#: Types the server itself sends; applications may not publish them.
_RESERVED_TYPES: Final = frozenset(
    {"reply", "error", "ping", "pong", "gap", ROOM_RESET, USER_DISCONNECT}
)
_RESERVED_PREFIXES: Final = ("connection.", "presence.", "token.", "roomcast.")


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
