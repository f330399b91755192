"""Benchmark the hub's fan-out and idle-connection memory against a floor measured in the same run.

No sockets: every connection is a :class:`SinkTransport`, whose ``try_send``
takes a frame synchronously and does nothing else, so what is left is the
hub's own work. Run ``python -m bench.hub_fanout --help``; see bench/README.md
for how to read the output. This is a benchmark, not a test: it asserts nothing
about timing.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import inspect
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

import roomcast
from roomcast import ConnectionClosed, Handshake, HeartbeatPolicy, Hub

if not __package__:
    # Run as a script (python bench/hub_fanout.py): make the bench package importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._memory_kinds import by_kind, growth

#: Everything under this directory counts as roomcast's own code in the memory report.
ROOMCAST_DIR = os.path.dirname(os.path.abspath(roomcast.__file__)) + os.sep
#: Heartbeats far enough apart that none fires during a run.
QUIET_HEARTBEAT = HeartbeatPolicy(interval=3600, timeout=7200)
EVENT_TYPE = "bench.event"
TEXT = "x" * 100
#: Frames tracebacks keep in the memory report (deep enough to reach roomcast under anyio).
TRACE_DEPTH = 12


class SinkTransport:
    """The cheapest transport there can be: it takes every frame at once, without I/O.

    Inbound frames are injected with :meth:`inject` (through a small memory
    object stream); after :meth:`end_input`, :meth:`receive` blocks until
    :meth:`close` and then raises :class:`~roomcast.ConnectionClosed`.
    """

    __slots__ = ("_closed", "_input", "_output", "count", "handshake", "last")

    def __init__(self) -> None:
        self.handshake = Handshake()
        self.count = 0
        self.last: str | None = None
        self._closed = anyio.Event()
        send, receive = anyio.create_memory_object_stream[str](4)
        self._input: MemoryObjectSendStream[str] | None = send
        self._output: MemoryObjectReceiveStream[str] | None = receive

    def inject(self, frame: str) -> None:
        """Queue ``frame`` as if the peer had sent it."""
        if self._input is None:
            raise RuntimeError("input already ended")
        self._input.send_nowait(frame)

    def end_input(self) -> None:
        """No more inbound frames: receive() now waits for close()."""
        if self._input is not None:
            self._input.close()
            self._input = None

    def receive(self) -> Coroutine[Any, Any, str]:
        # A plain method returning the coroutine, so that the coroutine object
        # (its frame) is allocated in this class's code and counted as the
        # transport's, not as roomcast's (the caller's line) in the memory table.
        return self._receive()

    async def _receive(self) -> str:
        if self._output is not None:
            try:
                return await self._output.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                self._output = None
        await self._closed.wait()
        raise ConnectionClosed(1000, "")

    def try_send(self, frame: str) -> bool:
        self.count += 1
        self.last = frame
        return True

    async def send(self, frames: list[str]) -> None:
        self.count += len(frames)
        if frames:
            self.last = frames[-1]

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self._closed.set()
        if self._input is not None:
            self._input.close()
            self._input = None
        await anyio.lowlevel.checkpoint()


@dataclass
class Fleet:
    """Connected sinks and the rooms each one joined."""

    sinks: list[SinkTransport]
    rooms: list[list[str]]


async def connect(hub: Hub, task_group: TaskGroup, rooms_of: Sequence[list[str]]) -> Fleet:
    """Serve one SinkTransport per entry of ``rooms_of`` and subscribe it with a real frame.

    Returns once every sink has received its ``connection.ack`` and its
    subscribe reply, and ``hub.stats().members`` agrees.
    """
    sinks = [SinkTransport() for _ in rooms_of]
    return await connect_sinks(hub, task_group, sinks, rooms_of)


async def connect_sinks(
    hub: Hub, task_group: TaskGroup, sinks: list[SinkTransport], rooms_of: Sequence[list[str]]
) -> Fleet:
    for sink, rooms in zip(sinks, rooms_of, strict=True):
        sink.inject(json.dumps({"action": "subscribe", "rooms": rooms, "ref": 1}))
        sink.end_input()
        task_group.start_soon(hub.serve, sink)
    # ack + subscribe reply = 2 frames per sink. Polled, so that try_send stays
    # a bare counter (no completion event to check on the path being measured).
    while any(sink.count < 2 for sink in sinks):  # noqa: ASYNC110
        await anyio.sleep(0.01)
    expected: dict[str, int] = {}
    for rooms in rooms_of:
        for room in rooms:
            expected[room] = expected.get(room, 0) + 1
    members = hub.stats().members
    missing = {room: n for room, n in expected.items() if members.get(room, 0) < n}
    if missing:
        raise RuntimeError(f"not every client joined: {len(missing)} rooms short")
    return Fleet(sinks, list(rooms_of))


# ---------------------------------------------------------------------- throughput


@dataclass
class Sample:
    cpu: float
    wall: float
    deliveries: int
    lost: int


def timed(function: Callable[[], None]) -> tuple[float, float]:
    gc.collect()
    gc.disable()
    try:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        function()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        gc.enable()
    return cpu, wall


async def timed_async(function: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    gc.collect()
    gc.disable()
    try:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        await function()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        gc.enable()
    return cpu, wall


@dataclass
class Scenario:
    """Publish ``rounds`` times to each of ``rooms``; every room's members are ``groups[i]``."""

    name: str
    rooms: list[str]
    groups: list[list[SinkTransport]]
    rounds: int

    @property
    def deliveries(self) -> int:
        return self.rounds * sum(len(group) for group in self.groups)


