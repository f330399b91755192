"""The same transport behaviour behind every adapter, over real sockets on 127.0.0.1.

Each test runs once per kind in `TRANSPORT_KINDS` (see ``transports.py``), in
the kind's own event loop; where the frameworks differ, the kind says how.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from websockets.exceptions import ConnectionClosed as WebSocketsClosed
from websockets.typing import Subprotocol

from roomcast import ConnectionClosed, ConnectionClosedError, PingableTransport, Transport

from ..asgi import abort, close, close_code
from .transports import MAX_SIZE, TRANSPORT_KINDS, TransportKind

pytestmark = pytest.mark.anyio

TIMEOUT = 10
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(params=[kind.param() for kind in TRANSPORT_KINDS])
def kind(request: pytest.FixtureRequest) -> TransportKind:
    transport_kind: TransportKind = request.param
    return transport_kind


@pytest.fixture
def anyio_backend(kind: TransportKind) -> str:
    return kind.backend


async def test_transport_is_a_transport_and_pingable_where_the_framework_pings(
    kind: TransportKind,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with kind.accepted() as (_, transport):
            assert isinstance(transport, Transport)
            assert isinstance(transport, PingableTransport) is kind.pingable


async def test_handshake_carries_path_headers_query_cookies_client_and_offers(
    kind: TransportKind,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with kind.accepted(
            "/ws/a%20b?token=&room=chat%3A1&room=chat:2",
            subprotocols=[Subprotocol("roomcast.v1"), Subprotocol("bearer.abc")],
            additional_headers=[
                ("X-Trace", "one"),
                ("X-Trace", "two"),
                ("Cookie", 'sid=s1; bad(name=x; theme="dark"'),
                ("Cookie", "sid=s2"),
            ],
        ) as (client, transport):
            handshake = transport.handshake
            assert handshake.path == "/ws/a b"
            assert handshake.header_values("x-trace") == ["one", "two"]
            assert all(name == name.lower() for name, _ in handshake.headers)
            assert handshake.query == (("token", ""), ("room", "chat:1"), ("room", "chat:2"))
            assert handshake.cookies == {"sid": "s2", "theme": "dark"}
            assert handshake.client == client.local_address[:2]
            assert handshake.subprotocols == ("roomcast.v1", "bearer.abc")


async def test_handshake_keeps_a_single_cookie_header(kind: TransportKind) -> None:
    with anyio.fail_after(TIMEOUT):
        async with kind.accepted(
            additional_headers=[("Cookie", 'sid=s1; bad(name=x; theme="dark"')]
        ) as (_, transport):
            assert transport.handshake.cookies == {"sid": "s1", "theme": "dark"}


async def test_receive_returns_text_as_str_and_binary_as_bytes(kind: TransportKind) -> None:
    with anyio.fail_after(TIMEOUT):
        async with kind.accepted() as (client, transport):
            await client.send("text")
            await client.send(b"bytes")
            await client.send(b"")
            assert await transport.receive() == "text"
            assert await transport.receive() == b"bytes"
            assert await transport.receive() == b""


async def test_receive_raises_connection_closed_when_the_peer_closes(kind: TransportKind) -> None:
    with anyio.fail_after(TIMEOUT):
        async with kind.accepted() as (client, transport):
            async with anyio.create_task_group() as tg:
                # aiohttp answers a close frame only while someone receives.
                tg.start_soon(close, client, 4000, "bye")
                with pytest.raises(ConnectionClosedError) as excinfo:
                    await transport.receive()
            if kind.peer_close == "code":
                assert (excinfo.value.code, excinfo.value.reason) == (4000, "bye")
            else:
                assert excinfo.value.code == 1006


async def test_receive_takes_a_message_at_the_limit(kind: TransportKind) -> None:
    with anyio.fail_after(TIMEOUT):
        async with kind.accepted() as (client, transport):
            await client.send("é" * (MAX_SIZE // 2))
            await client.send("x" * MAX_SIZE)
            await client.send(b"x" * MAX_SIZE)
            assert await transport.receive() == "é" * (MAX_SIZE // 2)
            assert await transport.receive() == "x" * MAX_SIZE
            assert await transport.receive() == b"x" * MAX_SIZE


@pytest.mark.parametrize(
    "message",
    [
        pytest.param("x" * (MAX_SIZE + 1), id="one-byte-over"),
        # 32769 characters, 65538 bytes: the limit counts bytes, not characters.
        pytest.param("é" * (MAX_SIZE // 2 + 1), id="two-byte-characters"),
    ],
)
async def test_receive_closes_a_message_over_the_limit_with_1009(
    kind: TransportKind, message: str
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with kind.accepted() as (client, transport):
            await client.send(message)
            with pytest.raises(ConnectionClosedError) as excinfo:
                await transport.receive()
            assert excinfo.value.code == 1009
            assert await close_code(client) == 1009


async def test_receive_raises_connection_closed_when_the_peer_vanishes(
    kind: TransportKind,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with kind.accepted() as (client, transport):
            await abort(client)
            with pytest.raises(ConnectionClosed) as excinfo:
                await transport.receive()
            # The transport passes on what its server tells it.
            assert excinfo.value.code == kind.vanished_code


async def test_try_send_writes_at_once_where_the_transport_can_and_declines_elsewhere(
    kind: TransportKind,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with kind.accepted() as (client, transport):
            if kind.writes_in_place:
                assert transport.try_send("now")
                assert await client.recv() == "now"
            else:
                assert transport.try_send("frame") is False


@pytest.mark.parametrize(
    "kind", [kind.param() for kind in TRANSPORT_KINDS if kind.write_buffer], indirect=True
)
async def test_try_send_refuses_above_the_high_water_mark_and_send_waits(
    kind: TransportKind,
) -> None:
    assert kind.write_buffer is not None
    with anyio.fail_after(TIMEOUT):
        async with kind.accepted(max_queue=1) as (client, transport):
            client.transport.pause_reading()
            taken: list[str] = []
            while transport.try_send(frame := f"{len(taken):06d}" + "y" * 16384):
                taken.append(frame)
                # The kernel's socket buffers hold a few MiB; past them, asyncio's must fill.
                assert len(taken) < 2000
            size, high = kind.write_buffer(transport)
            assert size > high

            rest = ["next", "last"]
            async with anyio.create_task_group() as tg:
                tg.start_soon(transport.send, rest)
                await anyio.sleep(0.05)
                client.transport.resume_reading()
                received = [await client.recv() for _ in range(len(taken) + len(rest))]
            assert received == taken + rest


async def test_send_delivers_a_batch_in_order(kind: TransportKind) -> None:
    with anyio.fail_after(TIMEOUT):
        async with kind.accepted() as (client, transport):
            await transport.send(["1", "2", "3"])
            assert [await client.recv() for _ in range(3)] == ["1", "2", "3"]


async def test_sending_on_a_closed_transport_raises_connection_closed(kind: TransportKind) -> None:
    with anyio.fail_after(TIMEOUT):
        async with kind.accepted() as (_, transport):
            await transport.close(1000)
            if kind.writes_in_place:
                with pytest.raises(ConnectionClosed):
                    transport.try_send("late")
            with pytest.raises(ConnectionClosed):
                await transport.send(["late"])
            if kind.pingable:
                assert isinstance(transport, PingableTransport)
                with pytest.raises(ConnectionClosed):
                    await transport.ping(lambda: None)


async def test_close_sends_code_and_reason_cut_to_123_bytes_and_is_idempotent(
    kind: TransportKind,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with kind.accepted() as (client, transport):
            await transport.close(4009, "é" * 100)
            await transport.close(4009, "again")
            with pytest.raises(WebSocketsClosed) as excinfo:
                await client.recv()
            assert excinfo.value.rcvd is not None
            assert excinfo.value.rcvd.code == 4009
            assert excinfo.value.rcvd.reason == "é" * 61  # 122 bytes: no half character


async def test_close_rejects_a_code_that_cannot_be_sent(kind: TransportKind) -> None:
    with anyio.fail_after(TIMEOUT):
        async with kind.accepted() as (_, transport):
            with pytest.raises(ValueError, match="1006"):
                await transport.close(1006)


@pytest.mark.parametrize(
    "kind", [kind.param() for kind in TRANSPORT_KINDS if kind.pingable], indirect=True
)
async def test_ping_calls_on_pong_when_the_pong_arrives(kind: TransportKind) -> None:
    with anyio.fail_after(TIMEOUT):
        async with kind.accepted() as (client, transport):
            assert isinstance(transport, PingableTransport)
            ponged = anyio.Event()
            await transport.ping(ponged.set)
            async with anyio.create_task_group() as tg:
                # The client answers pings while it reads; aiohttp's pongs arrive
                # through receive(), which the hub always runs.
                tg.start_soon(client.recv)
                tg.start_soon(transport.receive)
                await ponged.wait()
                tg.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("module", "package", "requirement"),
    [
        ("roomcast.websockets", "websockets", "websockets>=15.0"),
        ("roomcast.starlette", "starlette", "starlette>=0.37"),
        ("roomcast.aiohttp", "aiohttp", "aiohttp>=3.11"),
    ],
)
def test_import_without_the_framework_names_the_extra(
    module: str, package: str, requirement: str
) -> None:
    code = (
        f"import sys; sys.modules[{package!r}] = None\n"
        f"try:\n    import {module}\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, check=True
    )
    assert f"pip install '{requirement}'" in result.stdout
    # The message names the very requirement of the package's extra.
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'\n{package} = ["{requirement}"]\n' in pyproject
    assert f"pip install -e '.[{package}]'" in result.stdout
