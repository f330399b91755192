"""The bounded buffer behind each stream the client's application iterates (anyio)."""

from __future__ import annotations

import logging
from collections import deque

import anyio

from ._events import Received

__all__ = ["EventBuffer"]

logger = logging.getLogger("roomcast.client")


class EventBuffer:
    """A bounded FIFO of received items, read by the application, filled by the client.

    Nothing put here is dropped. When the buffer is full, `put` waits until the
    application takes an item: the client stops reading its socket, and the
    server's slow-consumer policy applies if it lasts (a `4009` close, after
    which the client reconnects and resubscribes with `since`). Each such stall
    is logged at WARNING, once per stall.

    Attributes:
        name: what the buffer is for, as logs name it.
        listening: whether the application has started reading it.
    """

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.listening = False
        self._size = size
        self._items: deque[Received] = deque()
        self._readable: anyio.Event | None = None
        self._writable: anyio.Event | None = None
        self._ended = False
        self._error: BaseException | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def ended(self) -> bool:
        """Whether `end` was called (items may still wait to be read)."""
        return self._ended

    async def put(self, item: Received) -> None:
        """Append `item`, waiting while the buffer is full; an ended buffer discards it."""
        if len(self._items) >= self._size and not self._ended:
            logger.warning(
                "%s: %d events wait to be read; reading from the server paused until "
                "the application takes one",
                self.name,
                len(self._items),
            )
            while len(self._items) >= self._size and not self._ended:
                self._writable = anyio.Event()
                await self._writable.wait()
        if self._ended:
            return
        self._items.append(item)
        if self._readable is not None:
            self._readable.set()

    async def get(self) -> Received:
        """The oldest item, waiting for one.

        Raises:
            StopAsyncIteration: the buffer ended without an error and is empty.
            BaseException: the error the buffer ended with, once it is empty.
        """
        self.listening = True
        while not self._items:
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._readable = anyio.Event()
            await self._readable.wait()
        item = self._items.popleft()
        if self._writable is not None:
            self._writable.set()
        return item

    def end(self, error: BaseException | None = None) -> None:
        """No more items: readers get what is left, then `error` or the end."""
        if self._ended:
            return
        self._ended = True
        self._error = error
        if self._readable is not None:
            self._readable.set()
        if self._writable is not None:
            self._writable.set()
