"""A Python client of the chat examples: join a room, catch up, post, follow what arrives.

Start a chat server from a checkout of the repository (``pip install -e ".[websockets]"``,
then ``python examples/chat_websockets.py``), install the client
(``pip install -e ".[client]"``) and run::

    python examples/python_client.py --name ada --say "hello from Python"

It prints the room's last messages, posts one, then prints every message as it
arrives (and what became of the room after a reconnect) until Ctrl-C. Stop and
start the server meanwhile: the client reconnects on its own and catches up.
"""

from __future__ import annotations

import argparse
import contextlib

import anyio

# --8<-- [start:connect]
import roomcast.client
from roomcast.client import Event, Recovery, StateChange


def show_state(change: StateChange) -> None:
    if change.state == "disconnected":
        # From "connecting": this attempt failed; from "connected": the connection was lost.
        what = "could not connect" if change.previous == "connecting" else "connection lost"
        print(f"[{what} ({change.code}); retrying in {change.delay:.1f} s]", flush=True)
    elif change.state == "connected":
        print("[connected]", flush=True)


async def follow(url: str, room: str, name: str, say: str | None, count: int | None) -> None:
    async with roomcast.client.connect(url) as conn:
        conn.on_state_change(show_state)
        sub = await conn.subscribe(room, history=20)  # the last 20 messages first
        # --8<-- [end:connect]
        # --8<-- [start:publish]
        if say is not None:
            await conn.publish(room, "chat.message", {"name": name, "text": say})
        # --8<-- [end:publish]
        # --8<-- [start:iterate]
        seen = 0
        async for item in sub:
            if isinstance(item, Recovery) and not item.recovered:
                print(f"[{item.room}: some messages were missed while away]", flush=True)
            elif isinstance(item, Event) and item.type == "chat.message":
                print(f"{item.payload['name']}: {item.payload['text']}", flush=True)
                seen += 1
                if count is not None and seen >= count:
                    return
        # --8<-- [end:iterate]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8765/ws")
    parser.add_argument("--room", default="chat:general")
    parser.add_argument("--name", default="python")
    parser.add_argument("--say", help="post this message once joined")
    parser.add_argument("--count", type=int, help="exit after this many messages")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: leave quietly
        anyio.run(follow, args.url, args.room, args.name, args.say, args.count)


if __name__ == "__main__":
    main()
