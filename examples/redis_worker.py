"""Publish to roomcast rooms from a process that serves no connections, through Redis.

A job-queue task, a cron script or a management command posts to rooms that
browsers follow on the roomcast nodes, with a hub of its own on the same Redis.
Run it from a checkout of the repository, after ``pip install -e ".[redis]"``:

    python examples/redis_worker.py chat:general "the nightly build is green"

Every client subscribed to ``chat:general`` on any node that uses
``RedisBackend`` with the same Redis and the same prefix receives the message, with
an offset where the room keeps history: with ``examples/chat_cluster.py`` running
(both default to the prefix ``roomcast``), it appears on both chat pages.
``--redis`` and ``--prefix`` pick another Redis or prefix; a prefix that differs
from the nodes' reaches nobody.
"""

from __future__ import annotations

import argparse
import asyncio

from roomcast import BackendError, History, Hub, RoomOptions
from roomcast.backends.redis import RedisBackend

# --8<-- [start:worker]
#: The same namespaces as the nodes: a room with history must be published to
#: with history, so that the message gets its offset and is kept for recovery.
NAMESPACES = {"chat": RoomOptions(history=History(size=100, ttl=600))}


async def post(room: str, text: str, *, redis_url: str, prefix: str = "roomcast") -> str:
    """Publish one chat message to ``room``; return its message id."""
    backend = RedisBackend(redis_url, prefix=prefix)
    async with Hub(backend=backend, namespaces=NAMESPACES) as hub:
        return await hub.publish(room, "chat.message", {"name": "worker", "text": text})


# --8<-- [end:worker]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("room")
    parser.add_argument("text")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--prefix", default="roomcast")
    args = parser.parse_args()
    try:
        message_id = asyncio.run(
            post(args.room, args.text, redis_url=args.redis, prefix=args.prefix)
        )
    except BackendError as exc:
        raise SystemExit(f"cannot publish: {exc}") from None
    print(f"published {message_id} to {args.room}")


if __name__ == "__main__":
    main()
