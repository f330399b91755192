"""Every Python block in the docs runs.

A block is one of three kinds:

- an include (``--8<-- "path:section"``) of a file the suite runs: a test module, or an
  example that a test starts;
- a block written in the page, which this module runs in place: the blocks of one page
  run in order in one namespace, as a reader types them one after the other, seeded with
  the few names the page takes as given (``authenticator``, ``issues``, ...); some pages
  then get checks over real sockets;
- a fragment that cannot run alone, marked ``<!-- fragment -->`` on the line before
  it, which must still compile.

A new block that fails to run here needs one of: a name in the seed, a check, an
include of tested code, or the fragment mark.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import re
import textwrap
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import jwt as pyjwt
import pytest
import uvicorn
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from roomcast import DefaultAuthorizer, Handshake, Hub, Principal
from roomcast.jwt import JWTAuthenticator

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
TIMEOUT = 10
SECRET = "a-docs-test-secret-of-at-least-32-bytes"
FENCE = re.compile(
    r"^(?P<indent>[ ]*)```(?P<info>[^\n]*)\n(?P<body>.*?)^(?P=indent)```[ ]*$",
    re.MULTILINE | re.DOTALL,
)
INCLUDE = re.compile(r'^--8<-- "(?P<path>[^":]+)(?::(?P<section>[\w-]+))?"$')
FRAGMENT = "<!-- fragment -->"


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    code: str
    fragment: bool

    @property
    def includes(self) -> list[str]:
        """The block's include lines (a block may add a few lines of its own around them)."""
        return [line.strip() for line in self.code.splitlines() if INCLUDE.match(line.strip())]

    @property
    def mixed(self) -> bool:
        """Whether the block has lines of its own beside its includes."""
        lines = [line.strip() for line in self.code.splitlines() if line.strip()]
        return bool(self.includes) and len(lines) > len(self.includes)

    def expanded(self) -> str:
        """The block as the docs site shows it: each include replaced by what it includes."""
        out = []
        for line in self.code.splitlines():
            match = INCLUDE.match(line.strip())
            if match is None:
                out.append(line)
                continue
            text = (ROOT / match["path"]).read_text(encoding="utf-8")
            if match["section"]:
                start = f"--8<-- [start:{match['section']}]"
                end = f"--8<-- [end:{match['section']}]"
                text = text.split(start, 1)[1].split(end, 1)[0]
                text = text.split("\n", 1)[1].rsplit("\n", 1)[0]
            out.append(textwrap.dedent(text))
        return "\n".join(out)

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def python_blocks() -> list[Block]:
    blocks = []
    for path in sorted(DOCS.rglob("*.md")):
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if not re.match(r"(python|py)\b", match["info"].strip()):
                continue
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
            blocks.append(
                Block(
                    page=str(path.relative_to(ROOT)),
                    line=text.count("\n", 0, match.start()) + 1,
                    code=textwrap.dedent(match["body"]),
                    fragment=before == FRAGMENT,
                )
            )
    return blocks


BLOCKS = python_blocks()
INCLUDED = [block for block in BLOCKS if block.includes]
FRAGMENTS = [block for block in BLOCKS if block.fragment and not block.includes]
IN_PLACE = [block for block in BLOCKS if not block.fragment and not block.includes]
PAGES = sorted({block.page for block in IN_PLACE})


def test_the_docs_have_python_blocks_of_every_kind() -> None:
    assert len(INCLUDED) >= 10
    assert len(IN_PLACE) >= 10


def text_of_the_tests() -> str:
    here = Path(__file__).resolve()
    return "\n".join(
        path.read_text(encoding="utf-8") for path in (ROOT / "tests").rglob("*.py") if path != here
    )


@pytest.mark.parametrize("block", INCLUDED, ids=str)
def test_an_included_block_comes_from_a_file_the_suite_runs(block: Block) -> None:
    for line in block.includes:
        match = INCLUDE.match(line)
        assert match is not None
        path = ROOT / match["path"]
        assert path.is_file(), line
        if match["path"].startswith("tests/"):
            assert path.name.startswith("test_"), f"{line}: not a test module"
        else:
            assert match["path"].startswith("examples/"), f"{line}: neither tested nor an example"
            # The examples are started by their tests, by file name.
            assert path.name in text_of_the_tests(), f"{line}: no test runs {path.name}"
        if match["section"]:
            text = path.read_text(encoding="utf-8")
            assert f"--8<-- [start:{match['section']}]" in text, line
            assert f"--8<-- [end:{match['section']}]" in text, line


