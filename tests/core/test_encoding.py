"""Encoding server frames: the text and the errors, with orjson and with the standard library.

Every test here runs twice (the ``json_encoder`` fixture): once with orjson
installed, once with the standard library alone; each pins the standard library's
text or error, so both paths must give it.
"""

from __future__ import annotations

import datetime
import decimal
import math
import uuid
from typing import Any

import pytest

from roomcast.exceptions import LocalProtocolError
from roomcast.wire import dumps

from .odd_values import Color, Count, Items, Label, Level, Mode, Point, Record, Spot

pytestmark = pytest.mark.usefixtures("json_encoder")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({"a": [1, "é", None, True, 2.5]}, '{"a":[1,"é",null,true,2.5]}'),
        ((1, (2, [])), "[1,[2,[]]]"),
        (1e-4, "0.0001"),
        (1e-5, "1e-05"),
        (1e15, "1000000000000000.0"),
        (1e16, "1e+16"),
        (-0.0, "-0.0"),
        (5e-324, "5e-324"),
        (2**64, "18446744073709551616"),
        ({2: 2, True: 3, None: 4, 1.5: 5}, '{"2":2,"true":3,"null":4,"1.5":5}'),
        (Level.LOW, "1"),
        (Mode.FAST, '"fast"'),
        (Label("x"), '"x"'),
        (Record(a=Items([Count(1)])), '{"a":[1]}'),
        (Point(1, 2), "[1,2]"),
        ('\x00\x1f\x7f\u2028\u2029"\\/', '"\\u0000\\u001f\x7f\u2028\u2029\\"\\\\/"'),
        ({"\n": "\t\b\f\r"}, '{"\\n":"\\t\\b\\f\\r"}'),
        ("😀", '"😀"'),
    ],
)
def test_dumps_writes_what_the_standard_library_writes(value: Any, text: str) -> None:
    assert dumps(value) == text


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        [1.0, -math.inf],
        [1.0, math.nan],
        [0.5, 2.0, math.nan, 3.0],
        {"x": {"y": math.inf}},
        uuid.UUID(int=7),
        {"when": datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc)},
        [Spot()],
        Color.RED,
        {"k": decimal.Decimal("1")},
        "\ud800",
        {"\udc00": 1},
        {(1, 2): 3},
    ],
)
def test_dumps_refuses_what_the_standard_library_refuses(value: Any) -> None:
    with pytest.raises(LocalProtocolError, match="not JSON-serializable"):
        dumps(value)


def test_dumps_refuses_an_orjson_fragment() -> None:
    orjson = pytest.importorskip("orjson")
    with pytest.raises(LocalProtocolError, match="Fragment"):
        dumps({"raw": orjson.Fragment(b"1")})


def test_dumps_refuses_a_circular_reference() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(LocalProtocolError, match="Circular reference"):
        dumps({"a": loop})


@pytest.mark.parametrize("depth", [254, 255, 256, 400])
def test_dumps_writes_nesting_deeper_than_orjson_goes(depth: int) -> None:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    assert dumps(value) == "[" * depth + "]" * depth
