"""A small trio WebSocket client on the ``websockets`` sans-I/O protocol.

``websockets.trio`` needs websockets 17, which needs Python 3.11; on Python 3.10
the Starlette adapter's hypercorn-on-trio tests connect with this instead. It
covers what those tests use: the opening handshake (with its refusals),
``send``, ``recv``, ``aclose``, ``subprotocol``, ``local_address``, ``response``
and ``stream``. Once open, a task reads in the background, as websockets' own
clients do: pings and a server's close frame are answered while the test does
not read.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any

import trio
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import enable_client_permessage_deflate
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Origin, Subprotocol
from websockets.uri import parse_uri


class ClientConnection:
    """One client connection: a trio stream driven by a ``ClientProtocol``."""

    def __init__(self, stream: trio.SocketStream, protocol: ClientProtocol) -> None:
        self.stream = stream
        self.protocol = protocol
        self.response: Response | None = None
        self._pending: list[str | bytes] = []
        self._sending = trio.Lock()  # replies to pings go out from the reading task
        self._messages_in, self._messages = trio.open_memory_channel[str | bytes](math.inf)
        self._read_all = trio.Event()

    @property
    def subprotocol(self) -> Subprotocol | None:
        return self.protocol.subprotocol

    @property
    def local_address(self) -> Any:
        return self.stream.socket.getsockname()

    async def _flush(self) -> None:
        async with self._sending:
            for data in self.protocol.data_to_send():
                if data:
                    await self.stream.send_all(data)
                elif self.protocol.close_expected():
                    # An empty chunk means "half-close": the protocol is done writing.
                    await self.stream.send_eof()

    async def _read(self) -> bool:
        """Feed the protocol one read; ``False`` at end of stream."""
        data = await self.stream.receive_some(65536)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        await self._flush()  # pongs and close replies
        return bool(data)

    async def handshake(
        self, additional_headers: Mapping[str, str] | Iterable[tuple[str, str]]
    ) -> None:
        request = self.protocol.connect()
        pairs = (
            additional_headers.items()
            if isinstance(additional_headers, Mapping)
            else additional_headers
        )
        for name, value in pairs:
            request.headers[name] = value  # appends: repeated headers stay repeated
        self.protocol.send_request(request)
        await self._flush()
        while self.response is None:
            more = await self._read()
            for event in self.protocol.events_received():
                if isinstance(event, Response):
                    self.response = event
                else:
                    self._pending.append(self._data(event))
            if self.response is None and not more:
                break
        if self.protocol.handshake_exc is not None:
            raise self.protocol.handshake_exc

    @staticmethod
    def _data(event: object) -> str | bytes:
        assert isinstance(event, Frame)
        return bytes(event.data).decode() if event.opcode is Opcode.TEXT else bytes(event.data)

    async def send(self, message: str | bytes) -> None:
        if self.protocol.state is not State.OPEN:
            raise self.protocol.close_exc
        if isinstance(message, str):
            self.protocol.send_text(message.encode())
        else:
            self.protocol.send_binary(message)
        await self._flush()

    async def read_in_background(self) -> None:
        """Read until the connection closes, queueing the messages for ``recv``."""
        try:
            for message in self._pending:
                self._messages_in.send_nowait(message)
            while not self._closed():
                try:
                    more = await self._read()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    more = False
                for event in self.protocol.events_received():
                    assert isinstance(event, Frame)
                    if event.opcode in (Opcode.TEXT, Opcode.BINARY):
                        self._messages_in.send_nowait(self._data(event))
                if not more:
                    self.protocol.receive_eof()  # idempotent
                    break
        finally:
            self._messages_in.close()
            self._read_all.set()

    async def recv(self) -> str | bytes:
        try:
            return await self._messages.receive()
        except trio.EndOfChannel:
            raise self.protocol.close_exc from None

    def _closed(self) -> bool:
        return self.protocol.state is State.CLOSED

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(code, reason)
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._flush()
        await self._read_all.wait()  # the reading task sees the server's answer
        await self.stream.aclose()


@asynccontextmanager
async def connect(
    url: str,
    *,
    subprotocols: list[Subprotocol] | None = None,
    additional_headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    origin: Origin | None = None,
    proxy: object = None,
) -> AsyncIterator[ClientConnection]:
    """Open a connection to ``url`` (``ws://`` only) and close it on the way out."""
    uri = parse_uri(url)
    stream = await trio.open_tcp_stream(uri.host, uri.port)
    # Offers permessage-deflate, as websockets' own clients do by default.
    protocol = ClientProtocol(
        uri,
        origin=origin,
        subprotocols=subprotocols,
        extensions=enable_client_permessage_deflate(None),
    )
    client = ClientConnection(stream, protocol)
    try:
        await client.handshake(additional_headers)
    except BaseException:
        await stream.aclose()
        raise
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.read_in_background)
        try:
            yield client
        finally:
            try:
                await client.aclose()
            except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.aclose()
