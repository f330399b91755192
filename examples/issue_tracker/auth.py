"""Who may do what: tokens for the demo users, and one rule per room namespace.

The same token and the same rules cover the WebSocket and the REST API: a user can
read over REST exactly what they could subscribe to.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Final

import jwt
from starlette.exceptions import HTTPException
from starlette.requests import Request

from roomcast import Action, AuthenticationError, Handshake, NamespaceAuthorizer, Principal
from roomcast.jwt import JWTAuthenticator

from .store import USERS, WORKSPACE, Store

ISSUER: Final = "roomcast-issue-tracker"
AUDIENCE: Final = "roomcast-issue-tracker"


def teams_of(principal: Principal) -> Sequence[str]:
    """The teams a token names: membership travels in the claims, so rooms need no lookup."""
    teams = principal.claims.get("teams")
    return teams if isinstance(teams, list) else ()


def is_admin(principal: Principal) -> bool:
    return principal.claims.get("role") == "admin"


class Tokens:
    """Issues and checks the app's HS256 tokens."""

    def __init__(self, secret: bytes, ttl: int) -> None:
        self.ttl = ttl
        self._secret = secret
        self.authenticator = JWTAuthenticator(
            secret, algorithms=["HS256"], issuer=ISSUER, audience=AUDIENCE
        )

    def issue(self, user: str) -> dict[str, Any]:
        """A token for ``user`` (a demo: a real app checks a password or an SSO session)."""
        now = int(time.time())
        expires = now + self.ttl
        person = USERS[user]
        claims = {
            "sub": user,
            "name": person.name,
            "teams": list(person.teams),
            "workspace": WORKSPACE["id"],
            "role": person.role,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": expires,
        }
        return {
            "token": jwt.encode(claims, self._secret, algorithm="HS256"),
            "expiresAt": expires * 1000,
            "expiresIn": self.ttl,
        }

    async def principal(self, request: Request) -> Principal:
        """The caller of a REST request, from its ``Authorization: Bearer`` token."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "missing bearer token")
        try:
            return await self.authenticator.authenticate(Handshake(), token.strip())
        except AuthenticationError:
            raise HTTPException(401, "invalid or expired token") from None


# --8<-- [start:rules]
def authorizer(store: Store) -> NamespaceAuthorizer:
    """The rules of every room namespace; ``user:{id}`` keeps roomcast's default."""

    def workspace_rule(principal: Principal, action: Action, workspace: str) -> bool:
        # The feed is the server's: members read it, nobody publishes into it.
        return action == "subscribe" and principal.claims.get("workspace") == workspace

    def team_rule(principal: Principal, action: Action, team: str) -> bool:
        # The board, and who has it open.
        return action != "publish" and team in teams_of(principal)

    def issue_rule(principal: Principal, action: Action, issue_id: str) -> bool:
        # Members of the issue's team read it, see who views it, and publish into it:
        # the namespace lets browsers publish only `user.typing`, never stored.
        team = store.issue_team(issue_id)
        return team is not None and team in teams_of(principal)

    def project_rule(principal: Principal, action: Action, project_id: str) -> bool:
        project = store.project(project_id)
        return (
            action == "subscribe" and project is not None and project["team"] in teams_of(principal)
        )

    def cycle_rule(principal: Principal, action: Action, cycle_id: str) -> bool:
        cycle = store.cycle(cycle_id)
        return action == "subscribe" and cycle is not None and cycle["team"] in teams_of(principal)

    # Rooms without a rule (user:{id} among them) fall to the default rules: a
    # user's own room is theirs alone, and clients publish nowhere else.
    return NamespaceAuthorizer(
        {
            "workspace": workspace_rule,
            "team": team_rule,
            "issue": issue_rule,
            "project": project_rule,
            "cycle": cycle_rule,
        }
    )


# --8<-- [end:rules]
