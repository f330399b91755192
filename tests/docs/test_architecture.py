"""The architecture page agrees with the code: every module is listed, imports only point down."""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "src" / "roomcast"
PAGE = ROOT / "docs" / "topics" / "architecture.md"
#: The layers, lowest first: a module may import from its own layer and those below.
LAYERS = ("core", "seams", "backends", "runtime", "edges")
#: Layers beside that stack: each may import from itself and the layers named here,
#: and no other layer imports from it. The Python client speaks the protocol; it
#: never loads the server's runtime.
SIDE_LAYERS = {"clients": ("core",)}
#: | `module` | layer | what it owns |
ROW = re.compile(r"^\| `([\w.]+)` \| (\w+) \| .+ \|$")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or "roomcast"


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(SOURCE.rglob("*.py"))}


def page_layers() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match:
            name, layer = match.groups()
            assert name not in found, f"{name} is listed twice"
            found[name] = layer
    return found


def runtime_imports(name: str, path: Path) -> Iterator[str]:
    """The roomcast modules `name` imports, outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    if name == "roomcast":
        package = []
    known = modules()

    def visit(nodes: list[ast.stmt]) -> Iterator[str]:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            for child in ast.walk(node):
                if isinstance(child, ast.ImportFrom):
                    if child.level:
                        base = package[: len(package) - child.level + 1]
                        target = [*base, *(child.module or "").split(".")] if child.module else base
                    elif (child.module or "").split(".")[0] == "roomcast":
                        target = (child.module or "").split(".")[1:]
                    else:
                        continue
                    dotted = ".".join(part for part in target if part) or "roomcast"
                    for alias in child.names:
                        sub = f"{dotted}.{alias.name}" if dotted != "roomcast" else alias.name
                        yield sub if sub in known else dotted
                elif isinstance(child, ast.Import):
                    for alias in child.names:
                        if alias.name.startswith("roomcast."):
                            yield alias.name.removeprefix("roomcast.")

    yield from visit(tree.body)


def graph() -> dict[str, set[str]]:
    return {
        name: {dep for dep in runtime_imports(name, path) if dep != name}
        for name, path in modules().items()
    }


def test_the_page_lists_every_module_once_with_a_known_layer() -> None:
    listed = page_layers()
    assert sorted(listed) == sorted(modules())
    assert set(listed.values()) <= set(LAYERS) | set(SIDE_LAYERS)


@pytest.mark.parametrize("name", sorted(modules()))
def test_a_module_imports_only_from_its_layer_and_below(name: str) -> None:
    layers = page_layers()
    assert name in layers, f"{name} is missing from the module table of {PAGE.name}"
    layer = layers[name]
    for dep in sorted(graph()[name]):
        assert dep in layers, f"{name} imports {dep}, which the page does not list"
        if layer in SIDE_LAYERS:
            assert layers[dep] in (layer, *SIDE_LAYERS[layer]), (
                f"{name} ({layer}) imports {dep} ({layers[dep]}); it may import only "
                f"from {', '.join((layer, *SIDE_LAYERS[layer]))}"
            )
            continue
        assert layers[dep] not in SIDE_LAYERS, (
            f"{name} ({layer}) imports {dep} ({layers[dep]}), a layer beside the stack"
        )
        assert LAYERS.index(layers[dep]) <= LAYERS.index(layer), (
            f"{name} ({layer}) imports {dep} ({layers[dep]}), a layer above it"
        )


def outside_imports(path: Path) -> set[str]:
    """The top-level names of every package `path` imports that is not roomcast."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found - {"roomcast"}


#: Outside the standard library, the core may import only optional encoders without I/O.
CORE_OPTIONAL = {"orjson"}


@pytest.mark.parametrize("name", sorted(n for n, layer in page_layers().items() if layer == "core"))
def test_a_core_module_imports_only_the_standard_library(name: str) -> None:
    outside = outside_imports(modules()[name]) - CORE_OPTIONAL
    assert outside <= set(sys.stdlib_module_names) | {"__future__"}, (
        f"{name} is in the core layer but imports {sorted(outside - set(sys.stdlib_module_names))}"
    )


def test_there_is_no_import_circle() -> None:
    edges = graph()
    done: set[str] = set()

    def walk(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            cycle = " -> ".join((*path[path.index(name) :], name))
            pytest.fail(f"import circle: {cycle}")
        if name in done:
            return
        for dep in sorted(edges.get(name, ())):
            walk(dep, (*path, name))
        done.add(name)

    for name in sorted(edges):
        walk(name, ())


def test_the_checker_sees_imports_and_layers() -> None:
    assert "anyio" in outside_imports(SOURCE / "hub.py")
    edges = graph()
    assert "rooms" in edges["hub"]
    assert "backends.base" in edges["rooms"]
    assert "backends.memory" in edges["backends"]
    assert page_layers()["session"] == "core"
    assert page_layers()["client._connection"] == "clients"
    assert {"wire", "protocol", "exceptions", "client._socket"} <= edges["client._connection"]
