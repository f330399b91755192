"""The client's requests: numbered by `ref`, sent once connected, matched with their replies."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from websockets.exceptions import ConnectionClosed as WebSocketClosed

from ..exceptions import ConnectionClosed, LocalProtocolError, RequestTimeout
from ..protocol import CLOSE_ABNORMAL
from ..wire import dumps
from ._rules import server_error
from ._socket import WebSocket

__all__ = ["OnReply", "Pending", "Requests", "send"]

logger = logging.getLogger("roomcast.client")

#: Called with a successful reply's payload, in the reading task, before the
#: request's caller resumes (so that routing sees what the reply changed).
OnReply = Callable[[Any], Awaitable[None]]


class Pending:
    """A request waiting for its reply."""

    __slots__ = ("done", "error", "on_reply", "payload")

    def __init__(self, on_reply: OnReply | None = None) -> None:
        self.done = anyio.Event()
        self.payload: Any = None
        self.error: BaseException | None = None
        self.on_reply = on_reply


class Requests:
    """The requests of one client connection, across its reconnects.

    Args:
        max_frame_size: the largest frame the client sends, in bytes.
    """

    def __init__(self, max_frame_size: int) -> None:
        self.pending: dict[int, Pending] = {}
        self._next_ref = 0
        self._max_frame_size = max_frame_size

    def next_ref(self) -> int:
        """A `ref` no other request of this client has."""
        self._next_ref += 1
        return self._next_ref

    def encode(self, frame: dict[str, Any]) -> str:
        """`frame` as the text sent.

        Raises:
            LocalProtocolError: it is not JSON, or over the frame size limit.
        """
        text = dumps(frame)
        size = len(text.encode("utf-8"))
        if size > self._max_frame_size:
            raise LocalProtocolError(
                f"the {frame['action']} frame is {size} bytes, over the limit of "
                f"{self._max_frame_size}"
            )
        return text

    def fail_all(self, error: BaseException) -> None:
        """Fail every request in flight with `error`."""
        pending, self.pending = self.pending, {}
        for waiting in pending.values():
            waiting.error = error
            waiting.done.set()

    async def on_reply(self, frame: dict[str, Any]) -> None:
        """A `reply` frame arrived: complete its request."""
        ref = frame.get("ref")
        pending = self.pending.pop(ref, None) if type(ref) is int else None
        if pending is None:
            logger.debug("roomcast client: a reply to no request in flight (ref %r)", ref)
            return
        if frame.get("ok") is True:
            pending.payload = frame.get("payload")
            if pending.on_reply is not None:
                await pending.on_reply(pending.payload)
        else:
            pending.error = server_error(frame.get("error"))
        pending.done.set()

    async def request(
        self,
        action: str,
        fields: dict[str, Any],
        *,
        connected: Callable[[], Awaitable[WebSocket]],
        within: float,
        on_reply: OnReply | None = None,
    ) -> Any:
        """Send a request once `connected()` gives a socket, and return its reply's payload.

        Raises:
            LocalProtocolError: the frame cannot be sent (not JSON, too big).
            RequestTimeout: no connection, then no reply, `within` seconds.
            ConnectionClosed: the connection dropped with the request in flight,
                or is closed for good.
            RoomcastError: the server failed the request (see `server_error`).
        """
        ref = self.next_ref()
        text = self.encode({"action": action, "ref": ref, **fields})
        pending = Pending(on_reply)
        try:
            with anyio.fail_after(within):
                ws = await connected()
                self.pending[ref] = pending
                await send(ws, text)
                await pending.done.wait()
        except TimeoutError as exc:
            raise RequestTimeout(f"{action}: no reply within {within:g} s") from exc
        finally:
            self.pending.pop(ref, None)
        if pending.error is not None:
            raise pending.error
        return pending.payload


async def send(ws: WebSocket, text: str) -> None:
    """Send `text` on `ws`.

    Raises:
        ConnectionClosed: the socket is closed (roomcast's exception, with its code).
    """
    try:
        await ws.send(text)
    except WebSocketClosed as exc:
        received = exc.rcvd
        if received is None:
            raise ConnectionClosed.from_code(CLOSE_ABNORMAL, "no close frame") from exc
        raise ConnectionClosed.from_code(received.code, received.reason) from exc
