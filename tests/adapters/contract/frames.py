"""Reading and sending roomcast frames with a ``websockets`` client, for the contract suites."""

from __future__ import annotations

import json
from typing import Any

from websockets.asyncio.client import ClientConnection


async def receive(client: ClientConnection) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await client.recv())
    return frame


async def next_frame(client: ClientConnection, type_: str) -> dict[str, Any]:
    """The next frame of ``type_``, answering heartbeats and failing on anything else."""
    while True:
        frame = await receive(client)
        if frame["type"] == type_:
            return frame
        if frame["type"] != "ping":
            raise AssertionError(f"expected {type_}, got {frame}")
        await client.send(json.dumps({"action": "pong"}))


async def request(client: ClientConnection, frame: dict[str, Any]) -> dict[str, Any]:
    await client.send(json.dumps(frame))
    return await next_frame(client, "reply")
