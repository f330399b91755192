"""A process of ``bench/cluster.py`` clients: ``python _cluster_client.py``.

Lean raw-asyncio WebSocket clients (as in ``_fanout_client.py``: HTTP/1.1 upgrade,
server frames parsed in place, client frames masked with the all-zero key), speaking
either roomcast's protocol (``/ws``, ``roomcast.v1``) or Socket.IO's over Engine.IO 4
(``/socket.io/?EIO=4&transport=websocket``: ``0`` open, ``40`` connect, a ``join`` event
with an ack, ``2``/``3`` ping and pong, ``42["bench.event",{...}]`` events). Each client
counts the ``bench.event`` messages it receives and the latency of each, from the
``"t"`` (send time) the payload starts with.

Control channel: JSON lines on stdin, one JSON line answered per command:

- ``{"cmd": "connect", "port": P, "total": N, "protocol": "roomcast"|"socketio",
  "rooms": [...], "group": G}``: open N more clients of group G, each joining ``rooms``;
  answers once all have joined (or the timeout passes).
- ``{"cmd": "expect", "m": M, "timeout": T}``: count events from now on; answers
  ``{"armed": true}`` at once, then, when every client has M of them or after T
  seconds, the counts and latencies per group.
- ``{"cmd": "close"}``: close every client; ``{"cmd": "quit"}``.

Exits by itself when stdin closes or after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
import time
from array import array
from typing import Any

if not __package__:
    # Run as a script (python _cluster_client.py): make the bench package importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._child import lift_open_files_limit, serve_commands, write_line
from bench._fanout_client import masked

ROOMCAST_PATH = "/ws"
SOCKETIO_PATH = "/socket.io/?EIO=4&transport=websocket"
HANDSHAKE = (
    "GET {path} HTTP/1.1\r\n"
    "Host: 127.0.0.1:{port}\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: cm9vbWNhc3QtYmVuY2gtMg==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "{extra}"
    "\r\n"
)
T_KEY = b'"t":'


class Group:
    """Clients counted together: those of one node."""

    def __init__(self) -> None:
        self.clients: list[Client] = []
        self.latencies = array("d")
        self.received = 0


class Fleet:
    def __init__(self) -> None:
        self.groups: dict[str, Group] = {}
        self.joined = 0
        self.target = 0
        self.all_joined: asyncio.Event | None = None
        self.received = 0
        self.expected = 0
        self.all_received: asyncio.Event | None = None

    def on_joined(self) -> None:
        self.joined += 1
        if self.all_joined is not None and self.joined >= self.target:
            self.all_joined.set()


class Client(asyncio.Protocol):
    """One connection; ``text()`` is the protocol's, the framing is shared."""

    def __init__(self, fleet: Fleet, group: Group, port: int, rooms: list[str]) -> None:
        self.fleet = fleet
        self.group = group
        self.port = port
        self.rooms = rooms
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        self.open = False
        self.count = 0

    path = ROOMCAST_PATH
    extra_headers = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.open = True
        handshake = HANDSHAKE.format(path=self.path, port=self.port, extra=self.extra_headers)
        transport.write(handshake.encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False

    def write(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def upgraded_now(self) -> None:
        """The handshake succeeded."""

    def text(self, data: bytes, start: int, end: int) -> bool:
        """Handle one text frame; return whether it was a counted event."""
        raise NotImplementedError

    def event(self, data: bytes, start: int, now: float) -> None:
        index = data.find(T_KEY, start) + 4
        self.group.latencies.append(now - float(data[index : data.find(b",", index)]))
        self.count += 1
        self.group.received += 1
        self.fleet.received += 1

    def data_received(self, data: bytes) -> None:
        if self.buffer:
            data = self.buffer + data
            self.buffer = b""
        if not self.upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = data
                return
            if not data.startswith(b"HTTP/1.1 101"):
                sys.stderr.write(f"handshake refused: {data[:200]!r}\n")
                if self.transport is not None:
                    self.transport.close()
                return
            self.upgraded = True
            self.upgraded_now()
            data = data[end + 4 :]
        size = len(data)
        pos = 0
        counted = False
        while size - pos >= 2:
            length = data[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(data[start : start + 2], "big")
                start += 2
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(data[start : start + 8], "big")
                start += 8
            end = start + length
            if end > size:
                break
            opcode = data[pos] & 0x0F
            pos = end
            if opcode == 0x1:
                counted = self.text(data, start, end) or counted
            elif opcode == 0x9:
                self.write(masked(0xA, data[start:end]))
            elif opcode == 0x8:
                self.open = False
                if self.transport is not None:
                    self.transport.close()
                return
        if pos < size:
            self.buffer = data[pos:]
        fleet = self.fleet
        if counted and fleet.all_received is not None and fleet.received >= fleet.expected:
            fleet.all_received.set()


class RoomcastClient(Client):
    extra_headers = "Sec-WebSocket-Protocol: roomcast.v1\r\n"
    EVENT = b'{"type":"bench.event"'
    REPLY = b'{"type":"reply"'
    PING = b'{"type":"ping"'
    PONG = masked(0x1, b'{"action":"pong"}')

    def upgraded_now(self) -> None:
        subscribe = {"action": "subscribe", "rooms": self.rooms, "ref": 1}
        self.write(masked(0x1, json.dumps(subscribe, separators=(",", ":")).encode()))

    def text(self, data: bytes, start: int, end: int) -> bool:
        if data.startswith(self.EVENT, start):
            self.event(data, start + len(self.EVENT), time.time())
            return True
        if data.startswith(self.PING, start):
            self.write(self.PONG)
        elif data.startswith(self.REPLY, start):
            self.fleet.on_joined()
        return False


class SocketIOClient(Client):
    path = SOCKETIO_PATH
    EVENT = b'42["bench.event",'
    CONNECT = masked(0x1, b"40")
    PONG = masked(0x1, b"3")

    def text(self, data: bytes, start: int, end: int) -> bool:
        if data.startswith(self.EVENT, start):
            self.event(data, start + len(self.EVENT), time.time())
            return True
        packet = data[start:end]
        if packet == b"2":  # Engine.IO ping
            self.write(self.PONG)
        elif packet.startswith(b"0{"):  # Engine.IO open: connect to the namespace "/"
            self.write(self.CONNECT)
        elif packet.startswith(b"40"):  # connected: join the rooms, ack id 1
            join = json.dumps(["join", self.rooms], separators=(",", ":"))
            self.write(masked(0x1, b"421" + join.encode()))
        elif packet.startswith(b"431"):  # the join's ack
            self.fleet.on_joined()
        return False


PROTOCOLS: dict[str, type[Client]] = {"roomcast": RoomcastClient, "socketio": SocketIOClient}


async def connect(fleet: Fleet, command: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    port, total = int(command["port"]), int(command["total"])
    kind = PROTOCOLS[command["protocol"]]
    rooms = list(command["rooms"])
    group = fleet.groups.setdefault(str(command["group"]), Group())
    fleet.target = fleet.joined + total
    fleet.all_joined = asyncio.Event()
    if total <= 0:
        fleet.all_joined.set()
    failed = 0
    limit = asyncio.Semaphore(64)  # handshakes in flight: stay far below the backlog

    async def one() -> None:
        nonlocal failed
        async with limit:
            for _attempt in range(3):
                try:
                    _transport, client = await loop.create_connection(
                        lambda: kind(fleet, group, port, rooms), "127.0.0.1", port
                    )
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                group.clients.append(client)
                return
            failed += 1

    await asyncio.gather(*(one() for _ in range(total)))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(fleet.all_joined.wait(), float(command.get("timeout", 120)))
    return {"joined": fleet.joined, "failed": failed, "seconds": time.perf_counter() - started}


async def expect(fleet: Fleet, m: int, timeout: float) -> dict[str, Any]:
    clients = [c for group in fleet.groups.values() for c in group.clients if c.open]
    for client in clients:
        client.count = 0
    for group in fleet.groups.values():
        group.latencies = array("d")
        group.received = 0
    fleet.received = 0
    fleet.expected = m * len(clients)
    fleet.all_received = asyncio.Event()
    cpu0 = time.process_time()
    write_line({"armed": True})
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(fleet.all_received.wait(), timeout)
    fleet.all_received = None
    groups = {}
    for name, group in fleet.groups.items():
        counts = [c.count for c in group.clients if c.open]
        groups[name] = {
            "clients": len(counts),
            "received": group.received,
            "lost": sum(m - x for x in counts if x < m),
            "extra": sum(x - m for x in counts if x > m),
            "latencies": base64.b64encode(group.latencies.tobytes()).decode(),
        }
    return {"cpu": time.process_time() - cpu0, "groups": groups}


async def close(fleet: Fleet) -> dict[str, Any]:
    for group in fleet.groups.values():
        for client in group.clients:
            client.write(masked(0x8, (1000).to_bytes(2, "big")))
            if client.transport is not None:
                client.transport.close()
    fleet.groups.clear()
    fleet.joined = 0
    await asyncio.sleep(0.1)
    return {"closed": True}


async def main(args: argparse.Namespace) -> None:
    fleet = Fleet()
    write_line({"ready": True, "pid": os.getpid()})

    async def connect_(command: dict[str, Any]) -> dict[str, Any]:
        return await connect(fleet, command)

    async def expect_(command: dict[str, Any]) -> dict[str, Any]:
        return await expect(fleet, int(command["m"]), float(command["timeout"]))

    async def close_(command: dict[str, Any]) -> dict[str, Any]:
        return await close(fleet)

    handlers = {"connect": connect_, "expect": expect_, "close": close_}
    await serve_commands(handlers, args.max_seconds)


if __name__ == "__main__":
    lift_open_files_limit()
    parser = argparse.ArgumentParser(description="cluster.py clients (internal)")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    asyncio.run(main(parser.parse_args()))
