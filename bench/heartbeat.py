"""Idle connections with heartbeats: the server's CPU against its framework's own keepalive.

N idle clients on 127.0.0.1 hold connections to three servers side by side: roomcast on
one adapter, with a short [`HeartbeatPolicy`][roomcast.HeartbeatPolicy]; the bare
framework sending its own keepalive pings at the same interval (``websockets``'
``ping_interval``, aiohttp's ``heartbeat``): the framework's floor; and a bare asyncio
server that does only the heartbeat (a timer writes each connection a ping frame every
interval, pong frames' headers are read, silent connections closed): the least any
asyncio server pays for it here. The servers share one CPU, their clients (the lean
clients of ``bench/fanout.py``, which answer every ping) the others. Once every
connection has been pinged, each window of ``--window`` seconds reads every server's CPU
time (user + sys, ``time.process_time()`` in the server) over the same wall time. It
prints each server's share of one core and the medians over the windows of roomcast's
ratio to each floor. Run ``python -m bench.heartbeat --help``. The open-files limit is raised to its
hard limit (``resource.setrlimit``), here and in every child process. This is a
benchmark, not a test: it asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import hashlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from importlib.metadata import version
from typing import Any

if not __package__:
    # Run as a script (python bench/heartbeat.py, or as a server child): make bench importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._child import lift_open_files_limit
from bench._fanout_procs import Child, ChildError, Clients

#: roomcast's server kind and its floor's, by adapter.
KINDS = {
    "websockets": ("roomcast-websockets", "websockets-keepalive"),
    "aiohttp": ("roomcast-aiohttp", "aiohttp-heartbeat"),
}
#: The floor under both: a bare asyncio server that does nothing but the heartbeat.
BARE = "asyncio-bare"
#: Target: roomcast's share of one core at 10,000 connections and 5 s heartbeats.
TARGET_CORE = 0.10
#: RFC 6455 section 1.3: the GUID appended to Sec-WebSocket-Key for the accept value.
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: The bare floor's heartbeat timer: connections in slices, one slice every TICK seconds.
TICK = 0.05
#: Seconds a server may take to count every client after they connected.
SETTLE_TIMEOUT = 120.0


# ---------------------------------------------------------------------- server process


async def start_floor(kind: str, args: argparse.Namespace, stack: Any) -> Any:
    """The bare framework with its own keepalive pings every ``interval`` seconds."""
    from bench._fanout_server import PATH, PROTOCOL, Floor, Server, start_aiohttp

    floor = Floor()
    interval, timeout = args.heartbeat
    server = Server()
    server.stats = floor.stats
    if kind == "websockets-keepalive":
        from websockets.asyncio.server import serve
        from websockets.typing import Subprotocol

        ws_server = await serve(
            floor.serve_websockets,
            "127.0.0.1",
            0,
            subprotocols=[Subprotocol(PROTOCOL)],
            compression=None,
            ping_interval=interval,
            ping_timeout=timeout - interval,
            backlog=4096,
        )
        stack.push_async_callback(ws_server.wait_closed)
        stack.callback(ws_server.close)
        server.port = ws_server.sockets[0].getsockname()[1]
        return server

    from aiohttp import web

    async def aiohttp_handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            protocols=(PROTOCOL,), compress=False, heartbeat=interval, autoping=True
        )
        await ws.prepare(request)
        await floor.serve_aiohttp(ws)
        return ws

    app = web.Application()
    app.router.add_get(PATH, aiohttp_handler)
    server.port = await start_aiohttp(app, stack)
    return server


class BareConnection(asyncio.Protocol):
    """One connection of the bare floor: the handshake, a reply, then pings and pongs.

    It reads each client frame's header only: a text frame is the subscription (answered
    with a reply frame), a pong stamps the connection, a close frame closes it.
    """

    __slots__ = ("buffer", "floor", "last_pong", "subscribed", "transport", "upgraded")

    def __init__(self, floor: BareFloor) -> None:
        self.floor = floor
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = self.subscribed = False
        self.last_pong = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.floor.open += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.floor.open -= 1
        if self.subscribed:
            self.subscribed = False
            self.floor.subscribed -= 1

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.buffer:
            data, self.buffer = self.buffer + data, b""
        if not self.subscribed:
            self.handshake_or_subscribe(data)
            return
        pos, size = 0, len(data)
        while size - pos >= 6:  # client frames are masked: 2 header bytes and a 4-byte key
            length = data[pos + 1] & 0x7F
            header = 6 if length < 126 else 8 if length == 126 else 14
            if length >= 126:
                if size - pos < header:
                    break
                wide = data[pos + 2 : pos + header - 4]
                length = int.from_bytes(wide, "big")
            if size - pos < header + length:
                break
            opcode = data[pos] & 0x0F
            pos += header + length
            if opcode == 0xA:
                self.last_pong = self.floor.loop.time()
            elif opcode == 0x8:
                self.transport.close()
                return
        if pos < size:
            self.buffer = data[pos:]

    def handshake_or_subscribe(self, data: bytes) -> None:
        assert self.transport is not None
        if not self.upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = data
                return
            key = b""
            for line in data[:end].split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"sec-websocket-key":
                    key = value.strip()
            accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n"
                b"Sec-WebSocket-Protocol: roomcast.v1\r\n\r\n"
            )
            self.upgraded = True
            data = data[end + 4 :]
        if len(data) >= 6 and data[0] & 0x0F == 0x1:  # the subscribe frame
            reply = b'{"type":"reply","ref":1,"ok":true}'
            self.transport.write(bytes((0x81, len(reply))) + reply)
            self.subscribed = True
            self.last_pong = self.floor.loop.time()
            self.floor.subscribed += 1
            self.floor.members.append(self)
        elif data:
            self.buffer = data


class BareFloor:
    """A bare asyncio server holding the same heartbeat: the least any asyncio server pays.

    Every ``interval`` seconds each connection gets a ping frame, from a timer that
    takes a slice of the connections every `TICK` seconds, and one whose last pong
    is older than ``timeout`` is closed: what a heartbeat must do, and nothing else.
    """

    def __init__(self, interval: float, timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.interval, self.timeout = interval, timeout
        self.open = self.subscribed = self.timeouts = 0
        self.members: list[BareConnection] = []
        self.slices = max(1, round(interval / TICK))
        self.slice = 0
        self.loop.call_later(TICK, self.tick)

    def tick(self) -> None:
        self.loop.call_later(TICK, self.tick)
        members = self.members
        if any(not member.subscribed for member in members[self.slice :: self.slices]):
            members[:] = [member for member in members if member.subscribed]
        oldest = self.loop.time() - self.timeout
        for member in members[self.slice :: self.slices]:
            assert member.transport is not None
            if member.last_pong < oldest:
                self.timeouts += 1
                member.transport.close()
            else:
                member.transport.write(b"\x89\x00")  # a ping with no payload
        self.slice = (self.slice + 1) % self.slices

    def stats(self) -> dict[str, Any]:
        return {"clients": self.open, "subscribed": self.subscribed}


async def start_bare(args: argparse.Namespace, stack: Any) -> Any:
    from bench._fanout_server import Server, listening_socket

    floor = BareFloor(*args.heartbeat)
    sock = listening_socket()
    server = Server()
    server.stats = floor.stats
    listener = await asyncio.get_running_loop().create_server(
        lambda: BareConnection(floor), sock=sock
    )
    stack.callback(listener.close)
    server.port = sock.getsockname()[1]
    return server


async def serve(args: argparse.Namespace) -> None:
    from contextlib import AsyncExitStack

    from bench import _fanout_server

    async with AsyncExitStack() as stack:
        if args.serve.startswith("roomcast-"):
            server = await _fanout_server.STARTERS[args.serve](args, stack)
        elif args.serve == BARE:
            server = await start_bare(args, stack)
        else:
            server = await start_floor(args.serve, args, stack)
        args.kind = args.serve
        await _fanout_server.control(server, args)


# ---------------------------------------------------------------------- driver


def settle(server: Child, clients: Clients, total: int) -> int:
    """Wait until the server counts every client still open as subscribed.

    Returns how many connections the server closed while they connected (on a
    busy machine, a heartbeat can time out before the last client is in).
    """
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        stats = server.call({"cmd": "stats"})
        closed = pings(clients)[2]
        if stats["clients"] == stats["subscribed"] == total - closed:
            return closed
        if time.monotonic() > deadline:
            raise ChildError(
                f"{server.name}: {total - closed} subscribed clients not reached: {stats}"
            )
        time.sleep(0.05)


def pings(clients: Clients) -> tuple[int, int, int]:
    """Protocol pings the clients answered, connections open, connections closed by the server."""
    status = clients.status()
    return (
        sum(s["protocol_pings"] for s in status),
        sum(s["open"] for s in status),
        sum(s["closed_by_server"] for s in status),
    )


def placement() -> tuple[set[int] | None, set[int] | None, str]:
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None, None, "CPU affinity not available: processes not pinned"
    if len(cpus) < 2:
        return None, None, f"only CPU {cpus} available: processes not pinned"
    server, clients = {cpus[0]}, set(cpus[1:])
    try:
        os.sched_setaffinity(0, clients)
    except OSError as exc:
        return None, None, f"sched_setaffinity failed ({exc}): processes not pinned"
    return server, clients, f"the servers on CPU {cpus[0]}, clients + driver on {cpus[1:]}"


def run(args: argparse.Namespace) -> None:
    n = args.connections
    interval, timeout = args.heartbeat
    server_cpus, client_cpus, note = placement()
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"roomcast heartbeat soak, {now}")
    print(
        f"Python {platform.python_version()}, websockets {version('websockets')}, "
        f"aiohttp {version('aiohttp')}, roomcast {version('roomcast')}; "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs; {note}"
    )
    print(
        f"{n:,} idle connections per server, heartbeat every {interval:g} s "
        f"(timeout {timeout:g} s); {args.pairs} windows of {args.window:g} s; "
        f"open-files limit raised to {open_files_limit():,} (resource.setrlimit)",
        flush=True,
    )
    ours, floor = KINDS[args.adapter]
    children: list[Child] = []
    fleets: list[Clients] = []
    try:
        servers: dict[str, Child] = {}
        clients: dict[str, Clients] = {}
        for kind in (ours, floor, BARE):
            argv = ["heartbeat.py", "--serve", kind, "--max-seconds", str(args.max_seconds)]
            argv += ["--heartbeat", f"{interval},{timeout}"]
            if args.profile and kind == ours:
                argv += ["--profile", args.profile]
            servers[kind] = server = Child(kind, argv, server_cpus)
            children.append(server)
            port = int(server.read(timeout=60)["port"])
            clients[kind] = fleet = Clients(args.client_procs, client_cpus, args.max_seconds)
            fleets.append(fleet)
            began = time.perf_counter()
            answers = fleet.connect(port, n)
            failed = sum(answer["failed"] for answer in answers)
            if failed:
                raise ChildError(f"{kind}: {failed} connections failed")
            closed = settle(server, fleet, n)
            lost = f", {closed:,} closed by the server while connecting" if closed else ""
            print(
                f"  {kind}: {n:,} connected in {time.perf_counter() - began:.1f} s{lost}",
                flush=True,
            )
        # Every connection pinged at least once before the first window (with jitter,
        # roomcast's first ping comes up to a quarter of an interval late).
        time.sleep(interval * 1.5)
        before = {kind: pings(clients[kind]) for kind in servers}
        timeouts_before = servers[ours].call({"cmd": "stats"})["heartbeat_timeouts"]
        counted_from = time.perf_counter()
        if args.profile:
            servers[ours].call({"cmd": "profile", "on": True})
        pairs: list[tuple[float, float, float]] = []
        # The same pairs per open connection: a server that closed connections is cheaper.
        per_connection: list[float] = []
        for index in range(args.pairs):
            first = {kind: server.call({"cmd": "stats"})["cpu"] for kind, server in servers.items()}
            if args.profile:  # stats pauses the profiler
                servers[ours].call({"cmd": "profile", "on": True})
            wall0 = time.perf_counter()
            time.sleep(args.window)
            last = {kind: server.call({"cmd": "stats"})["cpu"] for kind, server in servers.items()}
            wall = time.perf_counter() - wall0
            share = {kind: (last[kind] - first[kind]) / wall for kind in servers}
            pairs.append((share[ours], share[floor], share[BARE]))
            ratio = share[ours] / share[floor] if share[floor] else float("inf")
            still = {kind: pings(clients[kind])[1] for kind in servers}
            if share[floor] and still[ours]:
                per_connection.append(ratio * still[floor] / still[ours])
            print(
                f"  [{index + 1}/{args.pairs}] {ours} {share[ours]:.1%}, "
                f"{floor} {share[floor]:.1%}, {BARE} {share[BARE]:.1%} of one core: "
                f"ratio {ratio:.2f} ({still[ours]:,}, {still[floor]:,}, {still[BARE]:,} open)",
                flush=True,
            )
        after = {kind: pings(clients[kind]) for kind in servers}
        counted = time.perf_counter() - counted_from
        stats = servers[ours].call({"cmd": "stats"})
    finally:
        for fleet in fleets:
            fleet.stop()
        for child in children:
            child.stop()
    print()
    for kind in (ours, floor, BARE):
        answered = after[kind][0] - before[kind][0]
        print(
            f"{kind}: {answered:,} protocol pings answered in {counted:.0f} s "
            f"({answered / counted:,.0f}/s, expected about {n / interval:,.0f}/s); "
            f"{after[kind][1]:,} open, {after[kind][2]} closed by the server"
        )
    timeouts = stats["heartbeat_timeouts"]
    print(
        f"{ours}: heartbeat timeouts {timeouts} ({timeouts - timeouts_before} during the windows)"
    )
    if args.profile:
        from bench._fanout_server import print_profile

        print(f"\n{ours}'s profile over the windows (--profile {args.profile}):")
        print_profile(args.profile)
    median_ours = statistics.median(pair[0] for pair in pairs)
    median_floor = statistics.median(pair[1] for pair in pairs)
    median_bare = statistics.median(pair[2] for pair in pairs)
    print(f"server CPU, median of {len(pairs)} windows, % of one core:")
    print(f"  {ours:<22} {median_ours:.1%}  (target <= {TARGET_CORE:.0%} at 10,000 and 5 s)")
    print(f"  {floor:<22} {median_floor:.1%}")
    print(f"  {BARE:<22} {median_bare:.1%}  (the heartbeat alone: pings out, pong headers read)")
    for name, column in ((floor, 1), (BARE, 2)):
        ratios = [pair[0] / pair[column] for pair in pairs if pair[column]]
        if ratios:
            print(
                f"  ratio {ours} / {name}: {statistics.median(ratios):.2f} "
                f"(median of {len(ratios)} pairs, [{min(ratios):.2f}-{max(ratios):.2f}])"
            )
    if median_bare > TARGET_CORE:
        print(
            f"  the bare floor itself is over {TARGET_CORE:.0%} of one core on this machine: "
            "a share of one core is a property of the machine; the ratios are roomcast's"
        )
    if per_connection:
        print(
            f"  ratio to {floor} per open connection: "
            f"{statistics.median(per_connection):.2f} "
            f"([{min(per_connection):.2f}-{max(per_connection):.2f}])"
        )


def open_files_limit() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def heartbeat_policy(text: str) -> tuple[float, float]:
    interval, timeout = (float(part) for part in text.split(","))
    return interval, timeout


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="heartbeat soak: idle connections, server CPU against the framework's own"
    )
    parser.add_argument("--adapter", choices=sorted(KINDS), default="websockets")
    parser.add_argument("--connections", type=int, default=10_000, help="per server")
    parser.add_argument(
        "--heartbeat",
        type=heartbeat_policy,
        default=(5.0, 15.0),
        help="interval,timeout in seconds (default 5,15)",
    )
    parser.add_argument("--window", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--pairs", type=int, default=9, help="measurement windows")
    parser.add_argument("--client-procs", type=int, default=1, help="per server")
    parser.add_argument(
        "--max-seconds", type=float, default=900.0, help="every child exits after this long"
    )
    parser.add_argument(
        "--profile",
        default=None,
        metavar="PATH",
        help="profile roomcast's server over the windows (cProfile, written to PATH, printed)",
    )
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)  # a server child
    args = parser.parse_args(argv)
    if args.connections < 1 or args.pairs < 1 or args.window <= 0:
        parser.error("--connections, --pairs and --window must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    lift_open_files_limit()
    if args.serve is not None:
        asyncio.run(serve(args))
        return
    needed = args.connections + 100
    if open_files_limit() < needed:
        sys.exit(f"RLIMIT_NOFILE hard limit {open_files_limit()} is below {needed}")
    started = time.perf_counter()
    run(args)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
