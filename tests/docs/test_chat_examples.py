"""Each chat example, started as its README command does: page, chat, clean stop on a signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed as WebSocketsClosed
from websockets.typing import Subprotocol

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TIMEOUT = 10
V1 = [Subprotocol("roomcast.v1")]
#: The Redis the cluster example uses here, as in tests/backends.
REDIS_URL = os.environ.get("ROOMCAST_REDIS_URL", "redis://127.0.0.1:6379/0")

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """The test side is the asyncio `websockets` client; each example runs in its own process."""
    return "asyncio"


async def next_frame(client: ClientConnection, type_: str) -> dict[str, Any]:
    """Return the next frame of ``type_``, answering and skipping heartbeats."""
    while True:
        frame: dict[str, Any] = json.loads(await client.recv())
        if frame["type"] == type_:
            return frame
        if frame["type"] == "ping":
            await client.send(json.dumps({"action": "pong"}))


async def close_frame(client: ClientConnection) -> tuple[int, str] | None:
    """Read until the connection closes; return the close code and reason the server sent."""
    try:
        while True:
            await client.recv()
    except WebSocketsClosed as exc:
        return None if exc.rcvd is None else (int(exc.rcvd.code), exc.rcvd.reason)


@asynccontextmanager
async def chat_pair(ws_url: str) -> AsyncIterator[tuple[ClientConnection, ClientConnection]]:
    """Two connected clients of a chat example: (reader, writer), reader in chat:general."""
    async with (
        connect(ws_url, subprotocols=V1) as reader,
        connect(ws_url, subprotocols=V1) as writer,
    ):
        for client in (reader, writer):
            await next_frame(client, "connection.ack")
        subscribe = {"action": "subscribe", "rooms": ["chat:general"], "ref": 1}
        await reader.send(json.dumps(subscribe))
        assert (await next_frame(reader, "reply"))["ok"] is True
        yield reader, writer


async def post_and_receive(
    writer: ClientConnection, reader: ClientConnection, message: dict[str, Any]
) -> dict[str, Any]:
    """Post ``message`` in chat:general as ``writer``; return the event ``reader`` receives."""
    publish = {
        "action": "publish",
        "room": "chat:general",
        "type": "chat.message",
        "payload": message,
        "ref": 2,
    }
    await writer.send(json.dumps(publish))
    assert (await next_frame(writer, "reply"))["ok"] is True
    event = await next_frame(reader, "chat.message")
    assert (event["room"], event["payload"]) == ("chat:general", message)
    return event


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize(
    "example",
    [
        "chat_websockets.py",
        "chat_clock.py",
        "chat_starlette.py",
        "chat_fastapi.py",
        "chat_aiohttp.py",
    ],
)
async def test_chat_example_serves_its_page_relays_messages_and_stops_cleanly_on_a_signal(
    example: str, stop: signal.Signals
) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with anyio.fail_after(TIMEOUT * 2):
        async with await anyio.open_process(
            [sys.executable, str(EXAMPLES / example), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        ) as process:
            assert process.stdout is not None
            line = b""
            async for chunk in process.stdout:
                line += chunk
                if b"\n" in line:
                    break
            http_url = line.decode().split()[-1]
            assert http_url.startswith("http://127.0.0.1:")

            def fetch(url: str) -> tuple[int, str, str]:
                with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
                    return (
                        response.status,
                        response.headers["Content-Type"],
                        response.read().decode(),
                    )

            status, content_type, body = await anyio.to_thread.run_sync(fetch, http_url)
            assert status == 200
            assert content_type == "text/html; charset=utf-8"
            # The page's client is roomcast.js, which the example serves beside it.
            assert 'import { Roomcast } from "/roomcast.js";' in body
            script = await anyio.to_thread.run_sync(fetch, http_url + "roomcast.js")
            assert script[:2] == (200, "text/javascript; charset=utf-8")
            assert "export class Roomcast" in script[2]

            ws_url = "ws" + http_url.removeprefix("http").rstrip("/") + "/ws"
            async with chat_pair(ws_url) as (reader, writer):
                await post_and_receive(writer, reader, {"text": "hello", "name": "ana"})

                process.send_signal(stop)
                assert await close_frame(reader) == (1001, "server shutting down")
            assert await process.wait() == 0
            assert process.stderr is not None
            errors = b"".join([chunk async for chunk in process.stderr]).decode()
            assert "Traceback" not in errors, errors


async def test_the_clock_chat_posts_the_time_in_chat_general() -> None:
    # The getting-started tutorial's "Publish from the server", run.
    with anyio.fail_after(TIMEOUT * 2):
        async with await anyio.open_process(
            [sys.executable, str(EXAMPLES / "chat_clock.py"), "--port", "0", "--every", "0.1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as process:
            assert process.stdout is not None
            line = b""
            async for chunk in process.stdout:
                line += chunk
                if b"\n" in line:
                    break
            ws_url = "ws" + line.decode().split()[-1].removeprefix("http").rstrip("/") + "/ws"
            async with connect(ws_url, subprotocols=V1) as client:
                await next_frame(client, "connection.ack")
                subscribe = {"action": "subscribe", "rooms": ["chat:general"], "ref": 1}
                await client.send(json.dumps(subscribe))
                assert (await next_frame(client, "reply"))["ok"] is True
                event = await next_frame(client, "chat.message")
                assert event["payload"]["name"] == "server"
                assert event["payload"]["text"].startswith("it is ")
                assert event["userId"] is None
                process.send_signal(signal.SIGTERM)
                assert await close_frame(client) == (1001, "server shutting down")
            assert await process.wait() == 0


#: Runs an example as ``python EXAMPLE ARGS...`` would, in an interpreter where neither
#: WebSocket library uvicorn can use is importable: what ``pip install uvicorn`` gives.
WITHOUT_WEBSOCKET_LIBRARIES = """
import runpy, sys
sys.modules["websockets"] = None
sys.modules["wsproto"] = None
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize(
    "example", ["chat_starlette.py", "chat_fastapi.py", "issue_tracker/app.py"]
)
async def test_a_uvicorn_example_without_a_websocket_library_refuses_to_start(
    example: str,
) -> None:
    # uvicorn would answer every WebSocket handshake with 404; the lifespan says so instead.
    with anyio.fail_after(TIMEOUT * 2):
        result = await anyio.run_process(
            [
                sys.executable,
                "-c",
                WITHOUT_WEBSOCKET_LIBRARIES,
                str(EXAMPLES / example),
                "--port",
                "0",
            ],
            check=False,
        )
    errors = result.stderr.decode()
    assert result.returncode == 3, errors  # uvicorn's exit status for a failed startup
    assert "without WebSocket support" in errors
    assert "pip install 'uvicorn[standard]'" in errors
    assert b"listening" not in result.stdout


