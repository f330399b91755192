"""One server of ``bench/fanout.py``, run as its own process: ``python _fanout_server.py KIND``.

Every kind serves WebSocket clients on ``ws://127.0.0.1:PORT/ws`` (a free port) and
takes the same subscribe frame, ``{"action":"subscribe","rooms":["bench"],"ref":1}``,
answered with a ``reply``; the ``naive-*`` and ``websockets-broadcast`` kinds are each
transport's floor: a set of subscribed connections and a plain send loop, the frame
encoded once per message with :func:`json.dumps`.

Control channel: JSON lines. The driver writes commands to stdin and reads one JSON
line per command from stdout (the first line, ``{"ready": ...}``, gives the port).
Commands run on the server's event loop:

- ``{"cmd": "stats", "gc": bool}``: own CPU seconds (``cpu``: user+sys, and ``user``,
  ``sys`` apart), RSS, asyncio tasks, clients.
- ``{"cmd": "publish", "n": M, "pad": K, "burst": bool}``: publish M events of a
  ~(K+40)-byte payload to room ``bench`` in a loop, yielding to the loop once per
  message (paced, the default) or, with ``burst``, back to back without yielding
  until the last one is handed over.
- ``{"cmd": "quit"}``: exit at once (``os._exit``), after writing the profile.

The process exits by itself when stdin closes or after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import pstats
import resource
import socket
import sys
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

ROOM = "bench"
EVENT_TYPE = "bench.event"
PATH = "/ws"
#: The floors select the subprotocol the clients offer, as roomcast does.
PROTOCOL = "roomcast.v1"
BACKLOG = 4096
KINDS = (
    "roomcast-websockets",
    "websockets-broadcast",
    "roomcast-starlette",
    "naive-starlette",
    "roomcast-aiohttp",
    "naive-aiohttp",
    "picows",
)
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * PAGE_SIZE


def cpu_times() -> dict[str, float]:
    """Own CPU seconds: ``cpu`` (user+sys, ``time.process_time()``), ``user`` and ``sys``."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu": time.process_time(), "user": usage.ru_utime, "sys": usage.ru_stime}


