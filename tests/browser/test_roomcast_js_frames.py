"""roomcast.js frame by frame: a scripted WebSocket in the page plays the server.

The page loads roomcast.js from the test server, but the client is given a
``WebSocket`` class of the page's own (``options.WebSocket``) that records what
the client sends and delivers what the test makes the "server" say: malformed
frames, pings, silence, closes at chosen moments. The client must answer as
the protocol says and never throw into the page.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page

from .conftest import Server
from .pages import open_client, states

#: A WebSocket stand-in: ``sockets`` holds each one made; ``say(frame)`` delivers a
#: frame (an object is sent as JSON, a string as it is); ``end(code)`` closes it.
FAKE_SOCKET = """() => {
  window.sockets = [];
  window.pageErrors = [];
  window.addEventListener("error", (e) => pageErrors.push(String(e.message)));
  window.addEventListener("unhandledrejection", (e) => pageErrors.push(String(e.reason)));
  window.FakeSocket = class {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      sockets.push(this);
      setTimeout(() => {
        if (this.readyState !== 0) return;
        this.readyState = 1;
        if (this.onopen) this.onopen({});
      }, 0);
    }
    send(data) { this.sent.push(JSON.parse(data)); }
    close(code) { this.closedWith = code ?? 1005; this.readyState = 3; }
    say(frame) {
      this.onmessage({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
    }
    end(code, reason = "") {
      this.readyState = 3;
      if (this.onclose) this.onclose({ code, reason });
    }
  };
  window.ack = (socket, heartbeatMs = 30000) => socket.say({
    type: "connection.ack",
    payload: {
      clientId: "c1", userId: "ana", heartbeatMs, expiresAt: null, protocol: "roomcast.v1",
    },
  });
  window.last = () => sockets[sockets.length - 1];
}"""


def fake_client(page: Page, server: Server, **options: Any) -> None:
    open_client(page, server.url, connect=False)
    page.evaluate(FAKE_SOCKET)
    page.evaluate(
        """options => {
          const token = async () => {
            seen.tokenCalls++;
            if (window.signedOut) throw new roomcast.RoomcastError("unauthorized", "signed out");
            if (window.offline) throw new TypeError("Failed to fetch");
            return "token-" + seen.tokenCalls;
          };
          window.rc = new roomcast.Roomcast("/ws", { token, WebSocket: FakeSocket, ...options });
          rc.on("state", (change) => {
            seen.states.push(change.state);
            seen.changes.push(change);
          });
          rc.on("event", (event) => seen.events.push(event));
          rc.on("recovered", (notice) => seen.recovered.push(notice));
          rc.on("error", (error) => seen.errors.push({ code: error.code, message: error.message }));
          rc.connect();
        }""",
        options,
    )
    page.wait_for_function("sockets.length === 1 && sockets[0].readyState === 1")


def connected(page: Page, heartbeat_ms: int = 30000) -> None:
    page.evaluate(f"ack(last(), {heartbeat_ms})")
    page.wait_for_function("rc.state === 'connected'")


def sent(page: Page, index: int = -1) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = page.evaluate(f"sockets.at({index}).sent")
    return frames


def test_the_token_goes_in_the_first_frame_never_in_the_url(server: Server, page: Page) -> None:
    fake_client(page, server)
    socket = page.evaluate("({ url: sockets[0].url, protocols: sockets[0].protocols })")
    assert socket == {
        "url": server.url.replace("http", "ws", 1) + "ws",
        "protocols": ["roomcast.v1"],
    }
    assert sent(page) == [{"action": "auth", "token": "token-1"}]
    assert page.evaluate("rc.state") == "connecting"
    connected(page)
    assert page.evaluate("rc.connection") == {
        "clientId": "c1",
        "userId": "ana",
        "heartbeatMs": 30000,
        "expiresAt": None,
    }


def test_a_server_ping_is_answered_with_pong(server: Server, page: Page) -> None:
    fake_client(page, server)
    connected(page)
    page.evaluate("last().say({ type: 'ping' })")
    assert sent(page)[-1] == {"action": "pong"}


MALFORMED = [
    "not json",
    "[1, 2]",
    '{"no": "type"}',
    '{"type": 5}',
    '{"type": "x.y", "room": 5}',
    '{"type": "reply"}',
    '{"type": "error", "payload": "what"}',
    '{"type": "room.reset", "room": "nowhere"}',
    '{"type": "gap", "payload": null}',
    '{"type": "connection.ack", "payload": null}',
    '{"type": "token.expiring"}',
    '{"type": "something.new", "room": null}',
]


def test_malformed_frames_are_reported_and_never_thrown(server: Server, page: Page) -> None:
    fake_client(page, server)
    connected(page)
    page.evaluate("follow('chat:a')")
    subscribe = sent(page)[-1]
    page.evaluate("frames => frames.forEach((frame) => last().say(frame))", MALFORMED)
    page.evaluate("last().onmessage({ data: new ArrayBuffer(4) })")
    # A subscribe reply without results, and a publish reply without an id.
    page.evaluate(
        "ref => last().say({ type: 'reply', ref, ok: true, payload: {} })", subscribe["ref"]
    )
    publish = page.evaluate(
        """async () => {
          const pending = rc.publish('chat:a', 'x.y', 1).then(() => null, (e) => e.code);
          await new Promise((resolve) => setTimeout(resolve, 0));
          last().say({ type: 'reply', ref: last().sent.at(-1).ref, ok: true, payload: null });
          return pending;
        }"""
    )
    assert publish == "malformed_frame"
    codes = [error["code"] for error in page.evaluate("seen.errors")]
    # Invalid JSON, an array, no type (twice), a room that is not a string, the binary
    # frame, the subscribe reply without results; a standalone error frame as sent.
    assert codes.count("malformed_frame") == 7, codes
    assert "internal" in codes  # the error frame whose payload is not an object
    assert page.evaluate("seen.rooms['chat:a'].refused.code") == "malformed_frame"
    assert page.evaluate("rc.state") == "connected"
    assert page.evaluate("pageErrors") == []
    # The room-less event of an unknown type is an application event.
    assert page.evaluate("seen.events.map((e) => e.type)") == ["something.new"]


def test_a_silent_connection_is_dropped_and_reconnected(server: Server, page: Page) -> None:
    fake_client(page, server, minDelay=10, maxDelay=20)
    # heartbeatMs 100: nothing for 2 x 100 ms + 5 s means the connection is gone.
    connected(page, heartbeat_ms=100)
    page.wait_for_timeout(4_000)
    page.evaluate("last().say({ type: 'ping' })")  # any frame restarts the count
    page.wait_for_timeout(4_000)
    assert page.evaluate("rc.state") == "connected"
    page.wait_for_function("sockets.length === 2", timeout=5_000)
    change = page.evaluate("seen.changes[2]")
    assert change["state"] == "disconnected"
    assert change["reason"] == "nothing received for 5200 ms"
    assert page.evaluate("sockets[0].closedWith") is not None


def test_a_request_waits_for_the_connection_then_times_out(server: Server, page: Page) -> None:
    fake_client(page, server, requestTimeout=300)
    outcome = page.evaluate(
        """async () => {
          const started = performance.now();
          const code = await rc.presence('chat:a').then(() => null, (e) => e.code);
          return [code, performance.now() - started];
        }"""
    )
    assert outcome[0] == "timeout"
    assert 250 <= outcome[1] < 2_000
    # Made while connecting, answered once connected.
    answered = page.evaluate(
        """async () => {
          const pending = rc.presence('chat:a');
          ack(last());
          await new Promise((resolve) => setTimeout(resolve, 0));
          const request = last().sent.at(-1);
          last().say({ type: 'reply', ref: request.ref, ok: true,
                       payload: { room: 'chat:a', members: [] } });
          return [request.action, await pending];
        }"""
    )
    assert answered == ["presence", []]


def test_a_request_in_flight_fails_when_the_connection_drops_and_is_not_retried(
    server: Server, page: Page
) -> None:
    fake_client(page, server, minDelay=10, maxDelay=20)
    connected(page)
    outcome = page.evaluate(
        """async () => {
          const pending = rc.publish('chat:a', 'x.y', 1).then(() => null, (e) => e.code);
          last().end(1006);
          return pending;
        }"""
    )
    assert outcome == "connection_lost"
    page.wait_for_function("sockets.length === 2 && sockets[1].readyState === 1")
    connected(page)
    assert [frame["action"] for frame in sent(page)] == ["auth"]


def test_a_reconnect_resubscribes_every_room_in_one_frame_from_its_position(
    server: Server, page: Page
) -> None:
    fake_client(page, server, minDelay=10, maxDelay=20)
    connected(page)
    page.evaluate("follow('chat:a'); follow('chat:b', { history: 5 }); follow('live:c')")
    page.wait_for_function("last().sent.length === 2")
    subscribe = sent(page)[-1]
    assert subscribe == {
        "action": "subscribe",
        "rooms": ["chat:a", "chat:b", "live:c"],
        "history": {"chat:b": 5},
        "ref": subscribe["ref"],
    }
    page.evaluate(
        """ref => {
          const s = last();
          s.say({ type: 'x.y', room: 'chat:a', id: 'm7', payload: 7, offset: 7, epoch: 'e1' });
          s.say({ type: 'reply', ref, ok: true, payload: { rooms: {
            'chat:a': { ok: true, offset: 6, epoch: 'e1' },
            'chat:b': { ok: true, offset: 0, epoch: 'e2' },
            'live:c': { ok: true } } } });
          s.say({ type: 'x.y', room: 'chat:a', id: 'm8', payload: 8, offset: 8, epoch: 'e1' });
          s.say({ type: 'x.y', room: 'chat:a', id: 'm8', payload: 8, offset: 8, epoch: 'e1' });
        }""",
        subscribe["ref"],
    )
    # The reply's offset (6) is below an event already received (7): the highest wins,
    # and a repeated offset is delivered once.
    assert page.evaluate("seen.rooms['chat:a'].events.map((e) => e.offset)") == [7, 8]
    page.evaluate("last().end(1011, 'oops')")
    page.wait_for_function("sockets.length === 2 && sockets[1].readyState === 1")
    connected(page)
    again = sent(page)[-1]
    assert again == {
        "action": "subscribe",
        "rooms": ["chat:a", "chat:b", "live:c"],
        "since": {"chat:a": {"offset": 8, "epoch": "e1"}, "chat:b": {"offset": 0, "epoch": "e2"}},
        "ref": again["ref"],
    }
    page.evaluate(
        """ref => last().say({ type: 'reply', ref, ok: true, payload: { rooms: {
            'chat:a': { ok: true, offset: 9, epoch: 'e1', recovered: true },
            'chat:b': { ok: true, offset: 3, epoch: 'e3', recovered: false },
            'live:c': { ok: true } } } })""",
        again["ref"],
    )
    assert page.evaluate("seen.recovered") == [
        {"room": "chat:a", "recovered": True, "offset": 9, "epoch": "e1"},
        {"room": "chat:b", "recovered": False, "offset": 3, "epoch": "e3"},
    ]
    assert page.evaluate("seen.rooms['chat:b'].recovered.length") == 1
    # A room.reset is the same notice.
    page.evaluate(
        "last().say({ type: 'room.reset', room: 'chat:a', "
        "payload: { recovered: false, offset: 20, epoch: 'e1' } })"
    )
    assert page.evaluate("seen.rooms['chat:a'].recovered.at(-1)") == {
        "room": "chat:a",
        "recovered": False,
        "offset": 20,
        "epoch": "e1",
    }


def test_a_room_refused_on_resubscribe_ends_its_subscription_once(
    server: Server, page: Page
) -> None:
    fake_client(page, server, minDelay=10, maxDelay=20)
    connected(page)
    page.evaluate(
        """() => {
          window.ends = [];
          window.subs = {};
          for (const room of ['issue:i1', 'chat:a']) {
            subs[room] = follow(room);
            subs[room].onEnd((error) => ends.push([room, error && error.code]));
          }
        }"""
    )
    page.wait_for_function("last().sent.length === 2")
    ref = sent(page)[-1]["ref"]
    page.evaluate(
        """ref => last().say({ type: 'reply', ref, ok: true, payload: { rooms: {
            'issue:i1': { ok: true }, 'chat:a': { ok: true } } } })""",
        ref,
    )
    page.wait_for_function("seen.rooms['issue:i1'].ready !== null")
    # Access to issue:i1 was lost while away: the resubscribe refuses it.
    page.evaluate("last().end(1011, 'oops')")
    page.wait_for_function("sockets.length === 2 && sockets[1].readyState === 1")
    connected(page)
    again = sent(page)[-1]
    page.evaluate(
        """ref => last().say({ type: 'reply', ref, ok: true, payload: { rooms: {
            'issue:i1': { ok: false, error: { code: 'forbidden', message: 'no' } },
            'chat:a': { ok: true } } } })""",
        again["ref"],
    )
    page.wait_for_function("ends.length === 1")
    assert page.evaluate("ends") == [["issue:i1", "forbidden"]]
    page.evaluate("rc.subscribe('chat:a')")  # a second subscription to the room
    # Leaving ends chat:a's first subscription with null, once.
    page.evaluate("subs['chat:a'].unsubscribe(); subs['chat:a'].unsubscribe()")
    page.wait_for_function("ends.length === 2")
    page.wait_for_timeout(100)
    assert page.evaluate("ends") == [["issue:i1", "forbidden"], ["chat:a", None]]
    assert page.evaluate("pageErrors") == []


def test_backoff_is_full_jitter_under_a_doubling_ceiling_reset_by_an_ack(
    server: Server, page: Page
) -> None:
    fake_client(page, server, minDelay=40, maxDelay=200)
    page.evaluate("Math.random = () => 0.5")
    for n in range(5):
        page.evaluate("last().end(1006)")
        page.wait_for_function(f"sockets.length === {n + 2} && last().readyState === 1")
    connected(page)
    page.evaluate("last().end(1001)")
    page.wait_for_function("rc.state === 'disconnected'")
    delays = page.evaluate(
        "seen.changes.filter((c) => c.state === 'disconnected').map((c) => c.delay)"
    )
    # Half of min(200, 40 * 2^attempt): 20, 40, 80, 100, 100; then 20 again after the ack.
    assert delays == [20, 40, 80, 100, 100, 20]


@pytest.mark.parametrize("code", [1000, 1009])
def test_never_codes_close_for_good(code: int, server: Server, page: Page) -> None:
    fake_client(page, server, minDelay=10, maxDelay=20)
    connected(page)
    page.evaluate(f"last().end({code}, 'bye')")
    page.wait_for_timeout(200)
    assert states(page) == ["connecting", "connected", "closed"]
    assert page.evaluate("sockets.length") == 1


def test_a_refresh_follows_token_expiring(server: Server, page: Page) -> None:
    fake_client(page, server)
    connected(page)
    page.evaluate("last().say({ type: 'token.expiring', payload: { expiresInMs: 1000 } })")
    page.wait_for_function("last().sent.length === 2")
    refresh = sent(page)[-1]
    assert (refresh["action"], refresh["token"]) == ("refresh", "token-2")
    page.evaluate(
        "ref => last().say({ type: 'reply', ref, ok: true, "
        "payload: { expiresAt: 1900000000000, removed: [] } })",
        refresh["ref"],
    )
    page.wait_for_function("rc.connection.expiresAt === 1900000000000")
    # Then the server refuses that token: the provider's next one reconnects.
    page.evaluate("last().end(4002, 'token expired')")
    page.wait_for_function("sockets.length === 2 && last().readyState === 1")
    assert sent(page) == [{"action": "auth", "token": "token-3"}]


def test_close_stops_everything(server: Server, page: Page) -> None:
    fake_client(page, server)
    connected(page)
    outcome = page.evaluate(
        """async () => {
          const pending = rc.presence('chat:a').then(() => null, (e) => e.code);
          rc.close();
          return [await pending, rc.state, last().closedWith];
        }"""
    )
    assert outcome == ["closed", "closed", 1000]


def test_a_failing_token_provider_is_retried_and_one_that_refuses_closes(
    server: Server, page: Page
) -> None:
    fake_client(page, server, minDelay=10, maxDelay=20)
    connected(page)
    page.evaluate("window.offline = true; last().end(1006)")
    page.wait_for_function("seen.errors.filter((e) => e.code === 'token_provider').length >= 2")
    assert page.evaluate("rc.state") in ("connecting", "disconnected")
    assert page.evaluate("sockets.length") == 1  # no socket without a token
    page.evaluate("window.offline = false")
    page.wait_for_function("sockets.length === 2 && last().readyState === 1")
    connected(page)
    # The provider says the user signed out: no point in trying again.
    page.evaluate("window.signedOut = true; last().end(1006)")
    page.wait_for_function("rc.state === 'closed'")
    assert page.evaluate("seen.changes.at(-1).error.code") == "unauthorized"
    page.wait_for_timeout(200)
    assert page.evaluate("sockets.length") == 2


@pytest.mark.parametrize("code", [4001, 4002, 1008])
def test_a_provider_failing_after_a_refused_token_is_retried_and_signing_out_closes(
    code: int, server: Server, page: Page
) -> None:
    fake_client(page, server, minDelay=10, maxDelay=20)
    connected(page)
    page.evaluate(f"window.offline = true; last().end({code}, 'refused')")
    page.wait_for_function("seen.errors.filter((e) => e.code === 'token_provider').length >= 2")
    assert page.evaluate("rc.state") in ("connecting", "disconnected")
    assert page.evaluate("sockets.length") == 1  # no socket without a token
    page.evaluate("window.offline = false")
    page.wait_for_function("sockets.length === 2 && last().readyState === 1")
    assert sent(page)[0]["action"] == "auth"
    connected(page)
    page.evaluate(f"window.signedOut = true; last().end({code}, 'refused')")
    page.wait_for_function("rc.state === 'closed'")
    assert page.evaluate("seen.changes.at(-1).error.code") == "unauthorized"
    page.wait_for_timeout(200)
    assert page.evaluate("sockets.length") == 2


def test_going_back_online_reconnects_at_once(server: Server, page: Page) -> None:
    fake_client(page, server, minDelay=10_000, maxDelay=20_000)
    connected(page)
    page.evaluate("Math.random = () => 0.99; last().end(1006)")
    page.wait_for_function("rc.state === 'disconnected'")
    assert page.evaluate("seen.changes.at(-1).delay") > 9_000
    page.evaluate("window.dispatchEvent(new Event('online'))")
    page.wait_for_function("sockets.length === 2", timeout=2_000)


def test_subscriptions_to_one_room_share_it(server: Server, page: Page) -> None:
    fake_client(page, server)
    connected(page)
    page.evaluate("window.first = follow('chat:a'); window.second = rc.subscribe('chat:a')")
    page.wait_for_function("last().sent.length === 2")
    subscribe = sent(page)[-1]
    assert subscribe["rooms"] == ["chat:a"]
    page.evaluate(
        """ref => {
          window.secondEvents = [];
          second.on('*', (event) => secondEvents.push(event.id));
          const rooms = { 'chat:a': { ok: true } };
          last().say({ type: 'reply', ref, ok: true, payload: { rooms } });
          last().say({ type: 'x.y', room: 'chat:a', id: 'm1', payload: 1 });
        }""",
        subscribe["ref"],
    )
    page.wait_for_function("second.state === 'subscribed'")
    assert page.evaluate("secondEvents") == ["m1"]
    assert page.evaluate("seen.rooms['chat:a'].events.map((e) => e.id)") == ["m1"]
    # A third one joins at once, with the room's result; leaving one keeps the room.
    assert page.evaluate("rc.subscribe('chat:a').ready") == {"ok": True}
    page.evaluate("first.unsubscribe()")
    assert len(sent(page)) == 2
    page.evaluate("last().say({ type: 'x.y', room: 'chat:a', id: 'm2', payload: 2 })")
    assert page.evaluate("secondEvents") == ["m1", "m2"]
    assert page.evaluate("seen.rooms['chat:a'].events.length") == 1


def test_the_last_subscription_leaving_unsubscribes_the_room(server: Server, page: Page) -> None:
    fake_client(page, server)
    connected(page)
    page.evaluate("window.sub = follow('chat:a')")
    page.wait_for_function("last().sent.length === 2")
    left = page.evaluate(
        """async () => {
          const leaving = sub.unsubscribe().then(() => 'left');
          const request = last().sent.at(-1);
          last().say({ type: 'reply', ref: request.ref, ok: true,
                       payload: { rooms: { 'chat:a': { ok: true } } } });
          return [request.action, request.rooms, await leaving, sub.state];
        }"""
    )
    assert left == ["unsubscribe", ["chat:a"], "left", "unsubscribed"]
    # A late event of the room reaches no one.
    page.evaluate("last().say({ type: 'x.y', room: 'chat:a', id: 'm1', payload: 1 })")
    assert page.evaluate("seen.events") == []


def test_a_gap_and_rooms_removed_by_a_refresh_are_told(server: Server, page: Page) -> None:
    fake_client(page, server)
    connected(page)
    page.evaluate("follow('chat:a'); window.b = follow('chat:b')")
    page.wait_for_function("last().sent.length === 2")
    ref = sent(page)[-1]["ref"]
    page.evaluate(
        """ref => last().say({ type: 'reply', ref, ok: true, payload: { rooms: {
          'chat:a': { ok: true, offset: 4, epoch: 'e' }, 'chat:b': { ok: true } } } })""",
        ref,
    )
    page.evaluate("last().say({ type: 'gap', payload: { dropped: 3, rooms: ['chat:a'] } })")
    assert page.evaluate("seen.rooms['chat:a'].recovered") == [
        {"room": "chat:a", "recovered": False, "offset": 4, "epoch": "e"}
    ]
    page.evaluate("last().say({ type: 'token.expiring', payload: { expiresInMs: 1000 } })")
    page.wait_for_function("last().sent.length === 3")
    refresh = sent(page)[-1]
    page.evaluate(
        "ref => last().say({ type: 'reply', ref, ok: true, "
        "payload: { expiresAt: null, removed: ['chat:b'] } })",
        refresh["ref"],
    )
    page.wait_for_function("seen.errors.length === 1")
    assert page.evaluate("seen.errors[0]") == {
        "code": "forbidden",
        "message": "the new token does not allow chat:b",
    }
    assert page.evaluate("b.state") == "unsubscribed"
    page.evaluate("last().say({ type: 'x.y', room: 'chat:b', id: 'm1', payload: 1 })")
    assert page.evaluate("seen.events") == []
