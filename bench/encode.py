"""Benchmark the encoding of server frames: orjson's path against the standard library's.

Both paths run in the same process, on the same values, in neighbouring samples
(A B, B A, ...): ``roomcast.wire.dumps`` as it is with orjson installed, and with
orjson switched off, which is the standard library's path. Run
``python -m bench.encode --help``; see bench/README.md for how to read the output.
This is a benchmark, not a test: it asserts nothing about timing (it does check
that both paths write the same text).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import anyio

if not __package__:
    # Run as a script (python bench/encode.py): make bench importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import roomcast
from bench.hub_fanout import QUIET_HEARTBEAT, connect
from roomcast import Hub
from roomcast import _frames as frames
from roomcast.wire import dumps

#: CPU seconds each sample aims for: long enough for process_time, short enough to pair.
SAMPLE_SECONDS = 0.02
MEMBERS = 10
EVENT_TYPE = "bench.event"


def issue(n: int) -> dict[str, Any]:
    """One issue as a tracker would publish it: ~120 bytes of JSON, one float, one null."""
    return {
        "id": f"i{n}",
        "title": f"Crash on save when offline ({n})",
        "number": n,
        "estimate": n * 0.5,
        "done": n % 3 == 0,
        "assignee": None,
        "labels": ["bug", "p1"],
    }


def payloads() -> dict[str, Any]:
    """The values measured, by name: a reply roomcast writes, then ~100 B, ~2 KB, ~64 KB."""
    return {
        "reply frame": {
            "type": "reply",
            "ref": 1,
            "ok": True,
            "payload": {"granted": ["team:t1", "issue:i42"], "denied": []},
        },
        "small": {"n": 1, "text": "x" * 100},
        "medium": {"room": "team:t1", "issues": [issue(n) for n in range(16)]},
        "large": {"room": "team:t1", "issues": [issue(n) for n in range(470)]},
    }


@contextmanager
def encoder(fast: bool) -> Iterator[None]:
    """Within the block, ``dumps`` takes orjson's path (``fast``) or the standard library's."""
    saved = frames._orjson_dumps
    frames._orjson_dumps = saved if fast else None
    try:
        yield
    finally:
        frames._orjson_dumps = saved


def cpu_of(function: Callable[[], object], number: int) -> float:
    """CPU seconds per call of ``function`` over ``number`` calls, the GC off."""
    gc.collect()
    gc.disable()
    try:
        start = time.process_time()
        for _ in range(number):
            function()
        return (time.process_time() - start) / number
    finally:
        gc.enable()


async def cpu_of_async(function: Callable[[], Awaitable[object]], number: int) -> float:
    gc.collect()
    gc.disable()
    try:
        start = time.process_time()
        for _ in range(number):
            await function()
        return (time.process_time() - start) / number
    finally:
        gc.enable()


@dataclass
class Row:
    name: str
    size: int
    stdlib: list[float]
    fast: list[float]

    @property
    def ratios(self) -> list[float]:
        return [f / s for f, s in zip(self.fast, self.stdlib, strict=True)]


def calibrate(function: Callable[[], object]) -> int:
    """Calls per sample so that one sample takes about SAMPLE_SECONDS."""
    number = 1
    while True:
        elapsed = cpu_of(function, number) * number
        if elapsed >= SAMPLE_SECONDS / 10 or number >= 1_000_000:
            return max(1, int(number * SAMPLE_SECONDS / max(elapsed, 1e-9)))
        number *= 10


def measure_dumps(name: str, value: Any, pairs: int) -> Row:
    with encoder(True):
        fast_text = dumps(value)
    with encoder(False):
        stdlib_text = dumps(value)
    if fast_text != stdlib_text:
        raise RuntimeError(f"{name}: orjson's path wrote other text than the standard library's")
    with encoder(False):
        number = calibrate(lambda: dumps(value))
    row = Row(name, len(stdlib_text.encode()), [], [])
    for pair in range(pairs):
        # A B, then B A: a slow spell of a shared machine falls on both alike.
        for fast in (True, False) if pair % 2 else (False, True):
            with encoder(fast):
                (row.fast if fast else row.stdlib).append(cpu_of(lambda: dumps(value), number))
    return row


async def measure_publish(hub: Hub, name: str, value: Any, pairs: int, rounds: int) -> Row:
    """CPU per ``hub.publish`` of ``value`` to a room of MEMBERS sinks, both paths."""
    row = Row(f"hub.publish, {name}", len(dumps(value).encode()), [], [])

    async def publish() -> None:
        await hub.publish("bench:room", EVENT_TYPE, value)

    for pair in range(pairs):
        for fast in (True, False) if pair % 2 else (False, True):
            with encoder(fast):
                (row.fast if fast else row.stdlib).append(await cpu_of_async(publish, rounds))
    return row


def spread(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    return (
        f"{statistics.median(values) * scale:.{digits}f} "
        f"[{min(values) * scale:.{digits}f}-{max(values) * scale:.{digits}f}]"
    )


def print_rows(title: str, rows: list[Row]) -> None:
    print(f"\n{title}")
    header = f"{'value':<26} {'bytes':>7}  {'stdlib us':>24}  {'orjson us':>24}  orjson/stdlib"
    print(header)
    print("-" * (len(header) + 12))
    for row in rows:
        print(
            f"{row.name:<26} {row.size:>7}  {spread(row.stdlib, 1e6):>24}  "
            f"{spread(row.fast, 1e6):>24}  {spread(row.ratios, digits=3)}"
            f" ({len(row.ratios)} pairs)"
        )


async def run_publish(values: dict[str, Any], pairs: int, rounds: int) -> list[Row]:
    rows = []
    async with Hub(heartbeat=QUIET_HEARTBEAT) as hub, anyio.create_task_group() as tg:
        await connect(hub, tg, [["bench:room"]] * MEMBERS)
        for name, value in values.items():
            if name != "reply frame":
                rows.append(await measure_publish(hub, name, value, pairs, rounds))
        tg.cancel_scope.cancel()
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pairs", type=int, default=21, help="samples per path and value (default 21)"
    )
    parser.add_argument(
        "--rounds", type=int, default=200, help="publishes per hub.publish sample (default 200)"
    )
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"roomcast encoding benchmark, {now}")
    if frames._orjson_dumps is None:
        print("orjson is not installed (pip install 'roomcast[speedups]'): nothing to compare")
        raise SystemExit(2)
    print(
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"orjson {version('orjson')}, roomcast {roomcast.__version__}, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
    )
    print(f"pairs={args.pairs} (A B, B A, ...), CPU time, GC disabled inside timed loops")
    values = payloads()
    rows = [measure_dumps(name, value, args.pairs) for name, value in values.items()]
    print_rows("roomcast.wire.dumps: CPU per call", rows)
    publish = anyio.run(run_publish, values, args.pairs, args.rounds)
    print_rows(f"hub.publish to a room of {MEMBERS} sinks: CPU per publish", publish)


if __name__ == "__main__":
    main()
