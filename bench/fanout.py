"""End-to-end fan-out over real sockets: each roomcast adapter against its transport's floor.

Every server runs in its own process (pinned to one CPU), the clients in others
(pinned to the remaining CPUs), all on 127.0.0.1. Each server reports its own CPU
time and RSS over a control pipe. Run ``python -m bench.fanout --help``; see
bench/README.md for how to read the output. This is a benchmark, not a test: it
asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import os
import platform
import shutil
import statistics
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

if not __package__:
    # Run as a script (python bench/fanout.py): make the bench package importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._fanout_procs import Child, ChildError, Clients

ALL_SERVERS = (
    "roomcast-websockets",
    "websockets-broadcast",
    "roomcast-starlette",
    "naive-starlette",
    "roomcast-aiohttp",
    "naive-aiohttp",
    "node-ws",
    "picows",
)
#: (roomcast adapter, its floor, CPU-per-delivery ratio target): below node's ``ws``
#: (0.81-0.95 of ``broadcast()`` here) on websockets, below aiohttp's own loop on aiohttp,
#: no more than the ASGI server's own loop on Starlette (which frames each message itself).
PAIRS = (
    ("roomcast-websockets", "websockets-broadcast", 0.75),
    ("roomcast-starlette", "naive-starlette", 1.00),
    ("roomcast-aiohttp", "naive-aiohttp", 0.85),
)
#: The fastest peers: servers that run side by side with roomcast-websockets and its
#: floor, interleaved with them, so that the headline ratio is printed against each.
REFERENCES = ("node-ws", "picows")
#: The headline: roomcast's adapter, and what its CPU per delivery is divided by.
HEADLINE = ("roomcast-websockets", ("websockets-broadcast", *REFERENCES))
#: Where node's ``ws`` server lives, and what installs its one dependency.
NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")
NODE_INSTALL = "npm ci --prefix bench/node"
#: Publish modes: a yield to the event loop after each message, or none until the last.
MODES = ("paced", "burst")
#: Extra memory per idle connection a roomcast adapter may use over its floor (KiB).
MEMORY_TARGET_KIB = 3.0
#: Clients connected, sent a few events and closed before the idle baseline RSS.
WARMUP_CLIENTS = 10
#: Payload padding: {"t": ..., "seq": ..., "pad": "x" * PAD} is about 100 bytes.
PAD = 60
#: Seconds a server may take to settle (clients counted, subscribed) after a change.
SETTLE_TIMEOUT = 120.0


def default_messages(connections: int, quick: bool) -> int:
    """Messages per measurement: about 150,000 deliveries (30,000 with --quick)."""
    budget = 30_000 if quick else 150_000
    return max(10, min(200, budget // connections))


# ---------------------------------------------------------------------- CPUs


@dataclass
class Placement:
    server: set[int] | None
    clients: set[int] | None
    note: str


def placement() -> Placement:
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return Placement(None, None, "CPU affinity not available: processes not pinned")
    if len(cpus) < 2:
        return Placement(None, None, f"only CPU {cpus} available: processes not pinned")
    server, clients = {cpus[0]}, set(cpus[1:])
    try:
        os.sched_setaffinity(0, clients)  # the driver sits with the clients
    except OSError as exc:
        return Placement(None, None, f"sched_setaffinity failed ({exc}): processes not pinned")
    return Placement(server, clients, f"server on CPU {cpus[0]}, clients + driver on {cpus[1:]}")


# ---------------------------------------------------------------------- one server


@dataclass
class Sample:
    server: str
    connections: int
    messages: int
    cpu_us: float  # server CPU per delivery
    rate: float  # deliveries per wall second, first publish to last receive
    p50_ms: float
    p99_ms: float
    lost: int
    extra: int
    server_busy: float  # server CPU / wall over the same window
    client_busy: float  # client CPU / (wall x client processes)
    client_us: float  # client CPU per delivery
    lag_ms: float  # last receive after the server's publish loop ended
    mode: str = "paced"
    user_us: float = 0.0  # server user CPU per delivery
    sys_us: float = 0.0  # server system CPU per delivery
    tasks: int = 0  # most asyncio tasks in the server when a publish loop returned


@dataclass
class Burst:
    """One publish burst to N clients, as measured (summed into a :class:`Sample`)."""

    connections: int
    messages: int
    server_cpu: float  # seconds, first publish until the last client received everything
    wall: float  # seconds, same window
    received: int
    lost: int
    extra: int
    client_cpu: float
    client_procs: int
    lag: float  # seconds from the end of the publish loop to the last receive
    latencies: array[float]
    mode: str = "paced"
    server_user: float = 0.0  # seconds of user CPU, same window as server_cpu
    server_sys: float = 0.0  # seconds of system CPU, same window
    tasks: int = 0  # the server's asyncio tasks when its publish loop returned (0: node)

    @property
    def cpu_us(self) -> float:
        return self.server_cpu / (self.connections * self.messages) * 1e6

    @property
    def user_us(self) -> float:
        return self.server_user / (self.connections * self.messages) * 1e6

    @property
    def sys_us(self) -> float:
        return self.server_sys / (self.connections * self.messages) * 1e6


@dataclass
class Outcome:
    samples: list[Sample] = field(default_factory=list)
    #: The bursts behind each sample, by client count, in the order they ran.
    bursts: dict[int, list[Burst]] = field(default_factory=dict)
    memory: dict[int, float] = field(default_factory=dict)  # bytes per idle connection
    base_rss: int = 0
    connect_seconds: float = 0.0


def node_missing() -> str | None:
    """Why node's ``ws`` server cannot start here, or ``None`` when it can."""
    if shutil.which("node") is None:
        return "node-ws needs node (v18 or later) on the PATH"
    if not os.path.isfile(os.path.join(NODE_DIR, "node_modules", "ws", "package.json")):
        return f"node-ws needs its dependency installed: {NODE_INSTALL}"
    return None


