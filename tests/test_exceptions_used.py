"""Every exported exception is raised somewhere (or says who raises it), and is documented."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import roomcast.exceptions

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src" / "roomcast"
API_PAGE = ROOT / "docs" / "reference" / "api.md"
EXPORTED = sorted(roomcast.exceptions.__all__)

#: Bases that are never raised themselves: one of their subclasses is.
ABSTRACT = {"RoomcastError", "ProtocolError", "ConnectionClosed"}
#: Built only by `ConnectionClosed.from_code`, which the adapters call.
BUILT_BY_FROM_CODE = {"ConnectionClosedOK", "ConnectionClosedError"}
#: Part of the tree for applications and backends; roomcast answers in-band instead.
#: (The Python client raises PermissionDenied and RateLimited from refused requests.)
NOT_RAISED_BY_ROOMCAST: set[str] = set()


def sources() -> list[Path]:
    return [path for path in sorted(SOURCE.rglob("*.py")) if path.name != "exceptions.py"]


def trees() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(encoding="utf-8"))) for path in sources()]


def raised_names() -> set[str]:
    """Names raised (``raise X``) or built (``X(...)``, ``X.from_code(...)``) in src."""
    found: set[str] = set()
    for _, tree in trees():
        for node in ast.walk(tree):
            target = None
            if isinstance(node, ast.Raise) and node.exc is not None:
                target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            elif isinstance(node, ast.Call):
                target = node.func
            if isinstance(target, ast.Name):
                found.add(target.id)
            elif (
                isinstance(target, ast.Attribute)
                and target.attr == "from_code"
                and isinstance(target.value, ast.Name)
            ):
                found.add(f"{target.value.id}.from_code")
    return found


@pytest.mark.parametrize("name", EXPORTED)
def test_every_exported_exception_is_raised_or_says_who_raises_it(name: str) -> None:
    raised = raised_names()
    if name in ABSTRACT:
        subclasses = [
            other
            for other in EXPORTED
            if other != name
            and issubclass(getattr(roomcast.exceptions, other), getattr(roomcast.exceptions, name))
        ]
        assert subclasses, f"{name} is listed as abstract but nothing derives from it"
    elif name in BUILT_BY_FROM_CODE:
        assert "ConnectionClosed.from_code" in raised
    elif name in NOT_RAISED_BY_ROOMCAST:
        # Once roomcast raises it, it belongs with the others: take it off the list.
        assert name not in raised, f"{name} is raised now: remove it from NOT_RAISED_BY_ROOMCAST"
        doc = inspect.getdoc(getattr(roomcast.exceptions, name)) or ""
        assert "roomcast itself does not raise it" in doc
    else:
        assert name in raised, f"nothing in src raises {name}"


def test_the_scan_finds_raises_and_factories() -> None:
    raised = raised_names()
    assert {"AuthenticationError", "RemoteProtocolError", "HubNotRunning"} <= raised
    assert "ConnectionClosed.from_code" in raised


def test_the_api_reference_renders_the_exceptions_module() -> None:
    assert "::: roomcast.exceptions" in API_PAGE.read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("name", EXPORTED)
def test_every_exported_exception_is_in_the_documented_tree(name: str) -> None:
    # The module docstring, rendered at the top of the exceptions reference, draws the tree.
    tree = (roomcast.exceptions.__doc__ or "").split("\n\n")
    drawing = next(block for block in tree if "RoomcastError" in block and "──" in block)
    assert f" {name} " in drawing or drawing.strip().startswith(name)
    doc = inspect.getdoc(getattr(roomcast.exceptions, name))
    assert doc, f"{name} has no docstring to render"


def public_callables() -> list[tuple[Path, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Public functions and public methods of public classes in src."""
    found: list[tuple[Path, ast.FunctionDef | ast.AsyncFunctionDef]] = []

    def visit(path: Path, node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if not child.name.startswith("_") or child.name == "__init__":
                    found.append((path, child))
            elif isinstance(child, ast.ClassDef) and not child.name.startswith("_"):
                visit(path, child)

    for path, tree in trees():
        visit(path, tree)
    return found


def raised_directly(function: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """Exported exceptions ``function`` raises with a ``raise`` statement of its own."""
    names: set[str] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(target, ast.Attribute) and target.attr == "from_code":
                target = target.value
            if isinstance(target, ast.Name) and target.id in EXPORTED:
                names.add(target.id)
    return names


def test_public_callables_say_what_they_raise() -> None:
    missing = []
    for path, function in public_callables():
        raised = raised_directly(function)
        if not raised:
            continue
        doc = ast.get_docstring(function) or ""
        section = doc.partition("Raises:")[2]
        for name in sorted(raised):
            if name not in section:
                missing.append(
                    f"{path.relative_to(SOURCE)}:{function.lineno} {function.name}: {name}"
                )
    assert not missing, "add a Raises: section naming:\n" + "\n".join(missing)


def test_the_raises_check_sees_a_documented_raise() -> None:
    decoders = [
        f for path, f in public_callables() if path.name == "wire.py" and f.name == "decode"
    ]
    assert decoders
    assert raised_directly(decoders[0]) == {"RemoteProtocolError"}