def write_line(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def payload(seq: int, pad: str) -> dict[str, Any]:
    """The event payload: the send time (``time.time()``) for the latency measurement."""
    return {"t": time.time(), "seq": seq, "pad": pad}


# ---------------------------------------------------------------------- floors


class Floor:
    """A transport's floor: subscribed connections in a set, frames encoded once."""

    ACK = json.dumps(
        {"type": "connection.ack", "payload": {"clientId": "floor", "protocol": "roomcast.v1"}},
        separators=(",", ":"),
    )

    def __init__(self) -> None:
        self.conns: set[Any] = set()
        self.clients = 0
        self.node = os.urandom(4).hex()
        self.sequence = 0

    def reply(self, text: str) -> str | None:
        """Subscribe on a subscribe frame; the reply to send, if any."""
        request = json.loads(text)
        if request.get("action") != "subscribe":
            return None
        rooms = {room: {"ok": True} for room in request.get("rooms", ())}
        return json.dumps(
            {"type": "reply", "ref": request.get("ref"), "ok": True, "payload": {"rooms": rooms}},
            separators=(",", ":"),
        )

    def frame(self, seq: int, pad: str) -> str:
        self.sequence += 1
        return json.dumps(
            {
                "type": EVENT_TYPE,
                "room": ROOM,
                "id": f"{self.node}-{self.sequence:x}",
                "payload": payload(seq, pad),
                "timestamp": int(time.time() * 1000),
                "userId": None,
            },
            separators=(",", ":"),
        )

    def stats(self) -> dict[str, Any]:
        return {"clients": self.clients, "subscribed": len(self.conns)}

    async def serve_websockets(self, connection: Any) -> None:
        """One `websockets` connection: the ack, then a reply to each subscribe, until it ends."""
        from websockets.exceptions import ConnectionClosed

        self.clients += 1
        try:
            await connection.send(self.ACK)
            async for message in connection:
                answer = self.reply(message)
                if answer is not None:
                    self.conns.add(connection)
                    await connection.send(answer)
        except ConnectionClosed:
            pass
        finally:
            self.conns.discard(connection)
            self.clients -= 1

    async def serve_aiohttp(self, ws: Any) -> None:
        """The same for a prepared aiohttp ``WebSocketResponse``."""
        from aiohttp import WSMsgType

        self.clients += 1
        try:
            await ws.send_str(self.ACK)
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    answer = self.reply(message.data)
                    if answer is not None:
                        self.conns.add(ws)
                        await ws.send_str(answer)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self.conns.discard(ws)
            self.clients -= 1


# ---------------------------------------------------------------------- servers


class Publish(Protocol):
    """Publish ``n`` events padded with ``pad``: paced (a yield per message) or in a burst."""

    def __call__(self, n: int, pad: str, burst: bool = False) -> Awaitable[None]: ...


class Server:
    """What the control loop needs from a running server."""

    port: int
    publish: Publish | Callable[[int, str], Awaitable[None]]
    stats: Callable[[], dict[str, Any]]


def hub_stats(hub: Any) -> dict[str, Any]:
    stats = hub.stats()
    return {
        "clients": stats.clients,
        "subscribed": stats.members.get(ROOM, 0),
        "messages_out": stats.messages_out,
        "dropped": stats.dropped,
        "slow_consumer_disconnects": stats.slow_consumer_disconnects,
        "heartbeat_timeouts": stats.heartbeat_timeouts,
    }


def make_hub(heartbeat: tuple[float, float] | None) -> Any:
    import inspect

    import roomcast
    from roomcast import HeartbeatPolicy, Hub

    interval, timeout = heartbeat or (3600.0, 7200.0)  # quiet unless asked for
    options: dict[str, Any] = {"heartbeat": HeartbeatPolicy(interval=interval, timeout=timeout)}
    limits = getattr(roomcast, "ConnectionLimits", None)
    if limits is not None and "limits" in inspect.signature(Hub).parameters:
        # Every client comes from 127.0.0.1: lift the per-address cap.
        options["limits"] = limits(max_connections_per_ip=1_000_000)
    return Hub(**options)


def hub_publisher(hub: Any) -> Publish:
    async def publish(n: int, pad: str, burst: bool = False) -> None:
        for seq in range(n):
            await hub.publish(ROOM, EVENT_TYPE, payload(seq, pad))
            if not burst:
                await asyncio.sleep(0)

    return publish


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


async def start_roomcast_websockets(args: argparse.Namespace, stack: Any) -> Server:
    import roomcast.websockets

    hub = await stack.enter_async_context(make_hub(args.heartbeat))
    ws_server = await roomcast.websockets.serve(hub, "127.0.0.1", 0, backlog=BACKLOG)
    stack.push_async_callback(ws_server.wait_closed)
    stack.callback(ws_server.close)
    server = Server()
    server.port = ws_server.sockets[0].getsockname()[1]
    server.publish = hub_publisher(hub)
    server.stats = lambda: hub_stats(hub)
    return server


async def start_websockets_broadcast(args: argparse.Namespace, stack: Any) -> Server:
    from websockets.asyncio.server import broadcast, serve
    from websockets.typing import Subprotocol

    floor = Floor()
    # Off unless asked for (--keepalive): the floor of a hub with a heartbeat. Other
    # drivers that start this server with their own arguments may not have the option.
    keepalive: float | None = getattr(args, "keepalive", None)

    ws_server = await serve(
        floor.serve_websockets,
        "127.0.0.1",
        0,
        subprotocols=[Subprotocol(PROTOCOL)],
        compression=None,
        ping_interval=keepalive,
        ping_timeout=None if keepalive is None else 2 * keepalive,
        backlog=BACKLOG,
    )
    stack.push_async_callback(ws_server.wait_closed)
    stack.callback(ws_server.close)

    async def publish(n: int, pad: str, burst: bool = False) -> None:
        for seq in range(n):
            broadcast(floor.conns, floor.frame(seq, pad))
            if not burst:
                await asyncio.sleep(0)

    server = Server()
    server.port = ws_server.sockets[0].getsockname()[1]
    server.publish = publish
    server.stats = floor.stats
    return server


async def start_uvicorn(app: Any, args: argparse.Namespace, stack: Any) -> int:
    import uvicorn

    config = uvicorn.Config(
        app,
        ws=args.uvicorn_ws,
        ws_per_message_deflate=False,
        # Keepalive pings off for both servers, as in every other server here:
        # nothing but the benchmark's own frames during a measurement.
        ws_ping_interval=None,
        ws_ping_timeout=None,
        log_level="warning",
        lifespan="on",
        backlog=BACKLOG,
    )
    uv_server = uvicorn.Server(config)
    sock = listening_socket()
    task = asyncio.get_running_loop().create_task(uv_server.serve(sockets=[sock]))
    while not uv_server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped during startup")
        await asyncio.sleep(0.01)

    async def stop() -> None:
        uv_server.should_exit = True
        await task

    stack.push_async_callback(stop)
    port: int = sock.getsockname()[1]
    return port


async def start_roomcast_starlette(args: argparse.Namespace, stack: Any) -> Server:
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    import roomcast.starlette

    hub = make_hub(args.heartbeat)
    app = Starlette(
        routes=[WebSocketRoute(PATH, roomcast.starlette.endpoint(hub))],
        lifespan=roomcast.starlette.lifespan(hub),
    )
    server = Server()
    server.port = await start_uvicorn(app, args, stack)
    server.publish = hub_publisher(hub)
    server.stats = lambda: hub_stats(hub)
    return server


async def start_naive_starlette(args: argparse.Namespace, stack: Any) -> Server:
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    floor = Floor()

    async def endpoint(websocket: WebSocket) -> None:
        offered = PROTOCOL in websocket.scope.get("subprotocols", ())
        await websocket.accept(subprotocol=PROTOCOL if offered else None)
        floor.clients += 1
        try:
            await websocket.send_text(floor.ACK)
            while True:
                answer = floor.reply(await websocket.receive_text())
                if answer is not None:
                    floor.conns.add(websocket)
                    await websocket.send_text(answer)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            floor.conns.discard(websocket)
            floor.clients -= 1

    app = Starlette(routes=[WebSocketRoute(PATH, endpoint)])

    async def publish(n: int, pad: str, burst: bool = False) -> None:
        for seq in range(n):
            frame = floor.frame(seq, pad)
            for ws in list(floor.conns):
                try:
                    await ws.send_text(frame)
                except (WebSocketDisconnect, RuntimeError, OSError):
                    floor.conns.discard(ws)
            if not burst:
                await asyncio.sleep(0)

    server = Server()
    server.port = await start_uvicorn(app, args, stack)
    server.publish = publish
    server.stats = floor.stats
    return server


async def start_aiohttp(app: Any, stack: Any) -> int:
    from aiohttp import web

    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=BACKLOG)
    await site.start()
    port: int = runner.addresses[0][1]
    return port


