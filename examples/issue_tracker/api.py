"""The REST API under ``/api/v1``: each change is made in the store, then published.

Every call but ``login`` takes ``Authorization: Bearer <token>``, checked by the hub's
own authenticator, and asks the hub's authorizer whether the caller could subscribe to
the room of what it reads or changes: one set of rules for both.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from roomcast import Authorizer, CloseCode, Hub, Principal

from . import events
from .auth import Tokens, is_admin, teams_of
from .store import (
    PRIORITIES,
    PROJECT_STATES,
    STATUSES,
    TEAMS,
    USERS,
    WORKSPACE,
    Conflict,
    Store,
    members_of,
)

MAX_BODY_BYTES: Final = 16 * 1024


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


def text(body: dict[str, Any], name: str, limit: int, *, empty: bool = False) -> str:
    value = body.get(name)
    if not isinstance(value, str) or len(value) > limit or not (empty or value.strip()):
        raise HTTPException(400, f"{name} must be {0 if empty else 1} to {limit} characters")
    return value.strip()


def choice(body: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str:
    value = body.get(name)
    if value not in allowed:
        raise HTTPException(400, f"{name} must be one of {', '.join(allowed)}")
    return str(value)


def routes(hub: Hub, store: Store, tokens: Tokens, authorizer: Authorizer) -> list[Route]:
    """The API's routes, bound to one hub, one store and one set of rules."""

    # --8<-- [start:rest-auth]
    async def caller(request: Request) -> tuple[Principal, str]:
        principal = await tokens.principal(request)
        return principal, str(principal.user_id)

    async def check(principal: Principal, room: str) -> None:
        """Refuse REST access to what the caller could not subscribe to: one set of rules."""
        if not await authorizer.authorize(principal, "subscribe", room):
            raise HTTPException(403, "you are not a member of this team")

    # --8<-- [end:rest-auth]

    async def find_issue(request: Request, principal: Principal) -> dict[str, Any]:
        issue = store.issue(request.path_params["issue"])
        if issue is None:
            raise HTTPException(404, "no such issue")
        await check(principal, f"issue:{issue['id']}")
        return issue

    def writable(issue: dict[str, Any]) -> None:
        # An archived issue is read-only: it can be read, and deleted, not changed.
        if issue["archived"]:
            raise HTTPException(409, f"{issue['key']} is archived: it can no longer be changed")

    async def find_comment(
        request: Request, principal: Principal
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        comment = store.comment(request.path_params["comment"])
        if comment is None:
            raise HTTPException(404, "no such comment")
        await check(principal, f"issue:{comment['issueId']}")
        issue = store.issue(comment["issueId"])
        assert issue is not None
        return issue, comment

    async def login(request: Request) -> Response:
        # Development only: anyone may be anyone. A real app checks a password or an
        # SSO session here, and refreshes tokens from a session cookie.
        user = (await read_json(request)).get("user")
        if not isinstance(user, str) or user not in USERS:
            raise HTTPException(404, "unknown user")
        return JSONResponse({**tokens.issue(user), "user": USERS[user].public()})

    async def logout(request: Request) -> Response:
        _, user = await caller(request)
        # Every tab of this user on every node; the token itself lives until it expires.
        closed = hub.disconnect_user(user, CloseCode.INVALID_TOKEN, "signed out")
        return JSONResponse({"closed": closed})

    async def workspace(request: Request) -> Response:
        principal, user = await caller(request)
        teams = list(teams_of(principal))
        return JSONResponse(
            {
                "workspace": WORKSPACE,
                "me": USERS[user].public(),
                "teams": [{**TEAMS[team], "members": members_of(team)} for team in teams],
                "users": {uid: person.public() for uid, person in USERS.items()},
                "projects": store.projects(teams),
                "cycles": store.cycles(teams),
                "statuses": STATUSES,
                "priorities": PRIORITIES,
            }
        )

    async def activity(request: Request) -> Response:
        principal, _ = await caller(request)
        await check(principal, events.workspace_room())
        return JSONResponse(store.activity())

    async def notifications(request: Request) -> Response:
        _, user = await caller(request)
        return JSONResponse(store.notifications(user))

    async def list_issues(request: Request) -> Response:
        principal, _ = await caller(request)
        team = request.path_params["team"]
        await check(principal, f"team:{team}")
        archived = request.query_params.get("archived") in ("1", "true")
        issues = store.issues(team, archived=archived)
        counts = store.comment_counts(team)
        return JSONResponse([{**issue, "comments": counts.get(issue["id"], 0)} for issue in issues])

    async def issue_fields(body: dict[str, Any], team: str) -> dict[str, Any]:
        """The fields of ``body`` an issue has, checked; unknown keys are refused."""
        fields: dict[str, Any] = {}
        for name in body:
            if name == "title":
                fields[name] = text(body, name, 200)
            elif name == "description":
                fields[name] = text(body, name, 10_000, empty=True)
            elif name == "status":
                fields[name] = choice(body, name, STATUSES)
            elif name == "priority":
                fields[name] = choice(body, name, PRIORITIES)
            elif name == "assignee":
                if body[name] is not None and body[name] not in members_of(team):
                    raise HTTPException(400, "the assignee must be a member of the issue's team")
                fields[name] = body[name]
            elif name in ("project", "cycle"):
                value = body[name]
                found = None
                if value is not None:
                    found = store.project(value) if name == "project" else store.cycle(value)
                if value is not None and (found is None or found["team"] != team):
                    raise HTTPException(400, f"no such {name} in the issue's team")
                fields[name] = value
            else:
                raise HTTPException(400, f"issues have no field {name!r}")
        return fields

    # --8<-- [start:publish]
    async def create_issue(request: Request) -> Response:
        principal, user = await caller(request)
        team = request.path_params["team"]
        await check(principal, f"team:{team}")
        fields = await issue_fields(await read_json(request), team)
        if "title" not in fields:
            raise HTTPException(400, "title must be 1 to 200 characters")
        try:
            issue = store.create_issue(team, creator=user, **fields)
        except Conflict as exc:
            raise HTTPException(409, str(exc)) from None
        await events.issue_created(hub, store, issue, actor=user)
        return JSONResponse(issue, status_code=201)

    async def update_issue(request: Request) -> Response:
        principal, user = await caller(request)
        issue = await find_issue(request, principal)
        writable(issue)
        fields = await issue_fields(await read_json(request), issue["team"])
        changes = [name for name, value in fields.items() if issue[name] != value]
        if changes:
            issue = store.update_issue(issue["id"], {name: fields[name] for name in changes})
            await events.issue_updated(hub, store, issue, changes, actor=user)
        return JSONResponse(issue)

    # --8<-- [end:publish]

    async def archive_issue(request: Request) -> Response:
        principal, user = await caller(request)
        issue = await find_issue(request, principal)
        if not issue["archived"]:
            issue = store.update_issue(issue["id"], {"archived": 1})
            await events.issue_archived(hub, store, issue, actor=user)
        return JSONResponse(issue)

    async def delete_issue(request: Request) -> Response:
        principal, user = await caller(request)
        issue = await find_issue(request, principal)
        if issue["creator"] != user and not is_admin(principal):
            raise HTTPException(403, "only the issue's creator or an admin may delete it")
        store.delete_issue(issue["id"])
        await events.issue_deleted(hub, store, issue, actor=user)
        return Response(status_code=204)

    async def get_issue(request: Request) -> Response:
        principal, _ = await caller(request)
        issue = await find_issue(request, principal)
        return JSONResponse({**issue, "comments": store.comments(issue["id"])})

    async def add_comment(request: Request) -> Response:
        principal, user = await caller(request)
        issue = await find_issue(request, principal)
        writable(issue)
        body = text(await read_json(request), "body", 4000)
        try:
            comment = store.add_comment(issue["id"], user, body)
        except Conflict as exc:
            raise HTTPException(409, str(exc)) from None
        await events.comment_created(hub, store, issue, comment, actor=user)
        return JSONResponse(comment, status_code=201)

    async def edit_comment(request: Request) -> Response:
        principal, user = await caller(request)
        issue, comment = await find_comment(request, principal)
        writable(issue)
        if comment["author"] != user:
            raise HTTPException(403, "only its author may edit a comment")
        body = text(await read_json(request), "body", 4000)
        if body != comment["body"]:
            before = comment["body"]
            comment = store.edit_comment(comment["id"], body)
            await events.comment_updated(hub, store, issue, comment, before=before, actor=user)
        return JSONResponse(comment)

    async def delete_comment(request: Request) -> Response:
        principal, user = await caller(request)
        issue, comment = await find_comment(request, principal)
        writable(issue)
        if comment["author"] != user and not is_admin(principal):
            raise HTTPException(403, "only its author or an admin may delete a comment")
        store.delete_comment(comment["id"])
        await events.comment_deleted(hub, issue, comment, actor=user)
        return Response(status_code=204)

    async def update_project(request: Request) -> Response:
        principal, user = await caller(request)
        project = store.project(request.path_params["project"])
        if project is None:
            raise HTTPException(404, "no such project")
        await check(principal, f"project:{project['id']}")
        body = await read_json(request)
        fields: dict[str, Any] = {}
        for name in body:
            if name == "name":
                fields[name] = text(body, name, 100)
            elif name == "state":
                fields[name] = choice(body, name, PROJECT_STATES)
            elif name == "lead":
                if body[name] is not None and body[name] not in members_of(project["team"]):
                    raise HTTPException(400, "the lead must be a member of the project's team")
                fields[name] = body[name]
            elif name == "target":
                fields[name] = text(body, name, 10)
            else:
                raise HTTPException(400, f"projects have no field {name!r}")
        changes = [name for name, value in fields.items() if project[name] != value]
        if changes:
            project = store.update_project(project["id"], {name: fields[name] for name in changes})
            await events.project_updated(hub, project, changes, actor=user)
        return JSONResponse(project)

    async def update_cycle(request: Request) -> Response:
        principal, user = await caller(request)
        cycle = store.cycle(request.path_params["cycle"])
        if cycle is None:
            raise HTTPException(404, "no such cycle")
        await check(principal, f"cycle:{cycle['id']}")
        body = await read_json(request)
        fields: dict[str, Any] = {}
        for name in body:
            if name in ("name", "goal"):
                fields[name] = text(body, name, 200, empty=name == "goal")
            elif name in ("starts", "ends"):
                fields[name] = text(body, name, 10)
            else:
                raise HTTPException(400, f"cycles have no field {name!r}")
        changes = [name for name, value in fields.items() if cycle[name] != value]
        if changes:
            cycle = store.update_cycle(cycle["id"], {name: fields[name] for name in changes})
            await events.cycle_updated(hub, cycle, changes, actor=user)
        return JSONResponse(cycle)

    # --8<-- [start:stats]
    async def stats(request: Request) -> Response:
        # Room names reveal every team's issue ids: operators only.
        principal, _ = await caller(request)
        if not is_admin(principal):
            raise HTTPException(403, "hub statistics are for admins")
        return JSONResponse(dataclasses.asdict(hub.stats()))

    # --8<-- [end:stats]

    return [
        Route("/api/v1/login", login, methods=["POST"]),
        Route("/api/v1/logout", logout, methods=["POST"]),
        Route("/api/v1/workspace", workspace),
        Route("/api/v1/activity", activity),
        Route("/api/v1/notifications", notifications),
        Route("/api/v1/teams/{team}/issues", list_issues),
        Route("/api/v1/teams/{team}/issues", create_issue, methods=["POST"]),
        Route("/api/v1/issues/{issue}", get_issue),
        Route("/api/v1/issues/{issue}", update_issue, methods=["PATCH"]),
        Route("/api/v1/issues/{issue}", delete_issue, methods=["DELETE"]),
        Route("/api/v1/issues/{issue}/archive", archive_issue, methods=["POST"]),
        Route("/api/v1/issues/{issue}/comments", add_comment, methods=["POST"]),
        Route("/api/v1/comments/{comment}", edit_comment, methods=["PATCH"]),
        Route("/api/v1/comments/{comment}", delete_comment, methods=["DELETE"]),
        Route("/api/v1/projects/{project}", update_project, methods=["PATCH"]),
        Route("/api/v1/cycles/{cycle}", update_cycle, methods=["PATCH"]),
        Route("/api/v1/ws/stats", stats),
    ]
