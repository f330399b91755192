"""orjson's path against the standard library's: the same text or error; when orjson writes."""

from __future__ import annotations

import gc
import json
import logging
import math
import sys
import types
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roomcast import _frames
from roomcast.exceptions import LocalProtocolError
from roomcast.wire import dumps, json_encoder

from .odd_values import (
    ODD_KEYS,
    ODD_SCALARS,
    Count,
    Items,
    Label,
    Level,
    Mode,
    Pair,
    Ratio,
    Record,
)

try:
    import orjson
except ImportError:  # pragma: no cover - the speedups extra is part of dev
    orjson = None  # type: ignore[assignment]

needs_orjson = pytest.mark.skipif(
    _frames._orjson_dumps is None, reason="orjson is not installed (the speedups extra)"
)


def outcome(value: Any) -> tuple[str, str]:
    """What ``dumps`` makes of ``value``: its text, or its error's type and message."""
    try:
        return ("text", dumps(value))
    except LocalProtocolError as exc:
        return ("LocalProtocolError", str(exc))


@contextmanager
def frames_with(**attributes: Any) -> Iterator[None]:
    """Within the block, roomcast._frames has these attributes (its switches)."""
    saved = {name: getattr(_frames, name) for name in attributes}
    for name, value in attributes.items():
        setattr(_frames, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(_frames, name, value)


def both(value: Any) -> tuple[tuple[str, str], tuple[str, str]]:
    """``outcome(value)`` with orjson, then with the standard library only.

    orjson's outcome is checked first to be the same whether its check reads
    dicts through ``gc.get_referents`` or with ``dict.values()`` (from Python 3.13).
    """
    fast = outcome(value)
    with frames_with(_REFERENTS_HOLD_DICT_VALUES=False):
        assert outcome(value) == fast
    with frames_with(_orjson_dumps=None):
        return fast, outcome(value)


class Spy:
    """Counts the calls of a function roomcast's ``dumps`` calls, and makes them."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.calls = 0

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return self.function(*args)


@dataclass
class Spies:
    orjson: Spy
    stdlib: Spy


@pytest.fixture
def spies(monkeypatch: pytest.MonkeyPatch) -> Spies:
    """orjson's ``dumps`` and the standard library's path, counted."""
    if _frames._orjson_dumps is None:
        pytest.skip("orjson is not installed (the speedups extra)")
    spies = Spies(Spy(_frames._orjson_dumps), Spy(_frames._dumps_stdlib))
    monkeypatch.setattr(_frames, "_orjson_dumps", spies.orjson)
    monkeypatch.setattr(_frames, "_dumps_stdlib", spies.stdlib)
    return spies


@needs_orjson
@pytest.mark.parametrize("value", ODD_SCALARS, ids=repr)
def test_an_odd_value_gives_the_same_text_or_error_on_both_paths(value: Any) -> None:
    fast, stdlib = both({"v": [value]})
    assert fast == stdlib


@needs_orjson
@pytest.mark.parametrize("key", ODD_KEYS, ids=repr)
def test_an_odd_key_gives_the_same_text_or_error_on_both_paths(key: Any) -> None:
    fast, stdlib = both({"a": 1, key: [2]})
    assert fast == stdlib


class Thing:
    """An object whose ``vars()`` may share its inline values (Python 3.13)."""

    def __init__(self, value: Any) -> None:
        self.name = "thing"
        self.value = value


@needs_orjson
@pytest.mark.parametrize("value", [math.nan, Level.LOW, uuid.UUID(int=1), 1e-5, "ok", 0.5])
def test_the_vars_of_a_live_object_give_the_same_text_or_error_on_both_paths(value: Any) -> None:
    thing = Thing(value)  # alive while encoded: its vars() share its values
    fast, stdlib = both({"thing": vars(thing), "things": [vars(thing)]})
    assert fast == stdlib
    fast, stdlib = both(vars(thing))
    assert fast == stdlib


def test_gc_gives_dict_values_wherever_the_check_relies_on_it() -> None:
    thing = Thing(marker := object())
    if _frames._REFERENTS_HOLD_DICT_VALUES:
        assert marker in gc.get_referents(vars(thing))
    with frames_with(_REFERENTS_HOLD_DICT_VALUES=False):
        assert not _frames._plain({"a": [vars(thing)]})  # the object() seen, by dict.values()


@needs_orjson
def test_dumps_raises_the_standard_librarys_error_message() -> None:
    fast, stdlib = both({"id": uuid.UUID(int=7)})
    assert (
        fast
        == stdlib
        == (
            "LocalProtocolError",
            "payload is not JSON-serializable: Object of type UUID is not JSON serializable",
        )
    )


# --------------------------------------------------------------------------- orjson used


@pytest.mark.parametrize(
    "value",
    [
        {"type": "reply", "ref": None, "ok": True, "payload": {"granted": ["team:t1"]}},
        {"n": 1, "text": "x" * 100, "f": [0.0, 0.5, 1e-4, 9999999999999998.0, -3.25]},
        ["é", "😀", "\x00\u2028", (1, 2), {"": {}}],
        2**64 - 1,
    ],
)
def test_orjson_writes_plain_values(spies: Spies, value: Any) -> None:
    text = dumps(value)
    assert (spies.orjson.calls, spies.stdlib.calls) == (1, 0)
    assert text == json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        [1.0, math.nan],
        1e-5,
        1e16,
        Level.LOW,
        Mode.FAST,
        Label("x"),
        uuid.UUID(int=1),
        Record(),
    ],
    ids=repr,
)
def test_values_orjson_would_write_otherwise_are_written_by_the_standard_library(
    spies: Spies, value: Any
) -> None:
    outcome({"v": [value]})
    assert spies.stdlib.calls == 1


@needs_orjson
def test_a_cycle_never_reaches_the_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    """orjson refuses it first: walked level by level, a branching cycle would grow forever."""
    walk = Spy(lambda value: False)
    monkeypatch.setattr(_frames, "_plain", walk)
    node: dict[str, Any] = {"name": "root"}
    node["children"] = [node, {"parent": node}]
    with pytest.raises(LocalProtocolError, match="Circular reference detected"):
        dumps({"tree": node})
    assert walk.calls == 0


@needs_orjson
def test_orjson_is_used_when_installed() -> None:
    """The import-time check passes with the orjson installed: frames are written by it."""
    assert orjson is not None
    assert _frames._orjson_dumps is orjson.dumps
    assert json_encoder() == "orjson"


def test_json_encoder_names_the_standard_library_when_orjson_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_frames, "_orjson_dumps", None)
    assert json_encoder() == "json"


def fake_orjson(dumps: Callable[..., bytes]) -> types.ModuleType:
    module = types.ModuleType("orjson")
    module.__dict__.update(
        dumps=dumps,
        __version__="0.0",
        OPT_PASSTHROUGH_SUBCLASS=1,
        OPT_PASSTHROUGH_DATETIME=2,
        OPT_PASSTHROUGH_DATACLASS=4,
    )
    return module


def test_an_orjson_that_writes_otherwise_is_not_used(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def spaced(value: Any, default: Any, option: int) -> bytes:
        return json.dumps(value).encode()  # ASCII escapes and spaces: not the same text

    monkeypatch.setattr(_frames, "_orjson_dumps", None)
    monkeypatch.setitem(sys.modules, "orjson", fake_orjson(spaced))
    with caplog.at_level(logging.WARNING, logger="roomcast.wire"):
        _frames._load_orjson()
    assert _frames._orjson_dumps is None
    assert "orjson 0.0 writes JSON unlike the standard library" in caplog.text
    assert json_encoder() == "json"
    assert dumps({"a": "é"}) == '{"a":"é"}'


def test_an_orjson_that_fails_the_check_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(value: Any, default: Any, option: int) -> bytes:
        raise TypeError("unsupported")

    monkeypatch.setattr(_frames, "_orjson_dumps", None)
    monkeypatch.setitem(sys.modules, "orjson", fake_orjson(broken))
    _frames._load_orjson()
    assert _frames._orjson_dumps is None


def test_without_orjson_the_standard_library_writes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_frames, "_orjson_dumps", None)
    monkeypatch.setitem(sys.modules, "orjson", None)  # import orjson raises ImportError
    with caplog.at_level(logging.DEBUG, logger="roomcast.wire"):
        _frames._load_orjson()
    assert _frames._orjson_dumps is None
    assert caplog.text == ""
    assert dumps([1.5, None]) == "[1.5,null]"


# --------------------------------------------------------------------------- properties

# Text that may contain lone surrogates, which st.text() leaves out by default.
any_text = st.text(st.one_of(st.characters(), st.characters(codec=None, categories=["Cs"])))
#: Floats near each notation change and the extremes, beside arbitrary ones (NaN included).
edge_floats = st.sampled_from(
    [0.0, -0.0, 1e-4, 9.9999e-5, 1e-5, 1e-7, 5e-324, 2.2250738585072014e-308, 1e15,
     9999999999999998.0, 1e16, 1e17, 1.7976931348623157e308, 0.1, 1 / 3]
)  # fmt: skip
floats = st.one_of(st.floats(), edge_floats, edge_floats.map(lambda x: -x))
#: Floats both write alike, as orjson's path gets them.
plain_floats = st.one_of(
    st.just(0.0),
    st.floats(1e-4, 1e16, exclude_max=True),
    st.floats(-1e16, -1e-4, exclude_min=True),
)
#: Lists of such floats with, now and then, one that is not: NaN after a plain float, say.
float_lists = st.lists(plain_floats | edge_floats | st.sampled_from([math.nan, math.inf]))
ints = st.one_of(
    st.integers(),
    st.integers(2**63 - 2, 2**64 + 2),
    st.integers(-(2**63) - 2, -(2**63) + 2),
    st.integers(-(2**80), 2**80),
)
odd_values = st.one_of(
    st.sampled_from(ODD_SCALARS),
    st.builds(Label, any_text),
    st.builds(Count, ints),
    st.builds(Ratio, floats),
)
json_scalars = st.one_of(st.none(), st.booleans(), ints, floats, any_text, odd_values)
odd_keys = st.one_of(any_text, ints, floats, st.booleans(), st.none(), st.sampled_from(ODD_KEYS))
json_ish = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(any_text, children, max_size=4),
        st.dictionaries(odd_keys, children, max_size=3),
        st.lists(children, max_size=3).map(Items),
        st.dictionaries(any_text, children, max_size=3).map(Record),
        st.lists(children, max_size=3).map(Pair),
    ),
    max_leaves=24,
)


@needs_orjson
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_ish | float_lists)
def test_both_paths_give_the_same_text_or_the_same_error(value: Any) -> None:
    fast, stdlib = both(value)
    assert fast == stdlib


plain_text = st.text()  # no lone surrogates
plain = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), plain_floats, plain_text),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(plain_text, children, max_size=4),
    ),
    max_leaves=24,
)


@needs_orjson
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plain)
def test_orjson_writes_every_plain_value_as_the_standard_library_does(value: Any) -> None:
    assert orjson is not None
    expected = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for complete in (True, False):
        spies = Spies(Spy(orjson.dumps), Spy(_frames._dumps_stdlib))
        with frames_with(
            _orjson_dumps=spies.orjson,
            _dumps_stdlib=spies.stdlib,
            _REFERENTS_HOLD_DICT_VALUES=complete,
        ):
            assert dumps(value) == expected
        assert (spies.orjson.calls, spies.stdlib.calls) == (1, 0)
