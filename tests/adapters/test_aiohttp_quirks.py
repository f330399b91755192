"""What only the aiohttp adapter does, over real sockets on 127.0.0.1.

The behaviour every adapter shares is in ``contract/``; here are the raw frame
writes, the close-frame watch, ``cleanup_ctx``, subprotocol negotiation and log
redaction.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin, Subprotocol

import roomcast._aiohttp_wire
import roomcast.aiohttp
from roomcast import (
    Handshake,
    Hub,
    Principal,
)

from .asgi import close_code
from .contract.transports import aiohttp_accepted as accepted
from .contract.transports import aiohttp_running as running

pytestmark = pytest.mark.anyio

TIMEOUT = 10
V1 = [Subprotocol("roomcast.v1")]
# Payload sizes at the edges of RFC 6455's three length encodings.
EDGE_SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70000]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiohttp runs on asyncio only


@asynccontextmanager
async def served(**hub_kwargs: Any) -> AsyncIterator[tuple[Hub, str]]:
    """A hub mounted at ``/ws`` with its lifetime tied to the app's; yield it and the URL."""
    hub = Hub(**hub_kwargs)
    app = web.Application()
    app.router.add_get("/ws", roomcast.aiohttp.handler(hub))
    app.cleanup_ctx.append(roomcast.aiohttp.cleanup_ctx(hub))
    async with running(app) as base:
        yield hub, base + "/ws"


async def next_frame(client: ClientConnection, type_: str) -> dict[str, Any]:
    """Return the next frame of ``type_``, answering and skipping heartbeats."""
    while True:
        frame: dict[str, Any] = json.loads(await client.recv())
        if frame["type"] == type_:
            return frame
        if frame["type"] == "ping":
            await client.send(json.dumps({"action": "pong"}))


def edge_frames() -> list[str]:
    # Two-byte characters: a frame's length is counted in bytes, not characters.
    return ["é" * (size // 2) + "x" * (size % 2) for size in EDGE_SIZES]


# The transport alone


async def test_receive_answers_pings_from_the_peer() -> None:
    with anyio.fail_after(TIMEOUT):
        async with accepted() as (client, transport):
            pong = await client.ping()
            async with anyio.create_task_group() as tg:
                tg.start_soon(transport.receive)
                await pong
                tg.cancel_scope.cancel()


async def test_try_send_and_send_write_valid_frames_of_every_length_encoding() -> None:
    frames = edge_frames()
    with anyio.fail_after(TIMEOUT):
        # The client checks every frame strictly: header, length and UTF-8.
        async with accepted(max_size=None) as (client, transport):
            for frame in frames:
                assert transport.try_send(frame)
            await transport.send(frames)
            received = [await client.recv() for _ in range(2 * len(frames))]
            assert received == frames + frames
            assert [len(frame.encode()) for frame in frames] == EDGE_SIZES


async def test_a_compressed_connection_sends_through_aiohttp_only() -> None:
    with anyio.fail_after(TIMEOUT):
        # The client offers permessage-deflate, which this server accepts.
        async with accepted(compress=True) as (client, transport):
            assert transport._ws.compress
            assert not transport.try_send("now")
            await transport.send(["1", "2"])
            assert [await client.recv() for _ in range(2)] == ["1", "2"]


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()

    def data_received(self, data: bytes) -> None:
        self.data += data


def client_frame(opcode: int, payload: bytes, *, masked: bool = True) -> bytes:
    """A frame as a client sends it (RFC 6455 section 5.2), masked unless told otherwise."""
    length = len(payload)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        header = bytes([0x80 | opcode, mask_bit | length])
    elif length < 65536:
        header = bytes([0x80 | opcode, mask_bit | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, mask_bit | 127]) + length.to_bytes(8, "big")
    if not masked:
        return header + payload
    key = b"\x01\x02\x03\x04"
    return header + key + bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1000, 1 << 20])
def test_the_close_watch_passes_every_byte_on_and_finds_the_close_frame(chunk: int) -> None:
    # Payloads that look like close frames, at every length encoding, masked or not.
    before = b"".join(
        client_frame(opcode, b"\x88" * size, masked=masked)
        for opcode, size, masked in [
            (0x1, 5, True),
            (0x2, 126, True),
            (0x9, 0, True),
            (0x1, 70000, False),
            (0x2, 65535, True),
        ]
    )
    close = client_frame(0x8, b"\x03\xe8bye")
    stream = before + close + client_frame(0x1, b"after")
    recorder = Recorder()
    watch = roomcast._aiohttp_wire.CloseFrameWatch(recorder)
    seen_at = []
    watch.on_close = lambda: seen_at.append(len(recorder.data))
    for start in range(0, len(stream), chunk):
        # Known once its whole header (2 bytes, then the 4-byte masking key) has come.
        assert watch.close_seen == (start >= len(before) + 6)
        watch.data_received(stream[start : start + chunk])
    assert bytes(recorder.data) == stream
    assert watch.close_seen
    # Noticed in the read that brought the close frame's header, before passing it on.
    assert len(seen_at) == 1
    assert len(before) + 6 - chunk <= seen_at[0] <= len(before) + 5


