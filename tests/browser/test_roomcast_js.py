"""roomcast.js against a real server: subscribe, history, requests, reconnects, tokens."""

from __future__ import annotations

import asyncio
import http
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from playwright.sync_api import Browser, Page
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

import roomcast.websockets
from roomcast import CloseCode, HeartbeatPolicy, History, Hub, RoomOptions
from roomcast.backends.redis import RedisBackend

from .conftest import BLANK, PAGE_TIMEOUT, REDIS_URL, SERVER_TIMEOUT, Server
from .pages import open_client, payloads, room_events, states, wait_connected


def test_a_subscription_receives_the_rooms_events_in_order(server: Server, page: Page) -> None:
    open_client(page, server.url)
    page.evaluate("follow('live:news')")
    page.wait_for_function("seen.rooms['live:news'].ready !== null")
    assert states(page) == ["connecting", "connected"]
    ids = [server.publish("live:news", "news.posted", {"n": n}) for n in range(3)]
    page.wait_for_function("seen.rooms['live:news'].events.length === 3")
    events = room_events(page, "live:news")
    assert [event["payload"] for event in events] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert [event["id"] for event in events] == ids
    for event in events:
        assert event["type"] == "news.posted"
        assert event["room"] == "live:news"
        assert event["userId"] is None
        assert isinstance(event["timestamp"], int)
    # rc.on("event") sees every event too, and those sent to the user alone (room null).
    server.call(lambda hub: hub.send_to_user("ana", "note.sent", {"hi": True}))
    page.wait_for_function("seen.events.length === 4")
    last = page.evaluate("seen.events[3]")
    assert (last["type"], last["room"], last["payload"]) == ("note.sent", None, {"hi": True})
    assert page.evaluate("seen.errors") == []


def test_listeners_by_type_and_unsubscribe(server: Server, page: Page) -> None:
    open_client(page, server.url)
    page.evaluate("""() => {
      window.sub = follow('live:mixed');
      window.byType = [];
      sub.on('a.happened', (event) => byType.push(event.payload));
    }""")
    page.wait_for_function("sub.state === 'subscribed'")
    server.publish("live:mixed", "a.happened", 1)
    server.publish("live:mixed", "b.happened", 2)
    server.publish("live:mixed", "a.happened", 3)
    page.wait_for_function("seen.rooms['live:mixed'].events.length === 3")
    assert page.evaluate("byType") == [1, 3]
    page.evaluate("sub.unsubscribe()")
    assert page.evaluate("sub.state") == "unsubscribed"
    server.publish("live:mixed", "a.happened", 4)
    server.publish("live:other", "a.happened", 5)
    page.wait_for_timeout(300)
    assert payloads(page, "live:mixed") == [1, 2, 3]
    assert page.evaluate("seen.events.length") == 3


def publish_numbers(server: Server, room: str, numbers: range) -> None:
    for n in numbers:
        server.publish(room, "chat.message", {"n": n})


def test_history_on_subscribe_replays_the_last_messages_then_live_ones(
    server: Server, page: Page
) -> None:
    publish_numbers(server, "chat:h", range(1, 6))
    open_client(page, server.url)
    page.evaluate("follow('chat:h', { history: 3 })")
    page.wait_for_function("seen.rooms['chat:h'].ready !== null")
    # Replayed before the reply: the subscription has them when `ready` resolves.
    assert payloads(page, "chat:h") == [{"n": 3}, {"n": 4}, {"n": 5}]
    assert [event["offset"] for event in room_events(page, "chat:h")] == [3, 4, 5]
    ready = page.evaluate("seen.rooms['chat:h'].ready")
    assert ready["ok"] is True
    assert ready["offset"] == 5
    publish_numbers(server, "chat:h", range(6, 8))
    page.wait_for_function("seen.rooms['chat:h'].events.length === 5")
    assert payloads(page, "chat:h") == [{"n": n} for n in range(3, 8)]
    assert page.evaluate("seen.rooms['chat:h'].recovered") == []


def test_history_request_pages_through_a_room(server: Server, page: Page) -> None:
    publish_numbers(server, "chat:p", range(1, 6))
    open_client(page, server.url)
    last = page.evaluate("rc.history('chat:p', { limit: 2 })")
    assert last["room"] == "chat:p"
    assert [p["payload"] for p in last["publications"]] == [{"n": 4}, {"n": 5}]
    assert last["offset"] == 5
    since = {"offset": 1, "epoch": last["epoch"]}
    after = page.evaluate("since => rc.history('chat:p', { since, limit: 10 })", since)
    assert [p["payload"] for p in after["publications"]] == [{"n": n} for n in range(2, 6)]
    assert after["recovered"] is True
    refused = page.evaluate("rc.history('live:none').then(() => null, (e) => [e.name, e.code])")
    assert refused == ["RoomcastError", "not_found"]


