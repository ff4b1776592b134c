"""Helpers and fixtures for the agent tests: a buggy project, scripts, the CLI run in-process.

Fixtures live here rather than in a conftest.py so that they apply to these test modules only
(other modules share this folder); test modules import them by name.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loopcli.cli import main

OPS_BUGGY = '''"""Arithmetic helpers."""


def clamp(value, low, high):
    """`value` limited to the range [low, high]."""
    if value < low:
        return low
    if value > high:
        return low
    return value


def total(values):
    return sum(values)
'''
OPS_FIXED = OPS_BUGGY.replace("        return low\n    return value",
                              "        return high\n    return value")
OPS_TESTS = '''from calc.ops import clamp, total


def test_clamp_low():
    assert clamp(-5, 0, 10) == 0


def test_clamp_high():
    assert clamp(50, 0, 10) == 10


def test_total():
    assert total([1, 2]) == 3
'''
ISSUE = "clamp(50, 0, 10) returns 0 instead of 10: values above the range come back as the low end."
TEST_CMD = "python -m pytest -q -p no:cacheprovider"


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-c", "user.name=u", "-c", "user.email=u@example.com", *args],
                          cwd=repo, capture_output=True, text=True, check=True)
    return proc.stdout


def put(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def make_buggy_repo(tmp_path: Path) -> Path:
    """A committed git project whose test_clamp_high fails."""
    repo = tmp_path / "proj"
    put(repo / "calc" / "__init__.py", "")
    put(repo / "calc" / "ops.py", OPS_BUGGY)
    put(repo / "tests" / "test_ops.py", OPS_TESTS)
    put(repo / ".gitignore", "__pycache__/\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    return repo


def write_script(path: Path, turns: list[dict]) -> Path:
    path.write_text("".join(json.dumps(turn) + "\n" for turn in turns))
    return path


def call(name: str, **arguments) -> dict:
    """A turn with one native tool call."""
    return {"text": "", "tool_calls": [{"name": name, "arguments": arguments}]}


FIX_TURNS = [
    call("view", path="calc/ops.py"),
    call("replace", path="calc/ops.py", old="    if value > high:\n        return low\n",
         new="    if value > high:\n        return high\n"),
    call("finish", summary="clamp returns high above the range"),
]


def run_cli(capsys, monkeypatch, *args: str, stdin: str | None = None):
    """`loopcli ARGS` in-process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["loopcli", *args])
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def hermetic(tmp_path, monkeypatch):
    """Caches under tmp, no user git config, no bytecode files, and this interpreter's `python`
    (which has pytest) first on PATH. Test modules use it for every test through pytestmark."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for key in [k for k in os.environ if k.startswith("GIT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    monkeypatch.setenv("PATH", path)


@pytest.fixture
def buggy_repo(tmp_path) -> Path:
    return make_buggy_repo(tmp_path)


@pytest.fixture
def fix_script(tmp_path) -> Path:
    return write_script(tmp_path / "fix.jsonl", FIX_TURNS)
