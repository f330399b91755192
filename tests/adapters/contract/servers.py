"""A hub served behind each adapter on 127.0.0.1 with an ephemeral port, for the contract suite.

Every server kind is an async context manager ``start(hub_kwargs)`` that builds
``Hub(**hub_kwargs)``, serves it, yields a :class:`Served` and shuts down within
:data:`SHUTDOWN_TIMEOUT` seconds. Clients are always the ``websockets`` asyncio
client in the test's own event loop. A server that runs on another event loop
(trio) runs in a thread of its own; the test reaches its hub only through
:meth:`Served.run`, which executes in the hub's loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import socket
import threading
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, TypeVar

import anyio
import hypercorn.config
import hypercorn.trio
import pytest
import trio
import uvicorn
from aiohttp import web
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute

import roomcast.aiohttp
import roomcast.starlette
import roomcast.websockets
from roomcast import Hub
from roomcast.hub import HubStatistics

with warnings.catch_warnings():
    # uvicorn deprecates its implementation on the legacy websockets API, and
    # websockets its legacy API; both still ship, and users still choose them.
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", uvicorn.config.UvicornDeprecationWarning)
    from uvicorn.protocols.websockets.websockets_impl import WebSocketProtocol
from uvicorn.protocols.websockets.wsproto_impl import WSProtocol

__all__ = ["ALL_KINDS", "KINDS", "SHUTDOWN_TIMEOUT", "ServerKind", "Served"]

T = TypeVar("T")

#: Seconds a server gets to stop once the test is done with it.
SHUTDOWN_TIMEOUT = 10.0
#: The path every server mounts the hub on.
PATH = "/ws"


@dataclass(frozen=True)
class Served:
    """A running server: where to connect, a way into its hub's event loop, and its stop.

    Attributes:
        url: where clients connect.
        hub: the hub (touch it only through :meth:`run`).
        enter: awaits a call in the hub's event loop.
        stop: shuts the server down as a deployment would on SIGTERM (the hub
            says goodbye, then the server stops); leaving the context does it
            too. Idempotent.
    """

    url: str
    hub: Hub
    enter: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]
    stop: Callable[[], Coroutine[Any, Any, None]]

    async def run(self, function: Callable[[Hub], Awaitable[T]]) -> T:
        """Await ``function(hub)`` in the event loop the hub runs in."""
        result: T = await self.enter(lambda: function(self.hub))
        return result

    async def stats(self) -> HubStatistics:
        """The hub's counters, read in its own event loop."""

        async def read(hub: Hub) -> HubStatistics:
            return hub.stats()

        return await self.run(read)


async def _same_loop(call: Callable[[], Awaitable[Any]]) -> Any:
    return await call()


def _once(stop: Callable[[], Awaitable[None]]) -> Callable[[], Coroutine[Any, Any, None]]:
    """``stop``, run by the first call only; later calls wait for it to end."""
    done: anyio.Event | None = None

    async def stop_once() -> None:
        nonlocal done
        if done is not None:
            await done.wait()
            return
        done = anyio.Event()
        try:
            with anyio.CancelScope(shield=True), anyio.fail_after(SHUTDOWN_TIMEOUT):
                await stop()
        finally:
            done.set()

    return stop_once


@dataclass(frozen=True)
class ServerKind:
    """One way of serving a hub, and what it does where adapters may differ.

    Attributes:
        name: the test id.
        start: serves ``Hub(**hub_kwargs)``; see the module docstring.
        hub_backend: the anyio backend the hub and the server run on.
        refusal: how a handshake the hub refuses is answered: ``"http"``, an
            HTTP error status before the connection is accepted; ``"close"``,
            accepted and closed with the matching close code.
        deflate: whether permessage-deflate is negotiated with a client that
            offers it, as configured here.
        known_failures: contract tests this kind fails today, by test function
            name, with the reason; they run and are reported as expected
            failures (strict: a fix turns them into errors until removed here).
        marks: pytest marks for every test of this kind.
    """

    name: str
    start: Callable[[Mapping[str, Any]], AbstractAsyncContextManager[Served]]
    hub_backend: Literal["asyncio", "trio"]
    refusal: Literal["http", "close"]
    deflate: bool
    known_failures: Mapping[str, str] = field(default_factory=dict)
    marks: tuple[pytest.MarkDecorator, ...] = ()

    def param(self) -> Any:
        """This kind as a pytest parameter, named and marked."""
        return pytest.param(self, id=self.name, marks=self.marks)


