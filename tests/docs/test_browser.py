"""The example pages in a real browser: headless Chromium, driven by Playwright.

Each example runs as its own process on a free port of 127.0.0.1, as its docstring
says to run it, and the pages talk to it over real HTTP and WebSocket connections.
The browser is the system's Chromium (Debian's ``chromium`` package), never one that
Playwright downloads. Without it the tests skip with the reason, except in CI (the
``CI`` environment variable is set), where they fail: CI installs it.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from playwright.sync_api import Browser, Page, Request, Response, WebSocket, expect

from browser.chromium import launch_chromium

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: Seconds for a server to start or stop.
SERVER_TIMEOUT = 15
#: Milliseconds any one expectation on a page may wait.
PAGE_TIMEOUT = 10_000
#: The Redis the cluster example uses here, as in tests/backends.
REDIS_URL = os.environ.get("ROOMCAST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launch_chromium()


@contextmanager
def started(example: str, *args: str, lines: int = 1) -> Iterator[list[str]]:
    """Run ``example``; yield the URLs its first ``lines`` lines end with; stop it, check it."""
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / example), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        # Read the raw pipe: a buffered readline could take several lines at once.
        fd = process.stdout.fileno()
        text = b""
        while text.count(b"\n") < lines:
            ready, _, _ = select.select([fd], [], [], SERVER_TIMEOUT)
            assert ready, f"{example} did not start within {SERVER_TIMEOUT} s"
            chunk = os.read(fd, 4096)
            assert chunk, f"{example} exited before it listened"
            text += chunk
        urls = [line.split()[-1] for line in text.decode().splitlines()[:lines]]
        assert all(url.startswith("http://127.0.0.1:") for url in urls), urls
        yield urls
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=SERVER_TIMEOUT)
        assert process.returncode == 0, errors.decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@contextmanager
def serving(example: str, *args: str) -> Iterator[str]:
    """Run ``example`` on a free port; yield its URL; stop it with SIGTERM and check it."""
    with started(example, "--port", "0", *args) as urls:
        yield urls[0]


class Watched:
    """A page, with what it asked of the network and how its WebSockets went."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.failed: list[str] = []  # responses with a 4xx or 5xx status
        self.requests: list[str] = []
        self.sockets: list[WebSocket] = []
        page.set_default_timeout(PAGE_TIMEOUT)
        page.on("response", self._on_response)
        page.on("request", self._on_request)
        page.on("websocket", self._on_websocket)

    def _on_response(self, response: Response) -> None:
        if response.status >= 400:
            self.failed.append(f"{response.status} {response.request.method} {response.url}")

    def _on_request(self, request: Request) -> None:
        self.requests.append(f"{request.method} {request.url}")

    def _on_websocket(self, socket: WebSocket) -> None:
        self.sockets.append(socket)

    def requested(self, method: str, path: str) -> int:
        pattern = re.compile(rf"{method} http://[^/]+{re.escape(path)}")
        return sum(1 for line in self.requests if pattern.fullmatch(line))


@pytest.fixture
def pages(browser: Browser) -> Iterator[list[Watched]]:
    """Two pages that share nothing, like two browsers: one context each."""
    contexts = [browser.new_context(), browser.new_context()]
    try:
        yield [Watched(context.new_page()) for context in contexts]
    finally:
        for context in contexts:
            context.close()


#: The status of the icon a browser loads for the page: the one its ``<link rel=icon>``
#: names, or else ``/favicon.ico``. (Headless Chromium loads no icon by itself.)
ICON_STATUS = """async () => {
  const link = document.querySelector("link[rel~=icon]");
  const response = await fetch(link ? link.href : "/favicon.ico");
  return response.status;
}"""


def icon_status(page: Page) -> int:
    status: int = page.evaluate(ICON_STATUS)
    return status


def open_sockets(watched: Watched) -> list[str]:
    return [socket.url for socket in watched.sockets if not socket.is_closed()]


# ----------------------------------------------------------------------------- chat


@pytest.mark.parametrize(
    "example", ["chat_starlette.py", "chat_fastapi.py", "chat_websockets.py", "chat_aiohttp.py"]
)
def test_two_chat_pages_connect_and_see_each_others_messages(
    example: str, pages: list[Watched]
) -> None:
    first, second = pages
    with serving(example) as url:
        for watched in pages:
            watched.page.goto(url)
            expect(watched.page.locator("#status")).to_have_text("connected")
            assert open_sockets(watched) == [url.replace("http", "ws", 1) + "ws"]
        first.page.fill("#name", "ana")
        first.page.fill("#text", "hello from the first page")
        first.page.press("#text", "Enter")
        expect(second.page.locator("#log")).to_contain_text("hello from the first page")
        expect(second.page.locator("#log")).to_contain_text("ana")
        # Each page shows its own message too, without an echo from the server.
        expect(first.page.locator("#log")).to_contain_text("hello from the first page")
        assert icon_status(first.page) == 200
    for watched in pages:
        assert watched.failed == []


def test_a_chat_page_opened_later_shows_the_rooms_last_messages(pages: list[Watched]) -> None:
    first, second = pages
    with serving("chat_starlette.py") as url:
        first.page.goto(url)
        expect(first.page.locator("#status")).to_have_text("connected")
        first.page.fill("#name", "ana")
        for text in ("one", "two"):
            first.page.fill("#text", text)
            first.page.press("#text", "Enter")
        expect(first.page.locator("#log")).to_contain_text("two")
        # Joined after they were sent: the room's history arrives with the join.
        second.page.goto(url)
        expect(second.page.locator("#status")).to_have_text("connected")
        expect(second.page.locator("#log li")).to_have_text(
            ["joined chat:general", "anaone", "anatwo"]
        )
    for watched in pages:
        assert watched.failed == []


@contextmanager
def serving_cluster() -> Iterator[list[str]]:
    """Run the two-node chat on free ports and this machine's Redis; yield each node's URL."""
    prefix = f"test-browser-cluster-{os.getpid()}"
    options = ("--ports", "0,0", "--redis", REDIS_URL, "--prefix", prefix)
    try:
        with started("chat_cluster.py", *options, lines=2) as urls:
            yield urls
    finally:
        # What the nodes kept in Redis (positions live for a day).
        with redis.Redis.from_url(REDIS_URL) as client:
            for key in client.scan_iter(match=f"{prefix}:*"):
                client.delete(key)


def test_a_chat_page_on_each_node_of_the_cluster_sees_the_others_messages(
    pages: list[Watched],
) -> None:
    first, second = pages
    with serving_cluster() as urls:
        for watched, url in zip(pages, urls, strict=True):
            watched.page.goto(url)
            expect(watched.page.locator("#status")).to_have_text("connected")
            assert open_sockets(watched) == [url.replace("http", "ws", 1) + "ws"]
        first.page.fill("#name", "ana")
        first.page.fill("#text", "hello from node 1")
        first.page.press("#text", "Enter")
        expect(second.page.locator("#log")).to_contain_text("hello from node 1")
        expect(second.page.locator("#log")).to_contain_text("ana")
        second.page.fill("#name", "bo")
        second.page.fill("#text", "hello back from node 2")
        second.page.press("#text", "Enter")
        expect(first.page.locator("#log")).to_contain_text("hello back from node 2")
        expect(first.page.locator("#log")).to_contain_text("bo")
    for watched in pages:
        assert watched.failed == []
