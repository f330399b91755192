"""Two nodes on one Redis: roomcast's RedisBackend beside python-socketio's AsyncRedisManager.

Each node runs in its own process (the nodes pinned to the first CPU, as in
``bench/fanout.py``), the clients (lean raw WebSocket clients) in others, all on
127.0.0.1 and the Redis given by ``--redis``. Run ``python -m bench.cluster --help``;
see bench/README.md for how to read the output. This is a benchmark, not a test: it
asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import os
import platform
import statistics
import sys
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

if not __package__:
    # Run as a script (python bench/cluster.py): make the bench package importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._fanout_procs import Child, ChildError, split
from bench.fanout import Placement, placement

#: Targets of the issue, printed beside each result.
CPU_RATIO_TARGET = 3.0
CROSS_NODE_P99_TARGET_MS = 2.0
HISTORY_RATE_TARGET = 5_000.0
ROOM = "bench"
SOLO = "solo"  # a room with one member, on the publishing node only


@dataclass
class ClusterResult:
    kind: str
    #: Per throughput burst: deliveries per CPU second of both nodes together.
    per_cpu: list[float] = field(default_factory=list)
    #: Per throughput burst: deliveries per wall second.
    per_wall: list[float] = field(default_factory=list)
    #: Per throughput burst: CPU microseconds per delivery, of both nodes together.
    cpu_us: list[float] = field(default_factory=list)
    lost: int = 0
    extra: int = 0
    #: At the fixed publish rate, latencies (seconds) of the clients of each node.
    latency: dict[str, array[float]] = field(default_factory=dict)
    latency_lost: int = 0
    #: Messages of the room SOLO (members on node A only) received by node B.
    foreign: int = 0
    solo_sent: int = 0
    history_rates: list[float] = field(default_factory=list)
    #: CPU microseconds of node A per history publish, per round.
    history_cpu_us: list[float] = field(default_factory=list)
    #: Publishes per second node A achieved in the latency run (asked: --rate).
    achieved_rate: float = 0.0


class Cluster:
    """The nodes of one kind and their clients (group ``A`` on node A, ``B`` on node B)."""

    def __init__(self, kind: str, nodes: int, args: argparse.Namespace, where: Placement) -> None:
        prefix = f"bench-cluster-{os.getpid()}-{kind}"
        self.kind = kind
        self.prefix = prefix
        self.redis = args.redis
        self.publish_seconds = 0.0
        self.nodes: list[Child] = []
        self.clients: list[Child] = []
        try:
            for number in range(nodes):
                argv = ["_cluster_node.py", kind, "--redis", args.redis, "--prefix", prefix]
                argv += ["--max-seconds", str(args.max_seconds)]
                self.nodes.append(Child(f"{kind}-{number + 1}", argv, where.server))
            self.ports = [int(node.read(timeout=60)["port"]) for node in self.nodes]
            for number in range(args.client_procs):
                argv = ["_cluster_client.py", "--max-seconds", str(args.max_seconds)]
                self.clients.append(Child(f"clients-{number}", argv, where.clients))
            for child in self.clients:
                child.read(timeout=30)
        except BaseException:
            self.stop()
            raise

    def connect(self, total: int) -> None:
        """``total`` clients split over the nodes; the first on node A joins SOLO too."""
        protocol = "socketio" if self.kind == "socketio" else "roomcast"
        shares = split(total, len(self.nodes))
        plans: list[tuple[int, str, int, list[str]]] = []  # port, group, count, rooms
        for number, (port, share) in enumerate(zip(self.ports, shares, strict=True)):
            group = "AB"[number]
            if number == 0 and len(self.nodes) > 1:
                plans.append((port, group, 1, [ROOM, SOLO]))
                share -= 1
            plans.append((port, group, share, [ROOM]))
        for port, group, count, rooms in plans:
            parts = split(count, len(self.clients))
            for child, part in zip(self.clients, parts, strict=True):
                command = {"cmd": "connect", "port": port, "total": part, "protocol": protocol}
                child.send({**command, "rooms": rooms, "group": group, "timeout": 120})
            for child, part in zip(self.clients, parts, strict=True):
                answer = child.read(timeout=180)
                if answer["failed"]:
                    raise ChildError(f"{child.name}: {answer['failed']} of {part} did not connect")

    def cpu(self) -> float:
        return sum(float(node.call({"cmd": "stats"})["cpu"]) for node in self.nodes)

    def received(self, number: int, room: str) -> int:
        counts: dict[str, int] = self.nodes[number].call({"cmd": "stats"})["received"]
        return counts.get(room, 0)

    def burst(
        self, m: int, rate: float, timeout: float
    ) -> tuple[list[dict[str, Any]], float, float]:
        """Publish ``m`` events on node A; return the clients' counts, CPU and wall seconds."""
        for child in self.clients:
            child.send({"cmd": "expect", "m": m, "timeout": timeout})
        for child in self.clients:
            child.read(timeout=30)  # armed
        cpu0 = self.cpu()
        wall0 = time.perf_counter()
        command = {"cmd": "publish", "room": ROOM, "type": "bench.event", "n": m, "rate": rate}
        took = self.nodes[0].call(command, timeout=timeout + 30)
        results = [child.read(timeout=timeout + 30) for child in self.clients]
        wall = time.perf_counter() - wall0
        self.publish_seconds = float(took["seconds"])
        return results, self.cpu() - cpu0, wall

    def stop(self) -> None:
        for child in self.clients + self.nodes:
            child.stop()
        # Positions are kept for a day: leave nothing of this run in the Redis.
        import redis

        with redis.Redis.from_url(self.redis) as client:
            keys = list(client.scan_iter(match=f"{self.prefix}:*", count=1000))
            if keys:
                client.delete(*keys)


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The clients' answers as one: counts summed, latencies per group."""
    out: dict[str, Any] = {"received": 0, "lost": 0, "extra": 0, "latency": {}}
    for result in results:
        for name, group in result["groups"].items():
            out["received"] += group["received"]
            out["lost"] += group["lost"]
            out["extra"] += group["extra"]
            latencies = out["latency"].setdefault(name, array("d"))
            latencies.frombytes(base64.b64decode(group["latencies"]))
    return out


