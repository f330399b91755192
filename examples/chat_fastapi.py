"""A chat server: a roomcast hub and its web page in a FastAPI app, served by uvicorn.

Run it from a checkout of the repository, after ``pip install -e ".[examples]"`` (or
``pip install -e ".[starlette]" fastapi "uvicorn[standard]"``: uvicorn needs a WebSocket
library), with::

    python examples/chat_fastapi.py

then open http://127.0.0.1:8000/ in a few browser tabs. Rooms ``chat:*`` keep
their last 100 messages for ten minutes, so a browser that reconnects catches up.
Ctrl-C or SIGTERM closes every client with 1001 and exits with status 0.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

import roomcast.starlette
from roomcast import DefaultAuthorizer, History, Hub, RoomOptions

PAGE = (Path(__file__).parent / "static" / "chat.html").read_text(encoding="utf-8")


def create_app(hub: Hub) -> FastAPI:
    """The page at ``/``, roomcast.js and the hub at ``/ws``; the hub runs while the app does."""
    app = FastAPI(lifespan=roomcast.starlette.lifespan(hub))
    app.add_api_websocket_route("/ws", roomcast.starlette.endpoint(hub))
    app.router.routes.append(roomcast.starlette.client_script("/roomcast.js"))

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE

    return app


class ChatServer(uvicorn.Server):
    """uvicorn, announcing its address and letting the hub close its clients first."""

    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self.hub = hub

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:  # port 0 picks a free port: print the one we got
            port = self.servers[0].sockets[0].getsockname()[1]
            print(f"chat server listening on http://{self.config.host}:{port}/", flush=True)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn closes WebSockets with 1012 before the lifespan ends; closing
        # the hub first gives every client its queued messages, then 1001.
        await self.hub.aclose()
        await super().shutdown(sockets)


def main(host: str, port: int) -> None:
    """Serve until Ctrl-C, then close every client with 1001 and stop."""
    hub = Hub(
        authorizer=DefaultAuthorizer(publish=["chat"]),
        namespaces={"chat": RoomOptions(history=History(size=100, ttl=600))},
    )
    config = uvicorn.Config(
        create_app(hub),
        host=host,
        port=port,
        ws_max_size=hub.max_message_size,  # refuse big frames before buffering them
        ws_per_message_deflate=False,  # roomcast sends small JSON frames uncompressed
        log_level="warning",
    )
    ChatServer(config, hub).run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    args = parser.parse_args()
    # uvicorn shuts down on Ctrl-C and on SIGTERM, then raises the signal again for the
    # handler it found: make both a KeyboardInterrupt, which ends the program quietly.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):
        main(args.host, args.port)
