"""examples/redis_worker.py publishes, from another process, to rooms a node serves."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from roomcast import DefaultAuthorizer, Hub, RoomOptions
from roomcast.backends.redis import RedisBackend
from roomcast.testing import TestClient

from .conftest import REDIS_URL

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "redis_worker.py"
TIMEOUT = 20


def namespaces() -> dict[str, RoomOptions]:
    """The example's namespaces: a node and its workers must agree on them."""
    spec = importlib.util.spec_from_file_location("redis_worker", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found: dict[str, RoomOptions] = module.NAMESPACES
    return found


async def test_a_worker_process_publishes_to_clients_of_a_node(prefix: str) -> None:
    node = Hub(
        backend=RedisBackend(REDIS_URL, prefix=prefix),
        authorizer=DefaultAuthorizer(),
        namespaces=namespaces(),
    )
    with anyio.fail_after(TIMEOUT):
        async with node, TestClient(node, timeout=TIMEOUT) as client:
            first = await client.subscribe("chat:general")
            command = [sys.executable, str(EXAMPLE), "chat:general", "build is green"]
            command += ["--redis", REDIS_URL, "--prefix", prefix]
            done = await anyio.run_process(command, stdout=subprocess.PIPE, check=True)
            event = await client.receive_event("chat.message")
            assert event["payload"] == {"name": "worker", "text": "build is green"}
            assert event["offset"] == first["chat:general"]["offset"] + 1
            assert done.stdout.decode().startswith(f"published {event['id']} ")