async def measure_hub(hub: Hub, scenario: Scenario) -> Sample:
    sinks = [sink for group in scenario.groups for sink in group]
    before = sum(sink.count for sink in sinks)
    rooms, rounds = scenario.rooms, scenario.rounds

    async def publish_loop() -> None:
        publish = hub.publish
        for n in range(rounds):
            for room in rooms:
                await publish(room, EVENT_TYPE, {"n": n, "text": TEXT})

    cpu, wall = await timed_async(publish_loop)
    got = sum(sink.count for sink in sinks) - before
    return Sample(cpu, wall, scenario.deliveries, scenario.deliveries - got)


def measure_floor(scenario: Scenario) -> Sample:
    """Call each recipient's ``try_send(frame)`` in a plain loop: the transport's own cost."""
    # The frame each room's members got last: the same string the hub hands out.
    plan = [(group[0].last or "", group) for group in scenario.groups]
    rounds = scenario.rounds

    def floor_loop() -> None:
        for _ in range(rounds):
            for frame, group in plan:
                for transport in group:
                    transport.try_send(frame)

    cpu, wall = timed(floor_loop)
    return Sample(cpu, wall, scenario.deliveries, 0)


def measure_encode_floor(scenario: Scenario) -> Sample:
    """What any server must do per publish: encode the event once, then hand it to each sink.

    The same event fields the hub sends (type, room, id, payload, timestamp,
    userId), encoded with ``json.dumps`` per room per round, then the plain
    ``try_send`` loop.
    """
    rooms_groups = list(zip(scenario.rooms, scenario.groups, strict=True))
    rounds = scenario.rounds
    dumps = json.dumps

    def encode_floor_loop() -> None:
        for n in range(rounds):
            for room, group in rooms_groups:
                frame = dumps(
                    {
                        "type": EVENT_TYPE,
                        "room": room,
                        "id": f"m-{n}",
                        "payload": {"n": n, "text": TEXT},
                        "timestamp": int(time.time() * 1000),
                        "userId": None,
                    },
                    separators=(",", ":"),
                )
                for transport in group:
                    transport.try_send(frame)

    cpu, wall = timed(encode_floor_loop)
    return Sample(cpu, wall, scenario.deliveries, 0)


@dataclass
class Result:
    name: str
    hub: list[Sample]
    floor: list[Sample]
    encode_floor: list[Sample]


def per_delivery_us(samples: list[Sample], wall: bool = False) -> list[float]:
    return [(s.wall if wall else s.cpu) / s.deliveries * 1e6 for s in samples]


async def run_throughput(
    scenarios_spec: list[tuple[str, int, int, int]], repeat: int
) -> list[Result]:
    """Run each ``(name, rooms, members per room, rounds)`` scenario on one hub, shared clients."""
    clients = max(rooms * members for _, rooms, members, _ in scenarios_spec)
    results: list[Result] = []
    async with Hub(heartbeat=QUIET_HEARTBEAT) as hub, anyio.create_task_group() as task_group:
        # Client i is in "s{k}:r{i % rooms}" for each scenario k, so one set of
        # connections serves every scenario.
        rooms_of = [
            [f"s{k}:r{i % rooms}" for k, (_, rooms, _, _) in enumerate(scenarios_spec)]
            for i in range(clients)
        ]
        t0 = time.perf_counter()
        fleet = await connect(hub, task_group, rooms_of)
        print(f"connected {clients} clients in {time.perf_counter() - t0:.1f} s", flush=True)
        for k, (name, rooms, members, rounds) in enumerate(scenarios_spec):
            groups: list[list[SinkTransport]] = [[] for _ in range(rooms)]
            for i, sink in enumerate(fleet.sinks[: rooms * members]):
                groups[i % rooms].append(sink)
            scenario = Scenario(name, [f"s{k}:r{j}" for j in range(rooms)], groups, rounds)
            # Warm up (and leave each room's frame in its sinks' ``last`` for the floor).
            await measure_hub(hub, Scenario(name, scenario.rooms, groups, 1))
            result = Result(name, [], [], [])
            for _ in range(repeat):
                result.hub.append(await measure_hub(hub, scenario))
                result.floor.append(measure_floor(scenario))
                result.encode_floor.append(measure_encode_floor(scenario))
            results.append(result)
        await hub.aclose()
    return results


