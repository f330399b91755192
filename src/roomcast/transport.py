"""The Transport seam every adapter implements, and the handshake facts it carries."""

from __future__ import annotations

import sys
import urllib.parse
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any, Protocol, runtime_checkable

from .config import DEFAULT_CLOSE_TIMEOUT as DEFAULT_CLOSE_TIMEOUT
from .protocol import MAX_CLOSE_REASON_BYTES as MAX_CLOSE_REASON_BYTES
from .protocol import SENDABLE_CLOSE_CODES, CloseCode

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "MAX_CLOSE_REASON_BYTES",
    "EagerTransport",
    "Handshake",
    "PingableTransport",
    "Transport",
    "TryPingTransport",
    "close_frame",
]

_intern = sys.intern


def close_frame(code: int, reason: str = "") -> tuple[int, str]:
    """Check a close code and cut the reason to what fits a close frame.

    Adapters call this in [`Transport.close()`][roomcast.transport.Transport.close]; the reason is
    cut to `MAX_CLOSE_REASON_BYTES` of UTF-8 without splitting a character.

    Raises:
        ValueError: ``code`` may not be sent in a close frame (1005, 1006,
            1015, anything below 1000 or from 5000 up).
    """
    if not (code in SENDABLE_CLOSE_CODES or 3000 <= code < 5000):
        raise ValueError(f"close code {code} cannot be sent")
    return code, reason.encode()[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore")


@dataclass(frozen=True, slots=True)
class Handshake:
    """Read-only facts about the HTTP request that opened a connection.

    Attributes:
        path: the request path, without the query string.
        headers: every header as ``(name, value)`` pairs, names lower-cased,
            in the order received (repeated headers appear more than once).
        query: the query string parameters as ``(name, value)`` pairs.
        cookies: cookies by name (the last one wins when a name repeats).
        client: the peer's ``(host, port)``, when the server knows it.
        subprotocols: the subprotocols the client offered, in its order.
    """

    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    query: tuple[tuple[str, str], ...] = ()
    cookies: Mapping[str, str] = field(default_factory=dict)
    client: tuple[str, int] | None = None
    subprotocols: tuple[str, ...] = ()

    @classmethod
    def from_request(
        cls,
        target: str,
        headers: Iterable[tuple[str, str]],
        client: tuple[str, int] | None = None,
    ) -> Handshake:
        """Build the facts from a raw request, as adapters receive it.

        Args:
            target: the request target, path and query string (``/ws?x=1``).
            headers: header ``(name, value)`` pairs in the order received.
            client: the peer's ``(host, port)``, when known.
        """
        raw_path, _, query = target.partition("?")
        # Names interned: every connection shares one string per header name.
        pairs = tuple((_intern(name.lower()), value) for name, value in headers)
        offered = (
            part.strip()
            for name, value in pairs
            if name == "sec-websocket-protocol"
            for part in value.split(",")
        )
        return cls(
            path=urllib.parse.unquote(raw_path) or "/",
            headers=pairs,
            query=tuple(urllib.parse.parse_qsl(query, keep_blank_values=True)),
            cookies=_cookies(value for name, value in pairs if name == "cookie"),
            client=client,
            subprotocols=tuple(part for part in offered if part),
        )

    def header(self, name: str) -> str | None:
        """Return the first value of header ``name`` (case-insensitive), or ``None``."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        """Return every value of header ``name`` (case-insensitive), in order."""
        name = name.lower()
        return [value for key, value in self.headers if key == name]

    def query_param(self, name: str) -> str | None:
        """Return the first value of query parameter ``name``, or ``None``."""
        for key, value in self.query:
            if key == name:
                return value
        return None

    @property
    def client_host(self) -> str | None:
        """The peer's address, or ``None`` when unknown."""
        return self.client[0] if self.client is not None else None


def _cookies(values: Iterable[str]) -> dict[str, str]:
    # One pair at a time: SimpleCookie stops at the first malformed pair and
    # raises on some names browsers accept, and one bad cookie should not hide
    # the others.
    cookies: dict[str, str] = {}
    for value in values:
        for pair in value.split(";"):
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(pair)
            except CookieError:
                continue
            cookies.update((name, morsel.value) for name, morsel in jar.items())
    return cookies


@runtime_checkable
class Transport(Protocol):
    """One accepted WebSocket connection, as the hub sees it.

    Adapters wrap their framework's socket in an object with these members. Every
    method may raise [`ConnectionClosed`][roomcast.ConnectionClosed] once the connection is gone;
    no framework exception may escape.
    """

    @property
    def handshake(self) -> Handshake:
        """Facts about the opening handshake.

        The hub reads it when the connection opens and on ``refresh``. An
        adapter may build it on each access from the request its framework
        keeps, rather than hold a copy of the headers for every connection.
        """
        ...

    async def receive(self) -> str | bytes:
        """Wait for the next message from the peer (text as ``str``, binary as ``bytes``).

        Raises:
            ConnectionClosed: the connection is closed.
        """
        ...

    def try_send(self, frame: str) -> bool:
        """Hand ``frame`` to the transport without waiting, if it can take it now.

        Returns ``True`` when the frame was taken (for example, written to a write buffer that is
        below its high-water mark) and ``False``, taking nothing, when the caller must use
        [`send()`][roomcast.transport.Transport.send] instead. A transport that can only ``await``
        always returns ``False``.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        ...

    async def send(self, frames: list[str]) -> None:
        """Send ``frames`` in order, waiting for buffer space as needed.

        Handing several frames at once lets a transport write them with one
        system call.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        ...

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close the connection with ``code`` and ``reason`` (at most 123 bytes).

        Closing a closed transport does nothing.
        """
        ...


@runtime_checkable
class PingableTransport(Transport, Protocol):
    """A transport that can also send WebSocket protocol pings."""

    async def ping(self, on_pong: Callable[[], object]) -> None:
        """Send a protocol ping; call ``on_pong`` when the peer's pong arrives.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        ...


@runtime_checkable
class TryPingTransport(PingableTransport, Protocol):
    """A pingable transport that can also write a protocol ping without waiting.

    The hub's heartbeat offers each ping to
    [`try_ping()`][roomcast.transport.TryPingTransport.try_ping] when nothing is queued for the
    connection, so that pinging an idle connection starts no task; when it declines, the ping goes
    through [`ping()`][roomcast.transport.PingableTransport.ping] in the client's writer task, as
    for any [`PingableTransport`][roomcast.transport.PingableTransport].
    """

    def try_ping(self, on_pong: Callable[[], object]) -> bool:
        """Write a protocol ping now if the transport can take it; call ``on_pong`` on its pong.

        Returns ``True`` when the ping was written (``on_pong`` then runs when its pong arrives,
        as with [`ping()`][roomcast.transport.PingableTransport.ping]) and ``False``, writing
        nothing and keeping no reference to ``on_pong``, when the caller must use ``ping()``
        instead: the write buffer is above its high-water mark, a fragmented message or a
        closing handshake is under way, or the framework lacks what writing in place needs.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        ...


@runtime_checkable
class EagerTransport(Transport, Protocol):
    """A transport whose sends can only be awaited but usually finish without waiting.

    For such a transport (an ASGI server's ``send``),
    [`begin_send()`][roomcast.transport.EagerTransport.begin_send] runs the send in the caller's
    task up to its first suspension, so the common case costs no task switch; only a send that must
    wait is finished by the client's writer task.
    """

    @property
    def eager(self) -> bool:
        """Whether `begin_send()` may be used (it depends on the event loop)."""
        ...

    def begin_send(self, frame: str) -> Coroutine[Any, Any, None] | None:
        """Send ``frame`` as far as it goes without waiting.

        Returns ``None`` when the frame was sent, or else the rest of the
        send, to be awaited (or closed, to abandon it) from any task before
        anything else is sent.

        Raises:
            ConnectionClosed: the connection is closed.
        """
        ...
