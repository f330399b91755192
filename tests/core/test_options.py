"""Room options and rate limits are checked when built: a bad number is a ValueError naming it."""

from __future__ import annotations

from typing import Any

import pytest

from roomcast import History, RateLimit
from roomcast.config import DEFAULT_BURST, DEFAULT_PERIOD, DEFAULT_RATE, DEFAULT_STRIKES


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"size": "10", "ttl": 1}, "History.size"),
        ({"size": 1.5, "ttl": 1}, "History.size"),
        ({"size": True, "ttl": 1}, "History.size"),
        ({"size": 0, "ttl": 1}, "History.size"),
        ({"size": 10, "ttl": "1"}, "History.ttl"),
        ({"size": 10, "ttl": None}, "History.ttl"),
        ({"size": 10, "ttl": float("nan")}, "History.ttl"),
        ({"size": 10, "ttl": 0}, "History.ttl"),
    ],
)
def test_history_refuses_a_bad_number_with_a_value_error(fields: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        History(**fields)


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"rate": "100"}, "RateLimit.rate"),
        ({"rate": float("inf")}, "RateLimit.rate"),
        ({"period": None}, "RateLimit.period"),
        ({"period": -1}, "RateLimit.period"),
        ({"burst": "20"}, "RateLimit.burst"),
        ({"burst": 0.5}, "RateLimit.burst"),
        ({"strikes": 2.0}, "RateLimit.strikes"),
        ({"strikes": 0}, "RateLimit.strikes"),
    ],
)
def test_rate_limit_refuses_a_bad_number_with_a_value_error(
    fields: dict[str, Any], name: str
) -> None:
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        RateLimit(**fields)


def test_rate_limit_defaults_come_from_config() -> None:
    limit = RateLimit()
    assert (limit.rate, limit.period, limit.burst, limit.strikes) == (
        DEFAULT_RATE,
        DEFAULT_PERIOD,
        DEFAULT_BURST,
        DEFAULT_STRIKES,
    )
