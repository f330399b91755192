"""What the tests run in the blank page: roomcast.js imported, and everything it reports kept.

``open_client(page, server, ...)`` loads the blank page, imports ``/roomcast.js``,
builds ``window.rc`` and records in ``window.seen``: each state change, event,
recovery notice and error, and every subscription's events by room. Tests then
drive ``rc`` with ``page.evaluate`` and wait with ``page.wait_for_function``.
"""

from __future__ import annotations

from typing import Any

from playwright.sync_api import Page

#: Builds the client in the page. ``tokens`` chooses the token: "fetch" (a provider
#: asking the server's /token for ``user``), "none" (anonymous), "static-bad" (a string
#: the server refuses), "bad-then-fetch" (the provider refuses once, then fetches),
#: "always-bad" (the provider always gives the same refused token).
SETUP = """async ({ user, tokens, options }) => {
  const module = await import("/roomcast.js");
  window.roomcast = module;
  const seen = window.seen = {
    states: [], changes: [], events: [], recovered: [], errors: [], rooms: {}, tokenCalls: 0,
  };
  const fetchToken = async () => (await fetch("/token?user=" + user)).text();
  let token;
  if (tokens === "fetch") token = async () => { seen.tokenCalls++; return fetchToken(); };
  else if (tokens === "static-bad") token = "not-a-token";
  else if (tokens === "bad-then-fetch") token = async () => {
    seen.tokenCalls++;
    return seen.tokenCalls === 1 ? "not-a-token" : fetchToken();
  };
  else if (tokens === "always-bad") token = async () => {
    seen.tokenCalls++;
    return "not-a-token";
  };
  const rc = window.rc = new module.Roomcast("/ws", { token, ...options });
  rc.on("state", (change) => {
    seen.states.push(change.state);
    seen.changes.push({ ...change, error: change.error ? change.error.code : null });
  });
  rc.on("event", (event) => seen.events.push(event));
  rc.on("recovered", (notice) => seen.recovered.push(notice));
  rc.on("error", (error) => seen.errors.push({ code: error.code, message: error.message,
                                               room: error.room, name: error.name }));
  window.follow = (room, subscribeOptions) => {
    const sub = window.rc.subscribe(room, subscribeOptions);
    const log = seen.rooms[room] = { events: [], recovered: [], ready: null, refused: null };
    sub.on("*", (event) => log.events.push(event));
    sub.onRecovery((notice) => log.recovered.push(notice));
    sub.ready.then((result) => { log.ready = result; }, (error) => {
      log.refused = {
        code: error.code, name: error.name, isRoomcastError: error instanceof module.RoomcastError,
      };
    });
    return sub;
  };
}"""


def open_client(
    page: Page,
    url: str,
    *,
    user: str = "ana",
    tokens: str = "fetch",
    connect: bool = True,
    **options: Any,
) -> None:
    """Load the blank page at ``url`` and build ``window.rc`` (connected unless told not to)."""
    page.goto(url)
    page.evaluate(SETUP, {"user": user, "tokens": tokens, "options": options})
    if connect:
        page.evaluate("rc.connect()")


def wait_connected(page: Page) -> None:
    page.wait_for_function("rc.state === 'connected'")


def room_events(page: Page, room: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = page.evaluate(f"seen.rooms[{room!r}].events")
    return events


def payloads(page: Page, room: str) -> list[Any]:
    return [event["payload"] for event in room_events(page, room)]


def states(page: Page) -> list[str]:
    found: list[str] = page.evaluate("seen.states")
    return found
