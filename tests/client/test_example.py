"""examples/python_client.py, run as its docstring says, against the chat example's hub."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import roomcast.client
from adapters.contract.servers import KINDS
from roomcast import Action, History, Principal, RoomOptions

from .conftest import TIMEOUT

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "python_client.py"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def authorize(principal: Principal, action: Action, room: str) -> bool:
    return room.startswith("chat:")  # the chat examples' rule


async def test_python_client_example_catches_up_posts_and_follows() -> None:
    chat = {
        "authorizer": authorize,
        "namespaces": {"chat": RoomOptions(history=History(size=100, ttl=600))},
    }
    async with KINDS[0].start(chat) as served:
        async with roomcast.client.connect(served.url) as other:
            sub = await other.subscribe("chat:general")
            await other.publish("chat:general", "chat.message", {"name": "bo", "text": "earlier"})
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            command = [
                sys.executable, str(EXAMPLE), "--url", served.url,
                "--name", "ada", "--say", "hello", "--count", "2",
            ]  # fmt: skip
            with anyio.fail_after(TIMEOUT):
                async with await anyio.open_process(
                    command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
                ) as process:
                    assert process.stdout is not None
                    output = b""
                    async for chunk in process.stdout:
                        output += chunk
                        if output.count(b"\n") == 1:
                            # The example caught up with the history; a message arrives live.
                            await other.publish(
                                "chat:general", "chat.message", {"name": "bo", "text": "live"}
                            )
                    await process.wait()
            # Its own "hello" is not echoed back: the sender is left out.
            assert output.decode().splitlines() == ["[connected]", "bo: earlier", "bo: live"]
            assert process.returncode == 0
            with anyio.fail_after(TIMEOUT):
                posted = await anext(sub)
            assert isinstance(posted, roomcast.client.Event)
            assert posted.payload == {"name": "ada", "text": "hello"}
