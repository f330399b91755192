"""A process of ``bench/fanout.py`` clients: ``python _fanout_client.py``.

A deliberately lean WebSocket client (a raw :class:`asyncio.Protocol`: HTTP/1.1
upgrade, unmasked server frames parsed in place, client frames masked with the
all-zero key, which RFC 6455 allows), so that thousands of clients on one core
keep up with one server core. It answers protocol pings with pongs and
``{"type":"ping"}`` with ``{"action":"pong"}``.

Control channel: JSON lines on stdin, one JSON line answered on stdout per command:

- ``{"cmd": "connect", "port": P, "total": N}``: open and subscribe clients until N
  are subscribed; answers once all are (or the timeout passes).
- ``{"cmd": "close", "total": N}``: close clients until N remain.
- ``{"cmd": "expect", "m": M, "timeout": T, "stall": S}``: count ``bench.event`` frames
  from now on; answers when every client has M of them, or after T seconds. With
  ``stall``, every client stops reading for S seconds first, so that what the server
  writes piles up in the socket buffers, then in the server's own.
- ``{"cmd": "status"}``: open, closed-by-server and ping counts.
- ``{"cmd": "quit"}``.

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
import threading
import time
from array import array
from typing import Any

HANDSHAKE = (
    "GET /ws HTTP/1.1\r\n"
    "Host: 127.0.0.1:{port}\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: cm9vbWNhc3QtYmVuY2gtMQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Protocol: roomcast.v1\r\n"
    "\r\n"
)
EVENT_PREFIX = b'{"type":"bench.event"'
REPLY_PREFIX = b'{"type":"reply"'
PING_PREFIX = b'{"type":"ping"'
T_KEY = b'"t":'


def masked(opcode: int, payload: bytes) -> bytes:
    """A client frame, masked with the key 0000 (so the payload goes as is)."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    else:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    return header + b"\x00\x00\x00\x00" + payload


SUBSCRIBE = masked(0x1, b'{"action":"subscribe","rooms":["bench"],"ref":1}')
PONG_TEXT = masked(0x1, b'{"action":"pong"}')
CLOSE = masked(0x8, (1000).to_bytes(2, "big"))


class Fleet:
    """Every client of this process and what they received."""

    def __init__(self) -> None:
        self.clients: list[BenchClient] = []
        self.subscribed = 0
        self.closed_by_server = 0
        self.app_pings = 0
        self.protocol_pings = 0
        self.received = 0
        self.expected_total = 0
        self.latencies = array("d")
        self.first_rx = 0.0
        self.last_rx = 0.0
        self.all_subscribed: asyncio.Event | None = None
        self.all_received: asyncio.Event | None = None
        self.target = 0

    def on_subscribed(self) -> None:
        self.subscribed += 1
        if self.all_subscribed is not None and self.subscribed >= self.target:
            self.all_subscribed.set()