# Through a hub


class RecordingAuthenticator:
    def __init__(self) -> None:
        self.calls: list[tuple[Handshake, str | None]] = []

    async def authenticate(self, handshake: Handshake, token: str | None) -> Principal:
        self.calls.append((handshake, token))
        return Principal("u1")


async def subscribe(client: ClientConnection, room: str) -> dict[str, Any]:
    await client.send(json.dumps({"action": "subscribe", "rooms": [room], "ref": 1}))
    return await next_frame(client, "reply")


async def test_the_client_address_is_what_a_proxy_middleware_resolved() -> None:
    authenticator = RecordingAuthenticator()
    hub = Hub(authenticator=authenticator)

    @web.middleware
    async def trust_proxy(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await handler(request.clone(remote=request.headers["X-Forwarded-For"]))

    app = web.Application(middlewares=[trust_proxy])
    app.router.add_get("/ws", roomcast.aiohttp.handler(hub))
    app.cleanup_ctx.append(roomcast.aiohttp.cleanup_ctx(hub))
    with anyio.fail_after(TIMEOUT):
        async with (
            running(app) as base,
            connect(base + "/ws", additional_headers={"X-Forwarded-For": "203.0.113.7"}) as client,
        ):
            await next_frame(client, "connection.ack")
            ((handshake, _),) = authenticator.calls
            assert handshake.client == ("203.0.113.7", client.local_address[1])


async def test_a_disallowed_origin_is_refused_with_403_before_accept() -> None:
    with anyio.fail_after(TIMEOUT):
        async with served(allowed_origins=["https://app.example.com"]) as (hub, url):
            with pytest.raises(InvalidStatus) as excinfo:
                async with connect(url, origin=Origin("https://evil.example.com")):
                    pass
            assert excinfo.value.response.status_code == 403
            assert excinfo.value.response.body == b"origin not allowed"
            assert hub.stats().origin_refusals == 1
            async with connect(url, origin=Origin("https://app.example.com")) as client:
                await next_frame(client, "connection.ack")


async def test_app_shutdown_flushes_queued_frames_then_closes_with_1001() -> None:
    hub = Hub()
    app = web.Application()
    app.router.add_get("/ws", roomcast.aiohttp.handler(hub))
    app.cleanup_ctx.append(roomcast.aiohttp.cleanup_ctx(hub))
    # aiohttp would wait 60 s for open handlers: only on_shutdown closes them in time.
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"ws://127.0.0.1:{runner.addresses[0][1]}/ws"
    with anyio.fail_after(TIMEOUT):
        async with connect(url, subprotocols=V1, max_queue=1) as client:
            await next_frame(client, "connection.ack")
            await subscribe(client, "team:t1")
            client.transport.pause_reading()
            (state,) = hub._clients.values()
            payload = "z" * 16384
            published = 0
            # Past the kernel's and asyncio's buffers, frames wait in the hub's queue.
            while state.direct or published < 50:
                await hub.publish("team:t1", "note", {"n": published, "text": payload})
                published += 1
                assert published < 2000
            started = anyio.current_time()
            async with anyio.create_task_group() as tg:
                tg.start_soon(runner.cleanup)
                await anyio.sleep(0.05)
                client.transport.resume_reading()
                numbers = [
                    (await next_frame(client, "note"))["payload"]["n"] for _ in range(published)
                ]
                assert numbers == list(range(published))
                assert await close_code(client) == 1001
            # aiohttp, shutting down, no longer reads; the client's close reply
            # still ends the wait, long before the deadline.
            assert anyio.current_time() - started < hub.drain_timeout / 2
        assert not hub.running


async def test_startup_and_cleanup_may_run_in_different_tasks() -> None:
    hub = Hub()
    app = web.Application()
    app.router.add_get("/ws", roomcast.aiohttp.handler(hub))
    app.cleanup_ctx.append(roomcast.aiohttp.cleanup_ctx(hub))
    runner = web.AppRunner(app)
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.setup)
        assert hub.running
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.cleanup)
        assert not hub.running