def run_cluster(kind: str, args: argparse.Namespace, where: Placement) -> ClusterResult:
    result = ClusterResult(kind)
    nodes = 1 if kind == "roomcast-memory" else 2
    cluster = Cluster(kind, nodes, args, where)
    try:
        cluster.connect(args.clients)
        cluster.burst(1, 0, 30)  # warm-up
        # Every set-up, the single node too: what the hop through Redis costs per delivery.
        for _ in range(args.rounds):
            answers, cpu, wall = cluster.burst(args.messages, 0, args.burst_timeout)
            merged = merge(answers)
            result.lost += merged["lost"]
            result.extra += merged["extra"]
            result.per_cpu.append(merged["received"] / cpu)
            result.per_wall.append(merged["received"] / wall)
            result.cpu_us.append(cpu / max(1, merged["received"]) * 1e6)
        m = max(1, round(args.rate * args.latency_seconds))
        timeout = args.latency_seconds + args.burst_timeout
        answers, _cpu, _wall = cluster.burst(m, args.rate, timeout)
        merged = merge(answers)
        result.achieved_rate = m / cluster.publish_seconds if m > 1 else args.rate
        result.latency = merged["latency"]
        result.latency_lost = merged["lost"]
        if nodes > 1:
            before = cluster.received(1, SOLO)
            command = {"cmd": "publish", "room": SOLO, "type": "bench.solo", "n": args.solo}
            cluster.nodes[0].call(command, timeout=60)
            time.sleep(0.5)  # what node B would receive has arrived by now
            result.foreign = cluster.received(1, SOLO) - before
            result.solo_sent = args.solo
        if kind == "roomcast":
            for _ in range(args.rounds):
                command = {"cmd": "history", "n": args.history, "concurrency": args.concurrency}
                took = cluster.nodes[0].call({**command, "rooms": 10}, timeout=120)
                result.history_rates.append(args.history / took["seconds"])
                result.history_cpu_us.append(took["cpu"] / args.history * 1e6)
    finally:
        cluster.stop()
    return result


# ---------------------------------------------------------------------- printing


def spread(values: Sequence[float], digits: int = 0) -> str:
    if not values:
        return "-"
    return (
        f"{statistics.median(values):,.{digits}f} "
        f"[{min(values):,.{digits}f}-{max(values):,.{digits}f}]"
    )


