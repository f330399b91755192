"""Servers for the client tests: real hubs behind the adapters, and a scripted peer.

The hubs are served by ``tests.adapters.contract.servers`` (every adapter, on
127.0.0.1 with a free port). The scripted peer is a bare ``websockets`` server
that plays one step of the protocol at a time, for the close codes and the
frames a hub sends only in rare conditions.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt as pyjwt
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from roomcast import Action, History, Principal, RoomOptions
from roomcast.client import Backoff
from roomcast.jwt import JWTAuthenticator

SECRET = "a-client-test-secret-of-at-least-32-bytes"
#: Every wait of these tests is bounded by this many seconds.
TIMEOUT = 15

#: Whether the installed websockets has its trio client: 17.0 and later, on Python 3.11+.
HAS_WEBSOCKETS_TRIO = importlib.util.find_spec("websockets.trio") is not None
#: For the tests of the client on trio; where it cannot run, test_api checks the error instead.
needs_websockets_trio = pytest.mark.skipif(
    not HAS_WEBSOCKETS_TRIO,
    reason="the client on trio needs websockets 17.0 (Python 3.11+), not installed here",
)


def token(user: str, ttl: float = 600) -> str:
    """A token of ``user`` valid for ``ttl`` seconds."""
    return pyjwt.encode({"sub": user, "exp": int(time.time() + ttl)}, SECRET, algorithm="HS256")


def authorize(principal: Principal, action: Action, room: str) -> bool:
    """Everything but the ``secret`` namespace, clients may publish too."""
    return not room.startswith("secret:")


#: ``team`` keeps history and presence; ``chat`` neither.
NAMESPACES = {
    "team": RoomOptions(history=History(size=1000, ttl=600), presence=True),
    "chat": RoomOptions(),
}


def hub_kwargs(**more: Any) -> dict[str, Any]:
    """The hub every client test serves."""
    return {
        "authenticator": JWTAuthenticator(SECRET, algorithms=["HS256"]),
        "authorizer": authorize,
        "namespaces": NAMESPACES,
        **more,
    }


def fast_backoff() -> Backoff:
    """Reconnect delays short enough for tests."""
    return Backoff(0.01, 0.05)


Script = Callable[["Peer", ServerConnection, int], Awaitable[None]]


@dataclass
class Peer:
    """A scripted server: ``script(peer, ws, n)`` plays the ``n``-th connection (from 0).

    Attributes:
        url: where to connect.
        received: every frame each connection sent, decoded, by connection.
    """

    url: str = ""
    received: list[list[dict[str, Any]]] = field(default_factory=list)

    async def next_frame(self, ws: ServerConnection) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await ws.recv())
        self.received[-1].append(frame)
        return frame


async def ack(ws: ServerConnection, heartbeat_ms: int = 30_000, user: str = "u1") -> None:
    """Send ``connection.ack``."""
    payload = {
        "clientId": "c1",
        "userId": user,
        "heartbeatMs": heartbeat_ms,
        "expiresAt": None,
        "protocol": "roomcast.v1",
    }
    await ws.send(json.dumps({"type": "connection.ack", "payload": payload}))


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[Peer]:
    """A scripted peer on 127.0.0.1 (asyncio only)."""
    peer = Peer()

    async def handler(ws: ServerConnection) -> None:
        peer.received.append([])
        await script(peer, ws, len(peer.received) - 1)

    async with serve(handler, "127.0.0.1", 0, subprotocols=[Subprotocol("roomcast.v1")]) as server:
        port = server.sockets[0].getsockname()[1]
        peer.url = f"ws://127.0.0.1:{port}/ws"
        yield peer
