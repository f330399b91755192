"""Shared fixtures: runtime tests run on both anyio backends."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test on asyncio and on trio."""
    backend: str = request.param
    return backend