async def start_roomcast_aiohttp(args: argparse.Namespace, stack: Any) -> Server:
    from aiohttp import web

    import roomcast.aiohttp

    hub = make_hub(args.heartbeat)
    app = web.Application()
    app.router.add_get(PATH, roomcast.aiohttp.handler(hub))
    app.cleanup_ctx.append(roomcast.aiohttp.cleanup_ctx(hub))
    server = Server()
    server.port = await start_aiohttp(app, stack)
    server.publish = hub_publisher(hub)
    server.stats = lambda: hub_stats(hub)
    return server


async def start_naive_aiohttp(args: argparse.Namespace, stack: Any) -> Server:
    from aiohttp import web

    floor = Floor()

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=(PROTOCOL,), compress=False)
        await ws.prepare(request)
        await floor.serve_aiohttp(ws)
        return ws

    app = web.Application()
    app.router.add_get(PATH, handler)

    async def publish(n: int, pad: str, burst: bool = False) -> None:
        for seq in range(n):
            frame = floor.frame(seq, pad)
            for ws in list(floor.conns):
                try:
                    await ws.send_str(frame)
                except (ConnectionError, RuntimeError):
                    floor.conns.discard(ws)
            if not burst:
                await asyncio.sleep(0)

    server = Server()
    server.port = await start_aiohttp(app, stack)
    server.publish = publish
    server.stats = floor.stats
    return server


async def start_picows(args: argparse.Namespace, stack: Any) -> Server:
    """picows (Cython, on asyncio): a reference server, the frame encoded once per message."""
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

    floor = Floor()
    ack = floor.ACK.encode()

    class Listener(WSListener):
        def on_ws_connected(self, transport: WSTransport) -> None:
            floor.clients += 1
            transport.send(WSMsgType.TEXT, ack)

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.TEXT:
                answer = floor.reply(frame.get_payload_as_utf8_text())
                if answer is not None:
                    floor.conns.add(transport)
                    transport.send(WSMsgType.TEXT, answer.encode())
            elif frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            floor.conns.discard(transport)
            floor.clients -= 1

    ws_server = await ws_create_server(lambda _request: Listener(), "127.0.0.1", 0, backlog=BACKLOG)
    stack.push_async_callback(ws_server.wait_closed)
    stack.callback(ws_server.close)

    async def publish(n: int, pad: str, burst: bool = False) -> None:
        text = WSMsgType.TEXT
        for seq in range(n):
            data = floor.frame(seq, pad).encode()
            for transport in floor.conns:
                transport.send(text, data)
            if not burst:
                await asyncio.sleep(0)

    server = Server()
    server.port = ws_server.sockets[0].getsockname()[1]
    server.publish = publish
    server.stats = floor.stats
    return server


STARTERS = {
    "roomcast-websockets": start_roomcast_websockets,
    "websockets-broadcast": start_websockets_broadcast,
    "roomcast-starlette": start_roomcast_starlette,
    "naive-starlette": start_naive_starlette,
    "roomcast-aiohttp": start_roomcast_aiohttp,
    "naive-aiohttp": start_naive_aiohttp,
    "picows": start_picows,
}


# ---------------------------------------------------------------------- control loop