async def test_a_hub_that_cannot_start_fails_the_application_startup() -> None:
    hub = Hub()
    app = web.Application()
    app.cleanup_ctx.append(roomcast.aiohttp.cleanup_ctx(hub))
    runner = web.AppRunner(app)
    with anyio.fail_after(TIMEOUT):
        async with hub:  # a hub starts once
            with pytest.raises(RuntimeError, match="started once"):
                await runner.setup()
            assert hub.running  # the cleanup context did not close a hub it had not started
            await runner.cleanup()


async def test_cleanup_ctx_on_a_sub_application_is_refused() -> None:
    sub = web.Application()
    sub.cleanup_ctx.append(roomcast.aiohttp.cleanup_ctx(Hub()))
    app = web.Application()
    app.add_subapp("/chat", sub)
    runner = web.AppRunner(app)
    with anyio.fail_after(TIMEOUT), pytest.raises(RuntimeError, match="root application"):
        await runner.setup()
    await runner.cleanup()


async def test_a_hub_that_is_not_running_refuses_with_503() -> None:
    hub = Hub()
    app = web.Application()
    app.router.add_get("/ws", roomcast.aiohttp.handler(hub))
    with anyio.fail_after(TIMEOUT):
        async with running(app) as base:
            with pytest.raises(InvalidStatus) as excinfo:
                async with connect(base + "/ws"):
                    pass
            assert excinfo.value.response.status_code == 503


# ----------------------------------------------------------------------------- subprotocols


async def response_head(url: str, protocol_headers: list[str]) -> list[str]:
    """The response head to a raw upgrade request with these ``Sec-WebSocket-Protocol`` lines."""
    host, port = url.removeprefix("ws://").split("/")[0].split(":")
    lines = [
        "GET /ws HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *(f"Sec-WebSocket-Protocol: {value}" for value in protocol_headers),
    ]
    async with await anyio.connect_tcp(host, int(port)) as stream:
        await stream.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive()
    return head.decode("latin-1").split("\r\n\r\n")[0].split("\r\n")


@pytest.mark.parametrize(
    ("offered", "selected"),
    [
        # Only a token: nothing is selected.
        (["roomcast.bearer.SECRET-TOKEN"], None),
        # The token's header first, roomcast.v1 in a second header.
        (["roomcast.bearer.SECRET-TOKEN", "roomcast.v1"], "roomcast.v1"),
        (["x-other, roomcast.bearer.SECRET-TOKEN"], None),
    ],
)
async def test_offered_subprotocols_are_never_logged_and_the_hubs_choice_is_selected(
    caplog: pytest.LogCaptureFixture, offered: list[str], selected: str | None
) -> None:
    caplog.set_level(logging.DEBUG)
    with anyio.fail_after(TIMEOUT):
        async with served() as (_, url):
            head = await response_head(url, offered)
    assert head[0] == "HTTP/1.1 101 Switching Protocols"
    chosen = [line for line in head if line.lower().startswith("sec-websocket-protocol:")]
    assert chosen == ([] if selected is None else [f"Sec-WebSocket-Protocol: {selected}"])
    assert "SECRET-TOKEN" not in caplog.text


def test_redact_request_errors_keeps_the_record_without_the_request_bytes() -> None:
    from aiohttp.http_exceptions import BadHttpMessage

    try:
        raise BadHttpMessage("Invalid header value char: b'Bearer secret.token.sig\\x01'")
    except BadHttpMessage:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "aiohttp.server",
        logging.ERROR,
        __file__,
        1,
        "Error handling request from %s",
        ("127.0.0.1",),
        exc_info,
    )
    assert roomcast.aiohttp.RedactRequestErrors().filter(record) is True
    line = logging.Formatter("%(levelname)s %(message)s").format(record)
    assert line == "ERROR Error handling request from 127.0.0.1 [BadHttpMessage]"
    # Other exceptions keep their traceback.
    try:
        raise ValueError("a bug")
    except ValueError:
        other = logging.LogRecord(
            "aiohttp.server", logging.ERROR, __file__, 1, "Unhandled exception", (), sys.exc_info()
        )
    assert roomcast.aiohttp.RedactRequestErrors().filter(other) is True
    assert other.exc_info is not None


def test_the_adapter_installs_one_redaction_filter_on_aiohttp_server() -> None:
    hub = Hub()
    roomcast.aiohttp.handler(hub)
    roomcast.aiohttp.cleanup_ctx(hub)
    roomcast.aiohttp.handler(hub)
    filters = logging.getLogger("aiohttp.server").filters
    assert sum(isinstance(f, roomcast.aiohttp.RedactRequestErrors) for f in filters) == 1