@asynccontextmanager
async def _websockets(hub_kwargs: Mapping[str, Any]) -> AsyncIterator[Served]:
    hub = Hub(**hub_kwargs)
    server = await roomcast.websockets.serve(
        hub,
        "127.0.0.1",
        0,
        start_serving=False,
        # Shorter than the stalls the suite puts closing connections through:
        # the hub's own close_timeout governs the closes it starts.
        close_timeout=1.0,
    )

    async def stop() -> None:
        # The hub closes its clients with 1001 first, then the server stops.
        await hub.aclose()
        server.close()
        await server.wait_closed()

    async with server, hub:
        await server.start_serving()
        port = server.sockets[0].getsockname()[1]
        served = Served(f"ws://127.0.0.1:{port}{PATH}", hub, _same_loop, _once(stop))
        try:
            yield served
        finally:
            await served.stop()


def _starlette_app(hub: Hub) -> Starlette:
    return Starlette(
        routes=[WebSocketRoute(PATH, roomcast.starlette.endpoint(hub))],
        lifespan=roomcast.starlette.lifespan(hub),
    )


def _starlette_uvicorn(
    ws: str | type[asyncio.Protocol],
) -> Callable[[Mapping[str, Any]], AbstractAsyncContextManager[Served]]:
    """Starlette on uvicorn with the WebSocket implementation ``ws``."""
    return partial(_serve_starlette_with_uvicorn, ws=ws)


@asynccontextmanager
async def _serve_starlette_with_uvicorn(
    hub_kwargs: Mapping[str, Any], ws: str | type[asyncio.Protocol]
) -> AsyncIterator[Served]:
    hub = Hub(**hub_kwargs)
    config = uvicorn.Config(
        _starlette_app(hub),
        host="127.0.0.1",
        port=0,
        ws=ws,
        ws_max_size=hub.max_message_size,
        ws_per_message_deflate=False,
        log_level="warning",
    )
    server = _UvicornServer(config, hub)
    stopped = anyio.Event()

    async def run() -> None:
        try:
            await server.serve()
        finally:
            stopped.set()

    async def stop() -> None:
        server.should_exit = True  # what uvicorn's SIGTERM handler does
        await stopped.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        while not server.started:
            if stopped.is_set():
                raise RuntimeError("uvicorn did not start")
            await anyio.sleep(0.005)
        port = server.servers[0].sockets[0].getsockname()[1]
        served = Served(f"ws://127.0.0.1:{port}{PATH}", hub, _same_loop, _once(stop))
        try:
            yield served
        finally:
            await served.stop()


class _UvicornServer(uvicorn.Server):
    """uvicorn with the shutdown override the Starlette how-to documents."""

    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self.hub = hub

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn closes WebSockets with 1012 before the lifespan ends; the
        # hub says goodbye with 1001 first.
        await self.hub.aclose()
        await super().shutdown(sockets)


@dataclass(frozen=True)
class _TrioServer:
    hub: Hub
    url: str
    token: trio.lowlevel.TrioToken
    shutdown: trio.Event


def _serve_starlette_with_hypercorn(
    hub_kwargs: Mapping[str, Any], started: queue.SimpleQueue[_TrioServer | BaseException]
) -> None:
    async def main() -> None:
        # Built inside trio: a hub's primitives belong to the loop it runs on.
        hub = Hub(**hub_kwargs)
        config = hypercorn.config.Config()
        config.bind = ["127.0.0.1:0"]
        config.websocket_max_message_size = hub.max_message_size
        config.errorlog = None
        config.graceful_timeout = SHUTDOWN_TIMEOUT / 2
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(
                partial(
                    hypercorn.trio.serve,
                    _starlette_app(hub),  # type: ignore[arg-type]  # hypercorn's own ASGI types
                    config,
                    shutdown_trigger=shutdown.wait,
                )
            )
            url = binds[0].replace("http://", "ws://", 1) + PATH
            started.put(_TrioServer(hub, url, trio.lowlevel.current_trio_token(), shutdown))

    try:
        trio.run(main)
    except BaseException as exc:  # the test thread waits for a server or a reason
        started.put(exc)


