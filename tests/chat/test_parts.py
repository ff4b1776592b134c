"""The chat's parts without the screen: agent hooks, approvals, sessions, completion, config."""

from __future__ import annotations

import subprocess
import sys

import pytest

from loopcli.agent import Agent
from loopcli.backends.scripted import ScriptedBackend
from loopcli.chat import approvals, commands
from loopcli.chat.launch import prepare
from loopcli.chat.session import SessionError, SessionStore
from loopcli.config import ConfigError, SandboxSettings
from loopcli.fix import FixError
from loopcli.tools.toolbox import Toolbox

from .conftest import APP_PY, script

EDIT = {"name": "replace", "arguments": {"path": "app.py", "old": 'return "hello"',
                                         "new": 'return "hi"'}}


def agent_for(tmp_path, repo, turns, **hooks):
    toolbox = Toolbox(repo, store_dir=tmp_path / "store")
    return Agent(ScriptedBackend(script(tmp_path, turns)), toolbox, "system", **hooks)


# ---- the agent's optional hooks ------------------------------------------------------------


def test_conversational_reply_ends_the_turn_and_the_conversation_goes_on(tmp_path, repo):
    texts = []
    agent = agent_for(tmp_path, repo, [{"text": "first"}, {"text": "second"}],
                      conversational=True, on_text=texts.append)
    assert agent.ask("one").status == "answered"
    assert agent.ask("two").message == "second"
    assert [m["role"] for m in agent.messages] == ["system", "user", "assistant", "user",
                                                   "assistant"]
    assert texts == ["first", "second"]


def test_without_conversational_a_plain_reply_is_still_a_format_error(tmp_path, repo):
    agent = agent_for(tmp_path, repo, [{"text": "no call"}] * 3)
    assert agent.run("task").status == "format_errors"


def test_a_denied_call_is_not_run_and_the_model_reads_why(tmp_path, repo):
    asked = []

    def approve(call):
        asked.append(call.name)
        return "denied by the user"
    agent = agent_for(tmp_path, repo, [{"tool_calls": [EDIT]}, {"text": "ok"}],
                      conversational=True, approve=approve)
    assert agent.ask("edit").status == "answered"
    assert asked == ["replace"] and (repo / "app.py").read_text() == APP_PY
    tool = [m for m in agent.messages if m["role"] == "tool"][0]
    assert tool["content"] == "denied by the user"


def test_stopped_from_the_stream_ends_the_turn(tmp_path, repo):
    from loopcli.agent import Stopped

    def on_text(delta):
        raise Stopped("stopped with Ctrl+C")
    agent = agent_for(tmp_path, repo, [{"text": "long"}], conversational=True, on_text=on_text)
    assert agent.ask("go").status == "stopped"


# ---- approvals -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode,kind,expected", [
    ("read-only", "read", "run"), ("read-only", "edit", "deny"), ("read-only", "shell", "deny"),
    ("ask", "edit", "ask"), ("ask", "shell", "ask"), ("ask", "read", "run"),
    ("auto-edit", "edit", "run"), ("auto-edit", "shell", "ask"),
    ("yolo", "edit", "run"), ("yolo", "shell", "run"),
])
def test_decide(mode, kind, expected):
    assert approvals.decide(mode, kind) == expected


def test_always_approves_one_kind_but_never_in_read_only():
    assert approvals.decide("ask", "shell", {"shell"}) == "run"
    assert approvals.decide("ask", "edit", {"shell"}) == "ask"
    assert approvals.decide("read-only", "shell", {"shell"}) == "deny"


def test_preview_is_the_diff_the_edit_would_make_and_leaves_the_file(tmp_path, repo):
    toolbox = Toolbox(repo, store_dir=tmp_path / "store")
    diff = approvals.preview(toolbox, "replace", EDIT["arguments"])
    assert '-    return "hello"' in diff and '+    return "hi"' in diff
    new = approvals.preview(toolbox, "write", {"path": "pkg/new.py", "content": "x = 1\n"})
    assert "+++ b/pkg/new.py" in new and "+x = 1" in new
    sym = approvals.preview(toolbox, "replace_symbol", {
        "path": "app.py", "symbol": "greet", "code": "def greet():\n    return 'yo'\n"})
    assert "+    return 'yo'" in sym
    assert (repo / "app.py").read_text() == APP_PY and not (repo / "pkg").exists()
    assert "will fail" in approvals.preview(toolbox, "replace", {
        "path": "app.py", "old": "not there", "new": "x"})
    assert "will fail" in approvals.preview(toolbox, "write", {"path": "../out.txt",
                                                               "content": "x"})
    assert approvals.preview(toolbox, "shell", {"command": "ls"}) == "ls"


# ---- sessions ------------------------------------------------------------------------------


def test_sessions_save_atomically_and_the_latest_of_a_repo_comes_back(tmp_path, repo):
    store = SessionStore(tmp_path / "state")
    first = store.new(repo, "ask")
    first.messages = [{"role": "user", "content": "é"}]
    store.save(first)
    other = store.new(tmp_path, "ask")
    store.save(other)
    second = store.new(repo, "yolo")
    second.id = first.id[:-4] + "ffff"
    store.save(second)
    assert store.latest(repo).id == second.id
    assert store.load(first.id).messages == first.messages
    assert not list(store.root.glob(".*.tmp"))
    (store.root / "20990101-000000-dead.json").write_text("{broken")
    assert store.latest(repo).id == second.id  # a broken file hides nothing
    with pytest.raises(SessionError, match="cannot read"):
        store.load("20990101-000000-dead")
    with pytest.raises(SessionError, match="not a session id"):
        store.load("../../etc/passwd")
    with pytest.raises(SessionError, match="no saved chat session"):
        store.latest(tmp_path / "elsewhere")


