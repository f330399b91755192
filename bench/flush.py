"""Coalesced writes over loopback: roomcast's ``flush_delay`` against ``websockets.broadcast()``.

Two parts, each server in its own process pinned to one CPU, its clients (the lean
clients of ``fanout.py``) on the others, all on 127.0.0.1:

- **Bursts**: ``--messages`` events published one after the other, with a yield to
  the event loop after each (``fanout.py``'s paced mode), to ``--connections``
  subscribers, by ``websockets.broadcast()`` and by roomcast's ``websockets`` adapter
  at each ``--delays`` flush delay, the servers taking turns burst after burst
  (``--rounds``). Server CPU per delivery, latency
  (p50/p99), the ratio to ``broadcast()`` (median of the rounds' pairs) and the
  server's system calls per delivery (``--counted`` more bursts each, 3 by default,
  counted by ``perf stat``
  on the kernel's ``sys_enter_sendto/sendmsg/write/writev`` tracepoints, or by
  ``strace -c`` where perf cannot).
- **Paced**: ``--paced-rate`` publishes per second for ``--paced-seconds`` to
  ``--paced-connections`` subscribers, for roomcast at ``--paced-delay`` and for
  ``broadcast()``: the publish lag (receive time - the time the publish was due,
  p50/p99/max), messages lost and the server's CPU. Then the kernel's floor for the
  same load, measured on the same CPUs (``bench/_send_floor.py``: a bare
  ``socket.send()`` to each of as many loopback sockets): the CPU one write costs, so
  the share of a core one write per delivery takes, and how long one write to every
  subscriber takes, which a frame held for the next publish waits on top.

Run ``python -m bench.flush --help``; bench/README.md says how to read it. A
benchmark, not a test: it asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

if not __package__:
    # Run as a script (python bench/flush.py): make the bench package importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._fanout_procs import Child, ChildError, Clients

FLOOR = "websockets-broadcast"
ROOMCAST = "roomcast-websockets"
#: Payload padding: {"t": ..., "seq": ..., "pad": "x" * PAD} is about 100 bytes.
PAD = 60
SETTLE_TIMEOUT = 120.0
#: About the size of one paced event frame (header, envelope, payload).
FLOOR_FRAME_BYTES = 220
#: The system calls that write to a socket.
SYSCALLS = ("sendto", "sendmsg", "write", "writev")


@dataclass
class Server:
    label: str
    kind: str
    delay: float | None
    child: Child
    clients: Clients
    port: int
    pid: int
    cpu_us: list[float] = field(default_factory=list)
    latencies: array[float] = field(default_factory=lambda: array("d"))
    lost: int = 0
    syscalls: float | None = None


def label_of(kind: str, delay: float | None) -> str:
    return "websockets.broadcast()" if delay is None else f"roomcast {delay * 1e3:g} ms"


def pinned() -> tuple[set[int] | None, set[int] | None, str]:
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None, None, "CPU affinity not available: processes not pinned"
    if len(cpus) < 2:
        return None, None, "one CPU: processes not pinned"
    os.sched_setaffinity(0, set(cpus[1:]))
    return {cpus[0]}, set(cpus[1:]), f"servers on CPU {cpus[0]}, clients + driver on {cpus[1:]}"


def start(
    kind: str, delay: float | None, args: argparse.Namespace, cpus: tuple[Any, Any]
) -> Server:
    argv = ["_flush_server.py", kind, "--max-seconds", str(args.max_seconds)]
    if delay is not None:
        argv += ["--flush-delay", str(delay)]
    child = Child(label_of(kind, delay), argv, cpus[0])
    ready = child.read(timeout=60)
    clients = Clients(args.client_procs, cpus[1], args.max_seconds)
    return Server(label_of(kind, delay), kind, delay, child, clients, ready["port"], ready["pid"])


def connect(server: Server, total: int) -> None:
    answers = server.clients.connect(server.port, total)
    if sum(answer["failed"] for answer in answers):
        raise ChildError(f"{server.label}: connections failed")
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        stats = server.child.call({"cmd": "stats"})
        if stats["clients"] == total and stats["subscribed"] == total:
            return
        if time.monotonic() > deadline:
            raise ChildError(f"{server.label}: {total} subscribed clients not reached: {stats}")
        time.sleep(0.05)


@dataclass
class Run:
    cpu: float  # server CPU seconds, first publish to last receive
    wall: float
    latencies: array[float]
    lost: int
    late: int = 0
    client_cpu: float = float("nan")  # the client processes' CPU seconds over the same span


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used, or NaN where /proc has none."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def clients_cpu(clients: Clients) -> float:
    return sum(process_cpu(child.process.pid) for child in clients.children)


def run(server: Server, command: dict[str, Any], messages: int, connections: int) -> Run:
    timeout = 60.0 + messages * connections / 2_000
    server.clients.arm(messages, timeout)
    client_cpu0 = clients_cpu(server.clients)
    published = server.child.call(command, timeout)
    results = server.clients.results(timeout + 10)
    client_cpu = clients_cpu(server.clients) - client_cpu0
    after = server.child.call({"cmd": "stats"})
    latencies: array[float] = array("d")
    for result in results:
        latencies.frombytes(base64.b64decode(result["latencies"]))
    last_rx = max(result["last_rx"] for result in results) or time.time()
    return Run(
        cpu=after["cpu"] - published["cpu0"],
        wall=max(last_rx - published["t0"], 1e-9),
        latencies=latencies,
        lost=sum(result["lost"] for result in results),
        late=int(published.get("late", 0)),
        client_cpu=client_cpu,
    )


def burst(server: Server, args: argparse.Namespace) -> Run:
    command = {"cmd": "publish", "n": args.messages, "pad": PAD}
    return run(server, command, args.messages, args.connections)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def spread(values: Sequence[float], digits: int = 2) -> str:
    low, middle, high = min(values), statistics.median(values), max(values)
    return f"{middle:.{digits}f} [{low:.{digits}f}-{high:.{digits}f}]"


# ---------------------------------------------------------------------- system calls


def counter() -> str | None:
    """How system calls can be counted here: ``"perf"``, ``"strace"`` or ``None``."""
    for tool in ("perf", "strace"):
        if shutil.which(tool) is None:
            continue
        probe = (
            ["perf", "stat", "-x,", "-e", "syscalls:sys_enter_write", "true"]
            if tool == "perf"
            else ["strace", "-c", "-o", os.devnull, "true"]
        )
        done = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode == 0 and "not supported" not in done.stderr:
            return tool
    return None


def counted_bursts(server: Server, args: argparse.Namespace, tool: str) -> tuple[int, int]:
    """``--counted`` more bursts with the server's socket writes counted; (calls, lost)."""
    if tool == "perf":
        events = ",".join(f"syscalls:sys_enter_{name}" for name in SYSCALLS)
        argv = ["perf", "stat", "-x,", "-e", events, "-p", str(server.pid)]
    else:
        argv = ["strace", "-c", "-f", "-e", f"trace={','.join(SYSCALLS)}", "-p", str(server.pid)]
    watcher = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # attached before the first publish
    lost = 0
    try:
        for _ in range(args.counted):
            lost += burst(server, args).lost
    finally:
        watcher.send_signal(signal.SIGINT)
        _out, err = watcher.communicate(timeout=60)
    total = 0
    for line in err.splitlines():
        if tool == "perf":
            parts = line.split(",")
            if len(parts) > 2 and parts[2].startswith("syscalls:") and parts[0].isdigit():
                total += int(parts[0])
        else:
            parts = line.split()
            if len(parts) >= 5 and parts[-1] in SYSCALLS and parts[3].isdigit():
                total += int(parts[3])
    return total, lost


