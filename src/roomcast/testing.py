"""Test kit: an in-memory transport pair, a manual clock and a test client for apps' own tests.

Drive real-time flows against a real [`Hub`][roomcast.Hub] without a socket:

    async with Hub(clock=clock) as hub, TestClient(hub) as client:
        await client.subscribe("team:t1")
        await hub.publish("team:t1", "issue.created", {"id": "i1"})
        event = await client.receive_event("issue.created")
        assert event["payload"] == {"id": "i1"}
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .config import check_non_negative
from .exceptions import ConnectionClosed
from .hub import Hub
from .protocol import CLOSE_ABNORMAL, CloseCode
from .transport import Handshake

__all__ = [
    "ClientEnd",
    "ManualClock",
    "MemoryTransport",
    "TestClient",
    "memory_transport_pair",
]

#: Frames the server side may have in flight to a test client before
#: [`MemoryTransport.try_send()`][roomcast.testing.MemoryTransport.try_send] reports a full buffer.
DEFAULT_BUFFER = 1024


class ManualClock:
    """A clock that moves only when told to, for tests without sleeps.

    Pass it to ``Hub(clock=...)``; then ``await clock.advance(30)`` fires every
    heartbeat due in those 30 seconds and waits until the hub has reacted.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._counter = itertools.count()

    def now(self) -> float:
        """The current manual time."""
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        """Wait until `advance()` moves the clock to ``deadline``."""
        if deadline <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        heapq.heappush(self._sleepers, (deadline, next(self._counter), event))
        await event.wait()

    async def advance(self, seconds: float) -> None:
        """Move the clock forward, wake due sleepers and let every task settle.

        Raises:
            ValueError: ``seconds`` is negative or not a finite number (a clock
                cannot go backwards, nor to nowhere).
        """
        check_non_negative("seconds", seconds)
        await anyio.wait_all_tasks_blocked()
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            heapq.heappop(self._sleepers)[2].set()
        await anyio.wait_all_tasks_blocked()


class _Link:
    """State shared by the two ends of one in-memory connection."""

    def __init__(self) -> None:
        self.server_close: tuple[int, str] | None = None
        self.client_close: tuple[int, str] | None = None


