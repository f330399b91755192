"""The asyncio-only tricks of the otherwise anyio-clean runtime and adapters, in one place.

roomcast runs on anyio, so on asyncio and on trio. Three places do better on
asyncio by reaching below anyio; each trick lives here, and each degrades to
plain anyio (or is never reached) under trio:

- **Native stop of a read loop** (`current_native_task`, `cancel_native`,
  `uncancel_native`; used by `roomcast._reader.ReadLoopStop`).
  An idle connection waits in ``transport.receive()`` for its whole life, and an
  anyio cancel scope held around that wait costs about 600 bytes on asyncio. The
  wait is instead ended with the task's own ``Task.cancel()``, undone with
  ``Task.uncancel()`` (Python 3.11) on the way out. Safe because the stop is
  only sent while the loop waits in ``receive()``, which has no cleanup of its
  own to skip, and because ``uncancel()`` tells whether another cancellation
  (the server going away) arrived too: that one propagates. Under trio, and on
  Python 3.10, `current_native_task` returns ``None`` and the read loop uses one
  anyio cancel scope instead.
- **Eager sends** (`on_asyncio`, `resume`; used by
  `StarletteTransport.begin_send`).
  An ASGI send can only be awaited; the fan-out loop steps the send's coroutine
  once, in place (in ``begin_send`` itself, so that the hot path gains no call),
  and it usually finishes without suspending (the server's write buffer has
  room). Only a send that suspends is handed on, as an awaitable that resumes
  the same coroutine (`resume`), to the client's writer task. Safe on asyncio
  because what the coroutine waits on is a future that any task on the same loop
  may await; not on trio, whose scheduler ties a suspension to the task that
  made it, so `on_asyncio` is false there and every frame goes through the
  writer (the transport's ``eager`` is false).
- **A callback on a future** (`when_resolved`; used by
  `WebSocketsTransport.ping`).
  ``websockets`` answers ``ping()`` with an asyncio future; a done callback runs
  ``on_pong`` without a task waiting for each ping. ``websockets.asyncio`` runs
  on asyncio only, so there is nothing to degrade under trio.
- **Writes at the end of a loop iteration** (`Batch`, `batch_for`; used through
  ``roomcast._writes.HeldFrames`` by the ``websockets`` and aiohttp transports).
  A connection's frames are held and written together by one ``loop.call_soon``
  (or ``loop.call_later(flush_delay)``) callback for every connection of the loop.
  Both frameworks run on asyncio only: nothing to degrade under trio.

The aiohttp adapter (``roomcast.aiohttp`` and ``roomcast._aiohttp_wire``) uses
asyncio directly and openly: aiohttp runs on asyncio only.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Protocol
from weakref import WeakKeyDictionary

import anyio

__all__ = [
    "Batch",
    "Holder",
    "NativeTask",
    "batch_for",
    "cancel_native",
    "current_native_task",
    "on_asyncio",
    "resume",
    "uncancel_native",
    "when_resolved",
]

_logger = logging.getLogger("roomcast.asyncio")

#: The task a read loop runs in, when it can be stopped natively.
NativeTask = asyncio.Task[Any]


def on_asyncio() -> bool:
    """Whether the running event loop is asyncio's (anyio's cancellation class tells)."""
    return anyio.get_cancelled_exc_class().__module__.startswith("asyncio")


# ----------------------------------------------------------------------------- native stop


def current_native_task() -> NativeTask | None:
    """The running asyncio task when it can be stopped natively, else ``None``.

    Native stopping needs ``Task.uncancel`` (Python 3.11) to undo its own
    cancellation, and asyncio: on trio the anyio cancel scope is cheap anyway.
    """
    if sys.version_info < (3, 11) or not on_asyncio():
        return None
    return asyncio.current_task()


def cancel_native(task: NativeTask) -> None:
    """Cancel ``task``'s current wait; `uncancel_native` undoes it on the way out."""
    task.cancel()