def test_publish_reaches_others_and_presence_lists_members(
    server: Server, browser: Browser
) -> None:
    contexts = [browser.new_context(), browser.new_context()]
    try:
        ana, bo = (context.new_page() for context in contexts)
        for page, user in ((ana, "ana"), (bo, "bo")):
            page.set_default_timeout(PAGE_TIMEOUT)
            open_client(page, server.url, user=user)
            page.evaluate("follow('team:room')")
            page.wait_for_function("seen.rooms['team:room'].ready !== null")
        reply = ana.evaluate("rc.publish('team:room', 'chat.message', { text: 'hi' })")
        assert isinstance(reply["id"], str)
        bo.wait_for_function(
            "seen.rooms['team:room'].events.some((e) => e.type === 'chat.message')"
        )
        message = next(e for e in room_events(bo, "team:room") if e["type"] == "chat.message")
        assert (message["payload"], message["userId"], message["id"]) == (
            {"text": "hi"}, "ana", reply["id"]
        )  # fmt: skip
        members = ana.evaluate("rc.presence('team:room')")
        assert sorted(member["userId"] for member in members) == ["ana", "bo"]
        # ana saw bo join; a publisher never receives its own event.
        assert any(
            e["type"] == "presence.join" and e["payload"]["userId"] == "bo"
            for e in room_events(ana, "team:room")
        )
        assert all(e["type"] != "chat.message" for e in room_events(ana, "team:room"))
        refused = ana.evaluate("rc.publish('live:news', 'x.y', 1).then(() => null, (e) => e.code)")
        assert refused == "forbidden"
    finally:
        for context in contexts:
            context.close()


def test_a_refused_subscription_fails_alone(server: Server, page: Page) -> None:
    open_client(page, server.url)
    page.evaluate("follow('user:someone-else'); follow('live:fine')")
    page.wait_for_function("seen.rooms['user:someone-else'].refused !== null")
    refused = page.evaluate("seen.rooms['user:someone-else'].refused")
    assert refused == {"code": "forbidden", "name": "RoomcastError", "isRoomcastError": True}
    page.wait_for_function("seen.rooms['live:fine'].ready !== null")
    errors = page.evaluate("seen.errors")
    assert [(e["code"], e["room"]) for e in errors] == [("forbidden", "user:someone-else")]
    assert page.evaluate("rc.state") == "connected"


def wait_reconnected(page: Page, after: int) -> None:
    """Wait until the page has gone disconnected, connecting, connected after ``after`` states."""
    page.wait_for_function(
        """after => {
          const s = seen.states.slice(after);
          const d = s.indexOf('disconnected');
          return d >= 0 && s.indexOf('connecting', d) > d && s[s.length - 1] === 'connected';
        }""",
        arg=after,
    )


def test_a_restarted_server_on_memory_is_rejoined_with_a_recovered_false_notice(
    server: Server, page: Page
) -> None:
    open_client(page, server.url, minDelay=100, maxDelay=400)
    page.evaluate("follow('chat:r'); follow('live:r')")
    page.wait_for_function("seen.rooms['chat:r'].ready !== null")
    publish_numbers(server, "chat:r", range(1, 4))
    page.wait_for_function("seen.rooms['chat:r'].events.length === 3")
    before = len(states(page))
    server.stop()
    page.wait_for_function("rc.state !== 'connected'")
    changes = page.evaluate("seen.changes")
    assert changes[before]["state"] == "disconnected"
    assert changes[before]["code"] == CloseCode.GOING_AWAY
    assert 0 <= changes[before]["delay"] <= 100
    server.start()
    wait_reconnected(page, before)
    # The memory backend lost the room's stream: the page is told to reload it.
    page.wait_for_function("seen.rooms['chat:r'].recovered.length === 1")
    notice = page.evaluate("seen.rooms['chat:r'].recovered[0]")
    assert notice["room"] == "chat:r"
    assert notice["recovered"] is False
    assert page.evaluate("seen.recovered") == [notice]
    # A room without history has no position to recover from: no notice.
    assert page.evaluate("seen.rooms['live:r'].recovered") == []
    publish_numbers(server, "chat:r", range(10, 12))
    server.publish("live:r", "x.y", "still here")
    page.wait_for_function("seen.rooms['chat:r'].events.length === 5")
    page.wait_for_function("seen.rooms['live:r'].events.length === 1")
    assert payloads(page, "chat:r")[3:] == [{"n": 10}, {"n": 11}]


