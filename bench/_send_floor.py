"""The kernel's floor under a fan-out: what one ``send()`` to a loopback socket costs here.

``python -m bench._send_floor N SIZE ROUNDS [--writer-cpus 0] [--reader-cpus 1]``: N
connected loopback socket pairs; a reader process (on ``--reader-cpus``) reads every
socket as data arrives; this process (on ``--writer-cpus``) writes SIZE bytes to each of
the N sockets in turn, one ``socket.send()`` each, ROUNDS times, with a 20 ms pause
between rounds so that the reader keeps up. Prints one JSON line: the writer's user and
system CPU per send in microseconds (``user_us``, ``sys_us``; from ``getrusage``, whose
user/system split is only meaningful over many sends: thousands, not tens), and the
rounds' median wall time for one send to every socket in milliseconds (``round_ms``).
No framework, no event loop, no framing: whatever a server adds to a delivery comes on
top of this. Linux (``os.fork``, ``sched_setaffinity``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import socket
import statistics
import sys
import time
from collections.abc import Sequence

if not __package__:
    # Run as a script (python bench/_send_floor.py): make the bench package importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._child import lift_open_files_limit


def read_all(port: int, n: int, total: int, cpus: set[int] | None) -> None:
    """The reader: connect ``n`` sockets, read until ``total`` bytes came, then exit."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    selector = selectors.DefaultSelector()
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    received = 0
    deadline = time.monotonic() + 300
    while received < total and time.monotonic() < deadline:
        for key, _events in selector.select(1.0):
            try:
                data = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            if not data:
                selector.unregister(key.fileobj)
            received += len(data)


def measure(
    n: int, size: int, rounds: int, writer: set[int] | None, reader: set[int] | None
) -> dict[str, float]:
    lift_open_files_limit()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(min(n, 4096))
    port = listener.getsockname()[1]
    child = os.fork()
    if child == 0:  # pragma: no cover - the reader process
        try:
            listener.close()
            read_all(port, n, n * size * rounds, reader)
        finally:
            os._exit(0)
    try:
        if writer:
            os.sched_setaffinity(0, writer)
        socks = [listener.accept()[0] for _ in range(n)]
        for sock in socks:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio does
            sock.setblocking(False)
        data = b"x" * size
        walls: list[float] = []
        before = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(rounds):
            began = time.perf_counter()
            for sock in socks:
                sock.send(data)
            walls.append(time.perf_counter() - began)
            time.sleep(0.02)
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        os.waitpid(child, 0)
    sends = n * rounds
    return {
        "user_us": (after.ru_utime - before.ru_utime) / sends * 1e6,
        "sys_us": (after.ru_stime - before.ru_stime) / sends * 1e6,
        "round_ms": statistics.median(walls) * 1e3,
    }


def cpu_set(text: str) -> set[int] | None:
    return {int(cpu) for cpu in text.split(",")} if text else None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one send() per socket: the kernel's floor")
    parser.add_argument("n", type=int, metavar="N", help="loopback sockets")
    parser.add_argument("size", type=int, metavar="SIZE", help="bytes per send()")
    parser.add_argument("rounds", type=int, metavar="ROUNDS", help="sends to every socket")
    parser.add_argument(
        "--writer-cpus", type=cpu_set, default=None, help="CPUs of the writer, e.g. 0"
    )
    parser.add_argument(
        "--reader-cpus", type=cpu_set, default=None, help="CPUs of the reader, e.g. 1"
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.size < 1 or args.rounds < 1:
        parser.error("N, SIZE and ROUNDS must be positive")
    print(json.dumps(measure(args.n, args.size, args.rounds, args.writer_cpus, args.reader_cpus)))


if __name__ == "__main__":
    main()
