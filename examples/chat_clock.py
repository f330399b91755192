"""The chat of ``chat_websockets.py``, with the server posting the time in chat:general.

Run it from a checkout of the repository, after ``pip install -e ".[websockets]"``, with::

    python examples/chat_clock.py

then open http://127.0.0.1:8765/ in a few browser tabs: besides what people type, the
server says what time it is once a minute (``--every`` changes how often). Ctrl-C or
SIGTERM closes every client with 1001 and exits with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time

import anyio
from chat_websockets import authorize, process_request

import roomcast.websockets
from roomcast import History, Hub, RoomOptions


# --8<-- [start:announce]
async def announce_time(hub: Hub, every: float = 60) -> None:
    """Post the time to chat:general every ``every`` seconds."""
    while True:
        await anyio.sleep(every)
        await hub.publish(
            "chat:general",
            "chat.message",
            {"name": "server", "text": f"it is {time.strftime('%H:%M:%S')}"},
        )


# --8<-- [end:announce]


async def main(host: str, port: int, every: float) -> None:
    """Serve and announce until Ctrl-C or SIGTERM, then close every client with 1001."""
    hub = Hub(
        authorizer=authorize,
        namespaces={"chat": RoomOptions(history=History(size=100, ttl=600))},
    )
    server = await roomcast.websockets.serve(
        hub, host, port, process_request=process_request, start_serving=False
    )
    # --8<-- [start:main]
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        # The task group is inside the hub's block: it ends, and the announcements
        # stop, before the hub closes its clients and the server stops listening.
        async with server, hub, anyio.create_task_group() as tasks:
            await server.start_serving()  # only once the hub runs
            tasks.start_soon(announce_time, hub, every)
            port = server.sockets[0].getsockname()[1]
            print(f"chat server listening on http://{host}:{port}/", flush=True)
            async for _ in signals:
                break
            tasks.cancel_scope.cancel()
    # --8<-- [end:main]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--every", type=float, default=60, help="seconds between announcements")
    args = parser.parse_args()
    # Ctrl-C before the server runs ends the program quietly too.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.host, args.port, args.every))