def publish_through_redis(prefix: str, room: str, numbers: range) -> None:
    """Publish while the server is down, from a hub of this process on the same Redis."""

    async def post() -> None:
        backend = RedisBackend(REDIS_URL, prefix=prefix)
        namespaces = {"chat": RoomOptions(history=History(size=100, ttl=600))}
        async with Hub(backend=backend, namespaces=namespaces) as hub:
            for n in numbers:
                await hub.publish(room, "chat.message", {"n": n})

    # Playwright's sync API runs an event loop on this thread: this one gets its own.
    failures: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(post())
        except BaseException as exc:
            failures.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(SERVER_TIMEOUT)
    assert not worker.is_alive()
    assert not failures, failures


def test_a_restarted_server_on_redis_delivers_what_was_missed_exactly_once_in_order(
    redis_prefix: str, page: Page
) -> None:
    server = Server(lambda: RedisBackend(REDIS_URL, prefix=redis_prefix))
    server.start()
    try:
        open_client(page, server.url, minDelay=100, maxDelay=400)
        page.evaluate("follow('chat:r')")
        page.wait_for_function("seen.rooms['chat:r'].ready !== null")
        publish_numbers(server, "chat:r", range(1, 4))
        page.wait_for_function("seen.rooms['chat:r'].events.length === 3")
        before = len(states(page))
        server.stop()
        page.wait_for_function("rc.state !== 'connected'")
        publish_through_redis(redis_prefix, "chat:r", range(4, 7))
        server.start()
        wait_reconnected(page, before)
        page.wait_for_function("seen.rooms['chat:r'].recovered.length === 1")
        notice = page.evaluate("seen.rooms['chat:r'].recovered[0]")
        assert notice["recovered"] is True
        assert notice["offset"] == 6
        publish_numbers(server, "chat:r", range(7, 9))
        page.wait_for_function("seen.rooms['chat:r'].events.length >= 8")
        page.wait_for_timeout(200)
        events = room_events(page, "chat:r")
        assert [event["payload"]["n"] for event in events] == list(range(1, 9))
        assert [event["offset"] for event in events] == list(range(1, 9))
    finally:
        server.stop()


def test_a_refused_token_is_replaced_by_the_providers_next_one(server: Server, page: Page) -> None:
    open_client(page, server.url, tokens="bad-then-fetch", minDelay=50, maxDelay=100)
    wait_connected(page)
    changes = page.evaluate("seen.changes")
    assert [c["state"] for c in changes] == [
        "connecting",
        "disconnected",
        "connecting",
        "connected",
    ]
    assert changes[1]["code"] == CloseCode.INVALID_TOKEN
    assert page.evaluate("seen.tokenCalls") == 2
    # Closed with 4001 later (say the user's token was revoked): a new token, a new connection.
    page.evaluate("follow('live:after')")
    page.wait_for_function("seen.rooms['live:after'].ready !== null")
    assert server.call(_disconnect("ana", CloseCode.INVALID_TOKEN)) == 1
    page.wait_for_function("seen.states.length === 7 && rc.state === 'connected'")
    assert page.evaluate("seen.tokenCalls") == 3
    # Connected comes before the room's new subscription is in: publish once it is.
    deadline = time.monotonic() + SERVER_TIMEOUT
    while server.call(_members("live:after")) != 1:
        assert time.monotonic() < deadline, "the room was not subscribed again"
        time.sleep(0.02)
    server.publish("live:after", "x.y", "resubscribed")
    page.wait_for_function("seen.rooms['live:after'].events.length === 1")


def _disconnect(user: str, code: int) -> Callable[[Hub], Coroutine[Any, Any, int]]:
    async def disconnect(hub: Hub) -> int:
        return hub.disconnect_user(user, code)

    return disconnect


def _members(room: str) -> Callable[[Hub], Coroutine[Any, Any, int]]:
    async def members(hub: Hub) -> int:
        return hub.stats().members.get(room, 0)

    return members


@pytest.mark.parametrize("tokens", ["always-bad", "static-bad"])
def test_a_token_refused_again_closes_the_client(tokens: str, server: Server, page: Page) -> None:
    open_client(page, server.url, tokens=tokens, minDelay=50, maxDelay=100)
    page.wait_for_function("rc.state === 'closed'")
    changes = page.evaluate("seen.changes")
    assert changes[-1]["state"] == "closed"
    assert changes[-1]["code"] == CloseCode.INVALID_TOKEN
    assert changes[-1]["error"] == "unauthorized"
    requests = page.evaluate("rc.presence('live:x').then(() => null, (e) => e.code)")
    assert requests == "closed"


