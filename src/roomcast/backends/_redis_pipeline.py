"""RedisBackend's publish writer: one per Redis, sending waiting publishes as one pipeline.

A publish does not send its command itself: it queues it, and the shard's
writer task sends whatever is queued as one pipeline (``transaction=False``),
in the order it was queued, then hands each caller its own reply. A publish
that finds the writer idle goes out at once; publishes that queue while a
round trip is in flight go out together in the next one (group commit: no
timer, no added latency). The queue is bounded: when it is full, publishers
wait for room, within their ``publish_timeout``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final, Protocol

import anyio
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from ..exceptions import BackendError

__all__ = ["QUEUE_SIZE", "Script", "Writer"]

#: Publishes that may wait for the writer, per Redis, before publishers wait for room.
QUEUE_SIZE: Final = 1024
#: The most commands one pipeline carries.
BATCH_SIZE: Final = 256


class Script(Protocol):
    """What the writer needs of a script ``register_script`` made: its source and SHA."""

    script: Any
    sha: str


class _Command:
    """One queued command (EVALSHA of ``script`` when given), and its caller's future."""

    __slots__ = ("args", "future", "script")

    def __init__(
        self, args: tuple[Any, ...], script: Script | None, future: asyncio.Future[Any]
    ) -> None:
        self.args = args
        self.script = script
        self.future = future


class Writer:
    """Sends one Redis's publishes, queued by concurrent callers, as pipelines, in order.

    The writer task starts with the first command and is stopped by `aclose`.
    A round trip that fails, or takes longer than ``timeout``, fails every
    command in it with [`BackendError`][roomcast.BackendError]; a command Redis
    refuses fails alone. A script Redis has forgotten (NOSCRIPT, after a
    restart or SCRIPT FLUSH) is loaded again and its commands sent again, in
    their order.
    """

    def __init__(self, client: Redis, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._queue: asyncio.Queue[_Command] = asyncio.Queue(QUEUE_SIZE)
        self._task: asyncio.Task[None] | None = None

    async def send(self, *args: Any, script: Script | None = None) -> Any:
        """Queue one command and return its reply; with ``script``, EVALSHA it with ``args``.

        Raises:
            BackendError: the command, or the round trip that carried it, failed.
        """
        task = self._task
        if task is None or task.done():
            self._task = asyncio.create_task(self._run(), name="roomcast redis writer")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # A caller cancelled while its command waits cancels the future: the
        # writer skips it, and a reply that comes for it anyway is dropped.
        await self._queue.put(_Command(args, script, future))
        return await future

    async def aclose(self) -> None:
        """Stop the writer; every command still queued fails with BackendError."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # Bounded: a cancellation a timeout swallowed ends the loop instead.
            await asyncio.wait([task], timeout=self._timeout)
        _fail(self._drain(QUEUE_SIZE), "the Redis backend is closed")

    def _drain(self, limit: int) -> list[_Command]:
        batch: list[_Command] = []
        while len(batch) < limit and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _run(self) -> None:
        while self._task is asyncio.current_task():
            first = await self._queue.get()
            batch = [first, *self._drain(BATCH_SIZE - 1)]
            live = [command for command in batch if not command.future.done()]
            try:
                if live:
                    with anyio.fail_after(self._timeout):
                        await self._round_trip(live)
            except TimeoutError:
                _fail(live, f"Redis did not answer within {self._timeout:g} s")
            except Exception as exc:  # the writer outlives any one round trip
                _fail(live, f"Redis failed: {type(exc).__name__}: {exc}")
            except BaseException:
                _fail(live, "the Redis backend is closed")
                raise

    async def _round_trip(self, commands: list[_Command]) -> None:
        replies = await self._pipeline(commands)
        forgotten = {
            index: command.script
            for index, (command, reply) in enumerate(zip(commands, replies, strict=True))
            if isinstance(reply, NoScriptError) and command.script is not None
        }
        if forgotten:
            for script in {id(script): script for script in forgotten.values()}.values():
                script.sha = await self._client.script_load(script.script)
            again = await self._pipeline([commands[index] for index in forgotten])
            for index, reply in zip(forgotten, again, strict=True):
                replies[index] = reply
        for command, reply in zip(commands, replies, strict=True):
            if command.future.done():
                continue
            if isinstance(reply, Exception):
                _fail([command], f"Redis failed: {type(reply).__name__}: {reply}")
            else:
                command.future.set_result(reply)

    async def _pipeline(self, commands: list[_Command]) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            for command in commands:
                if command.script is None:
                    pipe.execute_command(*command.args)
                else:
                    pipe.execute_command("EVALSHA", command.script.sha, *command.args)
            return await pipe.execute(raise_on_error=False)


def _fail(commands: list[_Command], message: str) -> None:
    for command in commands:
        if not command.future.done():
            command.future.set_exception(BackendError(message))