def start_server(
    kind: str, args: argparse.Namespace, where: Placement, extra: Sequence[str] = ()
) -> tuple[Child, int]:
    if kind == "node-ws":
        missing = node_missing()
        if missing is not None:
            raise ChildError(missing)
        argv = ["--expose-gc", "node/fanout_server.js", "--max-seconds", str(args.max_seconds)]
        server = Child(kind, argv, where.server, executable=shutil.which("node"))
    else:
        argv = ["_fanout_server.py", kind, "--max-seconds", str(args.max_seconds), *extra]
        if args.uvicorn_ws:
            argv += ["--uvicorn-ws", args.uvicorn_ws]
        server = Child(kind, argv, where.server)
    ready = server.read(timeout=60)
    return server, int(ready["port"])


def settle(server: Child, done: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        stats = server.call({"cmd": "stats"})
        if done(stats):
            return stats
        if time.monotonic() > deadline:
            raise ChildError(f"{server.name}: {what} not reached: {stats}")
        time.sleep(0.05)


def connect(server: Child, clients: Clients, port: int, total: int) -> None:
    answers = clients.connect(port, total)
    failed = sum(answer["failed"] for answer in answers)
    if failed:
        raise ChildError(f"{server.name}: {failed} connections failed")
    settle(
        server,
        lambda s: s["clients"] == total and s["subscribed"] == total,
        f"{total} subscribed clients",
    )


def shrink(server: Child, clients: Clients, total: int) -> None:
    clients.close(total)
    settle(
        server,
        lambda s: s["clients"] == total and s["subscribed"] == total,
        f"{total} clients after closing",
    )


def percentile(values: array[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(
    server: Child,
    clients: Clients,
    connections: int,
    messages: int,
    mode: str = "paced",
    pad: int = PAD,
    stall: float = 0.0,
) -> Burst:
    deliveries = connections * messages
    timeout = 60.0 + stall + deliveries / 2_000  # generous: even at 2,000 deliveries/s
    clients.arm(messages, timeout, stall)
    command = {"cmd": "publish", "n": messages, "pad": pad, "burst": mode == "burst"}
    published = server.call(command, timeout)
    results = clients.results(timeout + 10)
    after = server.call({"cmd": "stats"})
    last_rx = max(r["last_rx"] for r in results) or time.time()
    latencies: array[float] = array("d")
    for r in results:
        latencies.frombytes(base64.b64decode(r["latencies"]))
    return Burst(
        connections=connections,
        messages=messages,
        server_cpu=after["cpu"] - published["cpu0"],
        wall=max(last_rx - published["t0"], 1e-9),
        received=sum(r["received"] for r in results),
        lost=sum(r["lost"] for r in results),
        extra=sum(r["extra"] for r in results),
        client_cpu=sum(r["cpu"] for r in results),
        client_procs=len(clients.children),
        lag=last_rx - published["t1"],
        latencies=latencies,
        mode=mode,
        server_user=after.get("user", 0.0) - published.get("user0", 0.0),
        server_sys=after.get("sys", 0.0) - published.get("sys0", 0.0),
        tasks=int(published.get("tasks", 0)),
    )


def summarize(kind: str, bursts: Sequence[Burst]) -> Sample:
    """The bursts of one server at one client count, as one measurement."""
    connections = bursts[0].connections
    messages = sum(b.messages for b in bursts)
    server_cpu = sum(b.server_cpu for b in bursts)
    wall = sum(b.wall for b in bursts)
    received = sum(b.received for b in bursts)
    client_cpu = sum(b.client_cpu for b in bursts)
    latencies: array[float] = array("d")
    for b in bursts:
        latencies.extend(b.latencies)
    return Sample(
        server=kind,
        connections=connections,
        messages=messages,
        cpu_us=server_cpu / (connections * messages) * 1e6,
        rate=received / wall,
        p50_ms=percentile(latencies, 0.50) * 1e3,
        p99_ms=percentile(latencies, 0.99) * 1e3,
        lost=sum(b.lost for b in bursts),
        extra=sum(b.extra for b in bursts),
        server_busy=server_cpu / wall,
        client_busy=client_cpu / (wall * bursts[0].client_procs),
        client_us=client_cpu / max(received, 1) * 1e6,
        lag_ms=statistics.median(b.lag for b in bursts) * 1e3,
        mode=bursts[0].mode,
        user_us=sum(b.server_user for b in bursts) / (connections * messages) * 1e6,
        sys_us=sum(b.server_sys for b in bursts) / (connections * messages) * 1e6,
        tasks=max(b.tasks for b in bursts),
    )


def rounds_of(messages: int, rounds: int) -> list[int]:
    """Split ``messages`` into ``rounds`` bursts (fewer when there are fewer messages)."""
    rounds = max(1, min(rounds, messages))
    return [messages // rounds + (1 if i < messages % rounds else 0) for i in range(rounds)]


def run_group(kinds: Sequence[str], args: argparse.Namespace, where: Placement) -> list[Outcome]:
    """Servers side by side (a roomcast adapter and its floor), their bursts interleaved.

    Each server gets its own process and its own clients. Idle memory is
    measured in each process as its clients connect; then, at each client
    count, the servers take turns publishing a burst (A B, then B A, ...), so a
    slow spell of a shared machine falls on both alike rather than on
    whichever ran during it.
    """
    outcomes = [Outcome() for _ in kinds]
    sizes = sorted(set(args.connections))
    running: list[tuple[Child, int, Clients]] = []
    try:
        for kind in kinds:
            extra: list[str] = []
            if args.hub_heartbeat is not None and kind.startswith("roomcast-"):
                extra = ["--heartbeat", ",".join(f"{x:g}" for x in args.hub_heartbeat)]
            if args.floor_keepalive is not None and kind == "websockets-broadcast":
                extra = ["--keepalive", f"{args.floor_keepalive:g}"]
            server, port = start_server(kind, args, where, extra)
            clients = Clients(args.client_procs, where.clients, args.max_seconds)
            running.append((server, port, clients))
        for outcome, (server, port, clients) in zip(outcomes, running, strict=True):
            # Warm-up: imports, caches and first-use paths, before the baseline.
            connect(server, clients, port, WARMUP_CLIENTS)
            measure(server, clients, WARMUP_CLIENTS, 5)
            shrink(server, clients, 0)
            time.sleep(0.2)
            outcome.base_rss = server.call({"cmd": "stats", "gc": True})["rss"]
        for n in sizes:
            for outcome, (server, port, clients) in zip(outcomes, running, strict=True):
                began = time.perf_counter()
                connect(server, clients, port, n)
                outcome.connect_seconds += time.perf_counter() - began
                time.sleep(0.2)
                rss = server.call({"cmd": "stats", "gc": True})["rss"]
                outcome.memory[n] = (rss - outcome.base_rss) / n
        turns = list(zip(outcomes, running, strict=True))
        for n in reversed(sizes):
            for server, _port, clients in running:
                shrink(server, clients, n)
            messages = args.messages or default_messages(n, args.quick)
            for mode in args.publish:
                for index, burst in enumerate(rounds_of(messages, args.rounds)):
                    order = turns[:: 1 if index % 2 == 0 else -1]
                    for outcome, (server, _port, clients) in order:
                        sample = measure(server, clients, n, burst, mode, args.pad, args.stall)
                        outcome.bursts.setdefault(n, []).append(sample)
                for kind, outcome in zip(kinds, outcomes, strict=True):
                    mine = [b for b in outcome.bursts[n] if b.mode == mode]
                    outcome.samples.append(summarize(kind, mine))
    finally:
        for server, _port, clients in running:
            clients.stop()
            server.stop()
    return outcomes


# ---------------------------------------------------------------------- report


def spread(values: Sequence[float], digits: int = 2) -> str:
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def done(outcomes: list[Outcome | None]) -> list[Outcome]:
    return [o for o in outcomes if o is not None]


def print_table(
    servers: list[str],
    sizes: list[int],
    outcomes: dict[str, list[Outcome | None]],
    modes: Sequence[str] = ("paced",),
) -> None:
    print()
    print("Fan-out over loopback WebSockets, one room, medians of the repetitions [min-max]")
    print("  cpu us/dlv: server CPU (user+sys, its own process) / (messages x clients);")
    print("  usr, sys: its user and system parts (getrusage), median")
    print("  dlv/s: deliveries per wall second, first publish to last receive")
    print("  latency: receive time - send time in the payload (time.time(), same machine)")
    print("  tasks: most asyncio tasks in the server as a publish loop returned (node: 0)")
    header = (
        f"{'server':<22}{'mode':<7}{'clients':>8}{'msgs':>6}  {'cpu us/dlv':<22}"
        f"{'usr':>7}{'sys':>7}{'dlv/s':>10}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'lost':>6}{'srv busy':>10}{'cli busy':>10}"
        f"{'cli us/dlv':>11}{'lag ms':>9}{'tasks':>7}"
    )
    print(header)
    print("-" * len(header))
    for n in sorted(sizes, reverse=True):
        for mode in modes:
            for kind in servers:
                samples = [
                    s
                    for o in done(outcomes[kind])
                    for s in o.samples
                    if s.connections == n and s.mode == mode
                ]
                if not samples:
                    continue
                med = statistics.median
                print(
                    f"{kind:<22}{mode:<7}{n:>8}{samples[0].messages:>6}  "
                    f"{spread([s.cpu_us for s in samples]):<22}"
                    f"{med(s.user_us for s in samples):>7.2f}"
                    f"{med(s.sys_us for s in samples):>7.2f}"
                    f"{med(s.rate for s in samples):>10,.0f}"
                    f"{med(s.p50_ms for s in samples):>9.1f}"
                    f"{med(s.p99_ms for s in samples):>9.1f}"
                    f"{sum(s.lost for s in samples):>6}"
                    f"{med(s.server_busy for s in samples):>10.0%}"
                    f"{med(s.client_busy for s in samples):>10.0%}"
                    f"{med(s.client_us for s in samples):>11.2f}"
                    f"{med(s.lag_ms for s in samples):>9.1f}"
                    f"{max(s.tasks for s in samples):>7}"
                )
    print()
    print("Server memory per idle connection (RSS with N subscribed clients - RSS with none) / N,")
    print("after a warm-up; KiB per connection, median [min-max]")
    header = f"{'server':<22}" + "".join(f"{f'N={n:,}':>22}" for n in sorted(sizes))
    print(header + f"{'idle RSS MiB':>14}")
    print("-" * (len(header) + 14))
    for kind in servers:
        finished = done(outcomes[kind])
        if not finished:
            continue
        cells = "".join(
            f"{spread([o.memory[n] / 1024 for o in finished]):>22}" for n in sorted(sizes)
        )
        base = statistics.median(o.base_rss for o in finished) / 2**20
        print(f"{kind:<22}{cells}{base:>14.1f}")


def paired_ratios(
    mine: Sequence[Outcome | None],
    theirs: Sequence[Outcome | None],
    n: int,
    mode: str,
    part: Callable[[Burst], float] = lambda burst: burst.cpu_us,
) -> list[float]:
    """``part`` of each burst of ``mine`` over that of ``theirs``'s burst of the same round."""
    ratios = []
    for a_run, b_run in zip(mine, theirs, strict=True):
        if a_run is None or b_run is None:
            continue
        a_bursts = [b for b in a_run.bursts.get(n, ()) if b.mode == mode]
        b_bursts = [b for b in b_run.bursts.get(n, ()) if b.mode == mode]
        for a, b in zip(a_bursts, b_bursts, strict=True):
            if part(b) > 0:
                ratios.append(part(a) / part(b))
    return ratios


def print_ratios(
    servers: list[str],
    sizes: list[int],
    outcomes: dict[str, list[Outcome | None]],
    modes: Sequence[str] = ("paced",),
) -> None:
    pairs = [p for p in PAIRS if p[0] in servers and p[1] in servers]
    if not pairs:
        return
    print()
    print("Ratios, roomcast / floor: median [min-max]. CPU: each burst against its floor's")
    print("burst next to it (rounds x repetitions pairs); memory: within each repetition")
    for adapter, floor, target in pairs:
        paired = [
            (mine, theirs)
            for mine, theirs in zip(outcomes[adapter], outcomes[floor], strict=True)
            if mine is not None and theirs is not None
        ]
        if not paired:
            continue
        for n in sorted(sizes, reverse=True):
            for mode in modes:
                ratios = paired_ratios(outcomes[adapter], outcomes[floor], n, mode)
                if ratios:
                    verdict = "ok" if statistics.median(ratios) <= target else "OVER TARGET"
                    label = "" if mode == "paced" else f" {mode}"
                    print(
                        f"  cpu/dlv  {adapter} / {floor}, N={n:,}{label}: {spread(ratios)}"
                        f" ({len(ratios)} pairs)  (target <= {target:.2f}) {verdict}"
                    )
        for n in sorted(sizes):
            diffs = [(mine.memory[n] - theirs.memory[n]) / 1024 for mine, theirs in paired]
            verdict = "ok" if statistics.median(diffs) <= MEMORY_TARGET_KIB else "OVER TARGET"
            print(
                f"  mem/conn {adapter} - {floor}, N={n:,}: {spread(diffs, 1)} KiB"
                f"  (target <= +{MEMORY_TARGET_KIB:.0f} KiB) {verdict}"
            )


def print_headline(
    servers: list[str],
    sizes: list[int],
    outcomes: dict[str, list[Outcome | None]],
    modes: Sequence[str] = ("paced",),
) -> None:
    """roomcast-websockets against websockets.broadcast() and the fastest peers.

    Every pair is two bursts of the same round, run next to each other in the
    interleaved order; ``usr`` and ``sys`` are the same pairs' user and system CPU.
    """
    adapter, others = HEADLINE
    base = others[0]
    present = [other for other in others if other in servers]
    if adapter not in servers and not (base in servers and len(present) > 1):
        return
    print()
    print("Headline: CPU per delivery against websockets.broadcast() and the fastest peers,")
    print("median [min-max] of bursts paired within each round (cpu = usr + sys)")
    rows: list[tuple[str, str]] = []
    if adapter in servers:
        rows += [(adapter, other) for other in present]
    if base in servers:
        rows += [(peer, base) for peer in present if peer != base]
    parts: tuple[tuple[str, Callable[[Burst], float]], ...] = (
        ("usr", lambda burst: burst.user_us),
        ("sys", lambda burst: burst.sys_us),
    )
    for n in sorted(sizes, reverse=True):
        for mode in modes:
            for mine, theirs in rows:
                ratios = paired_ratios(outcomes[mine], outcomes[theirs], n, mode)
                if not ratios:
                    continue
                apart = ", ".join(
                    f"{name} {statistics.median(values):.2f}"
                    for name, part in parts
                    if (values := paired_ratios(outcomes[mine], outcomes[theirs], n, mode, part))
                )
                print(
                    f"  {mine} / {theirs}, N={n:,} {mode}: {spread(ratios)}"
                    f" ({len(ratios)} pairs; {apart})"
                )


# ---------------------------------------------------------------------- heartbeat


def run_heartbeat(args: argparse.Namespace, where: Placement) -> None:
    n = max(args.connections)
    interval, timeout = args.heartbeat_policy
    print()
    print(
        f"Heartbeat soak: roomcast-websockets, {n:,} clients, "
        f"HeartbeatPolicy(interval={interval:g}, timeout={timeout:g}), "
        f"{args.heartbeat_seconds:g} s; clients answer pings (protocol and {{'type':'ping'}})"
    )
    profile = "roomcast-websockets" in args.profile
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".fanout-heartbeat.prof")
    extra = ["--heartbeat", f"{interval},{timeout}"] + (["--profile", path] if profile else [])
    server, port = start_server("roomcast-websockets", args, where, extra)
    clients: Clients | None = None
    try:
        clients = Clients(args.client_procs, where.clients, args.max_seconds)
        base = server.call({"cmd": "stats", "gc": True})
        started = time.perf_counter()
        connect(server, clients, port, n)
        connected_in = time.perf_counter() - started
        server.call({"cmd": "profile", "on": True})
        first = server.call({"cmd": "stats"})
        server.call({"cmd": "profile", "on": True})  # stats pauses the profiler
        wall0 = time.perf_counter()
        status0 = clients.status()
        samples = []
        while time.perf_counter() - wall0 < args.heartbeat_seconds:
            time.sleep(min(5.0, args.heartbeat_seconds))
            samples.append(server.call({"cmd": "stats"}))
            server.call({"cmd": "profile", "on": True})
        last = samples[-1] if samples else first
        wall = time.perf_counter() - wall0
        status = clients.status()
    finally:
        if clients is not None:
            clients.stop()
        server.stop()
    open_now = sum(s["open"] for s in status)
    closed = sum(s["closed_by_server"] for s in status)
    app_pings = sum(s["app_pings"] for s in status) - sum(s["app_pings"] for s in status0)
    protocol_pings = sum(s["protocol_pings"] for s in status) - sum(
        s["protocol_pings"] for s in status0
    )
    client_cpu = sum(s["cpu"] for s in status) - sum(s["cpu"] for s in status0)
    cpu = last["cpu"] - first["cpu"]
    print(f"  connected {n:,} in {connected_in:.1f} s")
    print(
        f"  after {wall:.1f} s: server counts {last['clients']:,} clients "
        f"({last['subscribed']:,} subscribed), heartbeat timeouts {last['heartbeat_timeouts']}; "
        f"clients see {open_now:,} open, {closed} closed by the server"
    )
    print(
        f"  pings received: {app_pings:,} {{'type':'ping'}} + {protocol_pings:,} protocol "
        f"(expected about {n * wall / interval:,.0f} of each)"
    )
    print(
        f"  server CPU {cpu / wall:.1%} of one core "
        f"(per-sample: {', '.join(f'{x:.1%}' for x in cpu_series(first, samples))}); "
        f"clients {client_cpu / wall:.1%}"
    )
    print(
        f"  server RSS {last['rss'] / 2**20:.1f} MiB "
        f"({(last['rss'] - base['rss']) / n / 1024:.1f} KiB per connection over idle)"
    )
    verdict = "all stayed connected" if open_now == n and last["clients"] == n else "LOST CLIENTS"
    print(f"  {verdict}")
    if profile:
        import pstats

        print("  cProfile of the server over the soak (CPU% above is inflated by it), by own time:")
        pstats.Stats(path).sort_stats("tottime").print_stats(args.profile_lines)
        os.unlink(path)


def cpu_series(first: dict[str, Any], samples: list[dict[str, Any]]) -> list[float]:
    # Stats are taken every 5 s; the per-sample CPU share shows bursts (or their absence).
    out = []
    previous = first
    for sample in samples:
        out.append((sample["cpu"] - previous["cpu"]) / 5.0)
        previous = sample
    return out


# ---------------------------------------------------------------------- profile


def run_profile(kind: str, args: argparse.Namespace, where: Placement) -> None:
    n = max(args.connections)
    messages = args.messages or default_messages(n, args.quick)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f".fanout-{kind}.prof")
    print()
    print(
        f"cProfile of {kind} (publish to {n:,} clients, {messages} messages, "
        f"{args.publish[0]}), by own time:"
    )
    server, port = start_server(kind, args, where, ["--profile", path])
    clients: Clients | None = None
    try:
        clients = Clients(args.client_procs, where.clients, args.max_seconds)
        connect(server, clients, port, n)
        burst = measure(server, clients, n, messages, args.publish[0], args.pad, args.stall)
        sample = summarize(kind, [burst])
    finally:
        if clients is not None:
            clients.stop()
        server.stop()
    print(f"  (under the profiler: {sample.cpu_us:.2f} us/dlv, lost {sample.lost})")
    import pstats

    stats = pstats.Stats(path)
    stats.sort_stats("tottime").print_stats(args.profile_lines)
    os.unlink(path)


# ---------------------------------------------------------------------- memory trace


def run_trace_memory(kind: str, args: argparse.Namespace, where: Placement) -> None:
    n = max(args.connections)
    print()
    print(f"tracemalloc of {kind}: growth from 0 to {n:,} idle subscribed clients, per connection")
    server, port = start_server(kind, args, where)
    clients: Clients | None = None
    try:
        clients = Clients(args.client_procs, where.clients, args.max_seconds)
        connect(server, clients, port, WARMUP_CLIENTS)
        shrink(server, clients, 0)
        server.call({"cmd": "trace_start"})
        connect(server, clients, port, n)
        report = server.call({"cmd": "trace_report", "n": n, "limit": args.profile_lines}, 300)
    finally:
        if clients is not None:
            clients.stop()
        server.stop()
    print(f"  traced Python allocations: {report['total']:,.0f} bytes per connection")
    print("  by file:")
    for size, count, where_ in report["by_file"][:12]:
        print(f"    {size:>8,.0f} B {count:>4} blocks  {where_}")
    print("  by line:")
    for size, count, where_ in report["by_line"]:
        print(f"    {size:>8,.0f} B {count:>4} blocks  {where_}")


# ---------------------------------------------------------------------- main


def comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--servers",
        type=comma_list,
        default=list(ALL_SERVERS),
        help=f"comma list among {', '.join(ALL_SERVERS)} (default: all)",
    )
    parser.add_argument(
        "--connections",
        type=lambda text: [int(part) for part in comma_list(text)],
        default=None,
        help="comma list of client counts (default 1000,5000; 10000 with --heartbeat)",
    )
    parser.add_argument(
        "--messages",
        type=int,
        default=None,
        help="messages per measurement (default: about 150,000 deliveries, 10 to 200)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="server processes per kind (default 3)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=6,
        help="bursts each measurement is split into, alternating with its pair (default 6:"
        " 18 pairs with --repeat 3)",
    )
    parser.add_argument(
        "--publish",
        type=comma_list,
        default=["paced"],
        help="comma list of publish modes among paced (a yield to the event loop after each"
        " message, the default) and burst (every message of a burst back to back, no yield)",
    )
    parser.add_argument(
        "--burst", action="store_true", help="publish in bursts: the same as --publish burst"
    )
    parser.add_argument(
        "--stall",
        type=float,
        default=0.0,
        help="seconds the clients stop reading at the start of each burst, so that the"
        " server writes into full socket buffers (default 0)",
    )
    parser.add_argument(
        "--pad",
        type=int,
        default=PAD,
        help=f"payload padding in characters (default {PAD}: a ~{PAD + 40}-byte payload)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 500 clients, ~30,000 deliveries per measurement (a few minutes)",
    )
    parser.add_argument(
        "--heartbeat",
        action="store_true",
        help="soak instead: roomcast-websockets, hub heartbeat on, clients stay connected",
    )
    parser.add_argument(
        "--heartbeat-policy",
        type=lambda text: tuple(float(part) for part in comma_list(text)),
        default=(5.0, 15.0),
        help="interval,timeout in seconds for --heartbeat (default 5,15)",
    )
    parser.add_argument(
        "--hub-heartbeat",
        type=lambda text: tuple(float(part) for part in comma_list(text)),
        default=None,
        help="interval,timeout of the roomcast servers' HeartbeatPolicy during the fan-out"
        " (default: quiet, 3600,7200; the hub's own default is 30,60); floors never ping",
    )
    parser.add_argument(
        "--floor-keepalive",
        type=float,
        default=None,
        help="websockets-broadcast pings with websockets' own keepalive every this many"
        " seconds (ping_interval; default: off), the floor of --hub-heartbeat",
    )
    parser.add_argument(
        "--heartbeat-seconds", type=float, default=30.0, help="length of the --heartbeat soak"
    )
    parser.add_argument(
        "--profile",
        type=comma_list,
        default=[],
        help="comma list of servers to run once under cProfile (publish window only)",
    )
    parser.add_argument(
        "--trace-memory",
        type=comma_list,
        default=[],
        help="comma list of servers whose idle-connection memory to attribute (tracemalloc)",
    )
    parser.add_argument(
        "--profile-lines", type=int, default=30, help="rows printed by --profile, --trace-memory"
    )
    parser.add_argument(
        "--client-procs",
        type=int,
        default=None,
        help="client processes (default: one per CPU left after the server's, at most 4)",
    )
    parser.add_argument(
        "--uvicorn-ws", default="websockets-sansio", help="uvicorn's ws implementation"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=900.0, help="each child exits after this long"
    )
    args = parser.parse_args(argv)
    unknown = [s for s in args.servers + args.profile + args.trace_memory if s not in ALL_SERVERS]
    if unknown:
        parser.error(f"unknown servers: {', '.join(unknown)}")
    if "node-ws" in args.profile + args.trace_memory:
        parser.error("--profile and --trace-memory are for the Python servers")
    if args.burst:
        args.publish = ["burst"]
    if not args.publish or any(mode not in MODES for mode in args.publish):
        parser.error(f"--publish takes a comma list among {', '.join(MODES)}")
    if args.pad < 0 or args.stall < 0:
        parser.error("--pad and --stall must be 0 or more")
    if args.connections is None:
        args.connections = [10_000] if args.heartbeat else [500] if args.quick else [1_000, 5_000]
    if args.quick and args.heartbeat:
        args.heartbeat_seconds = min(args.heartbeat_seconds, 12.0)
    if args.repeat < 1 or args.rounds < 1 or min(args.connections) < 1:
        parser.error("--repeat, --rounds and --connections must be positive")
    return args


def groups(servers: Sequence[str]) -> list[list[str]]:
    """Each roomcast adapter with its floor, when both are asked for; the rest alone.

    The reference servers (node's ``ws``, picows) join roomcast-websockets and
    its floor, so that all of them take turns in one interleaved run.
    """
    adapter, others = HEADLINE
    headline = [kind for kind in (adapter, *others) if kind in servers]
    out: list[list[str]] = []
    placed: set[str] = set()
    for kind in servers:
        if kind in placed:
            continue
        group = [kind]
        if kind in headline:
            group = headline
        else:
            for adapter, floor, _target in PAIRS:
                partner = floor if kind == adapter else adapter if kind == floor else None
                if partner is not None and partner in servers and partner not in placed:
                    group = [adapter, floor]
        placed.update(group)
        out.append(group)
    return out


def versions(args: argparse.Namespace) -> str:
    """The header's versions: Python's packages, and node's when node-ws runs."""
    text = (
        f"Python {platform.python_version()}, websockets {version('websockets')}, "
        f"starlette {version('starlette')}, uvicorn {version('uvicorn')} "
        f"(ws={args.uvicorn_ws}), aiohttp {version('aiohttp')}, roomcast {version('roomcast')}"
    )
    if "picows" in args.servers:
        text += f", picows {version('picows')}"
    if "node-ws" in args.servers and node_missing() is None:
        import json
        import subprocess

        node = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        with open(os.path.join(NODE_DIR, "node_modules", "ws", "package.json")) as file:
            ws_version = json.load(file)["version"]
        text += f", node {node} with ws {ws_version}"
    return text


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    needed = max(args.connections) + 100
    if hard < needed:
        sys.exit(f"RLIMIT_NOFILE hard limit {hard} is below {needed}: raise ulimit -n")
    where = placement()
    if args.client_procs is None:
        args.client_procs = max(1, min(4, len(where.clients or {0})))
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"roomcast end-to-end fan-out benchmark, {now}")
    print(f"{versions(args)}; {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"{where.note}; {args.client_procs} client process(es) (raw asyncio WebSocket clients)")
    started = time.perf_counter()
    if args.heartbeat:
        run_heartbeat(args, where)
    elif args.profile or args.trace_memory:
        for kind in args.profile:
            run_profile(kind, args, where)
        for kind in args.trace_memory:
            run_trace_memory(kind, args, where)
    else:
        print(
            f"servers: {', '.join(args.servers)}; clients {args.connections}; "
            f"repeat={args.repeat}{' (quick)' if args.quick else ''}; "
            f"rounds={args.rounds}; publish {', '.join(args.publish)}; "
            + (f"clients stall {args.stall:g} s per burst; " if args.stall else "")
            + f"payload ~{args.pad + 40} bytes; hub heartbeat "
            + (
                "quiet (3600 s)"
                if args.hub_heartbeat is None
                else ",".join(f"{x:g}" for x in args.hub_heartbeat) + " s"
            )
            + (
                ""
                if args.floor_keepalive is None
                else f"; websockets-broadcast keepalive {args.floor_keepalive:g} s"
            ),
            flush=True,
        )
        outcomes: dict[str, list[Outcome | None]] = {kind: [] for kind in args.servers}
        for rep in range(args.repeat):
            for group in groups(args.servers):
                began = time.perf_counter()
                try:
                    results: list[Outcome | None] = list(run_group(group, args, where))
                except ChildError as exc:
                    print(f"  [{rep + 1}/{args.repeat}] {' + '.join(group)}: FAILED: {exc}")
                    results = [None] * len(group)
                took = time.perf_counter() - began
                for kind, outcome in zip(group, results, strict=True):
                    outcomes[kind].append(outcome)
                    if outcome is None:
                        continue
                    summary = ", ".join(
                        f"N={s.connections}{'' if s.mode == 'paced' else ' ' + s.mode}: "
                        f"{s.cpu_us:.2f} us/dlv, lost {s.lost}"
                        for s in outcome.samples
                    )
                    print(
                        f"  [{rep + 1}/{args.repeat}] {kind}: {summary} "
                        f"(connecting {outcome.connect_seconds:.0f} s)",
                        flush=True,
                    )
                print(f"  [{rep + 1}/{args.repeat}] ({took:.0f} s)", flush=True)
        print_table(args.servers, args.connections, outcomes, args.publish)
        print_ratios(args.servers, args.connections, outcomes, args.publish)
        print_headline(args.servers, args.connections, outcomes, args.publish)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