class MemoryTransport:
    """The server end of an in-memory connection; a [`Transport`][roomcast.Transport].

    Frames go into a bounded buffer; [`try_send()`][roomcast.testing.MemoryTransport.try_send]
    reports ``False`` when it is full, as a socket's write buffer above its high-water mark would.
    """

    def __init__(
        self,
        handshake: Handshake,
        link: _Link,
        inbound: MemoryObjectReceiveStream[str | bytes],
        outbound: MemoryObjectSendStream[str],
    ) -> None:
        self._handshake = handshake
        self._link = link
        self._inbound = inbound
        self._outbound = outbound

    @property
    def handshake(self) -> Handshake:
        """The handshake facts given to `memory_transport_pair()`."""
        return self._handshake

    def _closed(self) -> ConnectionClosed:
        code, reason = self._link.client_close or self._link.server_close or (CLOSE_ABNORMAL, "")
        return ConnectionClosed.from_code(code, reason)

    async def receive(self) -> str | bytes:
        """The next frame the client sent."""
        if self._link.server_close is not None:
            raise self._closed()
        try:
            return await self._inbound.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise self._closed() from None

    def try_send(self, frame: str) -> bool:
        """Buffer ``frame`` unless the buffer is full."""
        if self._link.server_close is not None or self._link.client_close is not None:
            raise self._closed()
        try:
            self._outbound.send_nowait(frame)
        except anyio.WouldBlock:
            return False
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise self._closed() from None
        return True

    async def send(self, frames: list[str]) -> None:
        """Buffer ``frames``, waiting for room."""
        for frame in frames:
            if self._link.server_close is not None:
                raise self._closed()
            try:
                await self._outbound.send(frame)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                raise self._closed() from None

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close; the client end sees ``code`` after the frames already buffered."""
        if self._link.server_close is None and self._link.client_close is None:
            self._link.server_close = (code, reason)
        self._outbound.close()
        self._inbound.close()
        await anyio.lowlevel.checkpoint()


class ClientEnd:
    """The client end of an in-memory connection: raw frames in and out."""

    def __init__(
        self,
        link: _Link,
        inbound: MemoryObjectReceiveStream[str],
        outbound: MemoryObjectSendStream[str | bytes],
    ) -> None:
        self._link = link
        self._inbound = inbound
        self._outbound = outbound

    @property
    def close_code(self) -> int | None:
        """The code the server closed with, once it has."""
        return None if self._link.server_close is None else self._link.server_close[0]

    @property
    def close_reason(self) -> str | None:
        """The reason the server closed with, once it has."""
        return None if self._link.server_close is None else self._link.server_close[1]

    async def send(self, frame: str | bytes) -> None:
        """Send one raw frame to the server.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        try:
            await self._outbound.send(frame)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise self._closed() from None

    async def receive(self) -> str:
        """The next raw frame from the server.

        Raises:
            ConnectionClosed: the server closed the connection (with its code)
                and every frame sent before the close has been received.
        """
        try:
            return await self._inbound.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise self._closed() from None

    def receive_nowait(self) -> str | None:
        """The next raw frame if one is already here, else ``None``.

        Raises:
            ConnectionClosed: the server closed the connection and every frame
                sent before the close has been received.
        """
        try:
            return self._inbound.receive_nowait()
        except anyio.WouldBlock:
            return None
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise self._closed() from None

    def _closed(self) -> ConnectionClosed:
        code, reason = self._link.server_close or self._link.client_close or (CLOSE_ABNORMAL, "")
        return ConnectionClosed.from_code(code, reason)

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close the connection from the client side."""
        if self._link.client_close is None and self._link.server_close is None:
            self._link.client_close = (code, reason)
        self._outbound.close()
        self._inbound.close()
        await anyio.lowlevel.checkpoint()

    def abort(self) -> None:
        """Vanish without a close frame, like a client whose network died."""
        self._outbound.close()
        self._inbound.close()


def memory_transport_pair(
    handshake: Handshake | None = None, *, buffer: int = DEFAULT_BUFFER
) -> tuple[MemoryTransport, ClientEnd]:
    """Create the two ends of one in-memory connection.

    Args:
        handshake: the facts the server end reports (default: an empty handshake
            from ``127.0.0.1``).
        buffer: frames the server may have in flight before ``try_send``
            reports a full buffer.
    """
    if handshake is None:
        handshake = Handshake(
            path="/ws", client=("127.0.0.1", 50000), subprotocols=("roomcast.v1",)
        )
    link = _Link()
    to_client_send, to_client_receive = anyio.create_memory_object_stream[str](buffer)
    to_server_send, to_server_receive = anyio.create_memory_object_stream[str | bytes](buffer)
    server = MemoryTransport(handshake, link, to_server_receive, to_client_send)
    client = ClientEnd(link, to_client_receive, to_server_send)
    return server, client


class TestClient:
    """A protocol v1 client connected to a hub in memory.

    ``async with TestClient(hub) as client:`` runs ``hub.serve`` for it in a
    task group and waits for ``connection.ack``. Frames are decoded JSON
    objects (``dict``). Clients opened this way must close in reverse order;
    pass ``task_group`` to open and close many in any order.

    Args:
        hub: a running hub.
        task_group: run ``hub.serve`` in this task group instead of one of
            the client's own.
        handshake: the facts the hub sees (headers, query, cookies, ...).
        buffer: frames that may wait unread before the hub's fast path reports
            a full buffer (a small one makes a slow consumer).
        timeout: seconds any single wait in this client may take.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        hub: Hub,
        *,
        handshake: Handshake | None = None,
        buffer: int = DEFAULT_BUFFER,
        timeout: float = 5.0,
        auth_token: str | None = None,
        task_group: TaskGroup | None = None,
    ) -> None:
        self.hub = hub
        self._external = task_group
        self._served = anyio.Event()
        self.transport, self.end = memory_transport_pair(handshake, buffer=buffer)
        self.timeout = timeout
        self._auth_token = auth_token
        self._task_group: TaskGroup | None = None
        self._scope: anyio.CancelScope | None = None
        self._refs = itertools.count(1)
        self._backlog: list[dict[str, Any]] = []
        self.ack: dict[str, Any] = {}

    @property
    def client_id(self) -> str:
        """The id from ``connection.ack``."""
        return str(self.ack["payload"]["clientId"])

    async def _serve(self) -> None:
        try:
            await self.hub.serve(self.transport)
        finally:
            self._served.set()

    async def __aenter__(self) -> TestClient:
        if self._external is not None:
            self._external.start_soon(self._serve)
        else:
            # The scope lets __aexit__ bound how long the hub may take to finish.
            self._scope = anyio.CancelScope()
            self._scope.__enter__()
            self._task_group = anyio.create_task_group()
            await self._task_group.__aenter__()
            self._task_group.start_soon(self._serve)
        try:
            if self._auth_token is not None:
                await self.send_json({"action": "auth", "token": self._auth_token})
            self.ack = await self.receive()
            if self.ack.get("type") != "connection.ack":
                raise AssertionError(f"expected connection.ack, got {self.ack!r}")
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self.end.close()
        if self._external is not None:
            with anyio.fail_after(self.timeout):
                await self._served.wait()
            return None
        task_group, self._task_group = self._task_group, None
        scope = self._scope
        if task_group is None or scope is None:
            return None
        scope.deadline = anyio.current_time() + self.timeout
        try:
            result = await task_group.__aexit__(exc_type, exc, tb)
        finally:
            scope.__exit__(None, None, None)
        if scope.cancelled_caught:
            raise TimeoutError("the hub did not finish serving the test client")
        return result

    async def send_json(self, frame: Mapping[str, Any]) -> None:
        """Send one request object."""
        await self.end.send(json.dumps(frame))

    async def receive(self) -> dict[str, Any]:
        """The next frame from the hub, decoded.

        Raises:
            TimeoutError: nothing arrived within ``timeout``.
            ConnectionClosed: the hub closed the connection.
        """
        if self._backlog:
            return self._backlog.pop(0)
        with anyio.fail_after(self.timeout):
            frame: dict[str, Any] = json.loads(await self.end.receive())
        return frame

    def drain(self) -> list[dict[str, Any]]:
        """Every frame that has already arrived, decoded, without waiting."""
        frames, self._backlog = self._backlog, []
        while (raw := self.end.receive_nowait()) is not None:
            frames.append(json.loads(raw))
        return frames

    async def receive_event(self, type: str | None = None) -> dict[str, Any]:
        """The next application event (optionally of ``type``); pings are answered, replies kept."""
        skipped: list[dict[str, Any]] = []
        try:
            while True:
                frame = await self.receive()
                if frame.get("type") == "ping":
                    await self.send_json({"action": "pong"})
                    continue
                if (type is None and "room" in frame and "id" in frame) or frame.get(
                    "type"
                ) == type:
                    return frame
                skipped.append(frame)
        finally:
            self._backlog[:0] = skipped

    async def request(self, frame: Mapping[str, Any]) -> dict[str, Any]:
        """Send a request with a fresh ``ref`` and return its reply; other frames are kept."""
        ref = next(self._refs)
        await self.send_json({**frame, "ref": ref})
        skipped: list[dict[str, Any]] = []
        try:
            while True:
                reply = await self.receive()
                if reply.get("type") in ("reply", "error", "pong") and reply.get("ref") == ref:
                    return reply
                skipped.append(reply)
        finally:
            self._backlog[:0] = skipped

    async def subscribe(
        self,
        *rooms: str,
        since: Mapping[str, Mapping[str, Any]] | None = None,
        history: Mapping[str, int] | None = None,
    ) -> dict[str, Any]:
        """Subscribe and return the per-room results of the reply.

        ``since`` maps rooms to the position to recover from; ``history`` maps
        rooms without one to how many of their last messages to replay.
        """
        frame: dict[str, Any] = {"action": "subscribe", "rooms": list(rooms)}
        if since:
            frame["since"] = {room: dict(position) for room, position in since.items()}
        if history:
            frame["history"] = dict(history)
        reply = await self.request(frame)
        if not reply.get("ok"):
            raise AssertionError(f"subscribe failed: {reply!r}")
        rooms_result: dict[str, Any] = reply["payload"]["rooms"]
        return rooms_result

    async def unsubscribe(self, *rooms: str) -> dict[str, Any]:
        """Unsubscribe and return the per-room results of the reply."""
        reply = await self.request({"action": "unsubscribe", "rooms": list(rooms)})
        rooms_result: dict[str, Any] = reply["payload"]["rooms"]
        return rooms_result

    async def publish(
        self, room: str, type: str, payload: Any = None, *, ephemeral: bool = False
    ) -> dict[str, Any]:
        """Publish as this client and return the reply."""
        frame = {"action": "publish", "room": room, "type": type, "payload": payload}
        if ephemeral:
            frame["ephemeral"] = True
        return await self.request(frame)

    async def history(
        self,
        room: str,
        *,
        limit: int | None = None,
        since: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Send a ``history`` request and return its reply (failed ones included)."""
        frame: dict[str, Any] = {"action": "history", "room": room}
        if limit is not None:
            frame["limit"] = limit
        if since is not None:
            frame["since"] = dict(since)
        return await self.request(frame)

    async def wait_closed(self) -> int:
        """Read until the hub closes the connection; return the close code."""
        with anyio.fail_after(self.timeout):
            while True:
                try:
                    await self.end.receive()
                except ConnectionClosed as exc:
                    return exc.code

    def abort(self) -> None:
        """Vanish without a close frame."""
        self.end.abort()
