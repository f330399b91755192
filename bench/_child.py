"""What the child processes of ``bench/cluster.py`` share: the JSON-lines control channel.

A child reads one JSON command per line on stdin and answers each with one JSON line
on stdout; it exits when stdin closes, on ``{"cmd": "quit"}`` or after ``max_seconds``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def write_line(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def finish() -> None:
    sys.stdout.flush()
    os._exit(0)


def lift_open_files_limit() -> None:
    """Thousands of sockets: the soft limit on open files raised to the hard one."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _read_commands(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    for line in sys.stdin:
        loop.call_soon_threadsafe(queue.put_nowait, line)
    loop.call_soon_threadsafe(queue.put_nowait, None)


async def serve_commands(handlers: Mapping[str, Handler], max_seconds: float) -> None:
    """Answer each command with its handler's answer, until quit, end of input or time."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    threading.Thread(target=_read_commands, args=(loop, queue), daemon=True).start()
    loop.call_later(max_seconds, finish)
    while True:
        line = await queue.get()
        if line is None:
            finish()
            return
        command: dict[str, Any] = json.loads(line)
        name = command["cmd"]
        if name == "quit":
            finish()
        handler = handlers.get(name)
        if handler is None:
            write_line({"error": f"unknown command {name!r}"})
        else:
            write_line(await handler(command))