def uncancel_native(task: NativeTask, exc_type: type[BaseException] | None) -> bool:
    """Undo a `cancel_native`; whether the exception ``exc_type`` it caused is swallowed.

    Swallowed only when that stop was the task's only cancellation: one from
    another ``task.cancel()`` (the server going away) propagates. An enclosing
    anyio scope cancelled at the same moment does not cancel a task whose wait
    is already cancelled; it keeps trying, so its cancellation arrives at the
    task's next checkpoint.
    """
    if sys.version_info < (3, 11):  # pragma: no cover - current_native_task gave no task
        return False
    return (
        task.uncancel() == 0
        and exc_type is not None
        and issubclass(exc_type, anyio.get_cancelled_exc_class())
    )


# ----------------------------------------------------------------------------- eager sends


@types.coroutine
def resume(sending: Coroutine[Any, Any, None], suspended: Any) -> Generator[Any, Any, None]:
    """Continue ``sending``, which suspended with ``suspended``, in the awaiting task.

    The caller ran the coroutine's first step itself (``sending.send(None)``)
    and got ``suspended``, the future it waits on; the rest, returned here,
    may be awaited by any task on the same asyncio loop (or closed, to
    abandon it). Only call it on asyncio (see `on_asyncio`).
    """
    try:
        while True:
            try:
                sent = yield suspended
            except GeneratorExit:
                sending.close()
                raise
            except BaseException as exc:  # cancellation, delivered to the send
                suspended = sending.throw(exc)
            else:
                suspended = sending.send(sent)
    except StopIteration:
        return


# ----------------------------------------------------------------------------- futures


def when_resolved(
    waiter: Awaitable[object], callback: Callable[[], object], logger: logging.Logger
) -> None:
    """Call ``callback`` once the asyncio future ``waiter`` has a result.

    A future cancelled or failed (a ping lost with its connection) calls
    nothing and is not logged: reading its exception marks it retrieved. An
    exception from ``callback`` is logged to ``logger``.
    """

    def resolved(future: asyncio.Future[object]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        try:
            callback()
        except Exception:
            logger.exception("pong callback failed")

    # websockets types ping() as returning an Awaitable; it is the connection's own Future.
    future: asyncio.Future[object] = waiter  # type: ignore[assignment]
    future.add_done_callback(resolved)


# ----------------------------------------------------------------------------- batched writes


class Holder(Protocol):
    """A connection that holds frames until its batch flushes (``roomcast._writes.HeldFrames``)."""

    def _flush_held(self) -> None: ...


class Batch:
    """The connections of one event loop with frames held, and when they are written.

    Attributes:
        delay: seconds from the first frame held to the flush (0: the end of
            the current loop iteration).
        text: the text of the last frame built for a connection of the batch (by
            ``roomcast._writes``), kept until the flush so that its identity stays its own.
        data: that frame.
    """

    __slots__ = ("_dirty", "_handle", "_loop", "data", "delay", "text")

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self._loop = loop
        self.delay = delay
        self._dirty: list[Holder] = []
        self._handle: asyncio.Handle | None = None
        self.text: str | None = None
        self.data = b""

    def add(self, holder: Holder) -> None:
        """Flush ``holder``, which just held its first frame, with the rest of the batch."""
        self._dirty.append(holder)
        if self._handle is None:
            if self.delay:
                self._handle = self._loop.call_later(self.delay, self.flush)
            else:
                self._handle = self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what every connection of the batch holds, one write each.

        Runs as the loop's callback; one connection's failure is logged and the
        others are still written.
        """
        self._handle = None
        # Released: a big frame is not kept for the life of the loop.
        self.text = None
        self.data = b""
        dirty, self._dirty = self._dirty, []
        for holder in dirty:
            try:
                holder._flush_held()
            except Exception:  # one connection's failure must not keep the others' frames
                _logger.exception("writing held frames failed")


#: Each running loop's batches, by flush delay; an entry goes with its loop.
_BATCHES: WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, Batch]] = WeakKeyDictionary()


def batch_for(delay: float) -> Batch:
    """The running loop's batch for ``delay`` seconds, made on first use.

    Raises:
        RuntimeError: no event loop is running.
    """
    loop = asyncio.get_running_loop()
    try:
        batches = _BATCHES.get(loop)
        if batches is None:
            batches = _BATCHES[loop] = {}
    except TypeError:  # a loop that takes no weak reference: a batch of its own
        return Batch(loop, delay)
    batch = batches.get(delay)
    if batch is None:
        batch = batches[delay] = Batch(loop, delay)
    return batch
