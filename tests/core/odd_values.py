"""Values JSON encoders disagree on: subclasses, enums, odd floats, integers and keys."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import math
import sys
import uuid
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - the speedups extra is part of dev
    orjson = None  # type: ignore[assignment]


class Label(str):
    pass


class Count(int):
    pass


class Ratio(float):
    pass


class Record(dict):  # type: ignore[type-arg]
    pass


class Items(list):  # type: ignore[type-arg]
    pass


class Pair(tuple):  # type: ignore[type-arg]
    pass


Point = collections.namedtuple("Point", "x y")


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    LOW = 1


class Mode(str, enum.Enum):
    FAST = "fast"


class Scale(float, enum.Enum):
    HALF = 0.5


class Shifted(int, enum.Enum):
    """An int enum whose value is not the int it is."""

    ONE = 1

    def __new__(cls, number: int) -> Shifted:
        member = int.__new__(cls, number)
        member._value_ = f"#{number}"
        return member

    def __repr__(self) -> str:
        return f"<Shifted: {self._value_}>"


@dataclasses.dataclass
class Spot:
    x: int = 1


#: Values the standard library refuses or writes unlike orjson would, each alone.
ODD_SCALARS: list[Any] = [
    math.nan,
    math.inf,
    -math.inf,
    1e-5,
    9.9999e-5,
    1e-7,
    5e-324,
    1e16,
    1.2345e17,
    -1e300,
    sys.float_info.max,
    2**64,
    2**64 - 1,
    -(2**63) - 1,
    10**40,
    Label("label"),
    Count(7),
    Ratio(0.25),
    Ratio(math.nan),
    Color.RED,
    Level.LOW,
    Mode.FAST,
    Scale.HALF,
    Shifted.ONE,
    uuid.UUID(int=7),
    datetime.date(2026, 1, 2),
    datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    datetime.time(3, 4),
    Spot(),
    decimal.Decimal("1.5"),
    b"bytes",
    bytearray(b"x"),
    {1, 2},
    frozenset(),
    object(),
    1j,
    "\ud800",
    "a\udfffb",
    Point(1, 2),
    Pair((1, 2)),
    Record(a=1),
    Items([1]),
    collections.OrderedDict(a=1),
]
if orjson is not None:
    ODD_SCALARS.append(orjson.Fragment(b'{"raw":1}'))

#: Dict keys the standard library coerces (int, float, bool, None), refuses, or checks.
ODD_KEYS: list[Any] = [
    1,
    -(2**70),
    1.5,
    math.nan,
    1e-7,
    True,
    None,
    Label("k"),
    Mode.FAST,
    Level.LOW,
    (1, 2),
    "\udc00",
    uuid.UUID(int=1),
]
