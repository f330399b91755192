"""Frames built once and written together: the write path of the asyncio adapters.

Two things make a delivery on the ``websockets`` and aiohttp adapters cheaper than
the framework's own send:

- **Frame once, write many.** Fan-out hands every member of a room the very same
  ``str``. `HeldFrames` turns it into one server text frame (`text_frame`; RFC 6455
  section 5.2: FIN and opcode 0x1, a 7-bit, 16-bit or 64-bit payload length, the
  UTF-8 payload; section 5.1: a server never masks its frames) and keeps it on its
  batch, keyed by the identity of the text, so that every member after the first
  gets the same ``bytes`` object: no encode, no frame object, no copy. The batch
  keeps the text itself until it flushes, so that its identity cannot be taken by
  another object meanwhile.
- **Coalesced writes.** A connection's frames wait in its own list and leave in one
  ``transport.write``, so one system call, when the batch of its event loop
  flushes: at the end of the current loop iteration (``flush_delay`` 0), or
  ``flush_delay`` seconds after the batch's first frame. One flush serves every
  connection with frames waiting: a frame costs a list append, and the flush one
  write per connection.

Each adapter decides when a frame may be held (the connection is open, nothing of
the framework's is half-written or waiting, its write buffer is below the
high-water mark), writes what is held at once when it grows past that mark, and
writes it before anything the framework sends that must come after (a close
frame, a frame the framework itself encodes). A connection closed before its batch
flushes drops what was held for it, as a send in flight is dropped.

The batches, one per event loop and flush delay, are asyncio's business
(``roomcast._asyncio.Batch``); both frameworks run on asyncio only.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from typing import Final

from ._asyncio import batch_for
from .config import check_flush_delay

__all__ = ["HeldFrames", "text_frame"]

# RFC 6455 section 5.2: FIN + text opcode, then a 7-bit length, or 126 and a 16-bit
# one, or 127 and a 64-bit one. Section 5.1: a server never masks its frames.
_PACK_LENGTH_7: Final = struct.Struct("!BB").pack
_PACK_LENGTH_16: Final = struct.Struct("!BBH").pack
_PACK_LENGTH_64: Final = struct.Struct("!BBQ").pack
_FIN_TEXT: Final = 0x81


def text_frame(text: str) -> bytes:
    """``text`` as an unmasked, unfragmented server text frame (RFC 6455 section 5.2).

    Raises:
        UnicodeEncodeError: ``text`` holds a lone surrogate (not UTF-8).
    """
    payload = text.encode()
    length = len(payload)
    if length < 126:
        return _PACK_LENGTH_7(_FIN_TEXT, length) + payload
    if length < 65536:
        return _PACK_LENGTH_16(_FIN_TEXT, 126, length) + payload
    return _PACK_LENGTH_64(_FIN_TEXT, 127, length) + payload


class HeldFrames(ABC):
    """The frames held for one connection until its batch flushes (a transport's base).

    A subclass holds a frame with `_hold` once it has checked that the connection
    may take it, and writes what is held in `_flush_held`, which the batch calls
    (and the subclass itself, before the framework writes something that must
    come after).
    """

    __slots__ = ("_batch", "_held", "_held_limit", "_held_size")

    def _start_holding(self, flush_delay: float) -> None:
        """Join the running loop's batch for ``flush_delay``.

        Raises:
            ValueError: ``flush_delay`` is negative, not finite or over a second.
            RuntimeError: no event loop is running.
        """
        self._batch = batch_for(check_flush_delay(flush_delay))
        self._held: list[bytes] | None = None
        #: Bytes held: they count toward the write buffer's high-water mark.
        self._held_size = 0
        #: Past this many bytes held, they are written at once: the high-water mark
        #: when the batch's first frame was held.
        self._held_limit = 0

    def _hold(self, text: str, limit: int) -> None:
        """Hold ``text``'s frame (built once per publication) until the batch flushes.

        The caller has checked that the connection may take it; past ``limit``
        bytes held (its write buffer's high-water mark), what is held is
        written at once.
        """
        self._held_limit = limit
        batch = self._batch
        if text is not batch.text:
            batch.data = text_frame(text)
            batch.text = text
        if self._held is None:
            self._held = []
            batch.add(self)
        # Now the batch's last frame, behind what this connection holds.
        self._hold_again(text)

    def _hold_again(self, text: str) -> bool:
        """Hold ``text`` behind this batch's frames if it is the batch's last frame; say if so.

        The fast path of a fan-out: when this connection already holds frames
        in the batch, it passed every check of ``try_send`` when the first of
        them was held, and roomcast has written nothing to it since (each of
        its writes takes what is held first), so the same publication costs
        this member an append. Should the connection start closing meanwhile,
        the flush drops what is held, as a send in flight is dropped.
        """
        held = self._held
        if held is None:
            return False
        batch = self._batch
        if text is not batch.text:
            return False
        data = batch.data
        held.append(data)
        self._held_size += len(data)
        if self._held_size > self._held_limit:
            # A burst holds no more than the buffer may: it goes on to the buffer now.
            self._flush_held()
        return True

    def _take_held(self) -> bytes | None:
        """What is held, as one ``bytes`` (the very frame object when there is one), or None."""
        held = self._held
        if held is None:
            return None
        self._held = None
        self._held_size = 0
        return held[0] if len(held) == 1 else b"".join(held)

    @abstractmethod
    def _flush_held(self) -> None:
        """Write what is held now, or drop it if the connection is no longer open."""
