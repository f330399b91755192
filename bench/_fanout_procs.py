"""Child processes of ``bench/fanout.py``: spawn, pin, talk JSON lines, stop."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


class ChildError(RuntimeError):
    """A child process did not answer in time, or answered with an error."""


class Child:
    """A bench child process: commands on its stdin, one JSON line per answer on stdout.

    Its stderr goes to ours. It is always stopped by :meth:`stop` (quit, then
    kill by its own pid when it does not exit within a few seconds); the children
    also exit by themselves when their stdin closes or after ``--max-seconds``.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        cpus: set[int] | None,
        executable: str | None = None,
    ) -> None:
        """Start ``executable *argv`` (the running Python by default) in the bench folder."""
        self.name = name
        self.process = subprocess.Popen(
            [executable or sys.executable, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            cwd=HERE,
        )
        self.pinned = False
        if cpus:
            try:
                os.sched_setaffinity(self.process.pid, cpus)
                self.pinned = True
            except OSError:
                pass
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(command) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise ChildError(f"{self.name} is gone") from exc

    def read(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise ChildError(f"{self.name} did not answer within {timeout:.0f} s") from None
        if line is None:
            raise ChildError(f"{self.name} exited (code {self.process.poll()})")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise ChildError(f"{self.name}: {answer['error']}")
        return answer

    def call(self, command: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        self.send(command)
        return self.read(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ChildError):
                self.send({"cmd": "quit"})
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal shares, largest first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class Clients:
    """The client processes: each holds its share of the connections."""

    def __init__(self, count: int, cpus: set[int] | None, max_seconds: float) -> None:
        self.children = [
            Child(
                f"clients-{i}",
                ["_fanout_client.py", "--max-seconds", str(max_seconds)],
                cpus,
            )
            for i in range(count)
        ]
        for child in self.children:
            child.read(timeout=30)

    def all(self, commands: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
        for child, command in zip(self.children, commands, strict=True):
            child.send(command)
        return [child.read(timeout) for child in self.children]

    def connect(self, port: int, total: int, timeout: float = 180.0) -> list[dict[str, Any]]:
        shares = split(total, len(self.children))
        return self.all(
            [
                {"cmd": "connect", "port": port, "total": share, "timeout": timeout}
                for share in shares
            ],
            timeout + 30,
        )

    def close(self, total: int) -> list[dict[str, Any]]:
        shares = split(total, len(self.children))
        return self.all([{"cmd": "close", "total": share} for share in shares], 60)

    def arm(self, m: int, timeout: float, stall: float = 0.0) -> None:
        """Count the next ``m`` events; with ``stall``, stop reading for that many seconds."""
        command = {"cmd": "expect", "m": m, "timeout": timeout, "stall": stall}
        self.all([command] * len(self.children), 30)

    def results(self, timeout: float) -> list[dict[str, Any]]:
        return [child.read(timeout) for child in self.children]

    def status(self) -> list[dict[str, Any]]:
        return self.all([{"cmd": "status"}] * len(self.children), 30)

    def stop(self) -> None:
        for child in self.children:
            child.stop()
