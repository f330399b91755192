"""An issue tracker whose pages update live: the roomcast showcase app.

Run it from a checkout of the repository, after ``pip install -e ".[examples]"`` (which
brings uvicorn with a WebSocket implementation)::

    python examples/issue_tracker/app.py

then open http://127.0.0.1:8000/ in two browser windows and sign in as alice in one
and bob in the other (carol is in another team). ``--host`` and ``--port`` choose the
address (``--port 0`` picks a free port and prints it); ``--token-ttl 90`` shows a
token refresh 72 seconds after signing in (pages refresh at 80 % of a token's lifetime).
Ctrl-C or SIGTERM closes every page with 1001 and exits with status 0. Everything is
kept in memory.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import secrets
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import jwt
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

import roomcast.starlette
from roomcast import (
    Action,
    AuthenticationError,
    CloseCode,
    Handshake,
    History,
    Hub,
    NamespaceAuthorizer,
    Principal,
    RoomOptions,
)
from roomcast.jwt import JWTAuthenticator

PAGE: Final = (Path(__file__).parent / "static" / "index.html").read_text(encoding="utf-8")

# A fixed directory stands in for the app's users and teams.
TEAMS: Final = {"t1": "Platform", "t2": "Design"}
MEMBERS: Final = {"alice": ("t1",), "bob": ("t1",), "carol": ("t2",)}
STATUSES: Final = ("open", "in_progress", "done")

ISSUER: Final = "roomcast-issue-tracker"
AUDIENCE: Final = "roomcast-issue-tracker"
DEFAULT_TOKEN_TTL: Final = 15 * 60
# Everything lives in memory, so everything has a ceiling.
MAX_ISSUES: Final = 1000
MAX_COMMENTS: Final = 500
MAX_BODY_BYTES: Final = 16 * 1024


@dataclasses.dataclass
class Issue:
    id: str
    team: str
    title: str
    status: str = "open"
    assignee: str | None = None
    # Events can overtake each other between two REST calls; pages keep the highest version.
    version: int = 1
    comments: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "team": self.team,
            "title": self.title,
            "status": self.status,
            "assignee": self.assignee,
            "version": self.version,
        }


def teams_of(principal: Principal) -> Sequence[str]:
    """The teams a token names: membership travels in the claims, so rooms need no lookup."""
    teams = principal.claims.get("teams")
    return teams if isinstance(teams, list) else ()


def members_of(team: str) -> list[str]:
    return [user for user, teams in MEMBERS.items() if team in teams]


def create_app(*, secret: bytes, origins: Sequence[str], token_ttl: int) -> tuple[Starlette, Hub]:
    """The page at ``/``, the REST API under ``/api`` and the hub at ``/ws``."""
    issues: dict[str, Issue] = {}

    # --8<-- [start:hub]
    authenticator = JWTAuthenticator(secret, algorithms=["HS256"], issuer=ISSUER, audience=AUDIENCE)

    def team_rule(principal: Principal, action: Action, team: str) -> bool:
        # Team rooms carry server events only: nobody publishes from a browser.
        return action != "publish" and team in teams_of(principal)

    def issue_rule(principal: Principal, action: Action, issue_id: str) -> bool:
        # Members of the issue's team may read it, see who is viewing it, and
        # publish into it: the page sends ephemeral `typing` events there.
        issue = issues.get(issue_id)
        return issue is not None and issue.team in teams_of(principal)

    # Rooms without a rule (user:{id} among them) fall to the default rules:
    # a user's own room is theirs alone, and clients publish nowhere else.
    authorizer = NamespaceAuthorizer({"team": team_rule, "issue": issue_rule})
    recent = History(size=200, ttl=3600)
    hub = Hub(
        authenticator=authenticator,
        authorizer=authorizer,
        namespaces={
            "team": RoomOptions(history=recent),
            # Browsers may publish only `typing` in issue rooms, never stored.
            "issue": RoomOptions(
                history=recent,
                presence=True,
                client_types=frozenset({"typing"}),
                client_ephemeral=True,
            ),
        },
        # Any site's pages may open a WebSocket to us, and no CORS check stops
        # them: only our own may. A deployed app lists its real https:// origins.
        allowed_origins=origins,
    )
    # --8<-- [end:hub]

    # --8<-- [start:rest-auth]
    async def authenticate(request: Request) -> tuple[Principal, str]:
        """The caller, from the same token and the same checks as the WebSocket."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "missing bearer token")
        try:
            principal = await authenticator.authenticate(Handshake(), token.strip())
        except AuthenticationError:
            raise HTTPException(401, "invalid or expired token") from None
        return principal, str(principal.user_id)

    async def check(principal: Principal, room: str) -> None:
        """Refuse REST access to what the caller could not subscribe to: one set of rules."""
        if not await authorizer.authorize(principal, "subscribe", room):
            raise HTTPException(403, "not a member of this team")

    # --8<-- [end:rest-auth]

    async def find_issue(request: Request, principal: Principal) -> Issue:
        issue = issues.get(request.path_params["issue"])
        if issue is None:
            raise HTTPException(404, "no such issue")
        await check(principal, f"issue:{issue.id}")
        return issue

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE)

    async def login(request: Request) -> Response:
        # A demo: anyone may be anyone. A real app checks a password or an SSO
        # session here, and refreshes tokens from a session cookie.
        user = (await read_json(request)).get("user")
        if not isinstance(user, str) or user not in MEMBERS:
            raise HTTPException(404, "unknown user")
        now = int(time.time())
        expires = now + token_ttl
        claims = {
            "sub": user,
            "teams": list(MEMBERS[user]),
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": expires,
        }
        teams = {team: {"name": TEAMS[team], "members": members_of(team)} for team in MEMBERS[user]}
        return JSONResponse(
            {
                "token": jwt.encode(claims, secret, algorithm="HS256"),
                "user": user,
                "expiresAt": expires * 1000,
                "expiresIn": token_ttl,
                "teams": teams,
            }
        )

    async def logout(request: Request) -> Response:
        _, user = await authenticate(request)
        # Every tab of this user on this node; the token itself lives until it expires.
        closed = hub.disconnect_user(user, CloseCode.INVALID_TOKEN, "logged out")
        return JSONResponse({"closed": closed})

    async def list_issues(request: Request) -> Response:
        principal, _ = await authenticate(request)
        team = request.path_params["team"]
        await check(principal, f"team:{team}")
        return JSONResponse([issue.public() for issue in issues.values() if issue.team == team])

    # --8<-- [start:publish]
    async def create_issue(request: Request) -> Response:
        principal, user = await authenticate(request)
        team = request.path_params["team"]
        await check(principal, f"team:{team}")
        title = text(await read_json(request), "title", 200)
        if len(issues) >= MAX_ISSUES:
            raise HTTPException(409, f"this demo keeps at most {MAX_ISSUES} issues")
        issue = Issue(f"i{len(issues) + 1}", team, title)
        issues[issue.id] = issue
        # Published without user_id: the page treats events with a null userId
        # as the server's (clients can only publish `typing`, and carry theirs).
        await hub.publish(f"team:{team}", "issue.created", {"issue": issue.public(), "by": user})
        return JSONResponse(issue.public(), status_code=201)

    async def update_issue(request: Request) -> Response:
        principal, user = await authenticate(request)
        issue = await find_issue(request, principal)
        body = await read_json(request)
        changes = []
        if "status" in body:
            if body["status"] not in STATUSES:
                raise HTTPException(400, f"status must be one of {', '.join(STATUSES)}")
            if body["status"] != issue.status:
                issue.status = body["status"]
                changes.append("status")
        if "assignee" in body:
            assignee = body["assignee"]
            if assignee is not None and assignee not in members_of(issue.team):
                raise HTTPException(400, "the assignee must be a member of the issue's team")
            if assignee != issue.assignee:
                issue.assignee = assignee
                changes.append("assignee")
        if changes:
            issue.version += 1
            # One publish, two rooms, one message id: the board and the open
            # issue both update, and a page in both rooms keeps the first copy.
            await hub.publish(
                (f"team:{issue.team}", f"issue:{issue.id}"),
                "issue.updated",
                {"issue": issue.public(), "changes": changes, "by": user},
            )
        if "assignee" in changes and issue.assignee not in (None, user):
            # Every tab of the assignee, whatever rooms it is in.
            await hub.send_to_user(
                str(issue.assignee),
                "notification",
                {"text": f"{user} assigned you {issue.id}: {issue.title}", "issue": issue.public()},
            )
        return JSONResponse(issue.public())

    async def add_comment(request: Request) -> Response:
        principal, user = await authenticate(request)
        issue = await find_issue(request, principal)
        body = text(await read_json(request), "body", 2000)
        if len(issue.comments) >= MAX_COMMENTS:
            raise HTTPException(409, f"this demo keeps at most {MAX_COMMENTS} comments per issue")
        comment = {
            "id": f"{issue.id}-c{len(issue.comments) + 1}",
            "issueId": issue.id,
            "author": user,
            "body": body,
            "createdAt": int(time.time() * 1000),
        }
        issue.comments.append(comment)
        await hub.publish(f"issue:{issue.id}", "comment.created", {"comment": comment})
        return JSONResponse(comment, status_code=201)

    # --8<-- [end:publish]

    async def get_issue(request: Request) -> Response:
        principal, _ = await authenticate(request)
        issue = await find_issue(request, principal)
        return JSONResponse({**issue.public(), "comments": issue.comments})

    async def stats(request: Request) -> Response:
        # Room names reveal issue ids of every team: a real app shows this to operators only.
        await authenticate(request)
        return JSONResponse(dataclasses.asdict(hub.stats()))

    async def http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HTTPException):  # registered for HTTPException only
            raise exc
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/api/login", login, methods=["POST"]),
            Route("/api/logout", logout, methods=["POST"]),
            Route("/api/stats", stats),
            Route("/api/teams/{team}/issues", list_issues),
            Route("/api/teams/{team}/issues", create_issue, methods=["POST"]),
            Route("/api/issues/{issue}", get_issue),
            Route("/api/issues/{issue}", update_issue, methods=["PATCH"]),
            Route("/api/issues/{issue}/comments", add_comment, methods=["POST"]),
            WebSocketRoute("/ws", roomcast.starlette.endpoint(hub)),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=roomcast.starlette.lifespan(hub),
    )
    return app, hub


