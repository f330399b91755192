"""Chromium for the showcase's browser tests, and where their screenshots go.

The browser is the system's Chromium (Debian's ``chromium`` package), never one that
Playwright downloads. Without it the browser tests skip with the reason, except in CI
(the ``CI`` environment variable is set), where they fail: CI installs it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    Page,
    Request,
    Response,
    ViewportSize,
    WebSocket,
)

from browser.chromium import launch_chromium

#: Milliseconds any one expectation on a page may wait.
PAGE_TIMEOUT = 10_000
#: Where the screenshots go: ``ROOMCAST_ARTIFACTS`` or ``artifacts/`` (ignored by git).
ARTIFACTS = (
    Path(os.environ.get("ROOMCAST_ARTIFACTS") or Path(__file__).resolve().parents[2] / "artifacts")
    / "showcase"
)
VIEWPORT: ViewportSize = {"width": 1440, "height": 860}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launch_chromium()


class Watched:
    """A page, with what it asked of the network, its sockets and its navigations."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.failed: list[str] = []  # responses with a 4xx or 5xx status
        self.requests: list[str] = []
        self.sockets: list[WebSocket] = []
        self.errors: list[str] = []  # uncaught exceptions in the page
        self.navigations = 0
        page.set_default_timeout(PAGE_TIMEOUT)
        page.on("response", self._on_response)
        page.on("request", self._on_request)
        page.on("websocket", self._on_websocket)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("framenavigated", self._on_navigated)

    def _on_response(self, response: Response) -> None:
        if response.status >= 400:
            self.failed.append(f"{response.status} {response.request.method} {response.url}")

    def _on_request(self, request: Request) -> None:
        self.requests.append(f"{request.method} {request.url}")

    def _on_websocket(self, socket: WebSocket) -> None:
        self.sockets.append(socket)

    def _on_navigated(self, frame: object) -> None:
        if frame is self.page.main_frame:
            self.navigations += 1

    def requested(self, method: str, path: str) -> int:
        pattern = re.compile(rf"{method} http://[^/]+{re.escape(path)}")
        return sum(1 for line in self.requests if pattern.fullmatch(line))

    def open_sockets(self) -> list[str]:
        return [socket.url for socket in self.sockets if not socket.is_closed()]


@pytest.fixture
def pages(browser: Browser) -> Iterator[list[Watched]]:
    """Two pages that share nothing, like two browsers: one context each."""
    contexts = [browser.new_context(viewport=VIEWPORT), browser.new_context(viewport=VIEWPORT)]
    try:
        yield [Watched(context.new_page()) for context in contexts]
    finally:
        for context in contexts:
            context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """The screenshot directory, made if missing (its path ends the test run's report)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    shots = sorted(ARTIFACTS.glob("*.png")) if ARTIFACTS.is_dir() else []
    if shots:
        terminalreporter.write_line(f"issue tracker screenshots ({len(shots)}): {ARTIFACTS}")
