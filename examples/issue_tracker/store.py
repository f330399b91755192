"""The tracker's data: a workspace, its teams, projects, cycles, issues and comments.

One ``Store`` class over SQLite: in memory by default (``Store()``, gone when the
process ends), or in a file (``Store("tracker.db")``) that outlives a restart and that
other processes (a worker, a script, a second node) can write too. The directory of
people and teams is fixed: a demo signs in by name.

The store knows nothing about roomcast: ``api`` changes the data here, then publishes
through ``events``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, Literal

# ----------------------------------------------------------------------------- directory

WORKSPACE: Final = {"id": "w1", "name": "Acme"}


@dataclasses.dataclass(frozen=True)
class User:
    id: str
    name: str
    teams: tuple[str, ...]
    role: Literal["admin", "member"] = "member"

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "teams": list(self.teams), "role": self.role}


USERS: Final = {
    user.id: user
    for user in (
        User("alice", "Alice Moreau", ("t1",), role="admin"),
        User("bob", "Bob Okafor", ("t1",)),
        User("dana", "Dana Kim", ("t1", "t2")),
        User("carol", "Carol Ruiz", ("t2",)),
    )
}
TEAMS: Final = {
    "t1": {"id": "t1", "name": "Platform", "key": "PLA"},
    "t2": {"id": "t2", "name": "Design", "key": "DES"},
}
STATUSES: Final = ("backlog", "todo", "in_progress", "in_review", "done")
PRIORITIES: Final = ("none", "urgent", "high", "medium", "low")
PROJECT_STATES: Final = ("planned", "started", "paused", "completed")

# Everything has a ceiling: the demo must not grow without bound.
MAX_ISSUES: Final = 2000
MAX_COMMENTS: Final = 500
MAX_ACTIVITY: Final = 200
MAX_NOTIFICATIONS: Final = 100

MENTION: Final = re.compile(r"@([a-z][a-z0-9_]{0,31})")


def members_of(team: str) -> list[str]:
    return [user.id for user in USERS.values() if team in user.teams]


def mentions(body: str, team: str) -> list[str]:
    """The members of ``team`` that ``body`` mentions with ``@name``, each once."""
    names = dict.fromkeys(MENTION.findall(body))
    return [name for name in names if name in USERS and team in USERS[name].teams]


class Conflict(Exception):
    """A change the store refuses: a ceiling reached, or a rule of the data broken."""


def now_ms() -> int:
    return int(time.time() * 1000)


SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS projects (
    id TEXT PRIMARY KEY, team TEXT NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL,
    lead TEXT, target TEXT, version INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS cycles (
    id TEXT PRIMARY KEY, team TEXT NOT NULL, name TEXT NOT NULL, starts TEXT NOT NULL,
    ends TEXT NOT NULL, goal TEXT NOT NULL DEFAULT '', version INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS issues (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, key TEXT NOT NULL,
    team TEXT NOT NULL, title TEXT NOT NULL, description TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL, priority TEXT NOT NULL, assignee TEXT, project TEXT, cycle TEXT,
    archived INTEGER NOT NULL DEFAULT 0, creator TEXT NOT NULL,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS comments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, issue TEXT NOT NULL,
    author TEXT NOT NULL, body TEXT NOT NULL, created_at INTEGER NOT NULL,
    edited_at INTEGER, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS activity (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, entry TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS notifications (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, user TEXT NOT NULL, entry TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (team TEXT PRIMARY KEY, next INTEGER NOT NULL);
"""

ISSUE_COLUMNS: Final = (
    "id, key, team, title, description, status, priority, assignee, project, cycle, "
    "archived, creator, created_at, updated_at, version"
)


def issue_row(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "key": row["key"],
        "team": row["team"],
        "title": row["title"],
        "description": row["description"],
        "status": row["status"],
        "priority": row["priority"],
        "assignee": row["assignee"],
        "project": row["project"],
        "cycle": row["cycle"],
        "archived": bool(row["archived"]),
        "creator": row["creator"],
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
        # Two changes can publish in another order than they were made: pages keep
        # the highest version of each issue they have seen.
        "version": row["version"],
    }


