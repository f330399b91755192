"""How a closing connection stops its read loop from another task."""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import TYPE_CHECKING, Final

import anyio

from ._asyncio import cancel_native, current_native_task, uncancel_native

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from ._asyncio import NativeTask

__all__ = ["ReadLoopStop"]

_NO_SCOPE: Final = contextlib.nullcontext()


class ReadLoopStop:
    """Ends one connection's read loop when the connection closes.

    A connection spends its idle life waiting in ``transport.receive()``, and
    closing it (a slow consumer, an expired token, the hub shutting down) has
    to end that wait from another task. An anyio cancel scope does this, but
    on asyncio it costs about 600 bytes for as long as it is entered, which
    for an idle connection is its whole life.

    So on asyncio (Python 3.11 and later) the wait in ``receive()`` is ended
    with the task's own ``cancel()``, undone with ``uncancel()`` on the way
    out (the trick lives in `roomcast._asyncio`), and an anyio cancel scope is
    entered only while a request is being handled (`handling()`), where it
    also covers shielded sections. On trio, and on Python 3.10, one anyio
    cancel scope covers the whole loop.

    Use it as:

        with stop:
            while not closing:
                stop.waiting = True
                try:
                    data = await transport.receive()
                finally:
                    stop.waiting = False
                with stop.handling():
                    await handle(data)

    `cancel()` is only called once the connection is closing, and the
    loop checks for that before each ``receive()``: a stop requested while
    neither waiting nor handling needs no cancellation at all.
    """

    __slots__ = ("_outer", "_request", "_sent", "_task", "cancel_called", "waiting")

    def __init__(self) -> None:
        self._task: NativeTask | None = current_native_task()
        self._outer: anyio.CancelScope | None = None if self._task else anyio.CancelScope()
        self._request: anyio.CancelScope | None = None
        self._sent = False
        #: Whether `cancel()` was called.
        self.cancel_called = False
        #: Set by the read loop while it waits in ``transport.receive()``.
        self.waiting = False

    def __enter__(self) -> ReadLoopStop:
        if self._outer is not None:
            self._outer.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._outer is not None:
            return bool(self._outer.__exit__(exc_type, exc, tb))
        task = self._task
        if not self._sent or task is None:
            return False
        self._sent = False
        return uncancel_native(task, exc_type)

    def handling(self) -> AbstractContextManager[object]:
        """A scope for handling one request, cancelled when the loop is stopped."""
        if self._outer is not None:
            return _NO_SCOPE
        return _RequestScope(self)

    def cancel(self) -> None:
        """Stop the read loop: now if it is waiting or handling, else before its next wait."""
        if self.cancel_called:
            return
        self.cancel_called = True
        if self._outer is not None:
            self._outer.cancel()
        elif self._request is not None:
            self._request.cancel()
        elif self.waiting and self._task is not None:
            self._sent = True
            cancel_native(self._task)


class _RequestScope:
    """The anyio cancel scope around one request, known to its `ReadLoopStop`."""

    __slots__ = ("_scope", "_stop")

    def __init__(self, stop: ReadLoopStop) -> None:
        self._stop = stop
        self._scope = anyio.CancelScope()

    def __enter__(self) -> anyio.CancelScope:
        scope = self._scope.__enter__()
        if self._stop.cancel_called:
            scope.cancel()
        self._stop._request = scope
        return scope

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self._stop._request = None
        return bool(self._scope.__exit__(exc_type, exc, tb))
