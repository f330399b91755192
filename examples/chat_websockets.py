"""A chat server: a roomcast hub and its web page on one ``websockets`` port.

Run it from a checkout of the repository, after ``pip install -e ".[websockets]"``, with::

    python examples/chat_websockets.py

then open http://127.0.0.1:8765/ in a few browser tabs. Rooms ``chat:*`` keep
their last 100 messages for ten minutes, so a browser that reconnects catches up.
Ctrl-C or SIGTERM closes every client with 1001 and exits with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http
import signal
from pathlib import Path

import anyio
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

import roomcast.websockets
from roomcast import Action, History, Hub, Principal, RoomOptions

PAGE = (Path(__file__).parent / "static" / "chat.html").read_text(encoding="utf-8")


def authorize(principal: Principal, action: Action, room: str) -> bool:
    """Anyone may join, list and post in ``chat:*`` rooms, and nowhere else."""
    return room.startswith("chat:")


def pages(connection: ServerConnection, request: Request) -> Response | None:
    """Serve the page at ``/``, let ``/ws`` through to the hub, and 404 the rest."""
    path = request.path.partition("?")[0]
    if path == "/ws":
        return None
    if path in ("/", "/index.html"):
        response = connection.respond(http.HTTPStatus.OK, PAGE)
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "text/html; charset=utf-8"
        return response
    return connection.respond(http.HTTPStatus.NOT_FOUND, "Not Found\n")


#: The browser client at /roomcast.js, then the pages: the server's process_request hook.
process_request = roomcast.websockets.client_script("/roomcast.js", pages)


async def main(host: str, port: int) -> None:
    """Serve until Ctrl-C or SIGTERM, then close every client with 1001 and stop listening."""
    hub = Hub(
        authorizer=authorize,
        namespaces={"chat": RoomOptions(history=History(size=100, ttl=600))},
    )
    server = await roomcast.websockets.serve(
        hub, host, port, process_request=process_request, start_serving=False
    )
    # Leaving in reverse order: the hub flushes and closes its clients with
    # 1001 first, then the server stops listening.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with server, hub:
            await server.start_serving()  # only once the hub runs
            port = server.sockets[0].getsockname()[1]
            print(f"chat server listening on http://{host}:{port}/", flush=True)
            async for _ in signals:
                break


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    args = parser.parse_args()
    # Ctrl-C before the server runs ends the program quietly too.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.host, args.port))
