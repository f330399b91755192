"""The defaults page lists every default of `roomcast.config`, with its value and its option."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import roomcast
import roomcast.backends.redis
import roomcast.config
import roomcast.jwt

PAGE = Path(__file__).resolve().parents[2] / "docs" / "reference" / "defaults.md"
#: | `DEFAULT_X` | `value` | `Class(option=)` | meaning |
ROW = re.compile(r"^\| `(DEFAULT_\w+)` \| `([^`]+)` \| `(\w+)\((\w+)=\)` \| .+ \|$")
#: Where the classes a row names are found.
NAMESPACES = (roomcast, roomcast.jwt, roomcast.backends.redis)


def rows() -> list[tuple[str, str, str, str]]:
    found = []
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match:
            name, value, owner, option = match.groups()
            found.append((name, value, owner, option))
    return found


def number(text: str) -> float:
    """The value of a number literal or a product of them (``1024 * 1024``), as written."""
    node = ast.parse(text, mode="eval").body
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        return number(ast.unparse(node.left)) * number(ast.unparse(node.right))
    value = ast.literal_eval(node)
    assert isinstance(value, (int, float)), text
    assert not isinstance(value, bool), text
    return value


def defaults() -> list[str]:
    return [name for name in roomcast.config.__all__ if name.startswith("DEFAULT_")]


def source_order() -> list[str]:
    tree = ast.parse(Path(roomcast.config.__file__).read_text(encoding="utf-8"))
    return [
        node.target.id
        for node in tree.body
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and node.target.id.startswith("DEFAULT_")
    ]


def test_the_page_lists_every_default_in_the_order_of_config() -> None:
    assert sorted(source_order()) == sorted(defaults())
    assert [name for name, *_ in rows()] == source_order()


@pytest.mark.parametrize("row", rows(), ids=lambda row: row[0])
def test_each_row_gives_the_value_in_config(row: tuple[str, str, str, str]) -> None:
    name, value, _, _ = row
    assert number(value) == getattr(roomcast.config, name)


@pytest.mark.parametrize("row", rows(), ids=lambda row: row[0])
def test_each_row_names_an_option_whose_default_it_is(row: tuple[str, str, str, str]) -> None:
    name, _, owner, option = row
    cls = next(getattr(space, owner) for space in NAMESPACES if hasattr(space, owner))
    parameter = inspect.signature(cls).parameters[option]
    assert parameter.default == getattr(roomcast.config, name)