async def first_lines(process: anyio.abc.Process, count: int) -> list[str]:
    """The first ``count`` lines the process prints."""
    assert process.stdout is not None
    text = b""
    async for chunk in process.stdout:
        text += chunk
        if text.count(b"\n") >= count:
            break
    return text.decode().splitlines()[:count]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_the_chat_cluster_relays_a_message_from_one_node_to_the_other(
    stop: signal.Signals,
) -> None:
    # Two nodes, one command, one Redis (the machine's, as the example's docstring says);
    # a prefix of the test's own, so that nothing else on that Redis is in the way.
    prefix = f"test-chat-cluster-{os.getpid()}-{stop.name}"
    command = [sys.executable, str(EXAMPLES / "chat_cluster.py"), "--ports", "0,0"]
    command += ["--redis", REDIS_URL]
    try:
        await relay_through_the_cluster(command, prefix, stop)
    finally:
        await anyio.to_thread.run_sync(forget, prefix)


def forget(prefix: str) -> None:
    """Delete what the example kept in Redis under ``prefix`` (positions live for a day)."""
    with redis.Redis.from_url(REDIS_URL) as client:
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)


async def relay_through_the_cluster(command: list[str], prefix: str, stop: signal.Signals) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with anyio.fail_after(TIMEOUT * 2):
        async with await anyio.open_process(
            [*command, "--prefix", prefix],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        ) as process:
            lines = await first_lines(process, 2)
            urls = [line.split()[-1] for line in lines]
            assert [line.split()[:3] for line in lines] == [
                ["chat", "node", "1"],
                ["chat", "node", "2"],
            ]
            assert len(set(urls)) == 2
            assert all(url.startswith("http://127.0.0.1:") for url in urls)
            ws_urls = ["ws" + url.removeprefix("http").rstrip("/") + "/ws" for url in urls]
            async with (
                connect(ws_urls[0], subprotocols=V1) as on_first,
                connect(ws_urls[1], subprotocols=V1) as on_second,
            ):
                for client in (on_first, on_second):
                    await next_frame(client, "connection.ack")
                    subscribe = {"action": "subscribe", "rooms": ["chat:general"], "ref": 1}
                    await client.send(json.dumps(subscribe))
                    assert (await next_frame(client, "reply"))["ok"] is True
                # Each way: a message posted on one node reaches the other's member.
                offsets = []
                for sender, receiver, text in (
                    (on_first, on_second, "from node 1"),
                    (on_second, on_first, "from node 2"),
                ):
                    event = await post_and_receive(sender, receiver, {"text": text, "name": "ana"})
                    offsets.append(event["offset"])
                # One history, kept in Redis: one sequence of offsets across the nodes.
                assert offsets[1] == offsets[0] + 1
                process.send_signal(stop)
                for client in (on_first, on_second):
                    assert await close_frame(client) == (1001, "server shutting down")
            assert await process.wait() == 0
            assert process.stderr is not None
            errors = b"".join([chunk async for chunk in process.stderr]).decode()
            assert "Traceback" not in errors, errors


