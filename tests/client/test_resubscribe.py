"""A hub closes the client mid-stream: it reconnects, resubscribes with ``since``, catches up.

Behind every adapter on asyncio, and with the client on trio. The hub stays up (its
memory history keeps the room), so the messages published while the client was
away are replayed, then ``Recovery(recovered=True)``.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import roomcast.client
from adapters.contract.servers import KINDS, Served, ServerKind
from roomcast import CloseCode, Hub
from roomcast.client import Event, PresenceChange, Received, Recovery, StateChange

from .conftest import TIMEOUT, fast_backoff, hub_kwargs, needs_websockets_trio, token

pytestmark = pytest.mark.anyio

TRIO_KIND = next(kind for kind in KINDS if kind.hub_backend == "trio")


@pytest.fixture(params=[kind.param() for kind in KINDS])
def kind(request: pytest.FixtureRequest) -> ServerKind:
    server_kind: ServerKind = request.param
    return server_kind


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def publish(served: Served, first: int, count: int) -> None:
    async def run(hub: Hub) -> None:
        for number in range(first, first + count):
            await hub.publish("team:t1", "tick.sent", {"n": number})

    await served.run(run)


async def disconnect(served: Served, code: int) -> None:
    async def run(hub: Hub) -> Any:
        return hub.disconnect_user("u1", code, "test")

    await served.run(run)


async def catch_up(served: Served) -> None:
    changes: list[StateChange] = []
    conn = roomcast.client.connect(served.url, token=token("u1"), backoff=fast_backoff())
    conn.on_state_change(changes.append)
    async with conn:
        sub = await conn.subscribe("team:t1")
        await publish(served, 0, 3)
        items: list[Received] = []
        with anyio.fail_after(TIMEOUT):
            while len([item for item in items if isinstance(item, Event)]) < 3:
                items.append(await anext(sub))
            await disconnect(served, CloseCode.SLOW_CONSUMER)
            await conn.wait_state("disconnected")
            await publish(served, 3, 4)  # while the client is away
            while not any(isinstance(item, Recovery) for item in items):
                items.append(await anext(sub))
        kept = [item for item in items if not isinstance(item, PresenceChange)]
        events = [item for item in kept if isinstance(item, Event)]
        assert [event.payload["n"] for event in events] == list(range(7))
        assert [event.offset for event in events] == list(range(1, 8))
        recovery = [item for item in kept if isinstance(item, Recovery)]
        assert recovery == [Recovery("team:t1", True, 7, events[0].epoch or "")]
        # The notice follows the replayed events.
        assert kept.index(recovery[0]) == len(kept) - 1
    lost = next(change for change in changes if change.state == "disconnected")
    assert lost.code == CloseCode.SLOW_CONSUMER


async def test_a_closed_client_resubscribes_with_since_and_gets_what_it_missed(
    kind: ServerKind,
) -> None:
    async with kind.start(hub_kwargs()) as served:
        await catch_up(served)


@needs_websockets_trio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_the_trio_client_resubscribes_with_since(anyio_backend: str) -> None:
    async with TRIO_KIND.start(hub_kwargs()) as served:
        await catch_up(served)


async def test_a_room_refused_on_resubscribe_ends_its_subscription_with_the_error() -> None:
    allowed = {"team:t1": True}

    def authorize(principal: object, action: object, room: str) -> bool:
        return allowed.get(room, False)

    async with KINDS[0].start(hub_kwargs(authorizer=authorize)) as served:
        conn = roomcast.client.connect(served.url, token=token("u1"), backoff=fast_backoff())
        async with conn:
            sub = await conn.subscribe("team:t1")
            allowed["team:t1"] = False
            await disconnect(served, CloseCode.GOING_AWAY)
            with anyio.fail_after(TIMEOUT), pytest.raises(roomcast.PermissionDenied):
                async for _ in sub:
                    pass
            assert "team:t1" not in conn.subscriptions
            assert conn.state == "connected"
