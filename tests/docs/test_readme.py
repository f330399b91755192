"""The README's quickstart, run as written: the frames it shows, and a clean stop on a signal."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
QUICKSTART = README[README.index("## Quickstart") : README.index("## Documentation")]
TIMEOUT = 10

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """The client here is the asyncio ``websockets`` client; the quickstart is its own process."""
    return "asyncio"


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def shape(value: Any) -> Any:
    """The keys of a frame, all the way down, with the type of each leaf."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    return type(value).__name__


def test_the_readme_has_one_python_block_the_quickstart() -> None:
    # Any other Python block in the README needs a test of its own, like this one.
    assert blocks(README, "python") == blocks(QUICKSTART, "python")
    assert len(blocks(QUICKSTART, "python")) == 1


def test_the_quickstart_connects_where_the_example_chat_does() -> None:
    assert "ws://127.0.0.1:8765/ws" in QUICKSTART
    chat = (ROOT / "examples" / "static" / "chat.html").read_text(encoding="utf-8")
    assert 'new URL("/ws", location.href)' in chat


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def connect_when_listening(url: str) -> ClientConnection:
    while True:
        try:
            return await connect(url, subprotocols=[Subprotocol("roomcast.v1")])
        except OSError:
            await anyio.sleep(0.05)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_the_quickstart_sends_the_frames_it_shows_and_stops_cleanly(
    tmp_path: Path, stop: signal.Signals
) -> None:
    (code,) = blocks(QUICKSTART, "python")
    port = free_port()
    assert code.count('"127.0.0.1", 8765') == 1
    script = tmp_path / "quickstart.py"
    script.write_text(code.replace('"127.0.0.1", 8765', f'"127.0.0.1", {port}'))
    shown = [
        json.loads(line)
        for block in blocks(QUICKSTART, "json")
        for line in block.split("\n")
        if line
    ]
    assert [frame["type"] for frame in shown] == ["connection.ack", "reply", "clock.tick"]

    with anyio.fail_after(TIMEOUT * 2):
        async with await anyio.open_process(
            [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as process:
            client = await connect_when_listening(f"ws://127.0.0.1:{port}/ws")
            async with client:
                seen = [json.loads(await client.recv())]
                await client.send(
                    json.dumps({"action": "subscribe", "ref": 1, "rooms": ["clock:utc"]})
                )
                seen.append(json.loads(await client.recv()))
                seen.append(json.loads(await client.recv()))
                assert [shape(frame) for frame in seen] == [shape(frame) for frame in shown]
                assert seen[1] == shown[1]  # the reply, to the letter

                process.send_signal(stop)
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await client.recv()
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
                1001,
                "server shutting down",
            )
            assert await process.wait() == 0
            assert process.stdout is not None
            printed = b"".join([chunk async for chunk in process.stdout]).decode()
            # It says where it listens, so that a reader knows it started.
            assert f"serving on ws://127.0.0.1:{port}/ws" in printed, printed
            assert process.stderr is not None
            errors = b"".join([chunk async for chunk in process.stderr]).decode()
            assert "Traceback" not in errors, errors
