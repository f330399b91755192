"""One server of ``bench/flush.py``: a ``_fanout_server.py`` kind, plus a flush delay and pacing.

``python _flush_server.py KIND [--flush-delay SECONDS]``: the same servers, subscribe
frame and control channel as ``_fanout_server.py`` (whose code this reuses), with the
hub built with ``Hub(flush_delay=...)`` and two more commands:

- ``{"cmd": "paced", "n": M, "rate": R, "pad": K}``: publish M events, one every
  1/R seconds on the loop's clock; each payload's ``"t"`` is the time the publish
  was due, so a server that falls behind shows it in the clients' latencies
  (the publish lag). Answers with the publishes that started late by more than
  one interval.
- ``{"cmd": "pid"}``: this process's id (for counting its system calls).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench import _fanout_server as fanout
else:  # run as a script from bench/, as _fanout_server.py is
    import _fanout_server as fanout

#: The send time a payload carries while a paced publish is due (None: now).
_due: float | None = None


def payload(seq: int, pad: str) -> dict[str, Any]:
    """``_fanout_server.payload``, with the due time of a paced publish as its ``"t"``."""
    return {"t": time.time() if _due is None else _due, "seq": seq, "pad": pad}


def hub_with_delay(delay: float) -> Any:
    """``_fanout_server.make_hub``, with ``Hub(flush_delay=delay)``."""

    def make(heartbeat: tuple[float, float] | None) -> Any:
        from roomcast import ConnectionLimits, HeartbeatPolicy, Hub

        interval, timeout = heartbeat or (3600.0, 7200.0)  # quiet, as in fanout.py
        return Hub(
            heartbeat=HeartbeatPolicy(interval=interval, timeout=timeout),
            # Every client comes from 127.0.0.1: lift the per-address cap.
            limits=ConnectionLimits(max_connections_per_ip=1_000_000),
            flush_delay=delay,
        )

    return make


async def paced(server: fanout.Server, n: int, rate: float, pad: str) -> dict[str, Any]:
    global _due
    loop = asyncio.get_running_loop()
    interval = 1.0 / rate
    start_wall, start = time.time() + interval, loop.time() + interval
    late = 0
    try:
        for seq in range(n):
            wait = start + seq * interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            elif -wait > interval:
                late += 1
            _due = start_wall + seq * interval
            await server.publish(1, pad)
    finally:
        _due = None
    return {"late": late}


async def control(server: fanout.Server, args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    threading.Thread(target=fanout.read_commands, args=(loop, queue), daemon=True).start()
    loop.call_later(args.max_seconds, fanout.finish, None, None)
    gc.collect()
    fanout.write_line({"ready": True, "port": server.port, "pid": os.getpid(), "kind": args.kind})
    while True:
        line = await queue.get()
        if line is None:
            fanout.finish(None, None)
            return
        command = json.loads(line)
        name = command["cmd"]
        pad = "x" * int(command.get("pad", 60))
        if name == "stats":
            fanout.write_line(
                {"cpu": time.process_time(), "rss": fanout.rss_bytes(), **server.stats()}
            )
        elif name == "publish":
            t0, cpu0 = time.time(), time.process_time()
            await server.publish(int(command["n"]), pad)
            fanout.write_line(
                {"t0": t0, "t1": time.time(), "cpu0": cpu0, "cpu1": time.process_time()}
            )
        elif name == "paced":
            t0, cpu0 = time.time(), time.process_time()
            answer = await paced(server, int(command["n"]), float(command["rate"]), pad)
            fanout.write_line(
                {"t0": t0, "t1": time.time(), "cpu0": cpu0, "cpu1": time.process_time(), **answer}
            )
        elif name == "pid":
            fanout.write_line({"pid": os.getpid()})
        elif name == "quit":
            fanout.finish(None, None)
        else:
            fanout.write_line({"error": f"unknown command {name!r}"})


async def main(args: argparse.Namespace) -> None:
    from contextlib import AsyncExitStack

    fanout.payload = payload
    fanout.make_hub = hub_with_delay(args.flush_delay)
    async with AsyncExitStack() as stack:
        server = await fanout.STARTERS[args.kind](args, stack)
        await control(server, args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="one flush.py server (internal)")
    parser.add_argument("kind", choices=fanout.KINDS)
    parser.add_argument("--flush-delay", type=float, default=0.0, help="Hub(flush_delay=)")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args(argv)
    args.heartbeat = None
    args.uvicorn_ws = "websockets-sansio"
    args.profile = None
    return args


if __name__ == "__main__":
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main(parse_args()))
