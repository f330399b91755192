"""The reconnect page's close-code table agrees with ``CloseCode.reconnect``."""

from __future__ import annotations

import re
from pathlib import Path

from roomcast import CloseCode

PAGE = Path(__file__).resolve().parents[2] / "docs" / "topics" / "reconnect.md"


def _advice_rows() -> dict[str, set[int]]:
    text = PAGE.read_text(encoding="utf-8")
    section = text.split("## What a close code decides", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, set[int]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        rows[cells[0].strip("`")] = {int(code) for code in re.findall(r"`(\d{4})`", cells[1])}
    return rows


def test_every_advice_has_a_row_listing_exactly_its_codes() -> None:
    rows = _advice_rows()
    expected: dict[str, set[int]] = {}
    for code in CloseCode:
        expected.setdefault(code.reconnect, set()).add(int(code))
    assert rows == expected


def test_the_backoff_table_follows_the_stated_formula() -> None:
    text = PAGE.read_text(encoding="utf-8")
    section = text.split("## Backoff", 1)[1].split("\n## ", 1)[0]
    caps = re.findall(r"^\| (\d+)(?: and later)? \| 0 \u2013 ([\d.]+) s \|$", section, re.M)
    assert caps, "the backoff table is missing"
    for attempt, cap in caps:
        assert float(cap) == min(20.0, 0.5 * 2 ** int(attempt))
    assert [int(attempt) for attempt, _ in caps] == list(range(len(caps)))
    assert min(20.0, 0.5 * 2 ** len(caps)) == 20.0
