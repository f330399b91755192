"""The benchmarks in bench/ still run: each one, at its smallest size, prints its ratio lines.

Smoke runs only: a handful of clients on 127.0.0.1, one round, one repetition. Nothing
here looks at a timing or a ratio's value; a benchmark that crashes, hangs, loses a
delivery or stops printing its results fails.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Every child process of a smoke run exits by itself after this long.
CHILD_SECONDS = 60
#: A whole smoke run is killed after this long.
RUN_TIMEOUT = 120


def run(*argv: str) -> str:
    """Run ``python *argv`` from the repository root; return its output, or fail with it."""
    done = subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_hub_fanout_prints_its_ratios() -> None:
    out = run(
        *("-m", "bench.hub_fanout"),
        *("--clients", "20", "--rounds", "1", "--repeat", "1", "--quick"),
    )
    assert "Fan-out: CPU time per delivery" in out
    # One row per scenario in the fan-out table, nothing lost; its hub/floor ratio
    # against the encode-and-send floor; its wall time.
    for scenario in ("1 room x 20", "2 rooms x 10"):
        assert re.search(rf"^{scenario} +20 .* 0$", out, re.MULTILINE), out
        assert re.search(rf"^  {scenario} +floor .* hub/floor [\d.]+", out, re.MULTILINE), out
        assert re.search(rf"^  {scenario} +hub [\d.]+ .* floor [\d.]+", out, re.MULTILINE), out
    assert "Memory per idle connection" in out
    assert re.search(r"^ +20 +\d+ +\d+ +\d+$", out, re.MULTILINE), out


@pytest.mark.parametrize(
    ("adapter", "floor"),
    [
        ("roomcast-websockets", "websockets-broadcast"),
        ("roomcast-starlette", "naive-starlette"),
        ("roomcast-aiohttp", "naive-aiohttp"),
    ],
)
def test_fanout_prints_its_ratios(adapter: str, floor: str) -> None:
    out = run(
        *("-m", "bench.fanout", "--servers", f"{adapter},{floor}"),
        *("--connections", "2", "--messages", "1", "--rounds", "1", "--repeat", "1"),
        *("--client-procs", "1", "--max-seconds", str(CHILD_SECONDS)),
    )
    assert "FAILED" not in out, out
    for kind in (adapter, floor):
        assert re.search(rf"\[1/1\] {kind}: N=2: [\d.]+ us/dlv, lost 0 ", out), out
    assert "Ratios, roomcast / floor" in out
    assert re.search(rf"cpu/dlv  {adapter} / {floor}, N=2: [\d.]+ \(1 pairs\)", out), out
    assert re.search(rf"mem/conn {adapter} - {floor}, N=2: -?[\d.]+ KiB", out), out


def test_fanout_runs_the_reference_servers() -> None:
    # node's ws and picows are part of the benchmark: missing, they fail it rather than
    # skip (.ci/run installs both: picows with the bench extra, ws with npm ci).
    assert shutil.which("node") is not None, "node is needed for the node-ws server"
    assert (ROOT / "bench" / "node" / "node_modules" / "ws" / "package.json").is_file(), (
        "node-ws needs its dependency installed: npm ci --prefix bench/node"
    )
    assert importlib.util.find_spec("picows") is not None, "picows: pip install -e '.[bench]'"
    adapter, others = "roomcast-websockets", ("websockets-broadcast", "node-ws", "picows")
    out = run(
        *("-m", "bench.fanout", "--servers", ",".join((adapter, *others))),
        *("--connections", "2", "--messages", "2", "--rounds", "1", "--repeat", "1"),
        *("--publish", "paced,burst", "--client-procs", "1"),
        *("--max-seconds", str(CHILD_SECONDS)),
    )
    assert "FAILED" not in out, out
    assert re.search(r"picows \d[\w.]*, node v\d+[\d.]* with ws \d+[\d.]*", out), out
    for kind in (adapter, *others):
        # Both publish modes, every message received, user and system CPU apart.
        assert re.search(
            rf"\[1/1\] {kind}: N=2: [\d.]+ us/dlv, lost 0, N=2 burst: [\d.]+ us/dlv, lost 0 ", out
        ), out
        for mode in ("paced", "burst"):
            row = rf"^{kind} +{mode} +2 +2 +[\d.]+ +[\d.]+ +[\d.]+ .* 0 +\d+%"
            assert re.search(row, out, re.MULTILINE), out
    assert "Headline: CPU per delivery" in out
    for mode in ("paced", "burst"):
        for other in others:
            line = rf"^  {adapter} / {other}, N=2 {mode}: [\d.]+ \(1 pairs"
            assert re.search(line, out, re.MULTILINE), out
        for peer in others[1:]:
            line = rf"^  {peer} / websockets-broadcast, N=2 {mode}: [\d.]+ \(1 pairs"
            assert re.search(line, out, re.MULTILINE), out


def test_cluster_prints_its_comparison() -> None:
    # Needs the Redis the multi-node tests use (127.0.0.1:6379), as the benchmark does.
    out = run(
        *("-m", "bench.cluster", "--clients", "4", "--messages", "2", "--rounds", "1"),
        *("--latency-seconds", "0.2", "--solo", "5", "--history", "50"),
        *("--max-seconds", str(CHILD_SECONDS)),
    )
    assert "FAILED" not in out, out
    for kind in ("roomcast", "socketio"):
        assert re.search(rf"^  {kind} +[\d,]+ \[.*\] +0$", out, re.MULTILINE), out
        for node in ("node A", "node B"):
            assert re.search(rf"^  {kind} +{node} .* 0 +[\d.]+$", out, re.MULTILINE), out
    assert re.search(r"^  roomcast-memory +the only node .* 0 +[\d.]+$", out, re.MULTILINE), out
    assert re.search(r"deliveries per CPU-second: .* ratio [\d.]+x", out), out
    assert re.search(r"p99 at 100/s: cross-node [\d.]+ ms, single node [\d.]+ ms", out), out
    # Counted, not timed: a node without members in a room receives none of its messages.
    assert "roomcast: node B, no member in 'solo', received 0 of its 5 messages" in out
    assert re.search(r"history publishes \(Lua\) from one node process, .*/s", out), out


@pytest.mark.parametrize(
    ("adapter", "floor"),
    [("websockets", "websockets-keepalive"), ("aiohttp", "aiohttp-heartbeat")],
)
def test_heartbeat_prints_its_ratio(adapter: str, floor: str) -> None:
    out = run(
        *("-m", "bench.heartbeat", "--adapter", adapter, "--connections", "4"),
        *("--heartbeat", "0.5,2", "--window", "1", "--pairs", "1"),
        *("--max-seconds", str(CHILD_SECONDS)),
    )
    ours = f"roomcast-{adapter}"
    assert re.search(r"open-files limit raised to [\d,]+ \(resource.setrlimit\)", out), out
    share = rf"\[1/1\] {ours} [\d.]+%, {floor} [\d.]+%, asyncio-bare [\d.]+% of one core"
    assert re.search(share, out), out
    for kind in (ours, floor, "asyncio-bare"):
        # Every client pinged and still connected: the soak soaked.
        pinged = rf"^{kind}: [1-9][\d,]* protocol pings .* 4 open, 0 closed"
        assert re.search(pinged, out, re.MULTILINE), out
    assert f"{ours}: heartbeat timeouts 0" in out
    for name in (floor, "asyncio-bare"):
        assert re.search(rf"ratio {ours} / {name}: [\d.]+ \(median of 1 pairs", out), out


def test_encode_prints_its_ratios() -> None:
    out = run("-m", "bench.encode", "--pairs", "1", "--rounds", "2")
    # Both paths wrote the same text for every value (the benchmark checks), and each
    # value has its ratio line, for dumps and for hub.publish.
    for value in ("reply frame", "small", "medium", "large"):
        assert re.search(rf"^{value} +\d+ .* [\d.]+ \[.*\] \(1 pairs\)$", out, re.MULTILINE), out
    for value in ("small", "medium", "large"):
        line = rf"^hub.publish, {value} +\d+ .* [\d.]+ \[.*\] \(1 pairs\)$"
        assert re.search(line, out, re.MULTILINE), out


def test_flush_prints_its_ratios() -> None:
    out = run(
        *("-m", "bench.flush", "--connections", "2", "--messages", "2", "--rounds", "1"),
        *("--delays", "0,5", "--paced-connections", "2", "--paced-seconds", "0.2"),
        *("--client-procs", "1", "--max-seconds", str(CHILD_SECONDS)),
    )
    for label in ("websockets.broadcast()", "roomcast 0 ms", "roomcast 5 ms"):
        # Nothing lost in the bursts; system calls counted or marked n/a.
        row = rf"^{re.escape(label)} +[\d.]+ \[.*\] +[\d.]+ +[\d.]+ +0 +([\d.]+|n/a) "
        assert re.search(row, out, re.MULTILINE), out
    for delay in ("0", "5"):
        line = rf"burst of 2 to 2, flush_delay {delay} ms: [\d.]+x websockets.broadcast\(\)"
        assert re.search(line, out), out
    assert re.search(r"syscalls per delivery \(broadcast\(\): ([\d.]+|n/a)\)", out), out
    for label in ("roomcast 50 ms", "websockets.broadcast\\(\\)"):
        assert re.search(rf"paced 20/s to 2: {label}: publish lag p99 [\d.]+ ms, lost 0", out), out
    # The kernel's floor for the same load, measured in the same run.
    floor = r"one send\(\) of 220 bytes to each of 2 loopback sockets costs [\d.]+ us of CPU"
    assert re.search(floor, out), out


@pytest.mark.parametrize(
    "script",
    [
        "bench/fanout.py",
        "bench/hub_fanout.py",
        "bench/cluster.py",
        "bench/heartbeat.py",
        "bench/encode.py",
        "bench/flush.py",
        "bench/_send_floor.py",
    ],
)
def test_benchmarks_still_run_as_scripts(script: str) -> None:
    assert "usage:" in run(script, "--help")
