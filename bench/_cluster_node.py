"""One node of ``bench/cluster.py``: ``python _cluster_node.py KIND``.

KIND is ``roomcast`` (a hub with `RedisBackend` behind ``roomcast.websockets``),
``roomcast-memory`` (the same hub on its in-memory backend: the single-node
reference) or ``socketio`` (python-socketio's ``AsyncServer`` with
``AsyncRedisManager`` on aiohttp). Both Redis kinds count, per room, the messages
their node receives from Redis, so that the driver can ask how many a node with no
member in a room received.

Control channel: JSON lines on stdin, one JSON line answered per command:

- ``{"cmd": "stats"}``: CPU seconds so far and the per-room counts of received messages;
- ``{"cmd": "publish", "room": R, "type": T, "n": N, "rate": HZ}``: publish N events
  (``{"t": send time, "seq": i, "pad": ...}``) at HZ per second (0: as fast as the
  node goes); answers when done, with the CPU and wall seconds it took;
- ``{"cmd": "history", "n": N, "concurrency": C, "rooms": K}``: roomcast only, N
  publishes to K rooms with history, by C concurrent publishers;
- ``{"cmd": "quit"}``.

Exits by itself when stdin closes or after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

if not __package__:
    # Run as a script (python _cluster_node.py): make the bench package importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._child import finish, lift_open_files_limit, serve_commands, write_line

#: Payload padding: {"t": ..., "seq": ..., "pad": "x" * PAD} is about 100 bytes.
PAD = "x" * 60
HISTORY_NAMESPACE = "hist"
BACKLOG = 4096

Publish = Callable[[str, str, dict[str, Any]], Awaitable[Any]]


async def start_roomcast(
    args: argparse.Namespace, stack: contextlib.AsyncExitStack, received: Counter[str]
) -> tuple[int, Publish]:
    import roomcast.websockets
    from roomcast import ConnectionLimits, HeartbeatPolicy, History, Hub, RoomOptions
    from roomcast.backends.base import ChannelKind, Delivery, Publication
    from roomcast.backends.redis import RedisBackend

    class CountingRedisBackend(RedisBackend):
        """Counts what this node receives from Redis, by room, before the hub sees it."""

        async def start(self, deliver: Delivery) -> None:
            def counted(kind: ChannelKind, key: str, publication: Publication) -> None:
                if kind == "room":
                    received[key] += 1
                deliver(kind, key, publication)

            await super().start(counted)

    options: dict[str, Any] = {}
    if args.kind == "roomcast":
        options["backend"] = CountingRedisBackend(args.redis, prefix=args.prefix)
    hub = Hub(
        heartbeat=HeartbeatPolicy(interval=3600.0, timeout=7200.0),  # quiet
        # Every client comes from 127.0.0.1: lift the per-address cap.
        limits=ConnectionLimits(max_connections_per_ip=1_000_000),
        namespaces={HISTORY_NAMESPACE: RoomOptions(history=History(size=100, ttl=60))},
        **options,
    )
    server = await roomcast.websockets.serve(
        hub, "127.0.0.1", 0, backlog=BACKLOG, start_serving=False
    )
    await stack.enter_async_context(server)
    await stack.enter_async_context(hub)
    await server.start_serving()
    port: int = server.sockets[0].getsockname()[1]
    return port, hub.publish


async def start_socketio(
    args: argparse.Namespace, stack: contextlib.AsyncExitStack, received: Counter[str]
) -> tuple[int, Publish]:
    import socketio  # type: ignore[import-untyped]
    from aiohttp import web

    class CountingRedisManager(socketio.AsyncRedisManager):  # type: ignore[misc]
        """Counts the emits this node receives from other nodes through Redis, by room."""

        async def _handle_emit(self, message: dict[str, Any]) -> None:
            if message.get("host_id") != self.host_id:
                received[str(message.get("room"))] += 1
            await super()._handle_emit(message)

    manager = CountingRedisManager(args.redis, channel=args.prefix)
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=manager,
        ping_interval=3600,
        ping_timeout=7200,
        max_http_buffer_size=65536,
    )

    @sio.on("join")  # type: ignore[untyped-decorator]
    async def join(sid: str, rooms: list[str]) -> bool:
        for room in rooms:
            await sio.enter_room(sid, room)
        return True

    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=BACKLOG)
    await site.start()
    port: int = runner.addresses[0][1]

    async def publish(room: str, type_: str, payload: dict[str, Any]) -> None:
        await sio.emit(type_, payload, room=room)

    # The manager connects to Redis and starts listening on its first use.
    await publish("bench-warmup", "bench.warmup", {})
    return port, publish


async def publish_series(publish: Publish, command: dict[str, Any]) -> dict[str, Any]:
    room, type_, n = str(command["room"]), str(command["type"]), int(command["n"])
    rate = float(command.get("rate", 0))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for seq in range(n):
        if rate:
            delay = wall0 + seq / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        await publish(room, type_, {"t": time.time(), "seq": seq, "pad": PAD})
        if not rate:
            await asyncio.sleep(0)
    return {"cpu": time.process_time() - cpu0, "seconds": time.perf_counter() - wall0}


async def publish_history(publish: Publish, command: dict[str, Any]) -> dict[str, Any]:
    n, concurrency, rooms = int(command["n"]), int(command["concurrency"]), int(command["rooms"])
    counter = iter(range(n))

    async def publisher() -> None:
        for seq in counter:
            room = f"{HISTORY_NAMESPACE}:r{seq % rooms}"
            await publish(room, "bench.history", {"t": time.time(), "seq": seq, "pad": PAD})

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(publisher() for _ in range(concurrency)))
    return {"cpu": time.process_time() - cpu0, "seconds": time.perf_counter() - wall0}


async def main(args: argparse.Namespace) -> None:
    received: Counter[str] = Counter()
    async with contextlib.AsyncExitStack() as stack:
        start = start_socketio if args.kind == "socketio" else start_roomcast
        try:
            port, publish = await start(args, stack, received)
        except Exception as exc:
            write_line({"error": f"{args.kind} did not start: {type(exc).__name__}: {exc}"})
            finish()
        write_line({"ready": True, "port": port, "pid": os.getpid()})

        async def stats(command: dict[str, Any]) -> dict[str, Any]:
            return {"cpu": time.process_time(), "received": dict(received)}

        async def series(command: dict[str, Any]) -> dict[str, Any]:
            return await publish_series(publish, command)

        async def history(command: dict[str, Any]) -> dict[str, Any]:
            return await publish_history(publish, command)

        handlers = {"stats": stats, "publish": series, "history": history}
        await serve_commands(handlers, args.max_seconds)


if __name__ == "__main__":
    lift_open_files_limit()
    parser = argparse.ArgumentParser(description="cluster.py node (internal)")
    parser.add_argument("kind", choices=["roomcast", "roomcast-memory", "socketio"])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--prefix", default="roomcast-bench")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    asyncio.run(main(parser.parse_args()))
