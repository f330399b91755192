"""CONTRIBUTING.md and the pre-commit config name the very checks .ci/run makes."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CI = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
PRE_COMMIT = (ROOT / ".pre-commit-config.yaml").read_text(encoding="utf-8")
CONTRIBUTING = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")


def ci_commands() -> list[str]:
    """The commands of .ci/run's check steps that run a tool directly (pytest aside)."""
    return re.findall(r'^run_step "[^"]+" (\.venv/bin/.+)$', CI, flags=re.MULTILINE)


def hook_entries() -> list[str]:
    entries = re.findall(r"^ +entry: (.+)$", PRE_COMMIT, flags=re.MULTILINE)
    return [entry.removeprefix("env NO_MKDOCS_2_WARNING=1 ") for entry in entries]


def test_ci_steps_are_found() -> None:
    assert len(ci_commands()) == 4
    assert "pytest" in CI


def test_pre_commit_runs_every_ci_check() -> None:
    assert set(ci_commands()) <= set(hook_entries())
    assert ".venv/bin/python -m pytest -q" in hook_entries()


def test_pre_commit_fetches_nothing() -> None:
    repos = re.findall(r"^ +- repo: (.+)$", PRE_COMMIT, flags=re.MULTILINE)
    languages = re.findall(r"^ +language: (.+)$", PRE_COMMIT, flags=re.MULTILINE)
    assert repos == ["local"]
    assert languages
    assert set(languages) == {"unsupported"}
    assert "additional_dependencies" not in PRE_COMMIT


def test_contributing_lists_every_ci_check() -> None:
    for command in [*ci_commands(), ".venv/bin/python -m pytest"]:
        assert f"`{command}`" in CONTRIBUTING, command


def test_readme_links_contributing() -> None:
    assert "(CONTRIBUTING.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
