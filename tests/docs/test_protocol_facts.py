"""The close codes the docs promise are exactly the ones `CloseCode` lists, and all are sent."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from roomcast.protocol import CloseCode, Reconnect

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "src" / "roomcast"
PROTOCOL_REFERENCE = ROOT / "docs" / "reference" / "protocol.md"
JWT_HOWTO = ROOT / "docs" / "howto" / "jwt.md"

#: How the docs spell each piece of reconnect advice.
ADVICE: dict[Reconnect, str] = {
    "never": "never",
    "with_new_token": "with a new token",
    "after_delay": "after a delay",
}
#: Each member by its number (the enum's own lookup, spelled so that mypy can check it).
BY_CODE: dict[int, CloseCode] = {int(member): member for member in CloseCode}
#: A table row whose first cell is a close code: | `4001` | meaning | advice |
ROW = re.compile(r"^\|\s*`(\d{4})`\s*\|(.*)\|\s*$")


def close_code_rows(text: str) -> list[tuple[int, list[str]]]:
    """(code, other cells) of every table row in ``text`` that starts with a close code."""
    rows = []
    for line in text.splitlines():
        match = ROW.match(line.strip())
        if match:
            cells = [cell.strip() for cell in match.group(2).split("|")]
            rows.append((int(match.group(1)), cells))
    return rows


def section(path: Path, heading: str) -> str:
    """The text of ``path`` under ``heading``, up to the next heading of its level."""
    text = path.read_text(encoding="utf-8")
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def head(meaning: str) -> str:
    """The words that name a code, before the first colon, comma or semicolon."""
    return re.split(r"[:,;(]", meaning, maxsplit=1)[0].strip().lower()


def plain(cell: str) -> str:
    return cell.replace("`", "").lower()


def test_the_reference_lists_exactly_the_close_codes_in_order() -> None:
    rows = close_code_rows(section(PROTOCOL_REFERENCE, "## Close codes"))
    assert [code for code, _ in rows] == [int(member) for member in CloseCode]


@pytest.mark.parametrize("member", list(CloseCode), ids=lambda member: member.name)
def test_each_reference_row_agrees_with_its_member(member: CloseCode) -> None:
    rows = dict(close_code_rows(section(PROTOCOL_REFERENCE, "## Close codes")))
    meaning, advice = rows[member]
    assert advice == ADVICE[member.reconnect]
    assert plain(meaning).startswith(head(member.meaning)), (meaning, member.meaning)


def test_the_reference_points_to_the_enum() -> None:
    assert "[roomcast.CloseCode]" in section(PROTOCOL_REFERENCE, "## Close codes")


def test_the_jwt_howto_table_agrees_with_the_enum() -> None:
    rows = close_code_rows(JWT_HOWTO.read_text(encoding="utf-8"))
    assert [code for code, _ in rows] == [CloseCode.INVALID_TOKEN, CloseCode.TOKEN_EXPIRED]
    for code, (meaning, advice) in rows:
        member = BY_CODE[code]
        assert advice == ADVICE[member.reconnect]
        assert plain(meaning).startswith(head(member.meaning)), (meaning, member.meaning)


def test_the_row_pattern_reads_a_row() -> None:
    # Guards the parser: a row it cannot read would make the checks above vacuous.
    match = ROW.match("| `4009` | slow consumer | after a delay |")
    assert match is not None
    assert match.group(1) == "4009"


def sources() -> list[Path]:
    return [path for path in sorted(SOURCE.rglob("*.py")) if path.name != "protocol.py"]


def used_members() -> set[str]:
    """Names of `CloseCode` members read anywhere in src (``CloseCode.X``)."""
    found: set[str] = set()
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "CloseCode"
            ):
                found.add(node.attr)
    return found


def used_literals() -> set[int]:
    """Integer literals in src code (not in docstrings or comments) that are close codes."""
    codes = {int(member) for member in CloseCode}
    found: set[int] = set()
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and type(node.value) is int and node.value in codes:
                found.add(node.value)
    return found


@pytest.mark.parametrize("member", list(CloseCode), ids=lambda member: member.name)
def test_every_close_code_is_sent_somewhere(member: CloseCode) -> None:
    # A code nobody sends should not be promised. Modules not yet converted to
    # CloseCode members still count through their literal.
    assert member.name in used_members() or int(member) in used_literals()


def test_the_usage_scan_finds_members() -> None:
    assert "TOKEN_EXPIRED" in used_members()
