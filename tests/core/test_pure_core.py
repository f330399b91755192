"""The pure core imports only the standard library and each other: no anyio, no I/O."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest


def _package_dir() -> Path:
    # find_spec locates the package without running its __init__, which loads the runtime.
    spec = importlib.util.find_spec("roomcast")
    assert spec is not None
    assert spec.submodule_search_locations is not None
    return Path(next(iter(spec.submodule_search_locations))).resolve()


PACKAGE_DIR = _package_dir()
PURE_MODULES = (
    "wire",
    "_names",
    "_requests",
    "_frames",
    "protocol",
    "config",
    "ratelimit",
    "heartbeat",
    "expiry",
    "options",
    "membership",
    "session",
)
# What a pure module may import from inside roomcast.
PURE_SIBLINGS = frozenset({*PURE_MODULES, "exceptions"})
# Outside the standard library, only optional accelerators without I/O: orjson encodes
# server frames when installed (the speedups extra), the standard library otherwise.
OPTIONAL_PURE = frozenset({"orjson"})
# A handful of standard-library modules that would mean I/O or concurrency in the core.
FORBIDDEN_STDLIB = frozenset(
    {"asyncio", "socket", "selectors", "threading", "subprocess", "time", "os"}
)


def imported_modules(module: str) -> list[tuple[int, str]]:
    """(level, dotted name) of every import in ``module``, at any depth of the file."""
    tree = ast.parse((PACKAGE_DIR / f"{module}.py").read_text(encoding="utf-8"))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((0, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level and node.module is None:  # from . import x
                found.extend((node.level, alias.name) for alias in node.names)
            else:
                found.append((node.level, node.module or ""))
    return found


@pytest.mark.parametrize("module", [*PURE_MODULES, "exceptions"])
def test_pure_module_imports_only_stdlib_and_pure_siblings(module: str) -> None:
    imports = imported_modules(module)
    assert imports, "the parser found no import at all; the check would be vacuous"
    for level, name in imports:
        top = name.split(".")[0]
        if level == 0:
            assert top in {"__future__", *OPTIONAL_PURE} or top in sys.stdlib_module_names, name
            assert top not in FORBIDDEN_STDLIB, name
        else:
            assert level == 1, f"{module} reaches outside the package: {'.' * level}{name}"
            assert top in PURE_SIBLINGS, f"{module} imports non-pure .{name}"


def test_pure_modules_load_without_anyio_in_a_fresh_interpreter() -> None:
    # A stub parent package, so that roomcast/__init__.py (which loads the runtime)
    # does not run; only the pure modules and what they import are loaded.
    script = f"""
import sys, types
package = types.ModuleType("roomcast")
package.__path__ = [{str(PACKAGE_DIR)!r}]
sys.modules["roomcast"] = package
import roomcast.wire, roomcast.ratelimit, roomcast.heartbeat, roomcast.expiry
import roomcast.options, roomcast.membership, roomcast.session
for name in {PURE_MODULES!r}:
    assert sys.modules["roomcast." + name].__file__.startswith({str(PACKAGE_DIR)!r}), name
loaded = sorted(name for name in sys.modules if name == "anyio" or name.startswith("anyio."))
print(",".join(loaded) or "clean")
"""
    result = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"


def test_the_fresh_interpreter_check_detects_anyio() -> None:
    # Guards the check above: the same probe must see anyio once something imports it.
    script = "import sys, anyio; print('anyio' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