@asynccontextmanager
async def _starlette_hypercorn_trio(hub_kwargs: Mapping[str, Any]) -> AsyncIterator[Served]:
    started: queue.SimpleQueue[_TrioServer | BaseException] = queue.SimpleQueue()
    thread = threading.Thread(
        target=_serve_starlette_with_hypercorn,
        args=(hub_kwargs, started),
        name="trio server",
        daemon=True,  # a hung server must not keep the test run alive
    )
    thread.start()
    result = await anyio.to_thread.run_sync(
        partial(started.get, timeout=SHUTDOWN_TIMEOUT), abandon_on_cancel=True
    )
    if isinstance(result, BaseException):
        raise RuntimeError("the trio server did not start") from result
    server = result

    async def enter(call: Callable[[], Awaitable[Any]]) -> Any:
        return await anyio.to_thread.run_sync(
            partial(trio.from_thread.run, call, trio_token=server.token),
            abandon_on_cancel=True,
        )

    async def stop() -> None:
        # The shutdown trigger the Starlette how-to documents: the hub first.
        await enter(server.hub.aclose)
        await enter(_set_event(server.shutdown))
        await anyio.to_thread.run_sync(thread.join, abandon_on_cancel=True)

    served = Served(server.url, server.hub, enter, _once(stop))
    try:
        yield served
    finally:
        await served.stop()
        if thread.is_alive():
            raise RuntimeError("the trio server did not stop")


@asynccontextmanager
async def _aiohttp(hub_kwargs: Mapping[str, Any]) -> AsyncIterator[Served]:
    hub = Hub(**hub_kwargs)
    app = web.Application()
    app.router.add_get(PATH, roomcast.aiohttp.handler(hub))
    app.cleanup_ctx.append(roomcast.aiohttp.cleanup_ctx(hub))
    runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT / 2)
    await runner.setup()
    # What web.run_app does on SIGTERM; on_shutdown closes the hub.
    served = Served("", hub, _same_loop, _once(runner.cleanup))
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        served = dataclasses.replace(served, url=f"ws://127.0.0.1:{port}{PATH}")
        yield served
    finally:
        await served.stop()


def _set_event(event: trio.Event) -> Callable[[], Awaitable[None]]:
    async def set_event() -> None:
        event.set()

    return set_event


KINDS: list[ServerKind] = [
    ServerKind("websockets", _websockets, hub_backend="asyncio", refusal="http", deflate=False),
    ServerKind(
        "starlette-uvicorn",
        # uvicorn's default ("auto") when websockets is installed.
        _starlette_uvicorn("websockets-sansio"),
        hub_backend="asyncio",
        refusal="http",
        deflate=False,
    ),
    ServerKind(
        "starlette-hypercorn-trio",
        _starlette_hypercorn_trio,
        hub_backend="trio",
        refusal="http",
        # hypercorn accepts every permessage-deflate offer and has no setting against it.
        deflate=True,
        known_failures={
            "test_slow_consumer_stalled_beyond_close_timeout_is_dropped_and_counted_until_then": (
                "hypercorn's trio worker shields each socket write from cancellation: the "
                "stalled client's connection ends only when it reads again (Known issues "
                "in docs/topics/adapters.md)"
            ),
        },
    ),
    ServerKind("aiohttp", _aiohttp, hub_backend="asyncio", refusal="http", deflate=False),
]

#: Every kind above, and uvicorn's other WebSocket implementations: the legacy
#: ``websockets`` one (deprecated, still shipped) and ``wsproto``. The
#: behaviour suite runs on all of them; the security suite on :data:`KINDS`.
ALL_KINDS: list[ServerKind] = [
    *KINDS,
    ServerKind(
        "starlette-uvicorn-websockets",
        _starlette_uvicorn(WebSocketProtocol),
        hub_backend="asyncio",
        refusal="http",
        deflate=False,
        # It calls its handler the legacy way, which websockets warns about.
        marks=(pytest.mark.filterwarnings("ignore::DeprecationWarning"),),
        known_failures={
            "test_slow_consumer_stalled_beyond_close_timeout_is_dropped_and_counted_until_then": (
                "uvicorn's legacy implementation ends a stalled closing handshake on its "
                "own close timeout, not the hub's: the socket outlives a close_timeout of "
                "1 s, and ASGI gives the adapter no way to abort it"
            ),
        },
    ),
    ServerKind(
        "starlette-uvicorn-wsproto",
        _starlette_uvicorn(WSProtocol),
        hub_backend="asyncio",
        refusal="http",
        deflate=False,
    ),
]