def read_commands(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    """Thread: forward stdin lines to the loop; ``None`` at end of input."""
    for line in sys.stdin:
        loop.call_soon_threadsafe(queue.put_nowait, line)
    loop.call_soon_threadsafe(queue.put_nowait, None)


def finish(profiler: cProfile.Profile | None, profile_path: str | None) -> None:
    if profiler is not None and profile_path:
        profiler.dump_stats(profile_path)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


async def control(server: Server, args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    threading.Thread(target=read_commands, args=(loop, queue), daemon=True).start()
    # A hard stop whatever happens to the driver.
    loop.call_later(args.max_seconds, finish, None, None)
    profiler = cProfile.Profile() if args.profile else None
    baseline: tracemalloc.Snapshot | None = None
    gc.collect()
    write_line({"ready": True, "port": server.port, "pid": os.getpid(), "kind": args.kind})
    while True:
        line = await queue.get()
        if line is None:
            finish(profiler, args.profile)
            return
        command = json.loads(line)
        name = command["cmd"]
        if name == "stats":
            if profiler is not None:
                profiler.disable()
            if command.get("gc"):
                gc.collect()
            tasks = len(asyncio.all_tasks())
            write_line({**cpu_times(), "rss": rss_bytes(), "tasks": tasks, **server.stats()})
        elif name == "publish":
            pad = "x" * int(command.get("pad", 60))
            n = int(command["n"])
            burst = bool(command.get("burst"))
            if profiler is not None:
                profiler.enable()
            before = cpu_times()
            t0 = time.time()
            if burst:
                await server.publish(n, pad, burst=True)  # type: ignore[call-arg]
            else:
                await server.publish(n, pad)
            t1 = time.time()
            after = cpu_times()
            tasks0 = len(asyncio.all_tasks())
            write_line(
                {
                    # Tasks when the publish loop returns: with a writer task per client
                    # that had to queue, more than the connections' own.
                    "tasks": tasks0,
                    "t0": t0,
                    "t1": t1,
                    "cpu0": before["cpu"],
                    "cpu1": after["cpu"],
                    "user0": before["user"],
                    "sys0": before["sys"],
                }
            )
        elif name == "profile":
            if profiler is not None:
                if command.get("on"):
                    profiler.enable()
                else:
                    profiler.disable()
            write_line({"profiling": profiler is not None and bool(command.get("on"))})
        elif name == "trace_start":
            gc.collect()
            tracemalloc.start(int(command.get("depth", 1)))
            baseline = tracemalloc.take_snapshot()
            write_line({"tracing": True})
        elif name == "trace_report":
            write_line(trace_report(baseline, int(command["n"]), int(command.get("limit", 20))))
        elif name == "quit":
            finish(profiler, args.profile)
        else:
            write_line({"error": f"unknown command {name!r}"})


def trace_report(baseline: tracemalloc.Snapshot | None, n: int, limit: int) -> dict[str, Any]:
    """Growth since ``trace_start``, bytes per connection, by line and by file."""
    if baseline is None:
        return {"error": "trace_start first"}
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    by_line = after.compare_to(baseline, "lineno")
    by_file = after.compare_to(baseline, "filename")
    total = sum(diff.size_diff for diff in by_file)

    def rows(diffs: list[tracemalloc.StatisticDiff]) -> list[tuple[float, int, str]]:
        top = sorted(diffs, key=lambda diff: -diff.size_diff)[:limit]
        return [
            (
                diff.size_diff / n,
                diff.count_diff // n,
                f"{short(diff.traceback[0].filename)}:{diff.traceback[0].lineno}",
            )
            for diff in top
        ]

    return {
        "total": total / n,
        "by_line": rows(by_line),
        "by_file": [(size, count, where.rsplit(":", 1)[0]) for size, count, where in rows(by_file)],
    }


def short(filename: str) -> str:
    for marker in (os.sep + "site-packages" + os.sep, os.sep + "src" + os.sep):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return os.path.basename(filename)


async def main(args: argparse.Namespace) -> None:
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        server = await STARTERS[args.kind](args, stack)
        await control(server, args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="one fanout.py server (internal)")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument(
        "--heartbeat",
        type=lambda text: tuple(float(part) for part in text.split(",")),
        default=None,
        help="hub heartbeat 'interval,timeout' in seconds (default: quiet, 3600,7200)",
    )
    parser.add_argument(
        "--keepalive",
        type=float,
        default=None,
        help="websockets-broadcast: websockets' own ping_interval (default: off)",
    )
    parser.add_argument("--uvicorn-ws", default="websockets-sansio")
    parser.add_argument("--profile", default=None, help="write cProfile stats of publishes here")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    return parser.parse_args(argv)


def print_profile(path: str, limit: int = 30) -> None:
    """Print the top of a profile written by ``--profile`` (used by the driver)."""
    stats = pstats.Stats(path)
    stats.sort_stats("tottime").print_stats(limit)


if __name__ == "__main__":
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main(parse_args()))