def comment_row(row: sqlite3.Row, team: str) -> dict[str, Any]:
    return {
        "id": row["id"],
        "issueId": row["issue"],
        "team": team,
        "author": row["author"],
        "body": row["body"],
        "createdAt": row["created_at"],
        "editedAt": row["edited_at"],
        "version": row["version"],
    }


class Store:
    """The tracker's tables, in memory (``path=":memory:"``) or in an SQLite file.

    Calls are short and synchronous: one process's event loop owns the connection.
    Several processes may share one file (SQLite locks it for each write).
    """

    def __init__(self, path: str = ":memory:", *, seed: bool = True) -> None:
        self.path = path
        # Ids in a file are never reused. A store in memory starts again from 1 at each
        # start, while pages still hold the ids of the one before: each start tags its
        # ids (``i8-3fa9c1``), so that an old id never names a new issue, comment,
        # feed entry or notification.
        self._tag = "" if path != ":memory:" else f"-{secrets.token_hex(3)}"
        self._db = sqlite3.connect(path, isolation_level=None, timeout=10)
        self._db.row_factory = sqlite3.Row
        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        if seed and not self._db.execute("SELECT 1 FROM projects LIMIT 1").fetchone():
            self._seed()

    def close(self) -> None:
        self._db.close()

    def _id(self, kind: str, seq: int | None) -> str:
        return f"{kind}{seq}{self._tag}"

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ------------------------------------------------------------------------- projects

    def projects(self, teams: Sequence[str]) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(teams))
        rows = self._db.execute(
            f"SELECT * FROM projects WHERE team IN ({marks}) ORDER BY id", tuple(teams)
        )
        return [dict(row) for row in rows]

    def project(self, project_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM projects WHERE id = ?", (project_id,)).fetchone()
        return None if row is None else dict(row)

    def update_project(self, project_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        with self._transaction() as db:
            for column, value in changes.items():
                if column not in ("name", "state", "lead", "target"):
                    raise ValueError(f"not a project field: {column}")
                db.execute(f"UPDATE projects SET {column} = ? WHERE id = ?", (value, project_id))
            db.execute("UPDATE projects SET version = version + 1 WHERE id = ?", (project_id,))
        project = self.project(project_id)
        assert project is not None
        return project

    # ------------------------------------------------------------------------- cycles

    def cycles(self, teams: Sequence[str]) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(teams))
        rows = self._db.execute(
            f"SELECT * FROM cycles WHERE team IN ({marks}) ORDER BY id", tuple(teams)
        )
        return [dict(row) for row in rows]

    def cycle(self, cycle_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM cycles WHERE id = ?", (cycle_id,)).fetchone()
        return None if row is None else dict(row)

    def update_cycle(self, cycle_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        with self._transaction() as db:
            for column, value in changes.items():
                if column not in ("name", "goal", "starts", "ends"):
                    raise ValueError(f"not a cycle field: {column}")
                db.execute(f"UPDATE cycles SET {column} = ? WHERE id = ?", (value, cycle_id))
            db.execute("UPDATE cycles SET version = version + 1 WHERE id = ?", (cycle_id,))
        cycle = self.cycle(cycle_id)
        assert cycle is not None
        return cycle

    # ------------------------------------------------------------------------- issues

    def issues(self, team: str, *, archived: bool = False) -> list[dict[str, Any]]:
        rows = self._db.execute(
            f"SELECT {ISSUE_COLUMNS} FROM issues WHERE team = ? AND archived = ? ORDER BY seq",
            (team, int(archived)),
        )
        return [issue_row(row) for row in rows]

    def issue(self, issue_id: str) -> dict[str, Any] | None:
        row = self._db.execute(
            f"SELECT {ISSUE_COLUMNS} FROM issues WHERE id = ?", (issue_id,)
        ).fetchone()
        return None if row is None else issue_row(row)

    def issue_team(self, issue_id: str) -> str | None:
        row = self._db.execute("SELECT team FROM issues WHERE id = ?", (issue_id,)).fetchone()
        return None if row is None else str(row["team"])

    def create_issue(
        self,
        team: str,
        title: str,
        creator: str,
        *,
        description: str = "",
        status: str = "todo",
        priority: str = "none",
        assignee: str | None = None,
        project: str | None = None,
        cycle: str | None = None,
    ) -> dict[str, Any]:
        at = now_ms()
        with self._transaction() as db:
            (count,) = db.execute("SELECT COUNT(*) FROM issues").fetchone()
            if count >= MAX_ISSUES:
                raise Conflict(f"this demo keeps at most {MAX_ISSUES} issues")
            db.execute("INSERT OR IGNORE INTO counters VALUES (?, 1)", (team,))
            (number,) = db.execute("SELECT next FROM counters WHERE team = ?", (team,)).fetchone()
            db.execute("UPDATE counters SET next = next + 1 WHERE team = ?", (team,))
            cursor = db.execute(
                "INSERT INTO issues (key, team, title, description, status, priority, assignee,"
                " project, cycle, creator, created_at, updated_at, version)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                (
                    f"{TEAMS[team]['key']}-{number}",
                    team,
                    title,
                    description,
                    status,
                    priority,
                    assignee,
                    project,
                    cycle,
                    creator,
                    at,
                    at,
                ),
            )
            issue_id = self._id("i", cursor.lastrowid)
            db.execute("UPDATE issues SET id = ? WHERE seq = ?", (issue_id, cursor.lastrowid))
        issue = self.issue(issue_id)
        assert issue is not None
        return issue

    def update_issue(self, issue_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply ``changes`` (field name → new value) and bump the issue's version."""
        columns = {
            "title",
            "description",
            "status",
            "priority",
            "assignee",
            "project",
            "cycle",
            "archived",
        }
        with self._transaction() as db:
            for field, value in changes.items():
                if field not in columns:
                    raise ValueError(f"not an issue field: {field}")
                db.execute(f"UPDATE issues SET {field} = ? WHERE id = ?", (value, issue_id))
            db.execute(
                "UPDATE issues SET version = version + 1, updated_at = ? WHERE id = ?",
                (now_ms(), issue_id),
            )
        issue = self.issue(issue_id)
        assert issue is not None
        return issue

    def delete_issue(self, issue_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM comments WHERE issue = ?", (issue_id,))
            db.execute("DELETE FROM issues WHERE id = ?", (issue_id,))

    # ------------------------------------------------------------------------- comments

    def comments(self, issue_id: str) -> list[dict[str, Any]]:
        team = self.issue_team(issue_id) or ""
        rows = self._db.execute("SELECT * FROM comments WHERE issue = ? ORDER BY seq", (issue_id,))
        return [comment_row(row, team) for row in rows]

    def comment_counts(self, team: str) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT c.issue, COUNT(*) FROM comments c JOIN issues i ON i.id = c.issue"
            " WHERE i.team = ? GROUP BY c.issue",
            (team,),
        )
        return {issue: count for issue, count in rows}

    def comment(self, comment_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM comments WHERE id = ?", (comment_id,)).fetchone()
        if row is None:
            return None
        return comment_row(row, self.issue_team(row["issue"]) or "")

    def add_comment(self, issue_id: str, author: str, body: str) -> dict[str, Any]:
        with self._transaction() as db:
            (count,) = db.execute(
                "SELECT COUNT(*) FROM comments WHERE issue = ?", (issue_id,)
            ).fetchone()
            if count >= MAX_COMMENTS:
                raise Conflict(f"this demo keeps at most {MAX_COMMENTS} comments per issue")
            cursor = db.execute(
                "INSERT INTO comments (issue, author, body, created_at, version)"
                " VALUES (?, ?, ?, ?, 1)",
                (issue_id, author, body, now_ms()),
            )
            comment_id = self._id("c", cursor.lastrowid)
            db.execute("UPDATE comments SET id = ? WHERE seq = ?", (comment_id, cursor.lastrowid))
        comment = self.comment(comment_id)
        assert comment is not None
        return comment

    def edit_comment(self, comment_id: str, body: str) -> dict[str, Any]:
        self._db.execute(
            "UPDATE comments SET body = ?, edited_at = ?, version = version + 1 WHERE id = ?",
            (body, now_ms(), comment_id),
        )
        comment = self.comment(comment_id)
        assert comment is not None
        return comment

    def delete_comment(self, comment_id: str) -> None:
        self._db.execute("DELETE FROM comments WHERE id = ?", (comment_id,))

    # ------------------------------------------------------------------------- feeds

    def add_activity(self, entry: dict[str, Any]) -> dict[str, Any]:
        with self._transaction() as db:
            cursor = db.execute("INSERT INTO activity (entry) VALUES ('')")
            entry = {**entry, "id": self._id("a", cursor.lastrowid)}
            db.execute(
                "UPDATE activity SET entry = ? WHERE seq = ?", (json.dumps(entry), cursor.lastrowid)
            )
            db.execute(
                "DELETE FROM activity WHERE seq <= ?", ((cursor.lastrowid or 0) - MAX_ACTIVITY,)
            )
        return entry

    def activity(self, limit: int = 50) -> list[dict[str, Any]]:
        """The newest ``limit`` entries of the workspace feed, oldest first."""
        rows = self._db.execute("SELECT entry FROM activity ORDER BY seq DESC LIMIT ?", (limit,))
        return [json.loads(entry) for (entry,) in rows][::-1]

    def add_notification(self, user: str, entry: dict[str, Any]) -> dict[str, Any]:
        with self._transaction() as db:
            cursor = db.execute("INSERT INTO notifications (user, entry) VALUES (?, '')", (user,))
            entry = {**entry, "id": self._id("n", cursor.lastrowid)}
            db.execute(
                "UPDATE notifications SET entry = ? WHERE seq = ?",
                (json.dumps(entry), cursor.lastrowid),
            )
            db.execute(
                "DELETE FROM notifications WHERE user = ? AND seq NOT IN"
                " (SELECT seq FROM notifications WHERE user = ? ORDER BY seq DESC LIMIT ?)",
                (user, user, MAX_NOTIFICATIONS),
            )
        return entry

    def notifications(self, user: str, limit: int = 30) -> list[dict[str, Any]]:
        """The newest ``limit`` notifications of ``user``, oldest first."""
        rows = self._db.execute(
            "SELECT entry FROM notifications WHERE user = ? ORDER BY seq DESC LIMIT ?",
            (user, limit),
        )
        return [json.loads(entry) for (entry,) in rows][::-1]

    # ------------------------------------------------------------------------- seed

    def _seed(self) -> None:
        """A workspace with some history, so that the board looks like one in use."""
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO projects (id, team, name, state, lead, target) VALUES (?,?,?,?,?,?)",
                [
                    ("p1", "t1", "Realtime sync", "started", "alice", "2026-12-18"),
                    ("p2", "t1", "Billing v2", "planned", "bob", "2027-02-26"),
                    ("p3", "t2", "Brand refresh", "started", "carol", "2027-01-15"),
                ],
            )
            db.executemany(
                "INSERT INTO cycles (id, team, name, starts, ends, goal) VALUES (?,?,?,?,?,?)",
                [
                    ("c1", "t1", "Cycle 24", "2026-11-23", "2026-12-06", "Ship live board updates"),
                    ("c2", "t2", "Cycle 9", "2026-11-23", "2026-12-06", "New marketing site"),
                ],
            )
        for team, title, status, priority, assignee, project, cycle in [
            ("t1", "Board misses updates after laptop sleep", "in_progress", "urgent",
             "alice", "p1", "c1"),
            ("t1", "Show who else is viewing an issue", "in_review", "medium", "bob", "p1", "c1"),
            ("t1", "Rate-limit comment notifications", "todo", "high", "dana", "p1", "c1"),
            ("t1", "Invoice PDF shows the wrong VAT rate", "todo", "high", None, "p2", None),
            ("t1", "Migrate webhooks to the new queue", "backlog", "low", None, "p2", None),
            ("t1", "Keyboard shortcut to assign to me", "backlog", "none", None, None, None),
            ("t1", "Typing indicator for comments", "done", "medium", "bob", "p1", "c1"),
            ("t2", "New logo on the sign-in page", "in_progress", "high", "carol", "p3", "c2"),
            ("t2", "Icon set for issue priorities", "todo", "medium", "dana", "p3", "c2"),
        ]:  # fmt: skip
            creator = "alice" if team == "t1" else "carol"
            issue = self.create_issue(
                team,
                title,
                creator,
                status=status,
                priority=priority,
                assignee=assignee,
                project=project,
                cycle=cycle,
            )
            entry = {"actor": creator, "issueId": issue["id"], "key": issue["key"], "team": team}
            entry.update(teamName=TEAMS[team]["name"], changes=[], status=status)
            self.add_activity({**entry, "verb": "created", "at": issue["createdAt"]})
