"""What each adapter relies on beyond its framework's documented API, checked against it.

Every adapter lists the framework internals it touches in its module-level
``_INTERNALS``. For the installed framework, each must exist with its kind,
but for one marked optional (``since``) in a version older than that, where
the adapter falls back;
the adapter's code may touch no private attribute the list leaves out, and
the list names nothing the code no longer uses. The adapters' shape (the same
helpers in the same order) and the one home of asyncio tricks are checked here
too.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.metadata
import inspect
import textwrap
from pathlib import Path
from types import ModuleType

import pytest
from packaging.version import Version

import roomcast
import roomcast._aiohttp_wire
import roomcast.aiohttp
import roomcast.starlette
import roomcast.websockets
from roomcast._adapters import Internal

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(roomcast.__file__).resolve().parent

#: Each adapter, with the modules its code lives in.
ADAPTERS: dict[str, tuple[ModuleType, ...]] = {
    "websockets": (roomcast.websockets,),
    "starlette": (roomcast.starlette,),
    "aiohttp": (roomcast.aiohttp, roomcast._aiohttp_wire),
}
#: Private names of the standard library an adapter may use.
STDLIB_PRIVATE = frozenset({"_getframe"})
#: (module, Transport class, mount function, lifetime helper, browser client's route) in
#: the order each module reads.
SHAPES = [
    (roomcast.websockets, "WebSocketsTransport", "handler", "serve", "client_script"),
    (roomcast.starlette, "StarletteTransport", "endpoint", "lifespan", "client_script"),
    (roomcast.aiohttp, "AiohttpTransport", "handler", "cleanup_ctx", "client_script"),
]


def internals(adapter: str) -> tuple[Internal, ...]:
    listed: tuple[Internal, ...] = ADAPTERS[adapter][0]._INTERNALS
    return listed


LISTED = [
    pytest.param(internal, id=f"{adapter}:{internal.owner}.{internal.name}")
    for adapter in ADAPTERS
    for internal in internals(adapter)
]


def resolve(dotted: str) -> object:
    """The object at ``dotted``: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            found = getattr(found, name)
        return found
    raise ImportError(dotted)


