"""What only the ``websockets`` adapter does, over real sockets on 127.0.0.1.

The behaviour every adapter shares is in ``contract/``; here are the write-buffer
gate, ``serve()``'s defaults, the hub through ``serve()`` and the redacting logger.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server
from websockets.frames import Close, Frame, Opcode
from websockets.typing import Subprotocol

import roomcast.websockets
from roomcast import (
    Hub,
)

pytestmark = pytest.mark.anyio

TIMEOUT = 10
V1 = [Subprotocol("roomcast.v1")]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # websockets.asyncio runs on asyncio only


def url_of(server: Server, path: str = "/") -> str:
    port = server.sockets[0].getsockname()[1]
    return f"ws://127.0.0.1:{port}{path}"


@asynccontextmanager
async def served(hub: Hub, **kwargs: Any) -> AsyncIterator[Server]:
    async with await roomcast.websockets.serve(hub, "127.0.0.1", 0, **kwargs) as server:
        yield server


async def next_frame(client: ClientConnection, type_: str) -> dict[str, Any]:
    """Return the next frame of ``type_``, answering and skipping heartbeats."""
    while True:
        frame: dict[str, Any] = json.loads(await client.recv())
        if frame["type"] == type_:
            return frame
        if frame["type"] == "ping":
            await client.send(json.dumps({"action": "pong"}))


# Through a hub


async def subscribe(client: ClientConnection, room: str) -> dict[str, Any]:
    await client.send(json.dumps({"action": "subscribe", "rooms": [room], "ref": 1}))
    return await next_frame(client, "reply")


@pytest.mark.parametrize("offer", [None, [Subprotocol("graphql-ws")]])
async def test_serve_accepts_a_client_that_does_not_offer_roomcast_v1(
    offer: list[Subprotocol] | None,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            Hub() as hub,
            served(hub) as server,
            connect(url_of(server), subprotocols=offer) as client,
        ):
            assert client.subprotocol is None
            await next_frame(client, "connection.ack")


# ----------------------------------------------------------------------------- logs

SECRET = "eyJzZWNyZXQiOiJ5ZXMifQ"


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def redacting() -> Iterator[tuple[roomcast.websockets.RedactingLogger, Lines]]:
    target = logging.getLogger("tests.websockets.redacting")
    lines = Lines()
    target.addHandler(lines)
    target.setLevel(logging.DEBUG)
    try:
        yield roomcast.websockets.RedactingLogger(target), lines
    finally:
        target.removeHandler(lines)


def test_redacting_logger_hides_credentials_in_the_librarys_handshake_lines(
    redacting: tuple[roomcast.websockets.RedactingLogger, Lines],
) -> None:
    # The lines websockets.server writes at DEBUG, as it writes them.
    logger, lines = redacting
    logger.debug("< %s %s %s", "GET", f"/ws?token={SECRET}", "HTTP/1.1")
    logger.debug("< %s: %s", "Authorization", f"Bearer {SECRET}")
    logger.debug("< %s: %s", "cookie", f"session={SECRET}")
    logger.debug("< %s: %s", "Sec-WebSocket-Protocol", f"roomcast.v1, roomcast.bearer.{SECRET}")
    logger.debug("< %s: %s", "Host", "127.0.0.1")
    assert lines.lines == [
        "< GET /ws?[redacted] HTTP/1.1",
        "< Authorization: [redacted]",
        "< cookie: [redacted]",
        "< Sec-WebSocket-Protocol: roomcast.v1, roomcast.bearer.[redacted]",
        "< Host: 127.0.0.1",
    ]


def test_redacting_logger_hides_data_frames_and_exception_details(
    redacting: tuple[roomcast.websockets.RedactingLogger, Lines],
) -> None:
    logger, lines = redacting
    auth = json.dumps({"action": "auth", "token": SECRET}).encode()
    logger.debug("< %s", Frame(Opcode.TEXT, auth))
    logger.debug("> %s", Frame(Opcode.CLOSE, Close(1000, "bye").serialize()))
    try:
        raise ValueError(f"invalid Sec-WebSocket-Protocol header: {SECRET}")
    except ValueError:
        logger.debug("! invalid handshake", exc_info=True)
    logger.info("connection open")
    assert lines.lines == [
        f"< TEXT [redacted] [{len(auth)} bytes]",
        "> CLOSE 1000 (OK) bye [5 bytes]",
        "! invalid handshake [ValueError]",
        "connection open",
    ]


def test_redacting_logger_hides_credentials_in_the_lines_of_websockets_16(
    redacting: tuple[roomcast.websockets.RedactingLogger, Lines],
) -> None:
    # Before 17.0, websockets.server writes the request line with the path alone, and a
    # header line its parser refuses in the traceback of an ERROR.
    logger, lines = redacting
    logger.debug("< GET %s HTTP/1.1", f"/ws?token={SECRET}")
    logger.debug("< GET %s HTTP/1.1", "/ws")
    try:
        raise ValueError(f"invalid HTTP header line: Authorization: Bearer {SECRET}\r")
    except ValueError:
        logger.error("opening handshake failed", exc_info=True)
    logger.error("connection handler failed")
    assert lines.lines == [
        "< GET /ws?[redacted] HTTP/1.1",
        "< GET /ws HTTP/1.1",
        "opening handshake failed [ValueError]",
        "connection handler failed",
    ]


async def test_serve_logs_through_the_redacting_logger() -> None:
    async with Hub() as hub, await roomcast.websockets.serve(hub, "127.0.0.1", 0) as server:
        connection_logger = server.logger
    assert isinstance(connection_logger, roomcast.websockets.RedactingLogger)
