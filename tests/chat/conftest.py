"""Fixtures of the chat tests: a small git repository, a scripted model, the state in tmp."""

from __future__ import annotations

import asyncio
import html
import json
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from loopcli.backends.base import BackendError, TextDelta
from loopcli.backends.scripted import ScriptedBackend

APP_PY = 'def greet():\n    return "hello"\n'


@pytest.fixture(autouse=True)
def _user_dirs(tmp_path, monkeypatch):
    """Sessions, caches and config of the user live in tmp; fixed session ids."""
    for name in ("XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "app.py").write_text(APP_PY)
    (root / "README.md").write_text("# project\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=root, check=True)
    return root


def script(tmp_path: Path, turns: list[dict]) -> Path:
    path = tmp_path / "script.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in turns))
    return path


class RecordingBackend(ScriptedBackend):
    """The scripted model, keeping the messages of each call and streaming its text word by
    word; `gate`, when set up, holds the stream after the first word until it is opened."""

    def __init__(self, path, **kwargs):
        super().__init__(path, **kwargs)
        self.seen: list[list[dict]] = []
        self.gate: threading.Event | None = None

    def stream(self, messages, tools):
        self.seen.append(json.loads(json.dumps(messages)))
        for i, event in enumerate(super().stream(messages, tools)):
            if isinstance(event, TextDelta):
                words = re.findall(r"\S+\s*", event.text)
                for j, word in enumerate(words):
                    yield TextDelta(word)
                    if j == 0 and self.gate is not None:
                        self.gate.wait(10)
            else:
                yield event


class FailingBackend(ScriptedBackend):
    """A server that is down for the first `failures` calls."""

    def __init__(self, path, failures=1, **kwargs):
        super().__init__(path, **kwargs)
        self.failures = failures

    def stream(self, messages, tools):
        if self.failures:
            self.failures -= 1
            raise BackendError("cannot reach http://127.0.0.1:9/v1: connection refused")
        yield from super().stream(messages, tools)


def make_config(repo: Path, backend, **kwargs):
    from loopcli.chat.app import ChatConfig

    kwargs.setdefault("sandbox", "danger-full-access")  # no command here runs unapproved
    kwargs.setdefault("model", "script.jsonl")
    kwargs.setdefault("store_dir", repo.parent / "checkpoints")
    kwargs.setdefault("map_cache", repo.parent / "repomap")
    kwargs.setdefault("cursor_blink", False)
    return ChatConfig(repo=repo, backend=backend, **kwargs)


def screen_text(app) -> str:
    """What the terminal shows, as plain text lines (from Textual's SVG screenshot)."""
    svg = app.export_screenshot()
    rows: dict[float, list[tuple[float, str]]] = {}
    for x, y, body in re.findall(r'<text[^>]*?x="([\d.]+)" y="([\d.]+)"[^>]*>(.*?)</text>', svg):
        rows.setdefault(float(y), []).append((float(x), html.unescape(body).replace("\xa0", " ")))
    return "\n".join("".join(t for _, t in sorted(parts)) for _, parts in sorted(rows.items()))


async def wait_for(pilot, predicate, timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}\n"
                                 f"{screen_text(pilot.app)}")
        await pilot.pause(0.05)


async def type_text(pilot, text: str) -> None:
    """Type into the prompt (as a paste would: one insert) and press Enter."""
    from loopcli.chat.widgets import PromptInput

    prompt = pilot.app.query_one(PromptInput)
    prompt.insert(text)
    await pilot.pause()
    await pilot.press("enter")
    await pilot.pause()


def run(coro):
    return asyncio.run(coro)