@pytest.mark.parametrize("block", [block for block in INCLUDED if block.mixed], ids=str)
def test_a_block_that_adds_lines_to_an_include_compiles(block: Block) -> None:
    compile(block.expanded(), str(block), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


@pytest.mark.parametrize("block", FRAGMENTS, ids=str)
def test_a_fragment_compiles(block: Block) -> None:
    compile(block.code, str(block), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


# ----------------------------------------------------------------------------- running pages


class Issues:
    """The app's data access that the security page's authorizer asks."""

    async def user_can_read(self, user_id: str | None, issue_id: str) -> bool:
        return user_id == "alice" and issue_id == "i1"


@contextlib.asynccontextmanager
async def other_resource() -> AsyncIterator[None]:
    """What the Starlette page's own lifespan enters beside the hub."""
    yield


def seed() -> dict[str, Any]:
    """The names the pages take as given, from context they describe in prose."""
    return {
        "__name__": "docs",
        "authenticator": JWTAuthenticator(SECRET, algorithms=["HS256"]),
        "authorizer": DefaultAuthorizer(),
        "issues": Issues(),
        "other_resource": other_resource,
        "contextlib": contextlib,
        "AsyncIterator": AsyncIterator,
        "JWTAuthenticator": JWTAuthenticator,
        "uvicorn": uvicorn,
        "web": web,
    }


class Ran(dict[str, Any]):
    """The namespace a page's blocks ran in, and what each block left in it."""

    def __init__(self) -> None:
        super().__init__(seed())
        self.states: list[tuple[Block, dict[str, Any]]] = []

    def after(self, text: str) -> dict[str, Any]:
        """The namespace as the (only) block that contains ``text`` left it."""
        (state,) = [state for block, state in self.states if text in block.code]
        return state


def run_page(page: str) -> Ran:
    """Run the page's in-place blocks in order, in one namespace; return it."""
    namespace = Ran()
    for block in IN_PLACE:
        if block.page == page:
            code = compile(block.code, str(block), "exec", dont_inherit=True)
            exec(code, namespace)
            namespace.states.append((block, dict(namespace)))
    return namespace


@contextlib.contextmanager
def logger_filters_restored() -> Iterator[None]:
    """Undo what a page does to the framework loggers (the security page adds filters)."""
    names = ("uvicorn.error", "uvicorn.access", "hypercorn.access", "aiohttp.access")
    saved = {name: list(logging.getLogger(name).filters) for name in names}
    try:
        yield
    finally:
        for name, filters in saved.items():
            logging.getLogger(name).filters[:] = filters


@pytest.fixture
def anyio_backend() -> str:
    """uvicorn and the ``websockets`` client run on asyncio."""
    return "asyncio"


@asynccontextmanager
async def uvicorn_serving(
    app: object, server_class: type[uvicorn.Server] = uvicorn.Server
) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")  # type: ignore[arg-type]
    server = server_class(config)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve)
        while not server.started:
            await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield f"127.0.0.1:{port}", server
        finally:
            server.should_exit = True


async def next_frame(client: ClientConnection, type_: str) -> dict[str, Any]:
    while True:
        frame: dict[str, Any] = json.loads(await client.recv())
        if frame["type"] == type_:
            return frame


async def close_frame(client: ClientConnection) -> tuple[int, str] | None:
    try:
        while True:
            await client.recv()
    except ConnectionClosed as exc:
        return None if exc.rcvd is None else (exc.rcvd.code, exc.rcvd.reason)


def v1(address: str) -> connect:
    return connect(f"ws://{address}/ws", subprotocols=[Subprotocol("roomcast.v1")])


def token(sub: str, **claims: Any) -> str:
    return pyjwt.encode({"sub": sub, "exp": 2_000_000_000, **claims}, SECRET, algorithm="HS256")


CHECKS: dict[str, Callable[..., Any]] = {}


def check(page: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        CHECKS[page] = function
        return function

    return register


@check("docs/howto/starlette.md")
async def starlette_page(namespace: dict[str, Any]) -> None:
    # The app of "Mount the hub", closed by the ChatServer of "Shutting down".
    async with uvicorn_serving(namespace["app"], namespace["ChatServer"]) as (address, server):
        async with v1(address) as client:
            await next_frame(client, "connection.ack")
            server.should_exit = True
            assert await close_frame(client) == (1001, "server shutting down")


@check("docs/howto/fastapi.md")
async def fastapi_page(namespace: dict[str, Any]) -> None:
    async with uvicorn_serving(namespace["app"]) as (address, _), v1(address) as client:
        await next_frame(client, "connection.ack")
        await client.send(json.dumps({"action": "subscribe", "rooms": ["issue:i42"], "ref": 1}))
        assert (await next_frame(client, "reply"))["ok"] is True
        comment = {"author": "ana", "body": "It crashes on save."}
        request = urllib.request.Request(
            f"http://{address}/issues/i42/comments",
            data=json.dumps(comment).encode(),
            headers={"Content-Type": "application/json"},
        )

        def post() -> int:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                status: int = response.status
                return status

        assert await anyio.to_thread.run_sync(post) == 200
        event = await next_frame(client, "comment.created")
        assert (event["room"], event["payload"]) == ("issue:i42", comment)


@check("docs/howto/aiohttp.md")
async def aiohttp_page(namespace: dict[str, Any], apps: list[web.Application]) -> None:
    (app,) = apps  # what the page handed to web.run_app
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        address = f"127.0.0.1:{runner.addresses[0][1]}"
        async with v1(address) as client:
            await next_frame(client, "connection.ack")
            await runner.cleanup()
            assert await close_frame(client) == (1001, "server shutting down")
    finally:
        await runner.cleanup()


@check("docs/howto/jwt.md")
async def jwt_page(namespace: dict[str, Any]) -> None:
    # The page's own test, from "Minting tokens in tests".
    await namespace["test_ack_names_the_user"]()


@check("docs/topics/security.md")
async def security_page(namespace: Ran) -> None:
    authorizer = namespace["authorizer"]
    alice = Principal("alice", claims={"teams": ["t1"]})
    assert await authorizer.authorize(alice, "subscribe", "team:t1") is True
    assert await authorizer.authorize(alice, "subscribe", "team:t2") is False
    assert await authorizer.authorize(alice, "subscribe", "issue:i1") is True
    assert await authorizer.authorize(alice, "publish", "issue:i1") is False
    assert await authorizer.authorize(alice, "publish", "typing:i1") is True
    redact = namespace["RedactQueryToken"]("token")
    record = logging.LogRecord(
        "x", logging.INFO, "x", 1, "GET %s", ("/ws?a=1&token=eyJ.x.y",), None
    )
    assert redact.filter(record)
    assert record.getMessage() == "GET /ws?a=1&token=[redacted]"
    # The cookie hub of "Where the token comes from".
    hub: Hub = namespace.after('TokenSources(cookie="session")')["hub"]
    async with hub:
        headers = [
            ("origin", "https://app.example.com"),
            ("cookie", f"session={token('alice')}"),
        ]
        admitted = await hub.admit(Handshake.from_request("/ws", headers, None))
    assert admitted.principal is not None
    assert admitted.principal.user_id == "alice"


@pytest.mark.anyio
@pytest.mark.parametrize("page", PAGES)
async def test_the_blocks_of_a_page_run_in_order(
    page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the JWT page reads from its surroundings: a secret, and a public key file.
    monkeypatch.setenv("CHAT_JWT_SECRET", SECRET)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "issuer-public.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    monkeypatch.chdir(tmp_path)
    apps: list[web.Application] = []
    monkeypatch.setattr(web, "run_app", lambda app, **options: apps.append(app))
    with logger_filters_restored(), anyio.fail_after(TIMEOUT):
        namespace = run_page(page)
        check_page = CHECKS.get(page)
        if check_page is not None:
            arguments = (namespace, apps) if page == "docs/howto/aiohttp.md" else (namespace,)
            await check_page(*arguments)


def test_every_check_is_for_a_page_with_blocks() -> None:
    assert set(CHECKS) <= set(PAGES)


# ----------------------------------------------------------------------------- prose


@pytest.mark.parametrize(
    "adapter", ["roomcast.websockets", "roomcast.starlette", "roomcast.aiohttp"]
)
def test_the_overview_and_the_package_docstring_name_every_adapter(adapter: str) -> None:
    import roomcast

    assert adapter in (DOCS / "index.md").read_text(encoding="utf-8")
    assert roomcast.__doc__ is not None
    assert adapter in " ".join(roomcast.__doc__.split())


def test_the_tutorial_names_the_offline_button_the_page_has() -> None:
    page = (ROOT / "examples" / "issue_tracker" / "static" / "index.html").read_text()
    (label,) = re.findall(r'<button id="go-offline"[^>]*>([^<]+)</button>', page)
    tutorial = (DOCS / "tutorial" / "issue-tracker.md").read_text(encoding="utf-8")
    assert f"**{label}**" in tutorial
    assert "developer tools" not in tutorial