# ---------------------------------------------------------------------- the two parts


def bursts(args: argparse.Namespace, cpus: tuple[Any, Any], tool: str | None) -> None:
    kinds: list[tuple[str, float | None]] = [(FLOOR, None)]
    kinds += [(ROOMCAST, delay / 1e3) for delay in args.delays]
    servers: list[Server] = []
    try:
        for kind, delay in kinds:
            server = start(kind, delay, args, cpus)
            servers.append(server)
            connect(server, args.connections)
            run(server, {"cmd": "publish", "n": 5, "pad": PAD}, 5, args.connections)  # warm-up
        for index in range(args.rounds):
            for server in servers[:: 1 if index % 2 == 0 else -1]:
                outcome = burst(server, args)
                server.cpu_us.append(outcome.cpu / (args.messages * args.connections) * 1e6)
                server.latencies.extend(outcome.latencies)
                server.lost += outcome.lost
                print(
                    f"  [{index + 1}/{args.rounds}] {server.label}: {server.cpu_us[-1]:.2f} us/dlv"
                )
        if tool is not None:
            for server in servers:
                count, lost = counted_bursts(server, args, tool)
                server.syscalls = count / (args.counted * args.messages * args.connections)
                server.lost += lost
    finally:
        for server in servers:
            server.clients.stop()
            server.child.stop()
    floor = servers[0]
    print()
    print(
        f"Bursts: {args.messages} messages, a yield after each, to {args.connections:,} "
        f"subscribers, "
        f"{args.rounds} rounds; server CPU us per delivery, median [min-max]; latency over every "
        f"round; ratio: each round against broadcast()'s, median; syscalls: socket writes "
        f"per delivery ({tool or 'not counted'}, {args.counted} more bursts)"
    )
    print(
        f"{'server':<24} {'cpu us/dlv':>22} {'p50 ms':>8} {'p99 ms':>8} {'lost':>5} "
        f"{'syscalls/dlv':>13} {'ratio':>18}"
    )
    print("-" * 104)
    for server in servers:
        ratios = [ours / theirs for ours, theirs in zip(server.cpu_us, floor.cpu_us, strict=True)]
        calls = "n/a" if server.syscalls is None else f"{server.syscalls:.3f}"
        print(
            f"{server.label:<24} {spread(server.cpu_us):>22} "
            f"{percentile(server.latencies, 0.5) * 1e3:>8.1f} "
            f"{percentile(server.latencies, 0.99) * 1e3:>8.1f} {server.lost:>5} {calls:>13} "
            f"{spread(ratios):>18}"
        )
    print()
    for server in servers[1:]:
        ratios = [ours / theirs for ours, theirs in zip(server.cpu_us, floor.cpu_us, strict=True)]
        calls = "n/a" if server.syscalls is None else f"{server.syscalls:.3f}"
        print(
            f"burst of {args.messages} to {args.connections:,}, flush_delay "
            f"{server.delay * 1e3 if server.delay is not None else 0:g} ms: "
            f"{statistics.median(ratios):.2f}x websockets.broadcast() per delivery "
            f"({len(ratios)} pairs), {calls} syscalls per delivery "
            f"(broadcast(): {'n/a' if floor.syscalls is None else f'{floor.syscalls:.3f}'})"
        )