@functools.cache
def assigned_on_self(cls: type) -> frozenset[str]:
    """Names a class or its bases assign as ``self.<name>`` in their methods."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object or klass.__module__ == "builtins":
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            ):
                names.add(node.attr)
    return frozenset(names)


def problem(internal: Internal) -> str | None:
    """What is wrong with ``internal`` in the installed framework, or ``None``."""
    owner = resolve(internal.owner)
    if not isinstance(owner, type):
        return f"{internal.owner} is not a class"
    static = inspect.getattr_static(owner, internal.name, None)
    if internal.kind == "callable":
        return None if callable(static) else "is not a method"
    if static is not None and not inspect.isfunction(static):
        return None  # a property, a slot or a class attribute
    if internal.name in assigned_on_self(owner):
        return None
    return "is not an attribute"


def verdict(internal: Internal, version: str, found: str | None) -> str | None:
    """The failure for ``internal``, which is ``found`` (``None``: present) in ``version``."""
    if found is None:
        return None
    if internal.since is not None and Version(version) < Version(internal.since):
        return None  # optional, and older than the version that brought it: the adapter falls back
    return (
        f"{internal.owner}.{internal.name} ({internal.kind}) {found} in "
        f"{internal.distribution} {version}; the adapter relies on it: {internal.why}"
    )


@pytest.mark.parametrize("internal", LISTED)
def test_each_listed_internal_exists_in_the_installed_framework(internal: Internal) -> None:
    version = importlib.metadata.version(internal.distribution)
    try:
        found = problem(internal)
    except (ImportError, AttributeError) as exc:
        found = f"cannot be found ({exc})"
    failure = verdict(internal, version, found)
    assert failure is None, failure


def test_only_an_optional_internal_may_be_missing_and_only_before_its_version() -> None:
    required = Internal("websockets.Connection", "gone", "callable", ("16.0",), "needed")
    optional = Internal("websockets.Connection", "new", "callable", ("16.0",), "faster", "17.4")
    assert verdict(required, "16.0", None) is None
    assert verdict(required, "17.4", "is not a method") is not None
    assert verdict(optional, "16.1.1", "is not a method") is None
    assert verdict(optional, "17.4", "is not a method") is not None
    assert verdict(optional, "18.0", "cannot be found (no attribute)") is not None


def test_optional_internals_are_few_and_each_has_its_fallback() -> None:
    optional = {
        (adapter, internal.name): internal
        for adapter in ADAPTERS
        for internal in internals(adapter)
        if internal.since is not None
    }
    # Deliberate: a new optional internal needs a fallback, a test of it and an entry here.
    assert set(optional) == {
        ("websockets", "pending_pings"),
        ("websockets", "send_in_progress"),
        ("websockets", "set_connection_exc"),
    }
    for internal in optional.values():
        assert "else:" in internal.why, internal


def test_the_websockets_adapter_writes_in_place_exactly_where_its_internals_are() -> None:
    version = Version(importlib.metadata.version("websockets"))
    assert roomcast.websockets._RECORDS_WRITE_ERRORS is (version >= Version("17.4"))


@pytest.mark.parametrize("internal", LISTED)
def test_the_installed_framework_is_a_version_the_internal_was_checked_against(
    internal: Internal,
) -> None:
    version = importlib.metadata.version(internal.distribution)
    assert version in internal.checked, (
        f"{internal.distribution} {version} is installed, but {internal.owner}.{internal.name} "
        f"was checked against {', '.join(internal.checked)} only: check that it still does "
        f"what the adapter needs ({internal.why}), then add {version} to the list"
    )


def private_names_touched(module: ModuleType) -> set[str]:
    """Private attribute names ``module`` reads, writes or ``getattr``s on objects not its own."""
    tree = ast.parse(Path(module.__file__ or "").read_text(encoding="utf-8"))
    # The module's own functions and methods; attributes of ``self`` are its own too.
    own = {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    touched: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                continue
            if node.attr in own:
                continue
            name = node.attr
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"getattr", "setattr", "hasattr"}
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            name = node.args[1].value
        else:
            continue
        if name.startswith("_") and not name.startswith("__"):
            touched.add(name)
    return touched - STDLIB_PRIVATE


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_an_adapter_touches_no_private_framework_attribute_it_does_not_list(adapter: str) -> None:
    listed = {internal.name for internal in internals(adapter)}
    touched = set().union(*(private_names_touched(module) for module in ADAPTERS[adapter]))
    assert touched <= listed, f"roomcast.{adapter} uses unlisted internals: {touched - listed}"


def test_the_private_attribute_scan_finds_what_it_looks_for() -> None:
    # Guards the check above: the Starlette adapter reaches WebSocket._send and _receive.
    assert {"_send", "_receive"} <= private_names_touched(roomcast.starlette)


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_every_listed_internal_is_used_by_its_adapter(adapter: str) -> None:
    sources = [Path(module.__file__ or "").read_text() for module in ADAPTERS[adapter]]
    for internal in internals(adapter):
        used = f".{internal.name}" in "".join(sources) or f'"{internal.name}"' in "".join(
            source.split("_INTERNALS", 2)[-1] for source in sources
        )
        assert used, f"roomcast.{adapter} lists {internal.name} but does not use it"


@pytest.mark.parametrize("internal", LISTED)
def test_the_adapters_page_names_every_listed_internal(internal: Internal) -> None:
    page = (ROOT / "docs" / "topics" / "adapters.md").read_text(encoding="utf-8")
    section = page.split("## What each adapter relies on", 1)[-1].split("\n## ", 1)[0]
    cls = internal.owner.rsplit(".", 1)[-1]
    assert f"`{cls}.{internal.name}`" in section
    for version in internal.checked:
        assert version in section


# ----------------------------------------------------------------------------- shape


@pytest.mark.parametrize(("module", "transport", "mount", "lifetime", "script"), SHAPES)
def test_each_adapter_reads_in_the_same_order(
    module: ModuleType, transport: str, mount: str, lifetime: str, script: str
) -> None:
    tree = ast.parse(Path(module.__file__ or "").read_text(encoding="utf-8"))
    order = [
        node.name
        for node in tree.body
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    internals_at = next(
        node.lineno
        for node in tree.body
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and node.target.id == "_INTERNALS"
    )
    first = min(node.lineno for node in tree.body if isinstance(node, ast.ClassDef))
    assert internals_at < first
    positions = [
        order.index(name) for name in (transport, mount, lifetime, script, "_handshake", "_closed")
    ]
    assert positions == sorted(positions), order
    public = [name for name in order if not name.startswith("_")]
    assert order.index("_handshake") > max(order.index(name) for name in public)


def test_every_adapter_maps_its_framework_close_in_one_closed_of_the_same_signature() -> None:
    signatures = {
        module.__name__: [
            (parameter.name, parameter.kind, parameter.default)
            for parameter in inspect.signature(module._closed).parameters.values()
        ]
        for module, *_ in SHAPES
    }
    assert len({repr(signature) for signature in signatures.values()}) == 1, signatures
    for module, *_ in SHAPES:
        assert len(inspect.signature(module._handshake).parameters) == 1


def test_each_adapter_serves_the_browser_client_with_the_same_first_parameter() -> None:
    for module, *_, script in SHAPES:
        first = next(iter(inspect.signature(getattr(module, script)).parameters.values()))
        assert (first.name, first.default) == ("path", "/roomcast.js"), module.__name__


def test_only_the_asyncio_module_and_the_aiohttp_adapter_import_asyncio() -> None:
    importing = set()
    for path in SOURCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            if any(name.split(".")[0] == "asyncio" for name in names):
                importing.add(path.relative_to(SOURCE).as_posix())
    allowed = {"_asyncio.py", "aiohttp.py", "_aiohttp_wire.py"}
    assert {path for path in importing if not path.startswith("backends/redis")} <= allowed
    assert "_asyncio.py" in importing