def test_a_normal_close_from_the_server_is_final(server: Server, page: Page) -> None:
    open_client(page, server.url, minDelay=50, maxDelay=100)
    wait_connected(page)
    sockets: list[object] = []
    page.on("websocket", lambda socket: sockets.append(socket))
    assert server.call(_disconnect("ana", CloseCode.NORMAL)) == 1
    page.wait_for_function("rc.state === 'closed'")
    page.wait_for_timeout(500)  # several backoff delays: nothing reconnects
    assert sockets == []
    assert states(page) == ["connecting", "connected", "closed"]
    change = page.evaluate("seen.changes[2]")
    assert (change["code"], change["error"]) == (1000, None)


def test_other_close_codes_reconnect_after_a_delay(server: Server, page: Page) -> None:
    open_client(page, server.url, minDelay=50, maxDelay=100)
    wait_connected(page)
    for n, code in enumerate([CloseCode.INTERNAL_ERROR, CloseCode.TRY_AGAIN_LATER]):
        assert server.call(_disconnect("ana", code)) == 1
        page.wait_for_function(
            f"seen.states.length === {2 + 3 * (n + 1)} && rc.state === 'connected'"
        )
        assert page.evaluate(f"seen.changes[{2 + 3 * n}].code") == code


def test_the_token_is_refreshed_in_band_before_it_expires(page: Page) -> None:
    # Tokens live 4 s; the server warns 3 s before: the page refreshes after about 1 s.
    server = Server(token_expiry_warning=3)
    server.token_ttl = 4
    server.start()
    try:
        open_client(page, server.url)
        wait_connected(page)
        page.wait_for_function("seen.tokenCalls >= 2")
        started = time.monotonic()
        page.evaluate("follow('live:t')")
        # Past the first token's expiry, the same connection is still open and serves.
        page.wait_for_timeout(4_500)
        assert page.evaluate("rc.state") == "connected"
        assert states(page) == ["connecting", "connected"]
        server.publish("live:t", "x.y", "after expiry")
        page.wait_for_function("seen.rooms['live:t'].events.length === 1")
        assert time.monotonic() - started >= 4
        assert page.evaluate("seen.errors") == []
        assert page.evaluate("rc.connection.expiresAt") > time.time() * 1000
    finally:
        server.stop()


@contextmanager
def websockets_server(heartbeat: HeartbeatPolicy) -> Iterator[str]:
    """The blank page, roomcast.js and an anonymous hub on the ``websockets`` adapter.

    That adapter's transport pings at the WebSocket level, which a page cannot see:
    an idle page receives no frame from it at all.
    """
    ready = threading.Event()
    stop: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
    urls: list[str] = []
    failures: list[BaseException] = []

    def pages(connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/":
            response = connection.respond(http.HTTPStatus.OK, BLANK)
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = "text/html; charset=utf-8"
            return response
        return None

    async def main() -> None:
        stop.append((asyncio.get_running_loop(), asyncio.Event()))
        async with Hub(heartbeat=heartbeat) as hub:
            hook = roomcast.websockets.client_script("/roomcast.js", pages)
            async with await roomcast.websockets.serve(
                hub, "127.0.0.1", 0, process_request=hook
            ) as server:
                urls.append(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/")
                ready.set()
                await stop[0][1].wait()
                await hub.aclose()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            failures.append(exc)
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(SERVER_TIMEOUT)
    assert not failures, failures
    loop, stopping = stop[0]
    try:
        yield urls[0]
    finally:
        # asyncio.Event is not thread-safe: set it from its own loop.
        loop.call_soon_threadsafe(stopping.set)
        thread.join(SERVER_TIMEOUT)
        assert not thread.is_alive()
        assert not failures, failures


def test_an_idle_page_stays_connected_to_a_server_that_pings_at_the_websocket_level(
    page: Page,
) -> None:
    # Heartbeat every second: the page would count the server as dead after 2 x 1 s
    # + 5 s of silence, unless it asks for a frame itself (a ping the server answers).
    with websockets_server(HeartbeatPolicy(interval=1, timeout=3)) as url:
        open_client(page, url, tokens="none")
        wait_connected(page)
        page.wait_for_timeout(9_000)
        assert states(page) == ["connecting", "connected"]
        assert page.evaluate("seen.errors") == []


def test_an_idle_page_stays_connected_when_its_clock_is_coarse(page: Page) -> None:
    # Browsers that reduce timer precision give the same Date.now() for a ping and its
    # pong: the answer must still count, or the page stops pinging and, after 2 x 1 s
    # + 5 s of silence, drops a healthy connection.
    page.add_init_script(
        "const realNow = Date.now; Date.now = () => realNow() - (realNow() % 500);"
    )
    with websockets_server(HeartbeatPolicy(interval=1, timeout=3)) as url:
        open_client(page, url, tokens="none")
        wait_connected(page)
        page.wait_for_timeout(9_000)
        assert states(page) == ["connecting", "connected"]
        assert page.evaluate("seen.errors") == []
