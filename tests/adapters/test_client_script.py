"""The browser client, ``roomcast.js``: in the wheel, declared whole, served by each adapter.

Each adapter's ``client_script()`` serves the package's script at a path the
application chooses: ``text/javascript; charset=utf-8``, an ``ETag`` and
``Cache-Control: no-cache``, and ``304`` (no body) to an ``If-None-Match`` that
names the ETag. The requests are raw HTTP/1.1 over loopback.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import anyio
import pytest
from aiohttp import web
from hatchling.builders.wheel import WheelBuilder
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request

import roomcast
import roomcast.aiohttp
import roomcast.starlette
import roomcast.websockets
from roomcast import CloseCode, Hub
from roomcast._client_script import CONTENT_TYPE, ClientScript, load, validate_path

from .asgi import serving

ROOT = Path(__file__).resolve().parents[2]
STATIC = Path(roomcast.__file__).resolve().parent / "static"
SCRIPT = (STATIC / "roomcast.js").read_text(encoding="utf-8")
DECLARATIONS = (STATIC / "roomcast.d.ts").read_text(encoding="utf-8")

Response = tuple[int, dict[str, str], bytes]


async def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> Response:
    """One GET over a fresh connection: the status, the headers (lower-cased) and the body."""
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    received = b""
    with anyio.fail_after(10):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(request)
            while True:
                try:
                    received += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    found = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        found[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), found, body


# ----------------------------------------------------------------------------- one server each


@asynccontextmanager
async def starlette_serving(path: str) -> AsyncIterator[int]:
    hub = Hub()
    app = Starlette(
        routes=[
            roomcast.starlette.client_script(path),
            WebSocketRoute("/ws", roomcast.starlette.endpoint(hub)),
        ],
        lifespan=roomcast.starlette.lifespan(hub),
    )
    async with serving(app) as base:
        yield int(base.rsplit(":", 1)[1])


@asynccontextmanager
async def aiohttp_serving(path: str) -> AsyncIterator[int]:
    hub = Hub()
    app = web.Application()
    app.add_routes([roomcast.aiohttp.client_script(path)])
    app.router.add_get("/ws", roomcast.aiohttp.handler(hub))
    app.cleanup_ctx.append(roomcast.aiohttp.cleanup_ctx(hub))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@asynccontextmanager
async def websockets_serving(path: str) -> AsyncIterator[int]:
    async with Hub() as hub:
        hook = roomcast.websockets.client_script(path)
        async with await roomcast.websockets.serve(hub, "127.0.0.1", 0, process_request=hook) as s:
            yield s.sockets[0].getsockname()[1]


Serving = Callable[[str], AbstractAsyncContextManager[int]]
SERVERS = [
    pytest.param(starlette_serving, "asyncio", id="starlette-uvicorn"),
    pytest.param(starlette_serving, "trio", id="starlette-hypercorn-trio"),
    pytest.param(aiohttp_serving, "asyncio", id="aiohttp"),
    pytest.param(websockets_serving, "asyncio", id="websockets"),
]


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.node.callspec.params["backend"]
    return backend


@pytest.mark.anyio
@pytest.mark.parametrize(("server", "backend"), SERVERS)
async def test_each_adapter_serves_the_script_at_the_path_given(
    server: Serving, backend: str
) -> None:
    async with server("/static/rc.js") as port:
        status, headers, body = await http_get(port, "/static/rc.js")
        assert status == 200
        assert headers["content-type"] == "text/javascript; charset=utf-8"
        assert headers["cache-control"] == "no-cache"
        assert re.fullmatch(r'"[0-9a-f]{32}"', headers["etag"])
        assert body == SCRIPT.encode()
        assert int(headers["content-length"]) == len(body)
        # Not at the default path: the application chose another (a plain
        # websockets server answers 426 Upgrade Required to what is not the script).
        missing, _, _ = await http_get(port, "/roomcast.js")
        assert missing in (404, 426)


@pytest.mark.anyio
@pytest.mark.parametrize(("server", "backend"), SERVERS)
async def test_each_adapter_answers_a_matching_if_none_match_with_304(
    server: Serving, backend: str
) -> None:
    async with server("/roomcast.js") as port:
        _, first, _ = await http_get(port, "/roomcast.js")
        etag = first["etag"]
        status, headers, body = await http_get(port, "/roomcast.js", {"If-None-Match": etag})
        assert (status, body) == (304, b"")
        assert headers["etag"] == etag
        assert headers["cache-control"] == "no-cache"
        weak = await http_get(port, "/roomcast.js", {"If-None-Match": f'"old", W/{etag}'})
        assert weak[0] == 304
        stale = await http_get(port, "/roomcast.js", {"If-None-Match": '"0123"'})
        assert stale[0] == 200
        assert stale[2] == SCRIPT.encode()


@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["asyncio"])
async def test_the_websockets_hook_hands_other_paths_to_the_applications_hook(
    backend: str,
) -> None:
    seen: list[str] = []

    def page(connection: ServerConnection, request: Request) -> None:
        seen.append(request.path)

    async with Hub() as hub:
        hook = roomcast.websockets.client_script("/roomcast.js", page)
        async with await roomcast.websockets.serve(hub, "127.0.0.1", 0, process_request=hook) as s:
            port = s.sockets[0].getsockname()[1]
            assert (await http_get(port, "/roomcast.js"))[0] == 200
            # Not the script: the application's hook, then the hub (which wants a WebSocket).
            status, _, _ = await http_get(port, "/elsewhere")
    assert seen == ["/elsewhere"]
    assert status == 426


@pytest.mark.parametrize("path", ["roomcast.js", "", "/roomcast.js?v=1", "/a#b"])
def test_the_path_must_be_an_absolute_url_path(path: str) -> None:
    with pytest.raises(ValueError, match="absolute URL path"):
        roomcast.starlette.client_script(path)
    with pytest.raises(ValueError, match="absolute URL path"):
        roomcast.aiohttp.client_script(path)
    with pytest.raises(ValueError, match="absolute URL path"):
        roomcast.websockets.client_script(path)
    assert validate_path("/js/roomcast.js") == "/js/roomcast.js"


def test_the_etag_follows_the_scripts_bytes() -> None:
    script = load()
    other = ClientScript(body=script.body + b"\n", etag='"other"')
    assert script.answer(None)[1]["Content-Type"] == CONTENT_TYPE
    assert script.answer("*")[0] == 304
    assert script.answer(other.etag)[0] == 200
    assert load().etag == script.etag


# ----------------------------------------------------------------------------- the files


def test_the_wheel_ships_the_script_and_its_declarations(tmp_path: Path) -> None:
    built = list(WheelBuilder(str(ROOT)).build(directory=str(tmp_path), versions=["standard"]))
    with zipfile.ZipFile(built[0]) as wheel:
        names = set(wheel.namelist())
        assert "roomcast/static/roomcast.js" in names
        assert "roomcast/static/roomcast.d.ts" in names
        assert wheel.read("roomcast/static/roomcast.js").decode() == SCRIPT


def js_exports(source: str) -> set[str]:
    """The names roomcast.js exports: ``export class|function|const NAME``."""
    return set(
        re.findall(r"^export (?:class|function|async function|const|let) (\w+)", source, re.M)
    )


def declared_values(source: str) -> set[str]:
    """The values roomcast.d.ts declares (its ``export type``/``interface`` are types alone)."""
    return set(re.findall(r"^export declare (?:class|function|const|let) (\w+)", source, re.M))


def test_every_export_of_the_script_is_declared_and_nothing_else() -> None:
    exported = js_exports(SCRIPT)
    assert exported == {"PROTOCOL", "Roomcast", "RoomcastError", "Subscription"}
    assert declared_values(DECLARATIONS) == exported
    # Every export line is one of those two kinds: none escapes the parse.
    for line in SCRIPT.splitlines():
        if line.startswith("export "):
            assert js_exports(line + "\n"), line
    for line in DECLARATIONS.splitlines():
        if line.startswith("export "):
            assert declared_values(line + "\n") or re.match(r"export (type|interface) ", line)


def declared_members(source: str, cls: str) -> set[str]:
    body = re.search(rf"^export declare class {cls}\b.*?^}}", source, re.M | re.S)
    assert body is not None, cls
    found = set(re.findall(r"^  (?:readonly )?(\w+)[<(?:]", body.group(0), re.M))
    return found - {"constructor"}


def js_members(source: str, cls: str) -> set[str]:
    body = re.search(rf"^export class {cls}\b.*?^}}", source, re.M | re.S)
    assert body is not None, cls
    names = set(re.findall(r"^  (?:get |async )?([A-Za-z]\w*)\(", body.group(0), re.M))
    fields = set(re.findall(r"^    this\.([A-Za-z]\w*) = ", body.group(0), re.M))
    return (names | fields) - {"constructor"}


@pytest.mark.parametrize("cls", ["Roomcast", "Subscription", "RoomcastError"])
def test_the_declarations_list_each_classs_public_members(cls: str) -> None:
    assert declared_members(DECLARATIONS, cls) == js_members(SCRIPT, cls)


def js_codes(name: str) -> set[int]:
    found = re.search(rf"^const {name} = \[([0-9, ]*)\];", SCRIPT, re.M)
    assert found is not None, name
    return {int(code) for code in found.group(1).split(",")}


def test_the_scripts_close_code_rules_are_closecodes_advice() -> None:
    assert js_codes("CLOSE_NEVER") == {c for c in CloseCode if c.reconnect == "never"}
    assert js_codes("CLOSE_WITH_NEW_TOKEN") == {
        c for c in CloseCode if c.reconnect == "with_new_token"
    }
