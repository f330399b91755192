"""A chat server: a roomcast hub and its web page in one aiohttp application.

Run it from a checkout of the repository, after ``pip install -e ".[aiohttp]"``, with::

    python examples/chat_aiohttp.py

then open http://127.0.0.1:8080/ in a few browser tabs (``--host`` and ``--port``
choose the address; ``--port 0`` picks a free one and prints it). Rooms ``chat:*``
keep their last 100 messages for ten minutes, so a browser that reconnects catches up.
Ctrl-C or SIGTERM closes every client with 1001 and exits with status 0.
``--flush-delay 5`` lets the hub hold each client's frames for up to 5 ms and write
them in one system call: fewer system calls for a busy room, up to that much latency
(the Performance page measures the trade-off).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
from pathlib import Path

import anyio
from aiohttp import web

import roomcast.aiohttp
from roomcast import DefaultAuthorizer, History, Hub, RoomOptions
from roomcast.config import MAX_FLUSH_DELAY

PAGE = (Path(__file__).parent / "static" / "chat.html").read_text(encoding="utf-8")


async def page(request: web.Request) -> web.Response:
    """Serve the chat page, which connects back to ``/ws``."""
    return web.Response(text=PAGE, content_type="text/html", charset="utf-8")


def make_app(hub: Hub) -> web.Application:
    """The page at ``/``, roomcast.js, the hub at ``/ws``; the hub's lifetime tied to the app's."""
    app = web.Application()
    app.router.add_get("/", page)
    app.add_routes([roomcast.aiohttp.client_script("/roomcast.js")])
    app.router.add_get("/ws", roomcast.aiohttp.handler(hub))
    app.cleanup_ctx.append(roomcast.aiohttp.cleanup_ctx(hub))
    return app


def milliseconds(text: str) -> float:
    """``--flush-delay``: milliseconds on the command line, seconds for the hub."""
    most = MAX_FLUSH_DELAY * 1000
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= most:  # NaN included
        raise argparse.ArgumentTypeError(f"give milliseconds from 0 to {most:g}, not {text!r}")
    return value / 1000


async def main(host: str, port: int, flush_delay: float = 0.0) -> None:
    """Serve until Ctrl-C or SIGTERM, then close every client with 1001 and stop listening."""
    hub = Hub(
        # Clients may publish in chat:* rooms; everyone may join any room but
        # another user's user:{id}.
        authorizer=DefaultAuthorizer(publish=["chat"]),
        namespaces={"chat": RoomOptions(history=History(size=100, ttl=600))},
        flush_delay=flush_delay,
    )
    runner = web.AppRunner(make_app(hub))
    await runner.setup()
    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            site = web.TCPSite(runner, host, port)
            await site.start()
            port = runner.addresses[0][1]
            print(f"chat server listening on http://{host}:{port}/", flush=True)
            if flush_delay:
                print(
                    f"flush delay {flush_delay * 1e3:g} ms: a client's frames wait up to "
                    "that long to leave together",
                    flush=True,
                )
            async for _ in signals:
                break
    finally:
        # The hub flushes and closes its clients with 1001 (on shutdown),
        # before aiohttp waits for its handlers and stops.
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument(
        "--flush-delay",
        type=milliseconds,
        default=0.0,
        metavar="MS",
        help="hold each client's frames up to MS milliseconds to write them together (default 0)",
    )
    args = parser.parse_args()
    # Ctrl-C before the server runs ends the program quietly too.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.host, args.port, args.flush_delay))
