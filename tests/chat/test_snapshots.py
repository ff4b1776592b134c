"""SVG snapshots (pytest-textual-snapshot) of the main screen, an approval, a diff and the help.

Update them after a deliberate change of the look with `pytest tests/chat --snapshot-update`,
and look at the SVGs before committing them. What changes from run to run (the session id,
tokens/s, the context size, which holds the tmp path) is fixed before each snapshot."""

from __future__ import annotations

import pytest

from loopcli.chat import session as session_module
from loopcli.chat.app import ChatApp

from .conftest import RecordingBackend, make_config, script, type_text, wait_for

EDIT = {"name": "replace", "arguments": {"path": "app.py", "old": 'return "hello"',
                                         "new": 'return "hi"'}}
TURNS = [
    {"text": "Here is `greet`:\n\n```python\ndef greet():\n    return \"hello\"\n```\n\n"
             "It returns a **constant** greeting."},
    {"text": "I will change the greeting.", "tool_calls": [EDIT]},
    {"text": "Done: `greet` now says hi."},
]
SIZE = (100, 32)


@pytest.fixture
def app(tmp_path, repo, monkeypatch):
    monkeypatch.setattr(session_module, "new_id", lambda: "20260101-120000-abcd")
    return ChatApp(make_config(repo, RecordingBackend(script(tmp_path, TURNS))))


def steady(app) -> None:
    app.tokens_per_second = 42.0
    app.context_used = 3600
    app.refresh_status()


async def ask(pilot, text):
    app = pilot.app
    await wait_for(pilot, lambda: app.agent is not None)
    await type_text(pilot, text)
    await wait_for(pilot, lambda: not app.busy or app._pending is not None)
    await pilot.pause()


def test_main_screen(snap_compare, app):
    async def before(pilot):
        await ask(pilot, "what does greet do?")
        steady(pilot.app)
    assert snap_compare(app, terminal_size=SIZE, run_before=before)


def test_approval(snap_compare, app):
    async def before(pilot):
        await ask(pilot, "what does greet do?")
        await ask(pilot, "make it say hi")
        assert pilot.app._pending is not None
        steady(pilot.app)
    assert snap_compare(app, terminal_size=SIZE, run_before=before)


def test_diff(snap_compare, app):
    async def before(pilot):
        await ask(pilot, "what does greet do?")
        await ask(pilot, "make it say hi")
        await pilot.press("y")
        await wait_for(pilot, lambda: not pilot.app.busy)
        await type_text(pilot, "/diff")
        steady(pilot.app)
        await pilot.pause()
    assert snap_compare(app, terminal_size=SIZE, run_before=before)


def test_help_screen(snap_compare, app):
    async def before(pilot):
        await wait_for(pilot, lambda: pilot.app.agent is not None)
        steady(pilot.app)
        await pilot.press("f1")
        await pilot.pause()
    assert snap_compare(app, terminal_size=SIZE, run_before=before)
