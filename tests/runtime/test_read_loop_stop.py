"""Stopping a connection's read loop from another task, on asyncio and trio."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from roomcast import Handshake, Hub, Principal
from roomcast._reader import ReadLoopStop
from roomcast.testing import ManualClock, TestClient

pytestmark = pytest.mark.anyio

asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])


def cancelling() -> int:
    """How many cancellations the running asyncio task has pending (0 elsewhere)."""
    if sys.version_info < (3, 11) or anyio.get_cancelled_exc_class().__module__ != (
        "asyncio.exceptions"
    ):
        return 0
    import asyncio

    task = asyncio.current_task()
    assert task is not None
    return task.cancelling()


async def receive(stop: ReadLoopStop, wait: Callable[[], Awaitable[object]]) -> object:
    """Wait in ``wait`` as the hub waits in ``transport.receive()``."""
    stop.waiting = True
    try:
        return await wait()
    finally:
        stop.waiting = False


async def stop_once_blocked(
    read_loop: Callable[[list[ReadLoopStop]], Coroutine[Any, Any, None]],
    also: Callable[[], object] = lambda: None,
) -> None:
    """Run ``read_loop`` in a task, stop it once it waits, and wait for its end."""
    holder: list[ReadLoopStop] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read_loop, holder)
            await anyio.wait_all_tasks_blocked()
            holder[0].cancel()
            holder[0].cancel()  # a second request changes nothing
            also()


async def test_stop_ends_a_loop_waiting_to_receive() -> None:
    outcome: list[object] = []

    async def read_loop(holder: list[ReadLoopStop]) -> None:
        stop = ReadLoopStop()
        holder.append(stop)
        with stop:
            await receive(stop, anyio.sleep_forever)
        outcome.append(cancelling())  # the task carries none of the stop's cancellation

    await stop_once_blocked(read_loop)
    assert outcome == [0]


async def test_stop_cancels_the_request_being_handled() -> None:
    reached: list[str] = []

    async def read_loop(holder: list[ReadLoopStop]) -> None:
        stop = ReadLoopStop()
        holder.append(stop)
        with stop:
            with stop.handling():
                await anyio.sleep_forever()
            reached.append("after handling")
        reached.append("after the loop")

    await stop_once_blocked(read_loop)
    assert reached[-1] == "after the loop"


@asyncio_only
async def test_an_anyio_cancellation_at_the_same_moment_is_not_lost() -> None:
    reached: list[str] = []
    outer = anyio.CancelScope()

    async def read_loop(holder: list[ReadLoopStop]) -> None:
        with outer:
            stop = ReadLoopStop()
            holder.append(stop)
            with stop:
                await receive(stop, anyio.sleep_forever)
            await anyio.lowlevel.checkpoint()  # the enclosing scope's cancellation arrives here
            reached.append("after a checkpoint")
        reached.append(f"outer caught: {outer.cancelled_caught}")

    await stop_once_blocked(read_loop, also=outer.cancel)  # the server goes away at once
    assert reached == ["outer caught: True"]


@asyncio_only
@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="the native stop needs Task.uncancel (3.11); on 3.10 the loop runs in an anyio "
    "cancel scope, which on 3.10 cannot tell a native cancellation from its own",
)
async def test_a_native_cancellation_at_the_same_moment_propagates() -> None:
    import asyncio

    reached: list[str] = []
    holder: list[ReadLoopStop] = []

    async def read_loop() -> None:
        stop = ReadLoopStop()
        holder.append(stop)
        try:
            with stop:
                await receive(stop, anyio.sleep_forever)
            reached.append("after the loop")  # must not run: the task was cancelled
        except asyncio.CancelledError:
            reached.append("cancelled")
            raise

    task = asyncio.ensure_future(read_loop())
    await anyio.wait_all_tasks_blocked()
    holder[0].cancel()
    task.cancel()  # the server cancels the connection's task at the same moment
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reached == ["cancelled"]


@asyncio_only
async def test_a_receive_that_swallows_the_cancellation_still_stops() -> None:
    outcome: list[object] = []

    async def swallowing() -> str:
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            return "late frame"
        raise AssertionError("unreachable")

    async def read_loop(holder: list[ReadLoopStop]) -> None:
        stop = ReadLoopStop()
        holder.append(stop)
        with stop:
            while not stop.cancel_called:
                outcome.append(await receive(stop, swallowing))
        outcome.append(cancelling())
        await anyio.lowlevel.checkpoint()  # no cancellation left behind for the next await
        outcome.append("done")

    await stop_once_blocked(read_loop)
    assert outcome == ["late frame", 0, "done"]


@asyncio_only
async def test_a_stop_between_waits_sends_no_cancellation() -> None:
    stop = ReadLoopStop()
    with stop:
        stop.cancel()  # the loop is neither waiting nor handling
        await anyio.lowlevel.checkpoint()  # would raise if a cancellation had been sent
    assert cancelling() == 0


async def test_closing_a_connection_interrupts_a_request_stuck_in_the_authorizer() -> None:
    entered = anyio.Event()

    async def stuck(principal: Principal, action: str, room: str) -> bool:
        entered.set()
        await anyio.sleep_forever()
        return True

    class UserAuthenticator:
        async def authenticate(self, handshake: Handshake, token: str | None) -> Principal:
            return Principal("u1")

    async with Hub(clock=ManualClock(), authenticator=UserAuthenticator(), authorizer=stuck) as hub:
        async with TestClient(hub) as client:
            await client.send_json({"action": "subscribe", "rooms": ["team:t1"], "ref": 1})
            with anyio.fail_after(5):
                await entered.wait()
            assert hub.disconnect_user("u1", 4001, "revoked") == 1
            with anyio.fail_after(5):
                assert await client.wait_closed() == 4001
        assert hub.stats().clients == 0