def paced(args: argparse.Namespace, cpus: tuple[Any, Any]) -> None:
    n = max(1, round(args.paced_rate * args.paced_seconds))
    print()
    print(
        f"Paced: {args.paced_rate:g} publishes/s for {args.paced_seconds:g} s ({n} messages) to "
        f"{args.paced_connections:,} subscribers; publish lag = receive time - the time the "
        f"publish was due"
    )
    print(
        f"{'server':<24} {'lag p50 ms':>11} {'lag p99 ms':>11} {'max ms':>9} {'lost':>6} "
        f"{'late':>5} {'server cpu':>11} {'client cpu':>11}"
    )
    print("-" * 96)
    lines = []
    for kind, delay in ((ROOMCAST, args.paced_delay / 1e3), (FLOOR, None)):
        server = start(kind, delay, args, cpus)
        try:
            connect(server, args.paced_connections)
            command = {"cmd": "paced", "n": n, "rate": args.paced_rate, "pad": PAD}
            outcome = run(server, command, n, args.paced_connections)
        finally:
            server.clients.stop()
            server.child.stop()
        p50, p99 = (percentile(outcome.latencies, f) * 1e3 for f in (0.5, 0.99))
        peak = max(outcome.latencies, default=float("nan")) * 1e3
        busy = outcome.cpu / outcome.wall * 100
        # Every client process together, in % of one core: near 100 % per client
        # process, the clients, not the server, set the pace.
        reading = outcome.client_cpu / outcome.wall * 100
        print(
            f"{server.label:<24} {p50:>11.1f} {p99:>11.1f} {peak:>9.1f} {outcome.lost:>6} "
            f"{outcome.late:>5} {busy:>10.0f}% {reading:>10.0f}%"
        )
        lines.append(
            f"paced {args.paced_rate:g}/s to {args.paced_connections:,}: {server.label}: "
            f"publish lag p99 {p99:.1f} ms, lost {outcome.lost}"
        )
    floor = send_floor(args.paced_connections, FLOOR_FRAME_BYTES, cpus)
    per_send = floor["user_us"] + floor["sys_us"]
    deliveries = args.paced_rate * args.paced_connections
    interval_ms = 1e3 / args.paced_rate
    print(
        f"\nfloor here (bench/_send_floor.py, same CPUs): one send() of {FLOOR_FRAME_BYTES} "
        f"bytes to each of {args.paced_connections:,} loopback sockets costs {per_send:.1f} us "
        f"of CPU per send ({floor['user_us']:.1f} user + {floor['sys_us']:.1f} system), "
        f"{floor['round_ms']:.1f} ms for one send to every socket"
    )
    print(
        f"  one write per delivery at {deliveries:,.0f} deliveries/s: "
        f"{deliveries * per_send / 1e6:.0%} of one core in send() alone; two frames per "
        f"write: {deliveries * per_send / 2e6:.0%}, and a frame waits for the next publish "
        f"({interval_ms:.0f} ms) then its turn among the writes (up to "
        f"{floor['round_ms']:.1f} ms)"
    )
    print()
    for line in lines:
        print(line)