async def test_the_chat_cluster_says_so_when_redis_cannot_be_reached() -> None:
    with anyio.fail_after(TIMEOUT * 2):
        result = await anyio.run_process(
            [
                sys.executable,
                str(EXAMPLES / "chat_cluster.py"),
                "--ports",
                "0,0",
                "--redis",
                "redis://127.0.0.1:1/0",
            ],
            check=False,
        )
    errors = result.stderr.decode()
    assert result.returncode == 1, errors
    assert "cannot start the chat nodes" in errors
    assert "Traceback" not in errors
    assert b"listening" not in result.stdout


async def test_the_aiohttp_chat_with_a_flush_delay_relays_messages() -> None:
    # The Performance page's flush_delay, as the example's --flush-delay sets it.
    with anyio.fail_after(TIMEOUT * 2):
        async with await anyio.open_process(
            [
                sys.executable,
                str(EXAMPLES / "chat_aiohttp.py"),
                "--port",
                "0",
                "--flush-delay",
                "5",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as process:
            line, delay = await first_lines(process, 2)
            # The delay the hub runs with, said at start.
            assert delay.startswith("flush delay 5 ms: "), delay
            ws_url = "ws" + line.split()[-1].removeprefix("http").rstrip("/") + "/ws"
            async with chat_pair(ws_url) as (reader, writer):
                for number in range(3):
                    await post_and_receive(writer, reader, {"text": f"m{number}", "name": "ana"})
                process.send_signal(signal.SIGTERM)
                assert await close_frame(reader) == (1001, "server shutting down")
            assert await process.wait() == 0


@pytest.mark.parametrize("value", ["2000", "-1", "nan", "soon"])
async def test_the_aiohttp_chat_refuses_a_flush_delay_out_of_range(value: str) -> None:
    with anyio.fail_after(TIMEOUT * 2):
        result = await anyio.run_process(
            [sys.executable, str(EXAMPLES / "chat_aiohttp.py"), "--flush-delay", value],
            check=False,
        )
    assert result.returncode == 2
    assert f"give milliseconds from 0 to 1000, not '{value}'" in result.stderr.decode()