async def read_json(request: Request) -> dict[str, Any]:
    """The request's JSON object, read no further than ``MAX_BODY_BYTES``."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(413, "request body too large")
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise HTTPException(400, "invalid JSON") from None
    if not isinstance(data, dict):
        raise HTTPException(400, "expected a JSON object")
    return data


def text(body: dict[str, Any], name: str, limit: int) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise HTTPException(400, f"{name} must be 1 to {limit} characters")
    return value.strip()


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


def main(host: str, port: int, token_ttl: int, extra_origins: Sequence[str]) -> None:
    """Serve until Ctrl-C, then close every client with 1001 and exit."""
    # Bound before the hub exists: with --port 0 its origin is known only now.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, port), family=family)
    port = listener.getsockname()[1]
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    app, hub = create_app(
        # Made at each start and never shown: restarting signs everyone out.
        secret=secrets.token_bytes(32),
        origins=[*own_origins(host, port), *extra_origins],
        token_ttl=token_ttl,
    )
    config = uvicorn.Config(
        app,
        ws_max_size=hub.max_message_size,  # refuse big frames before buffering them
        ws_per_message_deflate=False,  # roomcast sends small JSON frames uncompressed
        log_level="warning",
    )
    TrackerServer(config, hub, f"http://{netloc}/").run(sockets=[listener])


# --8<-- [end:server]

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument(
        "--token-ttl", type=int, default=DEFAULT_TOKEN_TTL, help="token lifetime in seconds"
    )
    parser.add_argument(
        "--origin",
        action="append",
        default=[],
        help="another origin allowed to connect, e.g. http://192.168.1.5:8000 (repeatable)",
    )
    args = parser.parse_args()
    if args.token_ttl < 61:
        # The hub sends token.expiring a minute before expiry: shorter tokens would be
        # warned as soon as they are issued.
        parser.error("--token-ttl must be at least 61 seconds")
    # --8<-- [start:signals]
    # uvicorn shuts down on Ctrl-C and on SIGTERM, then raises the signal again for the
    # handler it found: make both a KeyboardInterrupt, which ends the program quietly.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):
        main(args.host, args.port, args.token_ttl, args.origin)
    # --8<-- [end:signals]
