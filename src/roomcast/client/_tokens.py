"""The client's tokens: asking the provider, and renewing the token in band (anyio).

The token provider is asked for every connection, after the server refused a
token, and on `token.expiring`. It raising
[`AuthenticationError`][roomcast.exceptions.AuthenticationError] means there is
no token to be had (the user signed out): the connection closes. Any other
failure is a failed attempt: the client tries again after a backoff delay.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..exceptions import AuthenticationError, RoomcastError
from ._rules import check_token

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["NoToken", "provide", "start_refresh"]

logger = logging.getLogger("roomcast.client")


class NoToken(Exception):
    """The token provider failed (not with `AuthenticationError`): try again later."""


async def provide(conn: Connection) -> str:
    """A token from the provider.

    Raises:
        AuthenticationError: the provider raised it: there is no token to be
            had (the user signed out, say).
        NoToken: the provider failed otherwise, or returned no valid token.
    """
    assert conn._provider is not None
    try:
        return check_token(await conn._provider(), "the token provider's token")
    except AuthenticationError:
        logger.warning("roomcast client: the token provider raised AuthenticationError")
        raise
    except Exception as exc:
        logger.warning("roomcast client: the token provider failed: %s", type(exc).__name__)
        raise NoToken(f"the token provider failed: {type(exc).__name__}") from exc


def start_refresh(conn: Connection) -> None:
    """Renew the token in band, in the background (on `token.expiring`)."""
    if conn._provider is None:
        logger.warning("roomcast client: the token expires and there is no token provider")
        return
    if conn._refreshing or conn._task_group is None:
        return
    conn._refreshing = True
    conn._task_group.start_soon(_refresh, conn)


async def _refresh(conn: Connection) -> None:
    """Renew the token in band (on `token.expiring`); a failure is logged."""
    try:
        token = await provide(conn)
        await conn._request("refresh", {"token": token})
    except RoomcastError as exc:
        logger.warning("roomcast client: refreshing the token failed: %s", exc)
    except NoToken:
        pass  # logged
    else:
        conn._in_force = token  # what a later refusal refers to
    finally:
        conn._refreshing = False
