"""How a publication travels between nodes through Redis: a compact, versioned encoding (pure).

A message on a channel is ``r1:<offset>:<epoch>:<body>``; offset and epoch are
empty for a publication outside history. The body, also what a room's stream
stores, is one line of JSON header, a newline, then the payload's JSON as it was
encoded at publish: the payload is never parsed or escaped again between nodes.
The header is ``[type, id, timestamp, user_id, exclude, client, ephemeral]``;
the room is not in it, since the channel (or the stream) names it.
"""

from __future__ import annotations

import json
from typing import Final

from .base import Publication

__all__ = [
    "VERSION",
    "MalformedMessage",
    "decode_body",
    "decode_message",
    "encode_body",
    "plain_message",
]

#: The encoding's version: the first field of every message on a channel.
VERSION: Final = b"r1"

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_NOBODY: Final[frozenset[str]] = frozenset()


class MalformedMessage(ValueError):
    """A message on a channel that this version of roomcast cannot read."""


def encode_body(publication: Publication) -> bytes:
    """The publication without room, offset and epoch, as a stream stores it."""
    header = _dumps(
        [
            publication.type,
            publication.id,
            publication.timestamp,
            publication.user_id,
            sorted(publication.exclude) if publication.exclude else 0,
            publication.client,
            1 if publication.ephemeral else 0,
        ]
    )
    return f"{header}\n{publication.payload_json}".encode()


def plain_message(body: bytes) -> bytes:
    """The channel message for a publication outside history."""
    return VERSION + b":::" + body


def decode_body(
    body: bytes, room: str | None, offset: int | None = None, epoch: str | None = None
) -> Publication:
    """The publication of ``room`` that ``body`` encodes.

    Raises:
        MalformedMessage: ``body`` is not a body of this version.
    """
    header, newline, payload = body.partition(b"\n")
    try:
        type_, id_, timestamp, user_id, exclude, client, ephemeral = json.loads(header)
        payload_json = payload.decode()
    except (ValueError, TypeError) as exc:
        raise MalformedMessage("not a roomcast publication") from exc
    if not newline or not isinstance(type_, str) or not isinstance(id_, str):
        raise MalformedMessage("not a roomcast publication")
    return Publication(
        room,
        type_,
        id_,
        payload_json,
        timestamp,
        user_id,
        bool(ephemeral),
        frozenset(exclude) if exclude else _NOBODY,
        offset,
        epoch,
        client,
    )


def decode_message(message: bytes, room: str | None) -> Publication:
    """The publication a channel message carries.

    Raises:
        MalformedMessage: another version, or not a roomcast message at all.
    """
    parts = message.split(b":", 3)
    if len(parts) != 4 or parts[0] != VERSION:
        raise MalformedMessage("not a roomcast message of version r1")
    _, offset, epoch, body = parts
    if not offset:
        return decode_body(body, room)
    try:
        number, name = int(offset), epoch.decode()
    except ValueError as exc:  # UnicodeDecodeError is one too
        raise MalformedMessage("bad offset or epoch") from exc
    return decode_body(body, room, number, name)
