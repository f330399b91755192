"""The issue tracker in headless Chromium: two pages as two users, over real sockets.

The example runs as its own process, as its docstring says to run it; each page signs
in as a demo user. Screenshots of the board go to the artifacts directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from .conftest import PAGE_TIMEOUT, Watched
from .tracker import REDIS_URL, Server, publish_elsewhere, redis_prefix, serving

#: Milliseconds a page may take to show a change made on another page.
LIVE_MS = 1_000
#: Milliseconds a page may take to reconnect after the server is back (its backoff
#: delay grows while the server is away: at most 0.5 s x 2^attempt, with jitter).
RECONNECT_MS = 25_000


def sign_in(watched: Watched, url: str, user: str) -> None:
    watched.page.goto(url)
    watched.page.click(f"[data-user={user}]")
    expect(watched.page.locator("#connection")).to_have_attribute("data-state", "connected")
    # The board is loaded: its columns hold the seeded issues.
    expect(watched.page.locator(".card").first).to_be_visible()


def open_issue(watched: Watched, title: str) -> None:
    watched.page.locator(".card", has_text=title).click()
    expect(watched.page.locator("#issue-title")).to_have_text(title)
    # Subscribed to the issue's room, then loaded its comments and viewers.
    expect(watched.page.locator("#issue-panel")).to_have_attribute("data-loaded", "true")


@pytest.fixture
def tracker() -> Iterator[Server]:
    with serving() as server:
        yield server


def test_the_signed_out_tracker_shows_only_the_sign_in(
    tracker: Server, pages: list[Watched]
) -> None:
    page = pages[0].page
    page.goto(tracker.url)
    expect(page.locator("#login")).to_be_visible()
    for hidden in ("#app", "#new-issue", "#board", "#logout", "#connection"):
        expect(page.locator(hidden)).to_be_hidden()
    assert pages[0].sockets == []
    assert pages[0].failed == []


def test_an_issue_created_on_one_page_appears_on_the_other_within_a_second(
    tracker: Server, pages: list[Watched], artifacts: Path
) -> None:
    alice, bob = pages
    sign_in(alice, tracker.url, "alice")
    sign_in(bob, tracker.url, "bob")
    for watched in pages:
        assert watched.open_sockets() == [tracker.url.replace("http", "ws", 1) + "ws"]
    title = "Search results flicker on slow networks"
    # Both pages read the same clock: A notes when it submits, B when the card appears.
    bob.page.evaluate(
        """(title) => { window.seen = new Promise((resolve) => {
             const observer = new MutationObserver(() => {
               const board = document.querySelector("#board");
               if (board && board.textContent.includes(title)) {
                 observer.disconnect();
                 resolve(Date.now());
               }
             });
             observer.observe(document.body, {childList: true, subtree: true});
           }); }""",
        title,
    )
    alice.page.fill("#title", title)
    sent: int = alice.page.evaluate(
        "() => { const t = Date.now(); document.querySelector('#new-issue button').click(); "
        "return t; }"
    )
    seen: int = bob.page.evaluate("() => window.seen")
    latency = seen - sent
    print(f"issue created on page A shown on page B after {latency} ms")
    assert 0 <= latency < LIVE_MS
    todo = bob.page.locator(".column[data-status=todo]")
    expect(todo.locator(".card", has_text=title)).to_be_visible()
    expect(bob.page.locator("#activity li").first).to_contain_text("Alice created PLA-")
    bob.page.screenshot(path=str(artifacts / "board.png"))
    for watched in pages:
        assert watched.failed == []
        assert watched.errors == []


def test_a_comment_edit_and_an_archive_show_on_the_other_page(
    tracker: Server, pages: list[Watched]
) -> None:
    alice, bob = pages
    sign_in(alice, tracker.url, "alice")
    sign_in(bob, tracker.url, "bob")
    title = "Keyboard shortcut to assign to me"
    open_issue(alice, title)
    open_issue(bob, title)
    # Each sees the other in the issue.
    expect(alice.page.locator("#viewers [data-avatar=bob]")).to_be_visible()
    expect(bob.page.locator("#viewers [data-avatar=alice]")).to_be_visible()
    alice.page.fill("#comment-body", "Ctrl+I would clash with italics")
    alice.page.click("#new-comment button")
    comments = bob.page.locator("#comments")
    expect(comments).to_contain_text("Ctrl+I would clash with italics")
    expect(bob.page.locator(".card", has_text=title)).to_contain_text("1")

    mine = alice.page.locator(".comment", has_text="Ctrl+I")
    mine.locator("[data-action=edit]").click()
    editor = alice.page.locator("form.edit-comment")
    editor.locator("textarea").fill("Ctrl+Shift+I then")
    editor.locator("button[type=submit]").click()
    expect(comments).to_contain_text("Ctrl+Shift+I then")
    expect(comments).to_contain_text("edited")
    expect(comments).not_to_contain_text("would clash")

    alice.page.click("#archive-issue")
    expect(bob.page.locator("#issue-archived")).to_be_visible()
    expect(bob.page.locator("#board")).not_to_contain_text(title)
    expect(alice.page.locator("#board")).not_to_contain_text(title)
    for watched in pages:
        assert watched.failed == []
        assert watched.errors == []


def test_typing_on_one_page_shows_on_the_other(
    tracker: Server, pages: list[Watched], artifacts: Path
) -> None:
    alice, bob = pages
    sign_in(alice, tracker.url, "alice")
    sign_in(bob, tracker.url, "bob")
    title = "Rate-limit comment notifications"
    open_issue(alice, title)
    open_issue(bob, title)
    typing = bob.page.locator("#typing")
    expect(typing).to_have_text("")
    alice.page.locator("#comment-body").press_sequentially("I think we shou", delay=20)
    expect(typing).to_have_text("Alice is typing…", timeout=LIVE_MS * 2)
    bob.page.screenshot(path=str(artifacts / "issue-typing.png"))
    # The typist is not told about herself.
    expect(alice.page.locator("#typing")).to_have_text("")
    # Leaving the box says so at once.
    alice.page.locator("#title").focus()
    expect(typing).to_have_text("")


def test_assigning_an_issue_notifies_the_assignee(
    tracker: Server, pages: list[Watched], artifacts: Path
) -> None:
    alice, bob = pages
    sign_in(alice, tracker.url, "alice")
    sign_in(bob, tracker.url, "bob")
    title = "Invoice PDF shows the wrong VAT rate"
    open_issue(alice, title)
    expect(bob.page.locator("#bell-count")).to_be_hidden()
    alice.page.select_option("#issue-assignee", "bob")
    expect(bob.page.locator("#bell-count")).to_have_text("1")
    expect(bob.page.locator("#toasts")).to_contain_text(f"Alice Moreau assigned you PLA-4: {title}")
    expect(bob.page.locator(".card", has_text=title).locator("[data-avatar=bob]")).to_be_visible()
    bob.page.click("#bell")
    expect(bob.page.locator("#notification-list")).to_contain_text(title)
    expect(bob.page.locator("#bell-count")).to_be_hidden()
    bob.page.screenshot(path=str(artifacts / "notification.png"))
    # Assigning to yourself notifies nobody.
    expect(alice.page.locator("#bell-count")).to_be_hidden()


def test_a_short_lived_token_is_refreshed_on_the_live_connection(pages: list[Watched]) -> None:
    # A 10-second token is refreshed 8 seconds in, over the open socket.
    watched = pages[0]
    with serving("--token-ttl", "10") as server:
        sign_in(watched, server.url, "alice")
        assert watched.requested("POST", "/api/v1/login") == 1
        watched.page.wait_for_timeout(9_000)
        assert watched.requested("POST", "/api/v1/login") == 2
        expect(watched.page.locator("#connection")).to_have_attribute("data-state", "connected")
        assert len(watched.sockets) == 1
        assert watched.failed == []


def test_the_page_shows_why_the_server_went_away_while_it_retries(pages: list[Watched]) -> None:
    watched = pages[0]
    with serving() as server:
        sign_in(watched, server.url, "alice")
    # The server has exited with status 0 after closing the page with 1001; each retry
    # since fails (the token provider cannot reach the server, or the socket cannot),
    # which must not replace why the connection ended.
    status = watched.page.locator("#connection")
    expect(status).to_have_attribute("data-state", "reconnecting")
    expect(status).to_contain_text("Reconnecting… (1001 server shutting down)")

    def attempts() -> int:
        return len(watched.sockets) + watched.requested("POST", "/api/v1/login")

    # The sign-in and the first socket, then two retries.
    for _ in range(PAGE_TIMEOUT // 100):
        if attempts() >= 4:
            break
        watched.page.wait_for_timeout(100)
    assert attempts() >= 4, "the page did not retry"
    expect(status).to_contain_text("Reconnecting… (1001 server shutting down)")


def restart_with_changes_meanwhile(server: Server, bob: Watched, change: object) -> None:
    """Stop the server, check that B says it reconnects, run ``change``, start it again."""
    assert callable(change)
    server.stop()
    expect(bob.page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
    expect(bob.page.locator("#status")).to_contain_text("Reconnecting")
    change()
    server.start()
    expect(bob.page.locator("#connection")).to_have_attribute(
        "data-state", "connected", timeout=RECONNECT_MS
    )


def test_after_a_restart_on_redis_a_page_shows_what_was_published_meanwhile_without_reload(
    pages: list[Watched], tmp_path: Path, artifacts: Path
) -> None:
    alice, bob = pages
    db = tmp_path / "tracker.db"
    with redis_prefix() as prefix:
        with serving("--db", str(db), "--redis", REDIS_URL, "--redis-prefix", prefix) as server:
            sign_in(alice, server.url, "alice")
            sign_in(bob, server.url, "bob")
            title = "Board misses updates after laptop sleep"
            open_issue(bob, title)
            bob.page.evaluate("() => { window.marker = 'no reload'; }")
            navigations = bob.navigations
            board_loads = bob.requested("GET", "/api/v1/teams/t1/issues")

            def meanwhile() -> None:
                publish_elsewhere(
                    db,
                    prefix,
                    "dana",
                    [
                        {"do": "create", "team": "t1", "title": "Filed while the server was down"},
                        {"do": "comment", "issue": "i1", "body": "Reproduced on a second laptop"},
                        {"do": "update", "issue": "i1", "changes": {"status": "in_review"}},
                    ],
                )

            restart_with_changes_meanwhile(server, bob, meanwhile)
            expect(bob.page.locator(".column[data-status=todo]")).to_contain_text(
                "Filed while the server was down"
            )
            expect(bob.page.locator("#comments")).to_contain_text("Reproduced on a second laptop")
            expect(bob.page.locator(".column[data-status=in_review]")).to_contain_text(title)
            expect(bob.page.locator("#issue-status")).to_have_value("in_review")
            # Caught up from history: no reload, and no refetch of the board either.
            assert bob.page.evaluate("() => window.marker") == "no reload"
            assert bob.navigations == navigations
            assert bob.requested("GET", "/api/v1/teams/t1/issues") == board_loads
            expect(bob.page.locator("#banner")).to_be_hidden()
            bob.page.screenshot(path=str(artifacts / "after-restart-redis.png"))
            # And the pages are live again, both ways.
            alice.page.fill("#title", "After the restart")
            alice.page.click("#new-issue button")
            expect(bob.page.locator("#board")).to_contain_text("After the restart")
    assert bob.errors == []


def test_after_a_restart_in_memory_a_page_reloads_the_board_and_says_so(
    pages: list[Watched], artifacts: Path
) -> None:
    alice, bob = pages
    with serving() as server:
        sign_in(alice, server.url, "alice")
        sign_in(bob, server.url, "bob")
        alice.page.fill("#title", "Kept in memory only")
        alice.page.click("#new-issue button")
        expect(bob.page.locator("#board")).to_contain_text("Kept in memory only")
        bob.page.evaluate("() => { window.marker = 'no reload'; }")
        board_loads = bob.requested("GET", "/api/v1/teams/t1/issues")

        def meanwhile() -> None:
            pass  # nothing survives the restart: the store and the hub are in memory

        restart_with_changes_meanwhile(server, bob, meanwhile)
        # History is gone with the process: the page is told, refetches, and says so.
        expect(bob.page.locator("#banner")).to_contain_text("the board was reloaded")
        expect(bob.page.locator("#board")).not_to_contain_text("Kept in memory only")
        assert bob.requested("GET", "/api/v1/teams/t1/issues") == board_loads + 1
        assert bob.page.evaluate("() => window.marker") == "no reload"
        bob.page.screenshot(path=str(artifacts / "after-restart-memory.png"))
        # Live again.
        alice.page.fill("#title", "After the restart")
        alice.page.click("#new-issue button")
        expect(bob.page.locator("#board")).to_contain_text("After the restart")
    assert bob.errors == []


def test_going_offline_for_ten_seconds_catches_up_on_what_happened_meanwhile(
    tracker: Server, pages: list[Watched]
) -> None:
    alice, bob = pages
    sign_in(alice, tracker.url, "alice")
    sign_in(bob, tracker.url, "bob")
    board_loads = bob.requested("GET", "/api/v1/teams/t1/issues")
    bob.page.click("#go-offline")
    expect(bob.page.locator("#connection")).to_have_attribute("data-state", "closed")
    alice.page.fill("#title", "Made while Bob was offline")
    alice.page.click("#new-issue button")
    expect(alice.page.locator("#board")).to_contain_text("Made while Bob was offline")
    expect(bob.page.locator("#board")).not_to_contain_text("Made while Bob was offline")
    expect(bob.page.locator("#board")).to_contain_text(
        "Made while Bob was offline", timeout=PAGE_TIMEOUT + 5_000
    )
    expect(bob.page.locator("#connection")).to_have_attribute("data-state", "connected")
    # From the room's history, not by reloading the board.
    assert bob.requested("GET", "/api/v1/teams/t1/issues") == board_loads


def test_a_card_dragged_to_another_column_moves_on_the_other_page(
    tracker: Server, pages: list[Watched]
) -> None:
    alice, dana = pages
    sign_in(alice, tracker.url, "alice")
    sign_in(dana, tracker.url, "dana")
    title = "Migrate webhooks to the new queue"
    expect(dana.page.locator(".column[data-status=backlog]")).to_contain_text(title)
    alice.page.locator(".card", has_text=title).drag_to(
        alice.page.locator(".column[data-status=in_progress]")
    )
    expect(dana.page.locator(".column[data-status=in_progress]")).to_contain_text(title)
    expect(dana.page.locator(".column[data-status=backlog]")).not_to_contain_text(title)
    expect(dana.page.locator("#activity li").first).to_contain_text("moved PLA-5 to In progress")
    # Dana is in two teams: the other board is one click away, and follows its own room.
    dana.page.click("[data-team=t2]")
    expect(dana.page.locator("#board-title")).to_have_text("Design")
    expect(dana.page.locator("#board")).to_contain_text("New logo on the sign-in page")
    expect(dana.page.locator("#board")).not_to_contain_text(title)
    for watched in pages:
        assert watched.failed == []
        assert watched.errors == []
