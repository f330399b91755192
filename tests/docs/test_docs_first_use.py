"""What a first-time reader of the docs pastes and types works as the pages show it.

``test_docs_code`` runs each page's blocks in a namespace seeded with what the page takes
as given; here, the blocks a reader copies on their own run in an empty one, the
commands use the virtual environment the page creates, and the site renders offline.
"""

from __future__ import annotations

import re

import pytest

from .test_docs_code import BLOCKS, ROOT, Block

README = (ROOT / "README.md").read_text(encoding="utf-8")


def page(path: str) -> str:
    return (ROOT / path).read_text(encoding="utf-8")


def included(page: str) -> list[Block]:
    return [block for block in BLOCKS if block.page == page and block.includes]


def run_alone(code: str) -> dict[str, object]:
    """Run ``code`` as a fresh module would, with nothing seeded."""
    namespace: dict[str, object] = {"__name__": "pasted"}
    exec(compile(code, "pasted", "exec", dont_inherit=True), namespace)
    return namespace


def test_the_testing_howto_blocks_run_pasted_into_one_file() -> None:
    namespace = run_alone(
        "\n\n".join(block.expanded() for block in included("docs/howto/testing.md"))
    )
    assert "pytestmark" in namespace
    assert {"make_hub", "test_team_members_see_new_issues"} <= namespace.keys()
    assert "python3 -m venv .venv && .venv/bin/pip install -e /path/to/roomcast pytest" in page(
        "docs/howto/testing.md"
    )


def test_the_jwt_howto_mounting_blocks_run_pasted_into_one_file() -> None:
    namespace = run_alone("\n\n".join(block.expanded() for block in included("docs/howto/jwt.md")))
    assert {"make_hub", "serve_websockets", "starlette_app", "fastapi_app", "aiohttp_app"} <= (
        namespace.keys()
    )


def test_the_jwt_howto_names_one_issuer() -> None:
    assert len(set(re.findall(r'issuer="([^"]*)"', page("docs/howto/jwt.md")))) == 1


def test_the_jwt_howto_installs_an_adapter() -> None:
    lines = re.findall(r"pip install (.*)", page("docs/howto/jwt.md"))
    assert lines
    for line in lines:
        assert re.search(r"websockets|starlette|aiohttp", line), line


@pytest.mark.parametrize(
    "path", ["docs/tutorial/getting-started.md", "docs/tutorial/issue-tracker.md"]
)
def test_tutorial_commands_run_in_the_virtual_environment(path: str) -> None:
    text = page(path)
    commands = [
        line.strip()
        for block in re.findall(r"^```console\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
        for line in block.splitlines()
    ]
    commands += re.findall(r"(?<!`)`((?:python3?|pip) [^`\n]+)`(?!`)", text)
    assert commands
    for command in commands:
        for step in command.split("&&"):
            step = step.strip()
            assert step.startswith(("python3 -m venv .venv", ".venv/bin/")), (path, step)


def test_the_starlette_howto_shows_a_quiet_exit_on_signals() -> None:
    text = page("docs/howto/starlette.md")
    assert "signal.signal(signal.SIGTERM, signal.default_int_handler)" in text
    assert "contextlib.suppress(KeyboardInterrupt)" in text
    assert '--8<-- "examples/chat_starlette.py:run"' in text


def test_the_aiohttp_howto_binds_to_loopback_and_logs_no_offered_subprotocols() -> None:
    text = page("docs/howto/aiohttp.md")
    assert re.findall(r"web\.run_app\(app[^)\n]*\)\n", text) == [
        'web.run_app(app, host="127.0.0.1", port=8080)\n'
    ]
    assert "logs a warning that\nlists the offered values" not in text


def test_the_readme_says_how_to_read_the_docs() -> None:
    assert ".venv/bin/mkdocs build" in README
    assert ".venv/bin/mkdocs serve -a 127.0.0.1:8001" in README
    assert "NO_MKDOCS_2_WARNING=1" in README


def test_the_readme_says_what_the_test_suite_needs() -> None:
    section = README[README.index("## Run the test suite") : README.index("## Quickstart")]
    assert "/usr/bin/chromium" in section
    assert "same `.venv`" in section


def test_the_docs_site_asks_no_other_host_for_fonts_or_repository_facts() -> None:
    theme = page("mkdocs.yml").split("\ntheme:\n", 1)[1].split("\n\n", 1)[0]
    assert "\n  font: false\n" in theme
    assert "\n  custom_dir: overrides\n" in theme
    # The theme's script fetches stars and forks for the element marked as the source.
    source = ROOT / "overrides" / "partials" / "source.html"
    assert 'class="md-source"' in source.read_text(encoding="utf-8")
    assert 'data-md-component="source"' not in source.read_text(encoding="utf-8")


def test_the_getting_started_event_looks_like_a_real_one() -> None:
    text = page("docs/tutorial/getting-started.md")
    (event,) = re.findall(r'^\{"type":"chat\.message".*$', text, flags=re.MULTILINE)
    assert re.search(r'"id":"[0-9a-f]{8}-[0-9a-f]+"', event)
