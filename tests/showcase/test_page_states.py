"""What the tracker's page shows around the edges: a restart on the in-memory default,
presence while offline, an archived issue, the activity feed's titles.

Each test runs the example as its own process and drives it in headless Chromium.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import WebSocketRoute, expect

from .conftest import Watched
from .test_browser import RECONNECT_MS, open_issue, sign_in
from .tracker import Server, call, login, serving

#: Records every toast the page shows, even those gone by the time a test looks.
RECORD_TOASTS = """() => {
  window.toasts = [];
  new MutationObserver((changes) => {
    for (const change of changes) {
      for (const node of change.addedNodes) window.toasts.push(node.textContent);
    }
  }).observe(document.querySelector("#toasts"), { childList: true });
}"""


@pytest.fixture
def tracker() -> Iterator[Server]:
    with serving() as server:
        yield server


def create(server: Server, token: str, title: str) -> dict[str, object]:
    status, issue = call(
        server.url.rstrip("/"), "POST", "/api/v1/teams/t1/issues", {"title": title}, token
    )
    assert status == 201, issue
    assert isinstance(issue, dict)
    return issue


def test_after_a_restart_in_memory_an_issue_numbered_like_an_archived_one_shows_on_the_board(
    pages: list[Watched], artifacts: Path
) -> None:
    alice, bob = pages
    with serving() as server:
        sign_in(alice, server.url, "alice")
        sign_in(bob, server.url, "bob")
        origin = server.url.rstrip("/")
        token = login(origin, "alice")
        old = create(server, token, "Archived before the restart")
        expect(bob.page.locator("#board")).to_contain_text("Archived before the restart")
        status, _ = call(origin, "POST", f"/api/v1/issues/{old['id']}/archive", None, token)
        assert status == 200
        expect(bob.page.locator("#board")).not_to_contain_text("Archived before the restart")
        expect(bob.page.locator("#online")).to_contain_text("Alice")
        bob.page.evaluate(RECORD_TOASTS)

        server.stop()
        expect(bob.page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
        # Who is on the board is not known while offline.
        expect(bob.page.locator("#online")).to_have_attribute("data-stale", "true")
        expect(bob.page.locator("#online")).to_have_text("Not known while offline")
        bob.page.screenshot(path=str(artifacts / "offline-presence.png"))
        server.start()
        expect(bob.page.locator("#connection")).to_have_attribute(
            "data-state", "connected", timeout=RECONNECT_MS
        )
        expect(bob.page.locator("#banner")).to_contain_text("the board was reloaded")
        # Asked again once reconnected: both pages are back on the board.
        expect(bob.page.locator("#online")).not_to_have_attribute("data-stale", "true")
        expect(bob.page.locator("#online li")).to_have_count(2, timeout=RECONNECT_MS)
        expect(alice.page.locator("#connection")).to_have_attribute(
            "data-state", "connected", timeout=RECONNECT_MS
        )

        # The store started again from its seed: the next issue has the archived one's key.
        new = create(server, login(origin, "alice"), "Filed after the restart")
        assert new["key"] == old["key"]
        # Its id is not the archived one's: ids of an in-memory store differ per start.
        assert new["id"] != old["id"]
        expect(bob.page.locator("#board")).to_contain_text("Filed after the restart")
        expect(alice.page.locator("#board")).to_contain_text("Filed after the restart")
        expect(bob.page.locator("#board-count")).to_have_text("8 issues")
        # One message about the reconnect: the banner says the board was reloaded, and
        # no toast says the page is catching up.
        toasts = bob.page.evaluate("() => window.toasts")
        assert not [text for text in toasts if "Back online" in text], toasts
        bob.page.screenshot(path=str(artifacts / "after-restart-memory-new-issue.png"))
    assert bob.errors == []


def test_a_board_reload_forgets_the_ids_it_was_told_are_gone(
    tracker: Server, pages: list[Watched]
) -> None:
    # The page alone, whatever the store's ids: an id that was archived before the
    # board was reloaded (after a `recovered: false` notice) no longer hides an issue.
    bob = pages[0]
    sockets: list[WebSocketRoute] = []

    def through(socket: WebSocketRoute) -> None:
        socket.connect_to_server()  # every frame passes, both ways
        sockets.append(socket)

    bob.page.route_web_socket("**/ws", through)
    sign_in(bob, tracker.url, "bob")
    # The id the next issue gets (the seed made nine), known to the page as gone, as
    # the id of an issue archived before a restart of an in-memory store that reused
    # its ids would be.
    seeded = bob.page.locator(".card").first.get_attribute("data-issue")
    assert seeded is not None
    next_id = "i10" + (seeded[seeded.index("-") :] if "-" in seeded else "")
    bob.page.evaluate(
        """async (id) => { (await import("/static/state.js")).state.gone.add(id); }""", next_id
    )
    loads = bob.requested("GET", "/api/v1/teams/t1/issues")
    # The server says the team room's updates were lost: the page reloads the board.
    sockets[-1].send(json.dumps({"type": "gap", "payload": {"rooms": ["team:t1"]}}))
    expect(bob.page.locator("#banner")).to_contain_text("the board was reloaded")
    assert bob.requested("GET", "/api/v1/teams/t1/issues") == loads + 1

    issue = create(tracker, login(tracker.url.rstrip("/"), "alice"), "Filed after the reload")
    assert issue["id"] == next_id
    expect(bob.page.locator("#board")).to_contain_text("Filed after the reload")
    assert bob.errors == []


def test_an_archived_issue_is_read_only_on_the_page(
    tracker: Server, pages: list[Watched], artifacts: Path
) -> None:
    alice, bob = pages
    sign_in(alice, tracker.url, "alice")
    sign_in(bob, tracker.url, "bob")
    title = "Show who else is viewing an issue"
    open_issue(bob, title)
    bob.page.fill("#comment-body", "Mine, before the archive")
    bob.page.click("#new-comment button")
    mine = bob.page.locator("#comments .comment", has_text="Mine, before the archive")
    expect(mine.locator("[data-action=edit]")).to_be_visible()
    for field in ("status", "priority", "assignee", "project"):
        expect(bob.page.locator(f"#issue-{field}")).to_be_enabled()

    open_issue(alice, title)
    alice.page.click("#archive-issue")

    panel = bob.page.locator("#issue-panel")
    expect(panel).to_have_attribute("data-archived", "true")
    expect(bob.page.locator("#issue-archived")).to_be_visible()
    expect(bob.page.locator("#issue-archived")).to_contain_text("Archived")
    expect(bob.page.locator("#issue-archived")).to_contain_text("read-only")
    for field in ("status", "priority", "assignee", "project"):
        expect(bob.page.locator(f"#issue-{field}")).to_be_disabled()
    expect(bob.page.locator("#new-comment")).to_be_hidden()
    expect(bob.page.locator("#archive-issue")).to_be_hidden()
    expect(mine.locator("[data-action=edit]")).to_have_count(0)
    expect(mine.locator("[data-action=delete]")).to_have_count(0)
    # The fields are still shown.
    expect(bob.page.locator("#issue-status")).to_have_value("in_review")
    bob.page.screenshot(path=str(artifacts / "archived-issue.png"))
    assert bob.errors == []


def test_the_activity_feed_shows_the_titles_of_the_boards_issues_from_the_first_load(
    tracker: Server, pages: list[Watched]
) -> None:
    alice = pages[0]
    sign_in(alice, tracker.url, "alice")
    entry = alice.page.locator("#activity li", has_text="created PLA-1")
    expect(entry.locator(".feed-title")).to_have_text("Board misses updates after laptop sleep")
    # Every entry of the seed about the board's team (PLA-1 to PLA-7) has its title.
    platform = alice.page.locator("#activity li", has_text="Platform")
    expect(platform).to_have_count(7)
    expect(platform.locator(".feed-title")).to_have_count(7)


def test_an_issue_open_across_a_restart_in_memory_closes_with_a_word(
    pages: list[Watched], artifacts: Path
) -> None:
    _, bob = pages
    with serving() as server:
        sign_in(bob, server.url, "bob")
        open_issue(bob, "Show who else is viewing an issue")
        expect(bob.page.locator("#issue-panel")).to_be_visible()
        bob.page.evaluate(RECORD_TOASTS)

        server.stop()
        expect(bob.page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
        server.start()
        expect(bob.page.locator("#connection")).to_have_attribute(
            "data-state", "connected", timeout=RECONNECT_MS
        )
        # The store started again without that issue: its room is refused on the
        # resubscribe, and the panel closes instead of offering edits that would fail.
        expect(bob.page.locator("#issue-panel")).to_be_hidden(timeout=RECONNECT_MS)
        toasts = bob.page.evaluate("() => window.toasts")
        assert [text for text in toasts if "no longer available" in text], toasts
        bob.page.screenshot(path=str(artifacts / "after-restart-memory-issue-closed.png"))
    assert bob.errors == []
