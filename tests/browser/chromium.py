"""Debian's Chromium under Playwright, for every browser test of the suite.

The browser is the system's Chromium (Debian's ``chromium`` package), never one that
Playwright downloads. Without it the browser tests skip with the reason, except in CI
(the ``CI`` environment variable is set), where they fail: CI installs it in .ci/run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def launch_chromium() -> Iterator[Browser]:
    """Headless Chromium, closed on the way out; the body of each folder's ``browser`` fixture.

    Use it from a fixture of module scope, not session scope: Playwright's sync API
    runs an event loop on the main thread while it is open, and the async tests of
    other modules start their own there.
    """
    if not CHROMIUM.exists():
        reason = f"no Chromium at {CHROMIUM}: install Debian's chromium package"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI installs it in .ci/run)")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()
