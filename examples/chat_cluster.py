"""Two chat nodes on two ports, one Redis: a page on either node sees what the other's say.

Run it from a checkout of the repository, after ``pip install -e ".[websockets,redis]"``,
with a Redis on 127.0.0.1:6379::

    python examples/chat_cluster.py

then open http://127.0.0.1:8001/ in one browser tab and http://127.0.0.1:8002/ in
another. Each node is a hub of its own with a ``RedisBackend`` on the same Redis and
prefix, serving the page of ``chat_websockets.py`` (the same page, the same rules),
as two processes behind a load balancer would; here both run in this one process, so
that one command starts them. ``--redis`` and ``--prefix`` pick another Redis or
prefix, ``--ports`` other ports (``0,0`` picks two free ones). Ctrl-C or SIGTERM
closes every client of both nodes with 1001 and exits with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

import anyio

# Run as a script, this file's folder is on sys.path: the page and the rules are
# chat_websockets.py's own.
from chat_websockets import authorize, process_request

import roomcast.websockets
from roomcast import BackendError, History, Hub, RoomOptions
from roomcast.backends.redis import RedisBackend

# --8<-- [start:node]
#: What every node of the application agrees on: the same namespaces (a room with
#: history is published to with history wherever the publish happens).
NAMESPACES = {"chat": RoomOptions(history=History(size=100, ttl=600))}


def node(redis_url: str, prefix: str) -> Hub:
    """One chat node's hub: a single-node chat hub plus a backend on the shared Redis."""
    return Hub(
        authorizer=authorize,
        namespaces=NAMESPACES,
        backend=RedisBackend(redis_url, prefix=prefix),
    )


# --8<-- [end:node]


async def main(host: str, ports: list[int], redis_url: str, prefix: str) -> None:
    """Serve every node until Ctrl-C or SIGTERM, then close their clients with 1001."""
    hubs = [node(redis_url, prefix) for _ in ports]
    servers = [
        await roomcast.websockets.serve(
            hub, host, port, process_request=process_request, start_serving=False
        )
        for hub, port in zip(hubs, ports, strict=True)
    ]
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with contextlib.AsyncExitStack() as stack:
            # Each node as the single-node example runs: the server entered before
            # its hub, so that leaving closes the hub's clients with 1001 first.
            for server, hub in zip(servers, hubs, strict=True):
                await stack.enter_async_context(server)
                await stack.enter_async_context(hub)
            for number, server in enumerate(servers, 1):
                await server.start_serving()  # only once the hubs run
                port = server.sockets[0].getsockname()[1]
                print(f"chat node {number} listening on http://{host}:{port}/", flush=True)
            async for _ in signals:
                break


def port_list(text: str) -> list[int]:
    ports = [int(part) for part in text.split(",")]
    if len(ports) < 2:
        raise argparse.ArgumentTypeError("give at least two ports, such as 8001,8002")
    return ports


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--ports", type=port_list, default=[8001, 8002], help="one per node; 0 picks a free port"
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--prefix", default="roomcast")
    args = parser.parse_args()
    # Ctrl-C before the servers run ends the program quietly too.
    with contextlib.suppress(KeyboardInterrupt):
        try:
            asyncio.run(main(args.host, args.ports, args.redis, args.prefix))
        except BackendError as exc:
            sys.exit(f"cannot start the chat nodes: {exc}")
