"""Every extra installs on every Python roomcast supports, as the install page says.

A dependency whose newest release needs a newer Python than roomcast's oldest
leaves an older release to that Python. The install page (docs/index.md,
"On Python 3.10") lists those releases; every requirement on such a package, in
the dependencies and in each extra, must admit it, or ``pip install -e ".[dev]"``
fails on Python 3.10.
"""

from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
INSTALL_PAGE = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")


def oldest_python() -> str:
    found = re.search(r'^requires-python = ">=(3\.\d+)"$', PYPROJECT, re.MULTILINE)
    assert found is not None
    return found.group(1)


def requirements() -> list[Requirement]:
    """The requirements of the dependencies and of every extra, but roomcast's own."""
    project = PYPROJECT.split("\n[project]\n", 1)[1]
    dependencies = project.split("\ndependencies = [", 1)[1].split("\n]", 1)[0]
    extras = project.split("\n[project.optional-dependencies]\n", 1)[1].split("\n[", 1)[0]
    strings = re.findall(r'^\s*"([^"]+)",?$', dependencies, re.MULTILINE)
    for line in extras.splitlines():
        if not line.startswith("#"):
            strings += re.findall(r'"([^"]+)"', line)
    parsed = [Requirement(string) for string in strings]
    return [requirement for requirement in parsed if requirement.name != "roomcast"]


def newest_on_the_oldest_python() -> dict[str, str]:
    """The install page's table: package, its newest release on the oldest Python."""
    section = INSTALL_PAGE.split(f"### On Python {oldest_python()}\n", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `([\w.-]+)` \| (\d[\w.]*) \| (\d[\w.]*) \|", section, re.MULTILINE)
    assert rows, "the install page has no table of releases for the oldest Python"
    table = {}
    for name, on_oldest, newest in rows:
        assert Version(on_oldest) < Version(newest), name
        table[name] = on_oldest
    return table


def test_every_pin_admits_the_newest_release_on_the_oldest_python() -> None:
    table = newest_on_the_oldest_python()
    pinned = {requirement.name for requirement in requirements()}
    assert set(table) <= pinned, f"the install page lists packages roomcast does not use: {table}"
    refused = [
        f"{requirement} refuses {requirement.name} {table[requirement.name]}, the newest "
        f"on Python {oldest_python()}"
        for requirement in requirements()
        if requirement.name in table and not requirement.specifier.contains(table[requirement.name])
    ]
    assert refused == []


def test_the_requirements_are_read_whole() -> None:
    # Guards the parsing above: these pins are in the dependencies and in the extras.
    names = {requirement.name for requirement in requirements()}
    assert {"anyio", "pyjwt", "websockets", "starlette", "aiohttp", "pytest"} <= names
    websockets = [r for r in requirements() if r.name == "websockets"]
    assert len(websockets) == 2  # the websockets extra and the client extra


def test_the_install_page_names_the_websockets_pin() -> None:
    pins = {str(r.specifier) for r in requirements() if r.name == "websockets"}
    assert pins == {">=15.0"}
    assert "`websockets>=15.0`" in INSTALL_PAGE
