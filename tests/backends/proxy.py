"""A TCP proxy the fault tests own: forwards 127.0.0.1:<port> to Redis, and can cut or stall."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import SocketStream, TaskGroup


class Proxy:
    """Forwards every accepted connection to ``target``, until told otherwise.

    ``cut()`` resets every connection open now (later ones are forwarded);
    while ``refusing`` is set, new connections are closed at once; while
    ``stalled`` is set, bytes are read from both sides and dropped (a
    black-holed link: nothing errors, nothing arrives). ``stall(port)``
    black-holes the one link whose client side is that local port.
    """

    def __init__(self, target_port: int, tasks: TaskGroup) -> None:
        self.target_port = target_port
        self.port = 0
        self.refusing = False
        self.stalled = False
        self.accepted = 0
        self._tasks = tasks
        self._links: set[anyio.CancelScope] = set()
        # Client-side ports of the links black-holed one by one.
        self._stalled_ports: set[int] = set()

    def cut(self) -> None:
        for scope in list(self._links):
            scope.cancel()

    def stall(self, port: int) -> None:
        """Black-hole the link whose client connected from ``port`` (both ways)."""
        self._stalled_ports.add(port)

    async def _serve(self, client: SocketStream) -> None:
        self.accepted += 1
        port = client.extra(anyio.abc.SocketAttribute.remote_port)
        async with client:
            if self.refusing:
                return
            with anyio.CancelScope() as scope:
                self._links.add(scope)
                try:
                    async with await anyio.connect_tcp("127.0.0.1", self.target_port) as server:
                        async with anyio.create_task_group() as pumps:
                            for pair in ((client, server), (server, client)):
                                pumps.start_soon(self._pump, *pair, port, pumps.cancel_scope)
                finally:
                    self._links.discard(scope)

    async def _pump(
        self, source: SocketStream, sink: SocketStream, port: int, link: anyio.CancelScope
    ) -> None:
        try:
            async for chunk in source:
                if not self.stalled and port not in self._stalled_ports:
                    await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            link.cancel()  # either side closing ends the link both ways


@asynccontextmanager
async def proxy_to(target_port: int) -> AsyncIterator[Proxy]:
    """A running proxy on a free port of 127.0.0.1, stopped (every link cut) on exit."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tasks:
        proxy = Proxy(target_port, tasks)
        proxy.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        tasks.start_soon(listener.serve, proxy._serve)
        try:
            yield proxy
        finally:
            tasks.cancel_scope.cancel()
