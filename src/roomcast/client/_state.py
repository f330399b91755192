"""What a client connection tells the application besides events: its state, server errors."""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio

from ..exceptions import RoomcastError
from ._events import State, StateChange

__all__ = ["ErrorListener", "Observable", "StateListener"]

logger = logging.getLogger("roomcast.client")

#: A state listener: called with each change, in the connection's task; must not block.
StateListener = Callable[[StateChange], None]
#: An error listener: called with each server `error` frame as a roomcast exception.
ErrorListener = Callable[[RoomcastError], None]


class Observable:
    """The state of a client connection and the listeners of its changes and errors.

    Attributes:
        url: the server's WebSocket URL.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._state: State = "connecting"
        self._listeners: list[StateListener] = []
        self._error_listeners: list[ErrorListener] = []
        #: Set (and replaced) at each change; created when the connection is entered.
        self._changed: anyio.Event | None = None

    @property
    def state(self) -> State:
        """`"connecting"`, `"connected"`, `"disconnected"` or `"closed"`."""
        return self._state

    def on_state_change(self, listener: StateListener) -> Callable[[], None]:
        """Call `listener` with every [`StateChange`][roomcast.client.StateChange].

        Listeners run in the connection's task and must not block; an exception
        from one is logged and ignored.

        Returns:
            A function that removes the listener.
        """
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def on_error(self, listener: ErrorListener) -> Callable[[], None]:
        """Call `listener` with every `error` frame the server sends.

        The server sends one when it rejects a frame it cannot answer with a
        failed reply (a malformed frame, or a rate limit hit without a `ref`);
        a failed request raises its error from the request instead. The
        listener gets it as a roomcast exception, as a failed reply's error
        would be raised: [`RateLimited`][roomcast.exceptions.RateLimited],
        [`PermissionDenied`][roomcast.exceptions.PermissionDenied],
        [`AuthenticationError`][roomcast.exceptions.AuthenticationError] or
        [`ServerError`][roomcast.exceptions.ServerError] (with `code`). Without
        a listener such frames are logged at WARNING. Listeners run in the
        connection's task and must not block; an exception from one is logged
        and ignored.

        Returns:
            A function that removes the listener.
        """
        self._error_listeners.append(listener)

        def remove() -> None:
            if listener in self._error_listeners:
                self._error_listeners.remove(listener)

        return remove

    async def wait_state(self, *states: State) -> State:
        """Wait until the state is one of `states` (at once if it is), and return it.

        Raises:
            ValueError: no state is given.
        """
        if not states:
            raise ValueError("name at least one state")
        while self._state not in states:
            if self._state == "closed":
                return self._state  # terminal: nothing else will come
            await self._wait_change()
        return self._state

    async def _wait_change(self) -> None:
        if self._changed is None:
            raise RuntimeError("enter the connection first: async with connect(...)")
        await self._changed.wait()

    def _set_state(
        self,
        state: State,
        *,
        code: int | None = None,
        reason: str = "",
        delay: float | None = None,
        error: Exception | None = None,
    ) -> None:
        previous = self._state
        if previous == "closed" or previous == state:
            return
        self._state = state
        change = StateChange(state, previous, code, reason, delay, error)
        logger.debug("connection %s: %s -> %s (%s %s)", self.url, previous, state, code, reason)
        if self._changed is not None:
            self._changed.set()
            self._changed = anyio.Event()
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                logger.exception("a state listener of the roomcast client failed")

    def _report_error(self, error: RoomcastError) -> None:
        """Hand a server `error` frame to the error listeners (logged when there are none)."""
        listeners = list(self._error_listeners)
        if not listeners:
            logger.warning("roomcast client: the server sent an error frame: %s", error)
            return
        for listener in listeners:
            try:
                listener(error)
            except Exception:
                logger.exception("an error listener of the roomcast client failed")