# ---- the prompt ----------------------------------------------------------------------------


def test_completion_and_parsing():
    files = ["app.py", "src/app_main.py", "src/util.py", "tests/test_app.py"]
    assert commands.complete("/he", files) == ("/help ", [])
    assert commands.complete("see @src/u", files) == ("see @src/util.py ", [])
    text, shown = commands.complete("see @src/", files)
    assert text == "see @src/" and shown == ["src/app_main.py", "src/util.py"]
    assert commands.complete("see @test_a", files) == ("see @tests/test_app.py ", [])
    assert commands.complete("/mode au", files) == ("/mode auto-edit ", [])
    assert commands.parse("/mode yolo") == ("/mode", "yolo")
    assert commands.parse("hello /mode") is None and commands.parse("//not") is None


def test_mentions_add_the_file_but_nothing_outside_the_project(tmp_path, repo):
    (tmp_path / "secret.txt").write_text("secret")
    text = commands.expand_mentions("see @app.py and @../secret.txt", repo)
    assert 'return "hello"' in text and "secret" not in text.split("and @../secret.txt")[1]
    assert commands.repo_files(repo) == ["README.md", "app.py"]


# ---- config and command line ---------------------------------------------------------------


def test_config_defaults_and_a_repository_may_only_tighten(tmp_path, repo):
    config_dir = tmp_path / "xdg_config_home" / "loopcli"
    config_dir.mkdir(parents=True)
    turns = script(tmp_path, [{"text": "hi"}])
    (config_dir / "config.toml").write_text(
        f'[chat]\nbackend = "scripted"\nmodel = "{turns}"\nmode = "yolo"\n')
    (repo / ".loopcli.toml").write_text('[chat]\nmode = "auto-edit"\nbackend = "openai"\n')
    config = prepare(repo, None, None, None, None, 5, None, None, SandboxSettings())
    assert config.backend.name == "scripted" and config.mode == "auto-edit"
    (repo / ".loopcli.toml").write_text('[chat]\nmode = "read-only"\n')
    assert prepare(repo, None, None, None, None, 5, "yolo", None,
                   SandboxSettings()).mode == "read-only"
    (repo / ".loopcli.toml").write_text('[chat]\nmode = "wild"\n')
    with pytest.raises(ConfigError, match="chat.mode"):
        prepare(repo, None, None, None, None, 5, None, None, SandboxSettings())
    (repo / ".loopcli.toml").unlink()
    with pytest.raises(FixError, match="no saved chat session"):
        prepare(repo, None, None, None, None, 5, None, "last", SandboxSettings())


def test_cli_bad_resume_is_one_error_line(tmp_path, repo):
    turns = script(tmp_path, [])
    out = subprocess.run([sys.executable, "-m", "loopcli", "chat", "--repo", str(repo),
                          "--backend", "scripted", "--model", str(turns), "--sandbox",
                          "danger-full-access", "--resume", "20990101-000000-beef"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: no session 20990101-000000-beef")
    assert "Traceback" not in out.stderr


def test_bare_loopcli_outside_a_terminal_prints_the_help(tmp_path):
    out = subprocess.run([sys.executable, "-m", "loopcli"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "chat" in out.stdout and "Usage" in out.stdout


def test_errors_say_what_to_do():
    from types import SimpleNamespace

    from loopcli.agent import RunResult
    from loopcli.chat.app import _explain

    def explain(status, message, limit=None, backend="openai"):
        config = SimpleNamespace(backend=SimpleNamespace(name=backend),
                                 base_url="http://h:1/v1")
        return _explain(RunResult(status, message, limit, 1, 1, 0.0, 0), config)[1]
    assert "/compact" in explain("limit", "too long", "context")
    assert "go on" in explain("limit", "step limit of 50 reached", "steps")
    assert "/compact" in explain("backend_error", "the context length is exceeded")
    assert "http://h:1/v1" in explain("backend_error", "connection refused")
    assert "--model" in explain("backend_error", "boom", backend="local")
    assert "report" in explain("chat_error", "KeyError: x")


def test_resume_refuses_a_session_of_another_repository(tmp_path, repo):
    store = SessionStore()
    session = store.new(tmp_path, "ask")
    store.save(session)
    turns = script(tmp_path, [])
    with pytest.raises(FixError, match="belongs to"):
        prepare(repo, "scripted", str(turns), None, None, 5, None, session.id,
                SandboxSettings())


def test_status_bar_loop_count_comes_from_what_the_backend_knows():
    from types import SimpleNamespace

    from loopcli.chat.app import _loops

    engine = SimpleNamespace(cfg=SimpleNamespace(num_loops=2))
    assert _loops(SimpleNamespace(name="local", engine=engine)) == "2"
    assert _loops(SimpleNamespace(name="llama.cpp")) == "1"  # llama.cpp runs only R = 1 models
    assert _loops(SimpleNamespace(name="openai")) == "?"
