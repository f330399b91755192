"""What the tracker tells the pages: one function per event, each knowing its rooms.

A change is made in the store first, then published here, by the request handler that
made it or by any other process on the same backend (a worker, a script, a second
node). Every event carries the user who acted as its ``userId``. The rooms:

- ``workspace:{id}``: the activity feed, for every member of the workspace;
- ``team:{id}``: the team's board, for the team's members;
- ``issue:{id}``: one open issue (comments, who is viewing it, who is typing);
- ``project:{id}`` and ``cycle:{id}``: a project's or a cycle's page;
- ``user:{id}``: that user's notifications, for that user alone.

The event catalogue (docs/reference/showcase-events.md) lists every event with its
rooms, its payload and who may receive it.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from roomcast import History, Hub, RoomOptions

from .store import TEAMS, WORKSPACE, Store, mentions, now_ms

# --8<-- [start:namespaces]
#: Every room keeps its recent events, so that a page that was away for a while (a
#: laptop asleep, a server restart on Redis) is sent what it missed instead of
#: refetching. Any process that publishes must use the same namespaces.
NAMESPACES: Final = {
    "workspace": RoomOptions(history=History(size=200, ttl=24 * 3600)),
    # Presence: who has the board open, shown in the sidebar.
    "team": RoomOptions(history=History(size=500, ttl=24 * 3600), presence=True),
    # Browsers publish one thing, the typing indicator, and it is never stored.
    "issue": RoomOptions(
        history=History(size=200, ttl=24 * 3600),
        presence=True,
        client_types=frozenset({"user.typing"}),
        client_ephemeral=True,
    ),
    "project": RoomOptions(history=History(size=100, ttl=24 * 3600)),
    "cycle": RoomOptions(history=History(size=100, ttl=24 * 3600)),
    "user": RoomOptions(history=History(size=100, ttl=7 * 24 * 3600)),
}
# --8<-- [end:namespaces]

Verb = Literal["created", "updated", "archived", "deleted", "commented"]


def workspace_room() -> str:
    return f"workspace:{WORKSPACE['id']}"


# --8<-- [start:issues]
async def issue_created(hub: Hub, store: Store, issue: dict[str, Any], *, actor: str) -> None:
    """A new issue: on its team's board, in the workspace's feed, and to its assignee."""
    await hub.publish(f"team:{issue['team']}", "issue.created", {"issue": issue}, user_id=actor)
    await activity(hub, store, actor, "created", issue)
    if issue["assignee"] not in (None, actor):
        await notify(hub, store, issue["assignee"], "assigned", issue, actor=actor)


async def issue_updated(
    hub: Hub, store: Store, issue: dict[str, Any], changes: list[str], *, actor: str
) -> None:
    """Fields of an issue changed: the board and the open issue, in one publish."""
    # One publish, two rooms, one message id: a page in both keeps the first copy.
    await hub.publish(
        (f"team:{issue['team']}", f"issue:{issue['id']}"),
        "issue.updated",
        {"issue": issue, "changes": changes},
        user_id=actor,
    )
    await activity(hub, store, actor, "updated", issue, changes=changes)
    if "assignee" in changes and issue["assignee"] not in (None, actor):
        await notify(hub, store, issue["assignee"], "assigned", issue, actor=actor)


async def issue_archived(hub: Hub, store: Store, issue: dict[str, Any], *, actor: str) -> None:
    """An issue left the board; it can still be opened."""
    await hub.publish(
        (f"team:{issue['team']}", f"issue:{issue['id']}"),
        "issue.archived",
        {"issue": issue},
        user_id=actor,
    )
    await activity(hub, store, actor, "archived", issue)


async def issue_deleted(hub: Hub, store: Store, issue: dict[str, Any], *, actor: str) -> None:
    """An issue is gone, with its comments."""
    await hub.publish(
        (f"team:{issue['team']}", f"issue:{issue['id']}"),
        "issue.deleted",
        {"issueId": issue["id"], "key": issue["key"], "team": issue["team"]},
        user_id=actor,
    )
    await activity(hub, store, actor, "deleted", issue)


# --8<-- [end:issues]


async def comment_created(
    hub: Hub, store: Store, issue: dict[str, Any], comment: dict[str, Any], *, actor: str
) -> None:
    """A comment: in the open issue, on the board (its count), and to those it mentions."""
    await hub.publish(
        (f"team:{issue['team']}", f"issue:{issue['id']}"),
        "comment.created",
        {"comment": comment},
        user_id=actor,
    )
    await activity(hub, store, actor, "commented", issue)
    for user in mentions(comment["body"], issue["team"]):
        if user != actor:
            await notify(hub, store, user, "mentioned", issue, actor=actor)


async def comment_updated(
    hub: Hub,
    store: Store,
    issue: dict[str, Any],
    comment: dict[str, Any],
    *,
    before: str,
    actor: str,
) -> None:
    """A comment was edited (by its author): to those the edit mentions for the first time.

    ``before`` is the comment's body before the edit: who it mentioned was told already.
    """
    await hub.publish(
        (f"team:{issue['team']}", f"issue:{issue['id']}"),
        "comment.updated",
        {"comment": comment},
        user_id=actor,
    )
    told = set(mentions(before, issue["team"]))
    for user in mentions(comment["body"], issue["team"]):
        if user != actor and user not in told:
            await notify(hub, store, user, "mentioned", issue, actor=actor)


async def comment_deleted(
    hub: Hub, issue: dict[str, Any], comment: dict[str, Any], *, actor: str
) -> None:
    """A comment was deleted (by its author or an admin)."""
    await hub.publish(
        (f"team:{issue['team']}", f"issue:{issue['id']}"),
        "comment.deleted",
        {"commentId": comment["id"], "issueId": issue["id"]},
        user_id=actor,
    )


async def project_updated(
    hub: Hub, project: dict[str, Any], changes: list[str], *, actor: str
) -> None:
    """A project's name, state, lead or target date changed: its page and its team's board."""
    await hub.publish(
        (f"project:{project['id']}", f"team:{project['team']}"),
        "project.updated",
        {"project": project, "changes": changes},
        user_id=actor,
    )


async def cycle_updated(hub: Hub, cycle: dict[str, Any], changes: list[str], *, actor: str) -> None:
    """A cycle's name, goal or dates changed: its page and its team's board."""
    await hub.publish(
        (f"cycle:{cycle['id']}", f"team:{cycle['team']}"),
        "cycle.updated",
        {"cycle": cycle, "changes": changes},
        user_id=actor,
    )


async def activity(
    hub: Hub,
    store: Store,
    actor: str,
    verb: Verb,
    issue: dict[str, Any],
    *,
    changes: list[str] | None = None,
) -> None:
    """An entry of the workspace's activity feed.

    Every member of the workspace receives it, members of other teams included: it
    names the issue by key and never carries its title, description or a comment.
    """
    entry = store.add_activity(
        {
            "actor": actor,
            "verb": verb,
            "issueId": issue["id"],
            "key": issue["key"],
            "team": issue["team"],
            "teamName": TEAMS[issue["team"]]["name"],
            "changes": changes or [],
            "status": issue.get("status"),
            "at": now_ms(),
        }
    )
    await hub.publish(workspace_room(), "activity.created", {"entry": entry}, user_id=actor)


async def notify(
    hub: Hub,
    store: Store,
    user: str,
    kind: Literal["assigned", "mentioned"],
    issue: dict[str, Any],
    *,
    actor: str,
) -> None:
    """A notification for ``user``, in every tab they have open (their ``user:`` room)."""
    entry = store.add_notification(
        user,
        {
            "kind": kind,
            "actor": actor,
            "issueId": issue["id"],
            "key": issue["key"],
            "title": issue["title"],
            "at": now_ms(),
        },
    )
    await hub.publish(
        f"user:{user}", "notification.created", {"notification": entry}, user_id=actor
    )