class BenchClient(asyncio.Protocol):
    __slots__ = ("buffer", "count", "fleet", "open", "port", "transport", "upgraded")

    def __init__(self, fleet: Fleet, port: int) -> None:
        self.fleet = fleet
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        self.open = False
        self.count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.open = True
        transport.write(HANDSHAKE.format(port=self.port).encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.open:
            self.open = False
            self.fleet.closed_by_server += 1

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
                self.shut()
                return
            self.upgraded = True
            assert self.transport is not None
            self.transport.write(SUBSCRIBE)
            data = data[end + 4 :]
        size = len(data)
        pos = 0
        now = 0.0
        fleet = self.fleet
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
                if data.startswith(EVENT_PREFIX, start):
                    # The payload's "t" (send time) is the first key of the payload.
                    index = data.find(T_KEY, start) + 4
                    if not now:
                        now = time.time()
                        if not fleet.first_rx:
                            fleet.first_rx = now
                        fleet.last_rx = now
                    fleet.latencies.append(now - float(data[index : data.find(b",", index)]))
                    self.count += 1
                    fleet.received += 1
                elif data.startswith(PING_PREFIX, start):
                    fleet.app_pings += 1
                    self.write(PONG_TEXT)
                elif data.startswith(REPLY_PREFIX, start):
                    fleet.on_subscribed()
            elif opcode == 0x9:
                fleet.protocol_pings += 1
                self.write(masked(0xA, data[start:end]))
            elif opcode == 0x8:
                self.shut()
                return
        if pos < size:
            self.buffer = data[pos:]
        if now and fleet.all_received is not None and fleet.received >= fleet.expected_total:
            fleet.all_received.set()

    def write(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def shut(self) -> None:
        if self.open:
            self.open = False
            self.fleet.closed_by_server += 1
        if self.transport is not None:
            self.transport.close()


async def connect(fleet: Fleet, port: int, total: int, timeout: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    need = total - len(fleet.clients)
    fleet.target = fleet.subscribed + max(need, 0)
    fleet.all_subscribed = asyncio.Event()
    if need <= 0:
        fleet.all_subscribed.set()
    failed = 0
    limit = asyncio.Semaphore(64)  # handshakes in flight: stay far below the backlog

    async def one() -> None:
        nonlocal failed
        async with limit:
            for _attempt in range(3):
                try:
                    _transport, client = await loop.create_connection(
                        lambda: BenchClient(fleet, port), "127.0.0.1", port
                    )
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                fleet.clients.append(client)
                return
            failed += 1

    await asyncio.gather(*(one() for _ in range(max(need, 0))))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(fleet.all_subscribed.wait(), timeout)
    return {
        "open": sum(1 for client in fleet.clients if client.open),
        "subscribed": fleet.subscribed,
        "failed": failed,
        "seconds": time.perf_counter() - start,
    }


async def close(fleet: Fleet, total: int) -> dict[str, Any]:
    while len(fleet.clients) > total:
        client = fleet.clients.pop()
        if client.open:
            client.open = False
            fleet.subscribed -= 1
            client.write(CLOSE)
            assert client.transport is not None
            client.transport.close()
    await asyncio.sleep(0.1)
    return {"open": sum(1 for client in fleet.clients if client.open)}


def pause_reading(clients: list[BenchClient], seconds: float) -> None:
    """Stop reading on every client's socket for ``seconds``."""
    paused = [c.transport for c in clients if c.transport is not None and c.transport.is_reading()]
    for transport in paused:
        transport.pause_reading()

    def resume() -> None:
        for transport in paused:
            if not transport.is_closing():
                transport.resume_reading()

    asyncio.get_running_loop().call_later(seconds, resume)


async def expect(fleet: Fleet, m: int, timeout: float, stall: float = 0.0) -> dict[str, Any]:
    clients = [client for client in fleet.clients if client.open]
    for client in clients:
        client.count = 0
    fleet.received = 0
    fleet.latencies = array("d")
    fleet.first_rx = fleet.last_rx = 0.0
    fleet.expected_total = m * len(clients)
    fleet.all_received = asyncio.Event()
    cpu0 = time.process_time()
    if stall > 0:
        pause_reading(clients, stall)
    write_line({"armed": True})
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(fleet.all_received.wait(), timeout)
    cpu = time.process_time() - cpu0
    fleet.all_received = None
    lost = [m - client.count for client in clients]
    return {
        "clients": len(clients),
        "received": fleet.received,
        "lost": sum(x for x in lost if x > 0),
        "clients_short": sum(1 for x in lost if x > 0),
        "extra": sum(-x for x in lost if x < 0),
        "first_rx": fleet.first_rx,
        "last_rx": fleet.last_rx,
        "cpu": cpu,
        "latencies": base64.b64encode(fleet.latencies.tobytes()).decode(),
    }


def write_line(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def read_commands(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    for line in sys.stdin:
        loop.call_soon_threadsafe(queue.put_nowait, line)
    loop.call_soon_threadsafe(queue.put_nowait, None)


def finish() -> None:
    sys.stdout.flush()
    os._exit(0)


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    threading.Thread(target=read_commands, args=(loop, queue), daemon=True).start()
    loop.call_later(args.max_seconds, finish)
    fleet = Fleet()
    write_line({"ready": True, "pid": os.getpid()})
    while True:
        line = await queue.get()
        if line is None:
            finish()
            return
        command = json.loads(line)
        name = command["cmd"]
        if name == "connect":
            timeout = float(command.get("timeout", 120))
            write_line(await connect(fleet, int(command["port"]), int(command["total"]), timeout))
        elif name == "close":
            write_line(await close(fleet, int(command["total"])))
        elif name == "expect":
            timeout = float(command.get("timeout", 60))
            stall = float(command.get("stall", 0.0))
            write_line(await expect(fleet, int(command["m"]), timeout, stall))
        elif name == "status":
            write_line(
                {
                    "open": sum(1 for client in fleet.clients if client.open),
                    "closed_by_server": fleet.closed_by_server,
                    "app_pings": fleet.app_pings,
                    "protocol_pings": fleet.protocol_pings,
                    "cpu": time.process_time(),
                }
            )
        elif name == "quit":
            finish()
        else:
            write_line({"error": f"unknown command {name!r}"})


if __name__ == "__main__":
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    parser = argparse.ArgumentParser(description="fanout.py clients (internal)")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    asyncio.run(main(parser.parse_args()))
