"""RedisBackend's publish writer: one per Redis, sending waiting publishes as one pipeline.

A publish does not send its command itself: it queues it, and the shard's
writer task sends whatever is queued as one pipeline (``transaction=False``),
in the order it was queued, then hands each caller its own reply. A publish
that finds the writer idle goes out at once; publishes that queue while a
round trip is in flight go out together in the next one (group commit: no
timer, no added latency). The queue is bounded: when it is full, publishers
wait for room, within their ``publish_timeout``. Only the task that runs the
writer is asyncio's (started by the backend); this module uses anyio alone.
"""

from __future__ import annotations

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
    """One queued command (EVALSHA of ``script`` when given), and its outcome."""

    __slots__ = ("abandoned", "args", "done", "error", "reply", "script")

    def __init__(self, args: tuple[Any, ...], script: Script | None) -> None:
        self.args = args
        self.script = script
        self.done = anyio.Event()
        self.reply: Any = None
        self.error: BackendError | None = None
        # Set when the caller stopped waiting (cancelled, or out of time).
        self.abandoned = False

    def settle(self, reply: Any = None, error: str | None = None) -> None:
        if not self.done.is_set():
            self.reply = reply
            self.error = None if error is None else BackendError(error)
            self.done.set()


class Writer:
    """Sends one Redis's publishes, queued by concurrent callers, as pipelines, in order.

    `run` is the writer task, started and cancelled by the backend. A round
    trip that fails, or takes longer than ``timeout``, fails every command in
    it with [`BackendError`][roomcast.BackendError]; a command Redis refuses
    fails alone. A script Redis has forgotten (NOSCRIPT, after a restart or
    SCRIPT FLUSH) is loaded again and its commands sent again, in their order.
    """

    def __init__(self, client: Redis, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._queue, self._queued = anyio.create_memory_object_stream[_Command](0)
        self._queue.close()
        self._queued.close()
        self.running = False

    def open(self) -> None:
        """Make the queue; `send` is refused until this, and again after `close`."""
        self._queue, self._queued = anyio.create_memory_object_stream[_Command](QUEUE_SIZE)
        self.running = True

    async def send(self, *args: Any, script: Script | None = None) -> Any:
        """Queue one command and return its reply; with ``script``, EVALSHA it with ``args``.

        Raises:
            BackendError: the command, or the round trip that carried it, failed,
                or the writer is not running.
        """
        if not self.running:
            raise BackendError("the Redis backend is not started")
        command = _Command(args, script)
        try:
            await self._queue.send(command)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise BackendError("the Redis backend is closed") from None
        try:
            await command.done.wait()
        finally:
            # Still queued: the writer skips it. On its way: its reply is dropped.
            command.abandoned = True
        if command.error is not None:
            raise command.error
        return command.reply

    async def run(self) -> None:
        """Send what is queued, one pipeline per round trip, until cancelled or stopped."""
        live: list[_Command] = []
        try:
            while self.running:
                batch = [await self._queued.receive()]
                batch += self._drain(BATCH_SIZE - 1)
                live = [command for command in batch if not command.abandoned]
                try:
                    if live:
                        with anyio.fail_after(self._timeout):
                            await self._round_trip(live)
                except TimeoutError:
                    _fail(live, f"Redis did not answer within {self._timeout:g} s")
                except Exception as exc:  # the writer outlives any one round trip
                    _fail(live, f"Redis failed: {type(exc).__name__}: {exc}")
        finally:
            self.running = False
            _fail(live, "the Redis backend is closed")

    def stop(self) -> None:
        """End `run` at its next round, even if a timeout swallowed its cancellation."""
        self.running = False

    def close(self) -> None:
        """Fail every command still queued, and close the queue (once `run` has ended)."""
        self.running = False
        _fail(self._drain(QUEUE_SIZE), "the Redis backend is closed")
        self._queue.close()
        self._queued.close()

    def _drain(self, limit: int) -> list[_Command]:
        batch: list[_Command] = []
        while len(batch) < limit:
            try:
                batch.append(self._queued.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
        return batch

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
            if isinstance(reply, Exception):
                command.settle(error=f"Redis failed: {type(reply).__name__}: {reply}")
            else:
                command.settle(reply)

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
        command.settle(error=message)
