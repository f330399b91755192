"""An issue tracker whose pages update live: the roomcast showcase app.

Run it from a checkout of the repository, after ``pip install -e ".[examples]"`` (or
``pip install -e ".[starlette]" "uvicorn[standard]"``: uvicorn needs a WebSocket library)::

    python examples/issue_tracker/app.py

then open http://127.0.0.1:8000/ in two browser windows and sign in as alice in one
and bob in the other (carol is in another team, dana in both). ``--host`` and ``--port``
choose the address (``--port 0`` picks a free port and prints it; a port already in use
is one line that says so, and exit status 1). The data is kept in memory unless
``--db tracker.db`` names an SQLite file (in memory, ids carry a tag of each start);
the hub runs on the in-memory backend unless ``--redis redis://127.0.0.1:6379/0`` (and
``--redis-prefix``) puts it on Redis, where several processes share rooms and history
outlives a restart.
``--token-ttl 60`` shows a token refresh 48 seconds after signing in. Ctrl-C or SIGTERM
closes every page with 1001 and exits with status 0.

Tokens are signed with a secret made at each start unless one is given: several nodes
on one Redis (behind a load balancer) must share it, or each refuses the others' tokens.
Set ``ROOMCAST_TRACKER_SECRET`` (at least 32 bytes, e.g. from
``python -c "import secrets; print(secrets.token_urlsafe(48))"``) in each node's
environment, or pass ``--secret``, which other users of the machine can read in the
process list. The secret is never printed or logged.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import secrets
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

if not __package__:
    # Run as a file: make this directory importable as the package it is.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "issue_tracker"

import roomcast.starlette
from roomcast import Backend, Hub, MemoryBackend

from . import api, events
from .auth import Tokens, authorizer
from .store import Store

STATIC: Final = Path(__file__).resolve().parent / "static"
DEFAULT_TOKEN_TTL: Final = 15 * 60
MIN_TOKEN_TTL: Final = 10
#: The environment variable that gives every node the same token secret.
SECRET_VARIABLE: Final = "ROOMCAST_TRACKER_SECRET"
#: HS256 secrets shorter than its hash are refused (RFC 7518, section 3.2).
MIN_SECRET_BYTES: Final = 32


# --8<-- [start:app]
def create_app(
    *,
    secret: bytes,
    origins: Sequence[str],
    token_ttl: int = DEFAULT_TOKEN_TTL,
    store: Store | None = None,
    backend: Backend | None = None,
) -> tuple[Starlette, Hub]:
    """The page at ``/``, the REST API under ``/api/v1``, the hub at ``/ws``."""
    store = store if store is not None else Store()
    tokens = Tokens(secret, token_ttl)
    rules = authorizer(store)
    hub = Hub(
        authenticator=tokens.authenticator,
        authorizer=rules,
        backend=backend if backend is not None else MemoryBackend(),
        namespaces=events.NAMESPACES,
        # Pages refresh their token when warned: at 80 % of its lifetime, at most a
        # minute before it expires.
        token_expiry_warning=min(60.0, token_ttl / 5),
        # Any site's pages may open a WebSocket to us, and no CORS check stops them:
        # only our own may. A deployed app lists its real https:// origins.
        allowed_origins=origins,
    )

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HTTPException):  # registered for HTTPException only
            raise exc
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    app = Starlette(
        routes=[
            Route("/", page),
            *api.routes(hub, store, tokens, rules),
            # The browser client, from the installed package: pages import it from here.
            roomcast.starlette.client_script("/roomcast.js"),
            Mount("/static", StaticFiles(directory=STATIC)),
            WebSocketRoute("/ws", roomcast.starlette.endpoint(hub)),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=roomcast.starlette.lifespan(hub),
    )
    return app, hub


# --8<-- [end:app]


def own_origins(host: str, port: int) -> list[str]:
    """The origins of pages this server serves itself."""
    if host in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "::"):
        names = ["127.0.0.1", "localhost", "[::1]"]
    else:
        names = [f"[{host}]" if ":" in host else host]
    return [f"http://{name}:{port}" for name in names]


# --8<-- [start:server]
class TrackerServer(uvicorn.Server):
    """uvicorn, announcing its address and letting the hub close its clients first."""

    def __init__(self, config: uvicorn.Config, hub: Hub, url: str) -> None:
        super().__init__(config)
        self.hub = hub
        self.url = url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(f"issue tracker listening on {self.url}", flush=True)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn closes WebSockets with 1012 before the lifespan ends; closing
        # the hub first flushes every client's queue, then closes it with 1001.
        await self.hub.aclose()
        await super().shutdown(sockets)


# --8<-- [end:server]


def backend_for(redis_url: str | None, prefix: str) -> Backend:
    if redis_url is None:
        return MemoryBackend()
    try:
        from roomcast.backends.redis import RedisBackend
    except ImportError:
        raise SystemExit(
            "--redis needs redis-py: install roomcast with its examples extra,"
            " as the issue tracker tutorial does"
        ) from None
    return RedisBackend(redis_url, prefix=prefix)


def main(args: argparse.Namespace) -> None:
    """Serve until Ctrl-C, then close every client with 1001 and exit."""
    # Bound before the hub exists: with --port 0 its origin is known only now.
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    netloc = f"[{args.host}]:{args.port}" if ":" in args.host else f"{args.host}:{args.port}"
    try:
        listener = socket.create_server((args.host, args.port), family=family)
    except OSError as exc:
        # One line that says what to do, not a traceback: the usual cause is another
        # tracker (or anything else) already listening there.
        why = "is already in use" if exc.errno == errno.EADDRINUSE else f"failed: {exc.strerror}"
        sys.exit(
            f"issue tracker: cannot listen on {netloc}: the address {why};"
            " choose another port with --port (e.g. --port 8010, or --port 0 for any free port)"
        )
    port = listener.getsockname()[1]
    netloc = f"[{args.host}]:{port}" if ":" in args.host else f"{args.host}:{port}"
    app, hub = create_app(
        # Given, so that every node accepts every node's tokens; or made at each start
        # and never shown: tokens from before a restart are then refused, and pages sign
        # in again through their token provider.
        secret=args.secret.encode() if args.secret else secrets.token_bytes(MIN_SECRET_BYTES),
        origins=[*own_origins(args.host, port), *args.origin],
        token_ttl=args.token_ttl,
        store=Store(args.db),
        backend=backend_for(args.redis, args.redis_prefix),
    )
    config = uvicorn.Config(
        app,
        ws_max_size=hub.max_message_size,  # refuse big frames before buffering them
        ws_per_message_deflate=False,  # roomcast sends small JSON frames uncompressed
        log_level="warning",
    )
    TrackerServer(config, hub, f"http://{netloc}/").run(sockets=[listener])


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    assert __doc__ is not None
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument(
        "--db", default=":memory:", help="an SQLite file to keep the data in (default: memory)"
    )
    parser.add_argument("--redis", metavar="URL", help="run the hub on RedisBackend at URL")
    parser.add_argument(
        "--redis-prefix", default="tracker", help="the prefix of the hub's Redis keys"
    )
    parser.add_argument(
        "--token-ttl", type=int, default=DEFAULT_TOKEN_TTL, help="token lifetime in seconds"
    )
    parser.add_argument(
        "--secret",
        default=os.environ.get(SECRET_VARIABLE) or None,
        help=(
            f"the token signing secret shared by every node (default: ${SECRET_VARIABLE}, "
            "else a random one made at each start)"
        ),
    )
    parser.add_argument(
        "--origin",
        action="append",
        default=[],
        help="another origin allowed to connect, e.g. http://192.168.1.5:8000 (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.token_ttl < MIN_TOKEN_TTL:
        parser.error(f"--token-ttl must be at least {MIN_TOKEN_TTL} seconds")
    # The message names the option and the rule, never the value.
    if args.secret is not None and len(args.secret.encode()) < MIN_SECRET_BYTES:
        parser.error(
            f"the secret (--secret or ${SECRET_VARIABLE}) must be at least "
            f"{MIN_SECRET_BYTES} bytes long"
        )
    return args


if __name__ == "__main__":
    arguments = parse()
    # --8<-- [start:signals]
    # uvicorn shuts down on Ctrl-C and on SIGTERM, then raises the signal again for the
    # handler it found: make both a KeyboardInterrupt, which ends the program quietly.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):
        main(arguments)
    # --8<-- [end:signals]