def spread(values: list[float], digits: int = 3) -> str:
    """``median [min-max]``."""
    median, low, high = statistics.median(values), min(values), max(values)
    return f"{median:.{digits}f} [{low:.{digits}f}-{high:.{digits}f}]"


def print_throughput(results: list[Result]) -> None:
    print()
    print("Fan-out: CPU time per delivery, median [min-max] of the repetitions")
    print("  hub   = await hub.publish(room, ...) for every room, every round")
    print("  floor = transport.try_send(frame) for every recipient in a plain loop")
    header = (
        f"{'scenario':<24}{'deliveries':>11}  {'hub us/dlv':<22}{'floor us/dlv':<22}"
        f"{'overhead us':<22}{'hub/floor':<20}{'hub dlv/s':>11}{'lost':>6}"
    )
    print(header)
    print("-" * len(header))
    for result in results:
        hub = per_delivery_us(result.hub)
        floor = per_delivery_us(result.floor)
        overhead = [h - f for h, f in zip(hub, floor, strict=True)]
        ratio = [h / f for h, f in zip(hub, floor, strict=True)]
        rate = 1e6 / statistics.median(hub)
        lost = sum(sample.lost for sample in result.hub)
        print(
            f"{result.name:<24}{result.hub[0].deliveries:>11}  {spread(hub):<22}{spread(floor):<22}"
            f"{spread(overhead):<22}{spread(ratio, 1):<20}{rate:>11,.0f}{lost:>6}"
        )
    print()
    print("Against the encode-and-send floor: json.dumps of the event once per room per round,")
    print("then try_send to each recipient (the least work any server must do per publish)")
    for result in results:
        hub = per_delivery_us(result.hub)
        floor = per_delivery_us(result.encode_floor)
        overhead = [h - f for h, f in zip(hub, floor, strict=True)]
        ratio = [h / f for h, f in zip(hub, floor, strict=True)]
        print(
            f"  {result.name:<22} floor {spread(floor)} us  overhead {spread(overhead)} us"
            f"  hub/floor {spread(ratio, 2)}"
        )
    print()
    print("Wall time per delivery (us), median [min-max]")
    for result in results:
        print(
            f"  {result.name:<22} hub {spread(per_delivery_us(result.hub, wall=True))}"
            f"  floor {spread(per_delivery_us(result.floor, wall=True))}"
        )


# ---------------------------------------------------------------------- memory


def _sink_code() -> tuple[str, int, int]:
    lines, first = inspect.getsourcelines(SinkTransport)
    return os.path.abspath(__file__), first, first + len(lines)


@dataclass
class Memory:
    clients: int
    roomcast_own: int
    roomcast_caused: int
    total: int
    by_file: list[tuple[str, int]]
    by_kind: dict[str, int]


def attribute(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, clients: int, kinds: dict[str, int]
) -> Memory:
    """Split the growth between two snapshots by who allocated it.

    - roomcast own: the allocating (innermost) frame is in ``src/roomcast``.
    - roomcast caused: some frame of the traceback is in ``src/roomcast``
      (adds the anyio tasks, scopes and events roomcast creates).
    - total: everything, including the serve task the adapter (here the bench)
      starts per connection, minus the SinkTransport's own allocations.
    """
    sink_file, sink_first, sink_last = _sink_code()
    own = caused = total = 0
    by_file: dict[str, int] = {}
    for diff in after.compare_to(before, "traceback"):
        size = diff.size_diff
        if size == 0:
            continue
        frames = diff.traceback
        if any(f.filename == sink_file and sink_first <= f.lineno < sink_last for f in frames):
            continue
        total += size
        innermost = frames[-1].filename  # frames run from oldest to most recent
        by_file[innermost] = by_file.get(innermost, 0) + size
        if innermost.startswith(ROOMCAST_DIR):
            own += size
        if any(f.filename.startswith(ROOMCAST_DIR) for f in frames):
            caused += size
    top = sorted(by_file.items(), key=lambda item: -item[1])[:8]
    return Memory(clients, own, caused, total, top, kinds)


