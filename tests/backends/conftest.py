"""Fixtures for the backend tests: the local Redis, one key prefix per test, cleaned up after.

Tests that need Redis fail, never skip, when it cannot be reached: CI starts one
on 127.0.0.1:6379 (``ROOMCAST_REDIS_URL`` names another).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
import redis

#: The Redis the tests use; its database 1 is the second shard of the sharding tests.
REDIS_URL = os.environ.get("ROOMCAST_REDIS_URL", "redis://127.0.0.1:6379/0")
SECOND_DB_URL = REDIS_URL.rsplit("/", 1)[0] + "/1"


@pytest.fixture
def anyio_backend() -> str:
    """redis-py's asyncio client runs on asyncio only; the trio test asks for trio itself."""
    return "asyncio"


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key and channel prefix of this test alone; its keys are deleted afterwards."""
    name = f"roomcast-test-{secrets.token_hex(6)}"
    yield name
    for url in (REDIS_URL, SECOND_DB_URL):
        with redis.Redis.from_url(url, socket_timeout=5) as client:
            keys = list(client.scan_iter(match=f"{name}:*", count=1000))
            if keys:
                client.delete(*keys)
