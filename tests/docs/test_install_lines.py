"""Every install line in the README, CONTRIBUTING, the docs and the examples works from a checkout.

roomcast is not on the package index yet, so a line that asks it for ``roomcast``
fails; and uvicorn without a WebSocket library answers every handshake with 404, so a
line that installs uvicorn for the Starlette adapter must bring one.
"""

from __future__ import annotations

import importlib.metadata
import re
import shlex
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(
    [
        ROOT / "README.md",
        ROOT / "CONTRIBUTING.md",
        *(ROOT / "docs").rglob("*.md"),
        *(ROOT / "examples").rglob("*.py"),
        *(ROOT / "bench").rglob("*.md"),
    ]
)
#: What follows ``pip install`` up to the end of the command (a backquote, ``&&`` or the line).
INSTALL = re.compile(r"pip install\s+(?P<args>[^`\n]*?)\s*(?:``|`|&&|$)", re.MULTILINE)


def install_lines() -> list[tuple[str, list[str]]]:
    """Every ``pip install`` command in the sources: where it is, and its arguments."""
    lines = []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        for match in INSTALL.finditer(text):
            where = f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}"
            lines.append((where, shlex.split(match["args"])))
    return lines


LINES = install_lines()


def extras_of(args: list[str]) -> set[str]:
    """The roomcast extras an install from the checkout (``-e ".[a,b]"``) names."""
    extras: set[str] = set()
    for arg in args:
        match = re.fullmatch(r"\.\[(?P<extras>[\w,-]+)\]", arg)
        if match:
            extras.update(match["extras"].split(","))
    return extras


def requirements(extra: str) -> list[Requirement]:
    """What roomcast's ``extra`` installs, as the installed metadata says."""
    found = []
    for line in importlib.metadata.requires("roomcast") or []:
        requirement = Requirement(line)
        if requirement.marker is not None and requirement.marker.evaluate({"extra": extra}):
            found.append(requirement)
    return found


def installs(extra: str) -> set[str]:
    """The distributions ``extra`` brings, following roomcast's own extras, with extras."""
    names: set[str] = set()
    for requirement in requirements(extra):
        if requirement.name == "roomcast":
            for inner in requirement.extras:
                names |= installs(inner)
        else:
            names.add(requirement.name)
            names.update(f"{requirement.name}[{inner}]" for inner in requirement.extras)
    return names


def test_the_sources_have_install_lines() -> None:
    assert len(LINES) >= 10


@pytest.mark.parametrize(("where", "args"), LINES, ids=[where for where, _ in LINES])
def test_no_install_line_asks_the_package_index_for_roomcast(where: str, args: list[str]) -> None:
    assert not [arg for arg in args if re.match(r"roomcast(\[|$|[<>=~ ])", arg)]


@pytest.mark.parametrize(("where", "args"), LINES, ids=[where for where, _ in LINES])
def test_install_lines_name_extras_that_exist(where: str, args: list[str]) -> None:
    provided = set(importlib.metadata.metadata("roomcast").get_all("Provides-Extra") or [])
    assert extras_of(args) <= provided


def brought_by(args: list[str]) -> set[str]:
    """The distributions an install line brings: ``name`` and ``name[extra]`` for each."""
    brought: set[str] = set()
    for extra in extras_of(args):
        brought |= installs(extra)
    for arg in args:
        # A checkout by its path (".", "/path/to/roomcast") or an option: not a requirement.
        if not arg.startswith((".", "-", "/", "~")):
            requirement = Requirement(arg)
            brought.add(requirement.name)
            brought.update(f"{requirement.name}[{inner}]" for inner in requirement.extras)
    return brought


@pytest.mark.parametrize(("where", "args"), LINES, ids=[where for where, _ in LINES])
def test_every_install_line_with_starlette_brings_a_server_that_serves_websockets(
    where: str, args: list[str]
) -> None:
    brought = brought_by(args)
    if "starlette" in brought:
        assert brought & {"uvicorn", "hypercorn"}, "an ASGI server to run the app"
    if "uvicorn" in brought:
        # uvicorn's `standard` extra, or a WebSocket library beside it.
        assert brought & {"uvicorn[standard]", "websockets", "wsproto"}


def test_the_examples_extra_gives_uvicorn_a_websocket_implementation() -> None:
    brought = installs("examples")
    assert "uvicorn" in brought
    assert brought & {"uvicorn[standard]", "websockets", "wsproto"}


@pytest.mark.parametrize("page", ["README.md", "docs/index.md", "docs/tutorial/getting-started.md"])
def test_where_readers_land_first_they_read_that_roomcast_is_not_released(page: str) -> None:
    text = " ".join((ROOT / page).read_text(encoding="utf-8").split())
    assert "not released" in text or "not on the Python package index yet" in text
    assert "from a checkout of" in text


def test_no_extra_installs_a_broker_client_without_its_backend() -> None:
    backends = {path.stem for path in (ROOT / "src" / "roomcast" / "backends").glob("*.py")}
    provided = set(importlib.metadata.metadata("roomcast").get_all("Provides-Extra") or [])
    for broker in ("redis", "nats"):
        if broker not in backends:
            assert broker not in provided
            assert not any(broker in installs(extra) for extra in provided)