def percentile(values: array[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def print_results(results: dict[str, ClusterResult], args: argparse.Namespace) -> None:
    print()
    print(
        f"Throughput: {args.clients:,} clients split over 2 nodes (roomcast-memory: all on its"
        f" one node), {args.messages} messages published on node A as fast as it goes,"
        f" {args.rounds} burst(s); median [min-max]"
    )
    print(f"  {'server':<16} {'dlv/CPU-s':>24} {'us/dlv':>20} {'dlv/s (wall)':>24} {'lost':>5}")
    for kind in KINDS:
        r = results.get(kind)
        if r is None:
            continue
        print(
            f"  {kind:<16} {spread(r.per_cpu):>24} {spread(r.cpu_us, 2):>20} "
            f"{spread(r.per_wall):>24} {r.lost + r.extra:>5}"
        )
    print()
    print(
        f"Latency at {args.rate:g} publishes/s for {args.latency_seconds:g} s "
        f"(publish time in the payload -> receive time), ms"
    )
    print(
        f"  {'server':<16} {'clients of':<22} {'p50':>8} {'p99':>8} {'lost':>5}"
        f" {'publishes/s done':>17}"
    )
    for kind, r in results.items():
        for group, latencies in sorted(r.latency.items()):
            where = (
                "the only node"
                if kind == "roomcast-memory"
                else ("node A (publisher)" if group == "A" else "node B (cross-node)")
            )
            print(
                f"  {kind:<16} {where:<22} {percentile(latencies, 0.5):>8.2f} "
                f"{percentile(latencies, 0.99):>8.2f} {r.latency_lost:>5}"
                f" {r.achieved_rate:>17.1f}"
            )
    print()
    print("Summary against the targets")
    roomcast, socketio, single = (results.get(kind) for kind in KINDS)
    if roomcast is not None and socketio is not None and roomcast.per_cpu and socketio.per_cpu:
        ratio = statistics.median(roomcast.per_cpu) / statistics.median(socketio.per_cpu)
        verdict = "ok" if ratio >= CPU_RATIO_TARGET else "BELOW TARGET"
        print(
            f"  deliveries per CPU-second: roomcast {statistics.median(roomcast.per_cpu):,.0f}, "
            f"python-socketio {statistics.median(socketio.per_cpu):,.0f}: "
            f"ratio {ratio:.2f}x (target >= {CPU_RATIO_TARGET:g}x) {verdict}"
        )
    if roomcast is not None and single is not None:
        cross = percentile(roomcast.latency.get("B", array("d")), 0.99)
        alone = percentile(single.latency.get("A", array("d")), 0.99)
        verdict = "ok" if cross - alone <= CROSS_NODE_P99_TARGET_MS else "OVER TARGET"
        slowest = min(roomcast.achieved_rate, single.achieved_rate)
        if slowest < 0.9 * args.rate:
            # A node that cannot keep up measures its backlog, not the hop through Redis.
            verdict = f"NOT COMPARABLE: a node published only {slowest:.0f}/s (saturated)"
        elif alone > 2 * max(cross, CROSS_NODE_P99_TARGET_MS):
            # The single node's tail is the machine's noise, not a hop it saved.
            verdict = "NOT COMPARABLE: the single node's p99 is the machine's noise"
        print(
            f"  p99 at {args.rate:g}/s: cross-node {cross:.2f} ms, single node {alone:.2f} ms: "
            f"{cross - alone:+.2f} ms (target <= +{CROSS_NODE_P99_TARGET_MS:g} ms) {verdict}"
        )
    for r in (roomcast, socketio):
        if r is not None and r.solo_sent:
            verdict = (
                ""
                if r.kind != "roomcast"
                else " (target 0) " + ("ok" if r.foreign == 0 else "OVER TARGET")
            )
            print(
                f"  {r.kind}: node B, no member in {SOLO!r}, received {r.foreign} "
                f"of its {r.solo_sent} messages{verdict}"
            )
    if roomcast is not None and roomcast.history_rates:
        rate = statistics.median(roomcast.history_rates)
        verdict = "ok" if rate >= HISTORY_RATE_TARGET else "BELOW TARGET"
        print(
            f"  history publishes (Lua) from one node process, {args.concurrency} concurrent "
            f"publishers: {spread(roomcast.history_rates)}/s "
            f"(target >= {HISTORY_RATE_TARGET:,.0f}/s) {verdict}; node CPU per publish "
            f"{spread(roomcast.history_cpu_us)} us"
        )


# ---------------------------------------------------------------------- main


KINDS = ("roomcast", "socketio", "roomcast-memory")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--clients", type=int, default=1_000, help="subscribers (default 1000)")
    parser.add_argument(
        "--messages", type=int, default=100, help="messages per throughput burst (default 100)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="throughput bursts (default 5)")
    parser.add_argument("--rate", type=float, default=100.0, help="publishes/s for latency")
    parser.add_argument(
        "--latency-seconds", type=float, default=5.0, help="length of the latency run"
    )
    parser.add_argument("--solo", type=int, default=100, help="messages to the one-member room")
    parser.add_argument(
        "--history", type=int, default=20_000, help="history publishes per round (default 20000)"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent publishers")
    parser.add_argument("--client-procs", type=int, default=1, help="client processes")
    parser.add_argument(
        "--burst-timeout", type=float, default=60.0, help="seconds a burst may take to arrive"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=600.0, help="each child exits after this long"
    )
    args = parser.parse_args(argv)
    if min(args.clients, args.messages, args.rounds, args.solo, args.history) < 1:
        parser.error("--clients, --messages, --rounds, --solo and --history must be positive")
    if args.clients < 2:
        parser.error("--clients must be at least 2: one per node")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    where = placement()
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"roomcast two-node benchmark on one Redis, {now}")
    print(
        f"Python {platform.python_version()}, roomcast {version('roomcast')}, "
        f"redis-py {version('redis')}, python-socketio {version('python-socketio')} "
        f"(aiohttp {version('aiohttp')}); {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{where.note.replace('server', 'nodes')}; Redis at {args.redis}", flush=True)
    started = time.perf_counter()
    results: dict[str, ClusterResult] = {}
    for kind in KINDS:
        began = time.perf_counter()
        try:
            results[kind] = run_cluster(kind, args, where)
        except ChildError as exc:
            print(f"  {kind}: FAILED: {exc}", flush=True)
            continue
        print(f"  {kind}: done in {time.perf_counter() - began:.0f} s", flush=True)
    print_results(results, args)
    print(f"\ntotal {time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
