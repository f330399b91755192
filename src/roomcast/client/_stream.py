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

    The client never drops what it appends here. It appends only when the
    buffer has room (`full` is false), or else first waits in
    `wait_writable` until the application takes an item; the router decides
    what to do when that wait lasts (see `_router`). A join with `history`
    reserves room for its replay (`reserve`), so that a replay larger than
    the buffer arrives whole while `subscribe()` waits for its reply.

    Attributes:
        name: what the buffer is for, as logs name it.
        listening: whether the application has started reading it.
    """

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.listening = False
        self._size = size
        self._reserved = 0
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

    @property
    def capacity(self) -> int:
        """How many items it holds before `full`: its size plus what is reserved."""
        return self._size + self._reserved

    @property
    def full(self) -> bool:
        """Whether an append must wait for the application (never once ended)."""
        return len(self._items) >= self.capacity and not self._ended

    def reserve(self, count: int) -> None:
        """Make room for `count` more items, until `release(count)`."""
        self._reserved += count
        if self._writable is not None:
            self._writable.set()

    def release(self, count: int) -> None:
        """Give back room reserved by `reserve(count)`; what it holds is kept."""
        self._reserved = max(0, self._reserved - count)

    async def wait_writable(self) -> None:
        """Wait until the buffer is not `full`."""
        while self.full:
            self._writable = anyio.Event()
            await self._writable.wait()

    def append(self, item: Received) -> None:
        """Append `item`, even over capacity; an ended buffer discards it."""
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