def send_floor(connections: int, size: int, cpus: tuple[Any, Any]) -> dict[str, float]:
    """``bench/_send_floor.py`` on the servers' and the clients' CPUs: the kernel's floor."""
    command = [sys.executable, "-m", "bench._send_floor", str(connections), str(size), "20"]
    for option, chosen in (("--writer-cpus", cpus[0]), ("--reader-cpus", cpus[1])):
        if chosen:
            command += [option, ",".join(map(str, sorted(chosen)))]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=root)
    if done.returncode:
        raise ChildError(f"bench._send_floor failed: {done.stderr.strip()}")
    answer: dict[str, float] = json.loads(done.stdout)
    return answer


# ---------------------------------------------------------------------- main


def comma_floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--connections", type=int, default=1000, help="burst subscribers")
    parser.add_argument("--messages", type=int, default=100, help="messages per burst")
    parser.add_argument("--rounds", type=int, default=18, help="bursts per server")
    parser.add_argument(
        "--delays", type=comma_floats, default=[0.0, 1.0, 5.0, 20.0], help="flush delays, ms"
    )
    parser.add_argument(
        "--counted", type=int, default=3, help="bursts with system calls counted, per server"
    )
    parser.add_argument("--paced-connections", type=int, default=5000)
    parser.add_argument("--paced-rate", type=float, default=20.0, help="publishes per second")
    parser.add_argument("--paced-seconds", type=float, default=15.0)
    parser.add_argument("--paced-delay", type=float, default=50.0, help="roomcast's, ms")
    parser.add_argument("--no-paced", action="store_true", help="bursts only")
    parser.add_argument("--no-bursts", action="store_true", help="the paced run only")
    parser.add_argument("--client-procs", type=int, default=0, help="default: CPUs - 1, max 4")
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    args = parser.parse_args(argv)
    if args.counted < 1:
        parser.error("--counted must be at least 1")
    if not args.client_procs:
        args.client_procs = max(1, min(4, (os.cpu_count() or 2) - 1))
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    began = time.perf_counter()
    server_cpus, client_cpus, note = pinned()
    tool = counter()
    print(
        f"roomcast flush_delay benchmark, "
        f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}"
    )
    print(
        f"Python {platform.python_version()}, websockets {version('websockets')}, "
        f"roomcast {version('roomcast')}; {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs; {note}; {args.client_procs} client process(es) per server"
    )
    cpus = (server_cpus, client_cpus)
    if not args.no_bursts:
        bursts(args, cpus, tool)
    if not args.no_paced:
        paced(args, cpus)
    print(f"\ntotal {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
