"""The Python API reference renders docstrings as Markdown: no reST roles may remain."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "src" / "roomcast"
#: A Sphinx role such as :class:`Hub` or :meth:`~roomcast.Hub.publish`, which the
#: docs renderer would print as it stands instead of as a link.
ROLE = re.compile(r":(?:py:)?(?:class|meth|func|data|attr|mod|exc|obj|const|ref):`[^`]*`")
MODULES = sorted(SOURCE.rglob("*.py"))


def test_the_source_tree_is_found() -> None:
    assert len(MODULES) > 10


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(SOURCE)))
def test_docstrings_use_markdown_cross_references(path: Path) -> None:
    found = [
        f"{path.name}:{number}: {match.group(0)}"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        for match in ROLE.finditer(line)
    ]
    assert not found, "write [`Name`][roomcast.Name] instead of a reST role:\n" + "\n".join(found)


def test_the_pattern_catches_a_role() -> None:
    assert ROLE.search("see :meth:`~roomcast.Hub.publish` for more")
    assert not ROLE.search("see [`Hub.publish()`][roomcast.Hub.publish] for more")


def docstrings(path: Path) -> list[tuple[int, str]]:
    """Each docstring of a module with the line it starts on."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node, clean=False)
            if docstring is not None:
                first = node.body[0].lineno if node.body else 0
                found.append((first, docstring))
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(SOURCE)))
def test_docstrings_have_no_rest_literal_markers(path: Path) -> None:
    # In Markdown an indented block after a blank line is already code; a trailing
    # "::" would be printed as it stands.
    found = [
        f"{path.name}:{start + offset}: {line.strip()}"
        for start, docstring in docstrings(path)
        for offset, line in enumerate(docstring.splitlines())
        if line.rstrip().endswith("::")
    ]
    assert not found, "end the line with one colon:\n" + "\n".join(found)