async def measure_memory(clients: int) -> Memory:
    """Connect ``clients`` idle clients, each in 3 rooms, and measure what they cost."""
    rooms_of = [[f"team:t{i % 100}", f"issue:i{i % 1000}", f"doc:d{i}"] for i in range(clients)]
    gc.collect()
    tracemalloc.start(TRACE_DEPTH)
    try:
        async with Hub(heartbeat=QUIET_HEARTBEAT) as hub, anyio.create_task_group() as task_group:
            # The bench's transports and the request frames exist before the first snapshot.
            sinks = [SinkTransport() for _ in range(clients)]
            await anyio.lowlevel.checkpoint()
            gc.collect()
            kinds_before = by_kind(ROOMCAST_DIR)  # made before the snapshot: not in the growth
            before = tracemalloc.take_snapshot()
            await connect_sinks(hub, task_group, sinks, rooms_of)
            for sink in sinks:
                sink.last = None  # a real transport would have written and freed it
            await anyio.wait_all_tasks_blocked()
            gc.collect()
            after = tracemalloc.take_snapshot()
            kinds = growth(kinds_before, by_kind(ROOMCAST_DIR))
            tracemalloc.stop()  # closing 10,000 clients under tracing would take long
            await hub.aclose()
    finally:
        tracemalloc.stop()
    return attribute(before, after, clients, kinds)


def print_memory(results: list[Memory]) -> None:
    print()
    print("Memory per idle connection (3 rooms each), tracemalloc, bytes per connection")
    print("  roomcast own: allocated by code in src/roomcast (target <= 2048)")
    print("  + anyio: adds anyio/asyncio objects roomcast creates (reader task, scopes, events)")
    print("  total: adds the per-connection serve task; SinkTransport's memory excluded")
    header = f"{'clients':>8}{'roomcast own':>14}{'+ anyio':>10}{'total':>10}"
    print(header)
    print("-" * len(header))
    for m in results:
        n = m.clients
        print(
            f"{n:>8}{m.roomcast_own / n:>14.0f}{m.roomcast_caused / n:>10.0f}{m.total / n:>10.0f}"
        )
    last = results[-1]
    n = last.clients
    print(f"\nLargest contributors at {n} clients (innermost frame's file, bytes/conn):")
    for filename, size in last.by_file:
        print(f"  {size / n:>8.0f}  {_short(filename)}")
    print(f"\nroomcast's own objects by kind at {n} clients (sys.getsizeof, bytes/conn):")
    kinds = sorted(last.by_kind.items(), key=lambda item: -item[1])
    for label, size in kinds:
        if size / n >= 1:
            print(f"  {size / n:>8.0f}  {label}")
    rest = last.roomcast_own - sum(last.by_kind.values())
    print(f"  {rest / n:>8.0f}  the rest (blocks reused from free lists, caches)")


def _short(filename: str) -> str:
    for marker in (os.sep + "site-packages" + os.sep, os.sep + "src" + os.sep):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


# ---------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="repetitions per measurement")
    parser.add_argument(
        "--quick", action="store_true", help="fewer messages; memory with 1,000 clients only"
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=10_000,
        help="recipients per round in each scenario and clients in the largest memory"
        " measurement (a multiple of 10; default 10,000)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="publish rounds per repetition in both scenarios (default 60 and 20; 10 and 3"
        " with --quick)",
    )
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.clients < 10 or args.clients % 10:
        parser.error("--clients must be a positive multiple of 10")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


async def main(args: argparse.Namespace) -> None:
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"roomcast hub fan-out benchmark, {now}")
    print(
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"anyio {version('anyio')} "
        f"on {args.backend}, roomcast {roomcast.__version__}, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
    )
    quick = " (quick)" if args.quick else ""
    print(f"repeat={args.repeat}{quick}, GC disabled inside timed loops", flush=True)
    rounds_a, rounds_b = (10, 3) if args.quick else (60, 20)
    if args.rounds is not None:
        rounds_a = rounds_b = args.rounds
    clients: int = args.clients
    scenarios = [
        (f"1 room x {clients:,}", 1, clients, rounds_a),
        (f"{clients // 10:,} room{'s' if clients > 10 else ''} x 10", clients // 10, 10, rounds_b),
    ]
    print_throughput(await run_throughput(scenarios, args.repeat))
    small = min(1_000, clients)
    sizes = sorted({small} if args.quick else {small, clients})
    print_memory([await measure_memory(n) for n in sizes])


def run(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    anyio.run(main, args, backend=args.backend)


if __name__ == "__main__":
    run()
