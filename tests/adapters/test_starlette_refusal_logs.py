"""What ASGI servers log when the Starlette endpoint refuses a handshake.

A refused handshake (401, 403, 429) is answered with an HTTP status through the
ASGI ``websocket.http.response`` extension. uvicorn's ``websockets-sansio``
implementation counts such a handshake as complete only once it has closed
the socket, and logs ``ASGI callable returned without completing handshake.``
at ERROR for an application that returns before. The endpoint lets the event
loop run once before returning, so uvicorn closes the socket first; the
Starlette how-to shows the reproduction below and the filter for endpoints of
your own.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import hypercorn.config
import hypercorn.trio
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.types import Receive, Scope, Send
from websockets.exceptions import InvalidStatus

import roomcast.starlette
from roomcast import AuthenticationError, Handshake, Hub, Principal
from roomcast.limits import ConnectionLimits

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", uvicorn.config.UvicornDeprecationWarning)
    from uvicorn.protocols.websockets.websockets_impl import WebSocketProtocol

from .asgi import connect, uvicorn_serving

pytestmark = pytest.mark.anyio

TIMEOUT = 10
UVICORN_WS = {
    "websockets-sansio": "websockets-sansio",
    "websockets": WebSocketProtocol,  # the legacy one, imported without its warning
    "wsproto": "wsproto",
}
ORIGIN = "https://app.example.com"
# The expected status for each refused handshake, in the order they are made.
REFUSALS: list[tuple[dict[str, Any], int]] = [
    ({"origin": "https://evil.example"}, 403),
    ({"origin": ORIGIN, "additional_headers": {"Authorization": "Bearer bad"}}, 401),
    # The one failure the limit below allows has been spent: the address is locked out.
    ({"origin": ORIGIN, "additional_headers": {"Authorization": "Bearer bad"}}, 429),
]


# --8<-- [start:filter]
class RefusedHandshakeLogFilter(logging.Filter):
    """Drop uvicorn's ERROR for a WebSocket handshake refused with an HTTP response.

    uvicorn's websockets-sansio implementation logs "ASGI callable returned
    without completing handshake." when an application answers a handshake
    with an HTTP response (the ASGI websocket.http.response extension) and
    returns before uvicorn has closed the socket. The client did get that
    response. The same line for an application that returned without any
    answer is dropped too; uvicorn answers that one with 500, which its
    access log shows.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing handshake."


# --8<-- [end:filter]


# --8<-- [start:reproduction]
async def refusing_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Refuse every WebSocket handshake with 403, then return at once."""
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.http.response.start", "status": 403, "headers": []})
        await send({"type": "websocket.http.response.body", "body": b"go away"})


# --8<-- [end:reproduction]


class Records(logging.Handler):
    """Keeps every record of the loggers it is attached to."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def errors(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.ERROR]


@contextmanager
def captured(*names: str) -> Iterator[Records]:
    handler = Records()
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


class BadTokenAuthenticator:
    """Lets everyone in as ``u1`` except the token ``bad``."""

    async def authenticate(self, handshake: Handshake, token: str | None) -> Principal:
        if token == "bad":
            raise AuthenticationError()
        return Principal("u1")


def refusing_hub() -> Hub:
    return Hub(
        authenticator=BadTokenAuthenticator(),
        allowed_origins=[ORIGIN],
        limits=ConnectionLimits(auth_failures_per_minute=1),
    )


def starlette_app(hub: Hub) -> Starlette:
    return Starlette(
        routes=[WebSocketRoute("/ws", roomcast.starlette.endpoint(hub))],
        lifespan=roomcast.starlette.lifespan(hub),
    )


async def refuse(url: str, expected: int, client_kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidStatus) as excinfo:
        async with connect(url, **client_kwargs):
            pass
    assert excinfo.value.response.status_code == expected


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize(
    "ws",
    [
        "websockets-sansio",
        # It calls its handler the legacy way, which websockets warns about.
        pytest.param("websockets", marks=pytest.mark.filterwarnings("ignore::DeprecationWarning")),
        "wsproto",
    ],
)
async def test_uvicorn_logs_no_error_for_a_refused_handshake(ws: str) -> None:
    with captured("uvicorn", "roomcast") as logs, anyio.fail_after(TIMEOUT):
        async with uvicorn_serving(starlette_app(refusing_hub()), ws=UVICORN_WS[ws]) as base:
            for client_kwargs, status in REFUSALS:
                await refuse(base + "/ws", status, client_kwargs)
            await anyio.sleep(0.1)  # uvicorn logs once the application has returned
    assert logs.errors() == []


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_hypercorn_logs_no_error_for_a_refused_handshake() -> None:
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.errorlog = logging.getLogger("hypercorn.error")
    stop = anyio.Event()
    with captured("hypercorn.error") as logs, anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            binds: list[str] = await tg.start(
                lambda task_status: hypercorn.trio.serve(
                    starlette_app(refusing_hub()),  # type: ignore[arg-type]  # its own ASGI types
                    config,
                    shutdown_trigger=stop.wait,
                    task_status=task_status,
                )
            )
            url = "ws" + binds[0].removeprefix("http") + "/ws"
            for client_kwargs, status in REFUSALS:
                await refuse(url, status, client_kwargs)
            await anyio.sleep(0.1)
            stop.set()
    assert logs.errors() == []


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_documented_filter_drops_uvicorns_error_for_a_refused_handshake() -> None:
    log_filter = RefusedHandshakeLogFilter()
    for installed in (False, True):
        if installed:
            logging.getLogger("uvicorn.error").addFilter(log_filter)
        try:
            with captured("uvicorn.error") as logs, anyio.fail_after(TIMEOUT):
                async with uvicorn_serving(refusing_app, ws="websockets-sansio") as base:
                    await refuse(base + "/ws", 403, {})
                    await anyio.sleep(0.1)
        finally:
            logging.getLogger("uvicorn.error").removeFilter(log_filter)
        expected = [] if installed else ["ASGI callable returned without completing handshake."]
        assert logs.errors() == expected
