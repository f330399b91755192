"""The same behaviour behind every adapter, over real sockets on 127.0.0.1.

Each test runs once per server kind in :data:`tests.adapters.contract.servers.ALL_KINDS`.
The client is the ``websockets`` asyncio client, so tests run on asyncio; a
kind whose hub runs on trio serves from a thread of its own.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed as WebSocketsClosed
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from roomcast import (
    ConnectionLimits,
    Handshake,
    History,
    Hub,
    Principal,
    RateLimit,
    RoomOptions,
)
from roomcast.hub import HubStatistics

from ..asgi import close_code
from .frames import next_frame, receive, request
from .servers import ALL_KINDS, PATH, Served, ServerKind

pytestmark = pytest.mark.anyio

TIMEOUT = 10
V1 = [Subprotocol("roomcast.v1")]


@pytest.fixture(params=[kind.param() for kind in ALL_KINDS])
def kind(request: pytest.FixtureRequest) -> ServerKind:
    server_kind: ServerKind = request.param
    return server_kind


@pytest.fixture
def anyio_backend(kind: ServerKind) -> str:
    # The websockets client runs on asyncio only; a kind whose hub runs on
    # trio serves from its own thread (see servers.py), so the test side is
    # asyncio for every kind.
    return "asyncio"


@pytest.fixture(autouse=True)
def known_failure(request: pytest.FixtureRequest, kind: ServerKind) -> None:
    reason = kind.known_failures.get(request.node.originalname)
    if reason is not None:
        request.node.add_marker(pytest.mark.xfail(reason=reason, strict=True))


@asynccontextmanager
async def serving(kind: ServerKind, **hub_kwargs: Any) -> AsyncIterator[Served]:
    async with kind.start(hub_kwargs) as served:
        yield served


@asynccontextmanager
async def connected(
    served: Served, target: str = PATH, **kwargs: Any
) -> AsyncIterator[ClientConnection]:
    """A client whose ``connection.ack`` has been read.

    Its socket is closed on the way out even when the closing handshake is
    cancelled (the test's deadline expired): websockets' ``close()`` then
    leaves the transport open, and the socket would leak into whichever later
    test the garbage collector runs in.
    """
    client: ClientConnection | None = None
    try:
        async with open_client(served, target, **kwargs) as client:
            await next_frame(client, "connection.ack")
            yield client
    finally:
        if client is not None:
            client.transport.abort()  # a no-op once the connection is closed


def open_client(served: Served, target: str = PATH, **kwargs: Any) -> connect:
    base = served.url.removesuffix(PATH)
    kwargs.setdefault("subprotocols", V1)
    return connect(base + target, open_timeout=TIMEOUT, close_timeout=TIMEOUT, **kwargs)


async def frames_before_pong(client: ClientConnection, ref: str = "sync") -> list[dict[str, Any]]:
    """Everything the server sent before answering a ping: a barrier instead of a sleep."""
    await client.send(json.dumps({"action": "ping", "ref": ref}))
    frames = []
    while (frame := await receive(client)) != {"type": "pong", "ref": ref}:
        frames.append(frame)
    return frames


async def eventually(served: Served, condition: Callable[[HubStatistics], bool]) -> None:
    """Wait for the hub's counters to satisfy ``condition``; the caller's bound limits it."""
    while not condition(await served.stats()):
        await anyio.sleep(0.01)


def publisher(
    room: str, type_: str, payloads: list[Any], **kwargs: Any
) -> Callable[[Hub], Awaitable[None]]:
    async def publish(hub: Hub) -> None:
        for payload in payloads:
            await hub.publish(room, type_, payload, **kwargs)

    return publish


class UserAuthenticator:
    """The user is whoever the ``x-user`` header names; every handshake and token is kept."""

    def __init__(self) -> None:
        self.handshakes: list[Handshake] = []
        self.tokens: list[str | None] = []

    async def authenticate(self, handshake: Handshake, token: str | None) -> Principal:
        self.handshakes.append(handshake)
        self.tokens.append(token)
        return Principal(handshake.header("x-user"))


# Connection


async def test_connected_closes_its_socket_when_leaving_it_is_cancelled(
    kind: ServerKind,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(kind) as served:
            with anyio.CancelScope() as scope:
                async with connected(served) as client:
                    # The close frame cannot arrive: leaving waits for it, and
                    # the cancellation ends the wait, as a test's deadline would.
                    client.transport.pause_reading()
                    scope.cancel()
            assert scope.cancelled_caught
            with anyio.fail_after(1):
                await client.wait_closed()
            assert client.transport.get_extra_info("socket").fileno() == -1


async def test_connect_negotiates_roomcast_v1_and_acks(kind: ServerKind) -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(kind) as served, open_client(served) as client:
            assert client.subprotocol == "roomcast.v1"
            assert client.response is not None
            extensions = client.response.headers.get("Sec-WebSocket-Extensions", "")
            assert ("permessage-deflate" in extensions) == kind.deflate
            ack = await next_frame(client, "connection.ack")
            payload = ack["payload"]
            assert isinstance(payload["clientId"], str)
            assert payload["clientId"]
            assert payload["heartbeatMs"] > 0
            assert payload["protocol"] == "roomcast.v1"


async def test_ping_is_answered_with_pong_echoing_ref(kind: ServerKind) -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(kind) as served, connected(served) as client:
            await client.send(json.dumps({"action": "ping", "ref": 1}))
            assert await receive(client) == {"type": "pong", "ref": 1}


# Rooms


async def test_subscribe_and_unsubscribe_reply_per_room(kind: ServerKind) -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(kind) as served, connected(served) as client:
            joined = await request(
                client, {"action": "subscribe", "rooms": ["team:t1", "user:other"], "ref": 1}
            )
            assert joined["ref"] == 1
            assert joined["ok"] is True
            rooms = joined["payload"]["rooms"]
            assert rooms["team:t1"]["ok"] is True
            assert rooms["user:other"]["error"]["code"] == "forbidden"
            assert (await served.stats()).members == {"team:t1": 1}

            left = await request(
                client, {"action": "unsubscribe", "rooms": ["team:t1", "team:t2"], "ref": 2}
            )
            assert left["payload"]["rooms"]["team:t1"] == {"ok": True}
            assert left["payload"]["rooms"]["team:t2"]["error"]["code"] == "not_found"
            assert (await served.stats()).rooms == 0


async def test_publish_reaches_exactly_the_room_members(kind: ServerKind) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(kind) as served,
            connected(served) as member,
            connected(served) as other_member,
            connected(served) as outsider,
        ):
            for client in (member, other_member):
                await request(client, {"action": "subscribe", "rooms": ["team:t1"], "ref": 1})
            await request(outsider, {"action": "subscribe", "rooms": ["team:t2"], "ref": 1})

            await served.run(publisher("team:t1", "issue.created", [{"id": "i1"}], user_id="u9"))

            for client in (member, other_member):
                event = await next_frame(client, "issue.created")
                assert (event["room"], event["payload"], event["userId"]) == (
                    "team:t1",
                    {"id": "i1"},
                    "u9",
                )
            # The event was written to every member before publish returned.
            assert await frames_before_pong(outsider) == []


HISTORY_ROOMS: dict[str, Any] = {
    "namespaces": {"team": RoomOptions(history=History(size=5, ttl=600)), "chat": RoomOptions()}
}


async def frames_until_reply(client: ClientConnection, ref: Any) -> list[dict[str, Any]]:
    """Every frame up to and including the reply to ``ref``."""
    frames = []
    while True:
        frame = await receive(client)
        frames.append(frame)
        if frame["type"] == "reply" and frame["ref"] == ref:
            return frames


async def test_subscribe_with_history_replays_the_last_messages_before_the_reply(
    kind: ServerKind,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(kind, **HISTORY_ROOMS) as served, connected(served) as client:
            await served.run(publisher("team:t1", "issue.created", list(range(7)), user_id="u9"))
            await client.send(
                json.dumps(
                    {
                        "action": "subscribe",
                        "ref": 1,
                        "rooms": ["team:t1", "chat:c1"],
                        "history": {"team:t1": 3, "chat:c1": 3},
                    }
                )
            )
            *replayed, reply = await frames_until_reply(client, 1)
            assert [(e["type"], e["offset"], e["payload"]) for e in replayed] == [
                ("issue.created", 5, 4),
                ("issue.created", 6, 5),
                ("issue.created", 7, 6),
            ]
            epoch = replayed[0]["epoch"]
            assert reply["payload"]["rooms"] == {
                "team:t1": {"ok": True, "offset": 7, "epoch": epoch},
                "chat:c1": {"ok": True},
            }
            await served.run(publisher("team:t1", "issue.created", [7]))
            live = await next_frame(client, "issue.created")
            assert (live["offset"], live["epoch"], live["payload"]) == (8, epoch, 7)


async def test_history_request_returns_the_events_members_got_and_pages_forward(
    kind: ServerKind,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(kind, **HISTORY_ROOMS) as served,
            connected(served) as member,
            connected(served) as reader,
        ):
            await request(member, {"action": "subscribe", "rooms": ["team:t1"], "ref": 1})
            await served.run(publisher("team:t1", "issue.created", list(range(4)), user_id="u9"))
            received = [await next_frame(member, "issue.created") for _ in range(4)]
            epoch = received[0]["epoch"]

            last = await request(
                reader, {"action": "history", "ref": "h1", "room": "team:t1", "limit": 2}
            )
            assert (last["ref"], last["ok"]) == ("h1", True)
            assert last["payload"] == {
                "room": "team:t1",
                "publications": received[2:],
                "offset": 4,
                "epoch": epoch,
            }
            page = await request(
                reader,
                {
                    "action": "history",
                    "ref": "h2",
                    "room": "team:t1",
                    "limit": 2,
                    "since": {"offset": 1, "epoch": epoch},
                },
            )
            assert page["payload"] == {
                "room": "team:t1",
                "publications": received[1:3],
                "offset": 4,
                "epoch": epoch,
                "recovered": True,
            }
            lost = await request(
                reader,
                {
                    "action": "history",
                    "ref": "h3",
                    "room": "team:t1",
                    "since": {"offset": 1, "epoch": "another"},
                },
            )
            assert (lost["payload"]["recovered"], lost["payload"]["publications"]) == (False, [])
            # The reader never joined: it receives nothing live.
            assert await frames_before_pong(reader) == []
            assert (await served.stats()).members == {"team:t1": 1}


async def test_history_request_refusals_are_in_band_and_the_connection_stays(
    kind: ServerKind,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(kind, **HISTORY_ROOMS) as served, connected(served) as client:
            refusals: list[tuple[dict[str, Any], str]] = [
                ({"room": "chat:c1"}, "not_found"),
                ({"room": "user:other"}, "not_found"),
                ({"room": "team:t1", "limit": 0}, "bad_request"),
                ({"room": "team:t1", "limit": True}, "bad_request"),
                ({"room": "team:t1", "rooms": ["team:t1"]}, "bad_request"),
            ]
            for ref, (fields, code) in enumerate(refusals):
                reply = await request(client, {"action": "history", "ref": ref, **fields})
                assert (reply["ref"], reply["ok"], reply["error"]["code"]) == (ref, False, code)
            ok = await request(client, {"action": "history", "ref": "ok", "room": "team:t1"})
            assert ok["payload"]["publications"] == []


async def test_send_to_user_reaches_every_connection_of_the_user(kind: ServerKind) -> None:
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(kind, authenticator=UserAuthenticator()) as served,
            connected(served, additional_headers={"x-user": "u1"}) as phone,
            connected(served, additional_headers={"x-user": "u1"}) as laptop,
            connected(served, additional_headers={"x-user": "u2"}) as someone_else,
        ):

            async def send(hub: Hub) -> str:
                return await hub.send_to_user("u1", "notification", {"text": "hi"})

            message_id = await served.run(send)
            for client in (phone, laptop):
                event = await next_frame(client, "notification")
                assert (event["id"], event["room"], event["payload"]) == (
                    message_id,
                    None,
                    {"text": "hi"},
                )
            assert await frames_before_pong(someone_else) == []


# Bad input and limits


@pytest.mark.parametrize(
    "frame",
    ["not json", '{"action": "fly"}', '{"action": "subscribe", "rooms": ["bad room"]}'],
)
async def test_bad_frame_gets_bad_request_and_connection_stays(
    kind: ServerKind, frame: str
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(kind) as served, connected(served) as client:
            await client.send(frame)
            refused = await receive(client)
            error = refused.get("payload") or refused.get("error")
            assert error is not None
            assert error["code"] == "bad_request"
            await client.send(json.dumps({"action": "ping", "ref": 2}))
            assert await receive(client) == {"type": "pong", "ref": 2}


async def test_frame_at_the_hub_limit_is_read_and_one_past_it_closes_with_1009(
    kind: ServerKind,
) -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(kind) as served, connected(served) as client:
            limit = served.hub.max_message_size
            await client.send("x" * limit)
            error = await next_frame(client, "error")  # not JSON, but not too big
            assert error["payload"]["code"] == "bad_request"
            await client.send("x" * (limit + 1))
            assert await close_code(client) == 1009


async def test_frame_over_64_kib_closes_with_1009(kind: ServerKind) -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(kind) as served, connected(served) as client:
            frame = json.dumps({"action": "ping", "ref": "x" * 65536})
            await client.send(frame)
            assert await close_code(client) == 1009


async def test_rate_limited_request_gets_retry_after(kind: ServerKind) -> None:
    limit = RateLimit(rate=60, period=60, burst=2, strikes=3)
    with anyio.fail_after(TIMEOUT):
        async with serving(kind, rate_limit=limit) as served, connected(served) as client:
            for ref in (1, 2):
                await client.send(json.dumps({"action": "ping", "ref": ref}))
                assert await receive(client) == {"type": "pong", "ref": ref}
            refused = await request(client, {"action": "ping", "ref": 3})
            assert (refused["ref"], refused["ok"]) == (3, False)
            assert refused["error"]["code"] == "rate_limited"
            assert 0 < refused["error"]["retryAfterMs"] <= 1000
            assert (await served.stats()).rate_limited == 1


async def test_sustained_abuse_closes_with_4029(kind: ServerKind) -> None:
    limit = RateLimit(rate=60, period=60, burst=2, strikes=3)
    with anyio.fail_after(TIMEOUT):
        async with serving(kind, rate_limit=limit) as served, connected(served) as client:
            for _ in range(10):
                await client.send(json.dumps({"action": "ping"}))
            assert await close_code(client) == 4029


def lagging_socket(served: Served) -> socket.socket:
    """A socket with a small receive buffer, connected to ``served``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = served.url.split("//")[1].split("/")[0].split(":")
    sock.connect((host, int(port)))
    return sock


# Slow consumers


STALL_FRAMES = 2000
STALL_BURST = 25  # half the hub's max_queue: a client that keeps reading never overflows
STALL_PAYLOAD = "z" * 8192
STALL_RELEASE_SECONDS = 3


async def test_slow_consumer_is_closed_4009_while_others_receive_everything(
    kind: ServerKind,
) -> None:
    # A small receive buffer on the stalled client's socket: the server's
    # writes back up after a few MiB of kernel buffers, not tens of them.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    received: list[int] = []
    burst_seconds: list[float] = []

    async def publish(hub: Hub) -> None:
        for start in range(0, STALL_FRAMES, STALL_BURST):
            began = anyio.current_time()
            for n in range(start, start + STALL_BURST):
                await hub.publish("feed", "feed.item", [n, STALL_PAYLOAD])
            burst_seconds.append(anyio.current_time() - began)
            # Paced by the healthy reader, so only the stalled client can overflow.
            while len(received) < start + STALL_BURST:
                await anyio.sleep(0.001)

    with anyio.fail_after(TIMEOUT * 3), sock:
        async with serving(kind, max_queue=50) as served, connected(served) as healthy:
            host, port = served.url.split("//")[1].split("/")[0].split(":")
            sock.connect((host, int(port)))
            async with connected(served, sock=sock, max_queue=1) as stalled:
                for client in (healthy, stalled):
                    await request(client, {"action": "subscribe", "rooms": ["feed"], "ref": 1})
                stalled.transport.pause_reading()

                async def read_healthy() -> None:
                    while len(received) < STALL_FRAMES:
                        received.append((await next_frame(healthy, "feed.item"))["payload"][0])

                async with anyio.create_task_group() as tg:
                    tg.start_soon(read_healthy)
                    await served.run(publish)

                assert received == list(range(STALL_FRAMES))
                # A publisher that waited for the stalled client would stall with it.
                assert max(burst_seconds) < 1.0
                try:
                    # Its queue overflowed during the publishing: the hub lets go of
                    # it now, not once it reads again.
                    with anyio.fail_after(STALL_RELEASE_SECONDS):
                        await eventually(served, lambda stats: stats.slow_consumer_disconnects == 1)
                finally:
                    stalled.transport.resume_reading()
                    # Read to the close even on failure: unread frames would
                    # hold the closing handshake up until its timeout.
                    code = await close_code(stalled)
                assert code == 4009
            assert (await served.stats()).slow_consumer_disconnects == 1


async def overflow_until_a_slow_consumer_is_closed(hub: Hub) -> int:
    """Publish to ``feed`` until a member is closed as a slow consumer; return how many."""
    published = 0
    while hub.stats().slow_consumer_disconnects == 0 and published < 5000:
        await hub.publish("feed", "feed.item", [published, STALL_PAYLOAD])
        published += 1
        if published % 20 == 0:
            await anyio.sleep(0.001)  # let the writers run
    return published


#: Longer than the hub's drain_timeout below and than the websockets server's
#: own close timeout (see servers.py): the limits that used to drop the close.
LONG_STALL_SECONDS = 2.5


async def test_slow_consumer_sees_4009_after_a_stall_longer_than_the_old_limits(
    kind: ServerKind,
) -> None:
    options: dict[str, Any] = {
        "max_queue": 20,
        "drain_timeout": 0.5,
        "close_timeout": LONG_STALL_SECONDS * 3,
    }

    with anyio.fail_after(TIMEOUT + LONG_STALL_SECONDS):
        async with (
            serving(kind, **options) as served,
            connected(served, sock=lagging_socket(served), max_queue=1) as stalled,
        ):
            await request(stalled, {"action": "subscribe", "rooms": ["feed"], "ref": 1})
            stalled.transport.pause_reading()
            await served.run(overflow_until_a_slow_consumer_is_closed)
            assert (await served.stats()).slow_consumer_disconnects == 1
            await anyio.sleep(LONG_STALL_SECONDS)
            stalled.transport.resume_reading()
            with pytest.raises(WebSocketsClosed) as excinfo:
                while True:
                    await stalled.recv()
            closed = excinfo.value.rcvd
            assert closed is not None, "the close frame was lost"
            assert (closed.code, closed.reason) == (4009, "slow consumer")


#: Short, so that a stall outlives it within the test's bounds.
STALLED_CLOSE_TIMEOUT = 1.0
#: How long the stalled client stays stalled: well past the close timeout.
STALLED_BEYOND_SECONDS = STALLED_CLOSE_TIMEOUT + 1.5


async def test_slow_consumer_stalled_beyond_close_timeout_is_dropped_and_counted_until_then(
    kind: ServerKind,
) -> None:
    # The close frame cannot reach a client that never reads: at close_timeout
    # the server drops the socket (the client sees 1006 once it reads again),
    # and until then the socket counts against its address's cap.
    options: dict[str, Any] = {
        "max_queue": 20,
        "drain_timeout": 0.5,
        "close_timeout": STALLED_CLOSE_TIMEOUT,
        "limits": ConnectionLimits(max_connections_per_ip=1),
    }

    with anyio.fail_after(TIMEOUT + STALLED_BEYOND_SECONDS):
        async with (
            serving(kind, **options) as served,
            connected(served, sock=lagging_socket(served), max_queue=1) as stalled,
        ):
            await request(stalled, {"action": "subscribe", "rooms": ["feed"], "ref": 1})
            stalled.transport.pause_reading()
            await served.run(overflow_until_a_slow_consumer_is_closed)
            assert (await served.stats()).slow_consumer_disconnects == 1
            # Its closing handshake is under way: the address is still at its cap.
            with pytest.raises(InvalidStatus) as refused:
                async with open_client(served):
                    pass
            assert refused.value.response.status_code == 503
            await anyio.sleep(STALLED_BEYOND_SECONDS)
            # Dropped: the address is free again, and the close frame never came.
            async with connected(served):
                pass
            stalled.transport.resume_reading()
            with pytest.raises(WebSocketsClosed) as excinfo:
                while True:
                    await stalled.recv()
            assert excinfo.value.rcvd is None, "the socket outlived close_timeout"


# Shutdown and departures


async def test_shutdown_flushes_then_closes_1001(kind: ServerKind) -> None:
    count = 200
    with anyio.fail_after(TIMEOUT):
        async with serving(kind) as served, connected(served) as client:
            await request(client, {"action": "subscribe", "rooms": ["feed"], "ref": 1})

            async def publish_then_close(hub: Hub) -> None:
                await publisher("feed", "feed.item", list(range(count)))(hub)
                await hub.aclose()

            received: list[int] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(served.run, publish_then_close)
                with pytest.raises(WebSocketsClosed) as excinfo:
                    while True:
                        received.append((await next_frame(client, "feed.item"))["payload"])
            assert received == list(range(count))
            assert excinfo.value.rcvd is not None
            assert excinfo.value.rcvd.code == 1001


LAGGING_CLIENTS = 20
LAGGING_EVENTS = 40
LAGGING_PAYLOAD = "q" * 4096
#: When each lagging client sends a request once shutdown has begun: after a
#: server that does not wait for closing handshakes has closed its socket.
LATE_REQUEST_SECONDS = 0.2
#: How long the lagging clients stop reading once shutdown has begun.
LAG_SECONDS = 1.0


async def is_running(hub: Hub) -> bool:
    return hub.running


async def test_shutdown_flushes_lagging_readers_then_closes_1001(kind: ServerKind) -> None:
    # Clients behind when shutdown begins, each sending a request just after:
    # closing the socket with that request unread would make the kernel reset
    # the connection, and the client would lose its events and the close frame.
    results: dict[int, tuple[list[int], int | None, str | None]] = {}
    with anyio.fail_after(TIMEOUT * 2):
        async with serving(kind) as served, AsyncExitStack() as stack:
            clients = []
            for _ in range(LAGGING_CLIENTS):
                sock = stack.enter_context(lagging_socket(served))
                client = await stack.enter_async_context(connected(served, sock=sock))
                await request(client, {"action": "subscribe", "rooms": ["feed"], "ref": 1})
                clients.append(client)
            for client in clients:
                client.transport.pause_reading()
            payloads = [[n, LAGGING_PAYLOAD] for n in range(LAGGING_EVENTS)]
            await served.run(publisher("feed", "feed.item", payloads))

            async def read_all(index: int, client: ClientConnection) -> None:
                await anyio.sleep(LATE_REQUEST_SECONDS)
                await client.send(json.dumps({"action": "ping", "ref": "late"}))
                await anyio.sleep(LAG_SECONDS - LATE_REQUEST_SECONDS)
                client.transport.resume_reading()
                received: list[int] = []
                try:
                    while True:
                        frame = await receive(client)
                        if frame["type"] == "feed.item":
                            received.append(frame["payload"][0])
                except WebSocketsClosed as exc:
                    code = None if exc.rcvd is None else int(exc.rcvd.code)
                    reason = None if exc.rcvd is None else exc.rcvd.reason
                results[index] = (received, code, reason)

            async with anyio.create_task_group() as tg:
                tg.start_soon(served.stop)
                while await served.run(is_running):
                    await anyio.sleep(0.001)
                for index, client in enumerate(clients):
                    tg.start_soon(read_all, index, client)
    expected = (list(range(LAGGING_EVENTS)), 1001, "server shutting down")
    assert [results[index] for index in range(LAGGING_CLIENTS)] == [expected] * LAGGING_CLIENTS


#: Far beyond the drain_timeout below plus the hub's one-second grace.
SILENT_PEER_CLOSE_TIMEOUT = 30.0
#: The bound on stopping the server with a silent peer: drain_timeout (0.5 s),
#: the hub's grace (1 s), and slack for a loaded machine; far below the close timeout.
SILENT_PEER_STOP_BOUND = 6.0


async def test_shutdown_bounds_the_closing_handshake_of_a_peer_that_never_answers(
    kind: ServerKind,
) -> None:
    # The peer reads nothing once shutdown begins, so it never answers close
    # 1001: the server must give up at the hub's shutdown deadline, not after
    # the close timeout of an ordinary close.
    with anyio.fail_after(TIMEOUT * 2):
        async with (
            serving(kind, drain_timeout=0.5, close_timeout=SILENT_PEER_CLOSE_TIMEOUT) as served,
            connected(served) as client,
        ):
            client.transport.pause_reading()
            with anyio.fail_after(SILENT_PEER_STOP_BOUND):
                await served.stop()
            client.transport.resume_reading()


async def test_handshake_after_shutdown_began_is_refused_with_503(kind: ServerKind) -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(kind) as served, connected(served) as client:
            async with anyio.create_task_group() as tg:
                # The connected client keeps shutdown from ending until it answers.
                tg.start_soon(served.run, Hub.aclose)
                while await served.run(is_running):
                    await anyio.sleep(0.001)
                with pytest.raises(InvalidStatus) as excinfo:
                    async with open_client(served):
                        pass
                assert excinfo.value.response.status_code == 503
                assert await close_code(client) == 1001
            assert (await served.stats()).connections_total == 1


class GatedAuthenticator:
    """Holds each handshake in authentication until released (from any thread)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    async def authenticate(self, handshake: Handshake, token: str | None) -> Principal:
        self.entered.set()
        while not self.release.is_set():
            await anyio.sleep(0.005)
        return Principal("u1")


async def test_handshake_admitted_before_shutdown_is_closed_1001_without_ack(
    kind: ServerKind,
) -> None:
    authenticator = GatedAuthenticator()
    bearer = {"Authorization": "Bearer t"}
    frames: list[dict[str, Any]] = []
    with anyio.fail_after(TIMEOUT):
        async with serving(kind, authenticator=authenticator, drain_timeout=0.5) as served:

            async def connect_late() -> None:
                async with open_client(served, additional_headers=bearer) as client:
                    with pytest.raises(WebSocketsClosed) as excinfo:
                        while True:
                            frames.append(await receive(client))
                closed = excinfo.value.rcvd
                assert closed is not None
                assert (closed.code, closed.reason) == (1001, "server shutting down")

            async with anyio.create_task_group() as tg:
                tg.start_soon(connect_late)
                while not authenticator.entered.is_set():
                    await anyio.sleep(0.005)
                tg.start_soon(served.run, Hub.aclose)
                while await served.run(is_running):
                    await anyio.sleep(0.001)
                authenticator.release.set()
            assert (await served.stats()).clients == 0
    assert frames == []  # never acknowledged


async def test_vanished_client_leaves_the_hub_and_its_rooms(kind: ServerKind) -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving(kind) as served, connected(served) as client:
            await request(client, {"action": "subscribe", "rooms": ["team:t1"], "ref": 1})
            assert (await served.stats()).members == {"team:t1": 1}
            client.transport.abort()  # no close frame
            await eventually(served, lambda stats: stats.clients == 0)
            assert (await served.stats()).rooms == 0


# Handshake


async def test_disallowed_origin_is_refused(kind: ServerKind) -> None:
    evil = {"Origin": "https://app.example.com.evil.com"}
    with anyio.fail_after(TIMEOUT):
        async with serving(kind, allowed_origins=["https://app.example.com"]) as served:
            if kind.refusal == "http":
                with pytest.raises(InvalidStatus) as excinfo:
                    async with open_client(served, additional_headers=evil):
                        pass
                assert excinfo.value.response.status_code == 403
            else:
                async with open_client(served, additional_headers=evil) as client:
                    assert await close_code(client) == 1008
            assert (await served.stats()).origin_refusals == 1
            assert (await served.stats()).connections_total == 0

            allowed = {"Origin": "https://app.example.com"}
            async with connected(served, additional_headers=allowed):
                assert (await served.stats()).clients == 1


async def test_handshake_facts_reach_the_authenticator(kind: ServerKind) -> None:
    authenticator = UserAuthenticator()
    with anyio.fail_after(TIMEOUT):
        async with (
            serving(kind, authenticator=authenticator) as served,
            open_client(
                served,
                f"{PATH}?room=chat%3A1&flag=",
                additional_headers={
                    "X-User": "u1",
                    "Cookie": "session=abc; theme=dark",
                    "Authorization": "Bearer t0ken",
                },
            ) as client,
        ):
            ack = await next_frame(client, "connection.ack")
            assert ack["payload"]["userId"] == "u1"
            assert authenticator.tokens == ["t0ken"]
            (handshake,) = authenticator.handshakes
            assert handshake.path == PATH
            assert handshake.header("x-user") == "u1"
            assert handshake.query_param("room") == "chat:1"
            assert handshake.query_param("flag") == ""
            assert handshake.cookies == {"session": "abc", "theme": "dark"}
            assert handshake.client == client.local_address[:2]
            assert handshake.subprotocols == ("roomcast.v1",)
