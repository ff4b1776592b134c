"""The chat driven end to end with the scripted model: each step checks the screen and the files."""

from __future__ import annotations

import os
import threading

import psutil

from loopcli.chat.app import ChatApp
from loopcli.chat.session import SessionStore
from loopcli.chat.widgets import ApprovalCard, ErrorCard, PromptInput

from .conftest import (APP_PY, FailingBackend, RecordingBackend, make_config, run, screen_text,
                       script, type_text, wait_for)

EDIT = {"name": "replace", "arguments": {"path": "app.py", "old": 'return "hello"',
                                         "new": 'return "hi"'}}
RM = {"name": "shell", "arguments": {"command": "rm -f app.py"}}
TOUCH = {"name": "shell", "arguments": {"command": "echo ran > out.txt"}}
WRITE = {"name": "write", "arguments": {"path": "new.txt", "content": "x\n"}}

TURNS = [
    {"text": "Hello from the **script**: ask me to change greet."},
    {"text": "I will change the greeting.", "tool_calls": [EDIT]},
    {"tool_calls": [RM]},
    {"text": "Understood, app.py stays."},
    {"tool_calls": [TOUCH]},
    {"text": "Ran it."},
    {"tool_calls": [WRITE]},
    {"text": "Read-only: nothing written."},
]


def idle(app):
    return lambda: not app.busy and app.agent is not None


def test_full_cycle(tmp_path, repo):
    backend = RecordingBackend(script(tmp_path, TURNS))
    app = ChatApp(make_config(repo, backend))
    app_py = repo / "app.py"

    async def drive():
        async with app.run_test(size=(100, 40)) as pilot:
            # ask; the answer streams in word by word: hold it after the first word
            backend.gate = threading.Event()
            await type_text(pilot, "hello")
            await wait_for(pilot, lambda: "Hello" in screen_text(app), what="first word")
            shown = screen_text(app)
            assert "ask me to change greet" not in shown and "● working" in shown
            backend.gate.set()
            backend.gate = None
            await wait_for(pilot, idle(app), what="end of the answer")
            assert "Hello from the script: ask me to change greet." in screen_text(app)

            # an edit waits for approval, shown as a diff; the file is untouched until then
            await type_text(pilot, "change greet")
            await wait_for(pilot, lambda: app._pending is not None, what="edit approval")
            await pilot.pause()
            shown = screen_text(app)
            assert 'approve edit?' in shown and '-    return "hello"' in shown \
                and '+    return "hi"' in shown and "● approve?" in shown
            assert app_py.read_text() == APP_PY
            await pilot.press("y")
            await wait_for(pilot, lambda: 'return "hi"' in app_py.read_text(), what="edit")

            # then a shell command, denied: not run, and the model is told so
            await wait_for(pilot, lambda: app._pending is not None, what="shell approval")
            assert "$ rm -f app.py" in screen_text(app)
            await pilot.press("n")
            await wait_for(pilot, idle(app), what="end of turn")
            shown = screen_text(app)
            assert "shell denied" in shown and "✗ shell rm -f app.py" in shown
            assert "Understood, app.py stays." in shown
            assert app_py.exists()
            denial = [m for m in backend.seen[-1] if m["role"] == "tool"][-1]["content"]
            assert denial.startswith("The user denied this shell command")

            # /diff shows the session's change; /undo takes it back
            await type_text(pilot, "/diff")
            await wait_for(pilot, lambda: app.session.transcript[-1]["kind"] == "diff")
            after = screen_text(app).rsplit("app.py stays.", 1)[-1]
            assert '-    return "hello"' in after and '+    return "hi"' in after
            await type_text(pilot, "/undo")
            await wait_for(pilot, lambda: "undo:" in screen_text(app), what="undo")
            assert app_py.read_text() == APP_PY
            await type_text(pilot, "/diff")
            await wait_for(pilot, lambda: "no changes in this session." in screen_text(app))

            # yolo: the command runs without asking
            await type_text(pilot, "/mode yolo")
            await wait_for(pilot, lambda: "│ yolo │" in screen_text(app), what="status yolo")
            await type_text(pilot, "run it")
            await wait_for(pilot, idle(app), what="yolo turn")
            assert (repo / "out.txt").read_text() == "ran\n"
            assert "approve shell?" not in screen_text(app).split("run it")[-1]

            # Ctrl+T cycles yolo -> read-only: the write is refused without asking
            await pilot.press("ctrl+t")
            await wait_for(pilot, lambda: "│ read-only │" in screen_text(app))
            await type_text(pilot, "write it")
            await wait_for(pilot, idle(app), what="read-only turn")
            assert "refused (read-only mode): write new.txt" in screen_text(app)
            assert not (repo / "new.txt").exists()
            await pilot.press("ctrl+q")
    run(drive())
    assert app.session.mode == "read-only"

    # restart: --resume picks the saved session up, screen and model context alike
    session = SessionStore().latest(repo)
    assert session.id == app.session.id
    backend2 = RecordingBackend(script(tmp_path, [{"text": "Welcome back."}]))
    app2 = ChatApp(make_config(repo, backend2, session=session, mode=session.mode))

    async def resume():
        async with app2.run_test(size=(100, 40)) as pilot:
            await wait_for(pilot, lambda: app2.agent is not None)
            shown = screen_text(app2)
            assert "resumed session" in shown and "Read-only: nothing written." in shown
            assert "│ read-only │" in shown
            await type_text(pilot, "where were we?")
            await wait_for(pilot, idle(app2))
            assert "Welcome back." in screen_text(app2)
            # the changes since the session's first checkpoint: the yolo command's file
            await type_text(pilot, "/diff")
            assert "+++ b/out.txt" in screen_text(app2).rsplit("Welcome back.", 1)[-1]
    run(resume())
    sent = backend2.seen[0]
    assert [m["content"] for m in sent if m["role"] == "user"][:2] == ["hello", "change greet"]
    assert sent[-1] == {"role": "user", "content": "where were we?"}


def test_ctrl_c_stops_the_answer_and_the_chat_goes_on(tmp_path, repo):
    backend = RecordingBackend(script(tmp_path, [
        {"text": "Partial answer that is cut"}, {"text": "second answer"}]))
    app = ChatApp(make_config(repo, backend))

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            backend.gate = threading.Event()
            await type_text(pilot, "go")
            await wait_for(pilot, lambda: "Partial" in screen_text(app) and app.busy)
            await pilot.press("ctrl+c")
            backend.gate.set()
            backend.gate = None
            await wait_for(pilot, lambda: not app.busy)
            shown = screen_text(app)
            assert "stopped." in shown and "that is cut" not in shown
            assert app.is_running
            await type_text(pilot, "again")
            await wait_for(pilot, lambda: "second answer" in screen_text(app))
    run(drive())


def test_ctrl_c_answers_a_pending_approval(tmp_path, repo):
    app = ChatApp(make_config(repo, RecordingBackend(script(tmp_path, [{"tool_calls": [RM]}]))))

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await type_text(pilot, "delete")
            await wait_for(pilot, lambda: app._pending is not None)
            await pilot.press("ctrl+c")
            await wait_for(pilot, lambda: not app.busy)
            assert "stopped." in screen_text(app)
            assert (repo / "app.py").exists()
    run(drive())


def test_ctrl_c_kills_a_running_shell_command(tmp_path, repo):
    marker = f"{os.getpid() % 1000 + 6000}"
    long = {"name": "shell", "arguments": {"command": f"touch started; sleep {marker}"}}
    app = ChatApp(make_config(repo, RecordingBackend(script(tmp_path, [
        {"tool_calls": [long]}, {"text": "after the stop"}])), mode="yolo"))

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await type_text(pilot, "wait")
            await wait_for(pilot, lambda: (repo / "started").exists(), what="the command runs")
            await pilot.press("ctrl+c")
            await wait_for(pilot, lambda: not app.busy, what="the turn stops")
            assert "stopped." in screen_text(app) and app.is_running
            assert not [p for p in psutil.process_iter(["cmdline"])
                        if p.info["cmdline"] and p.info["cmdline"][-1] == marker]
            await type_text(pilot, "again")  # the next command is not interrupted
            await wait_for(pilot, lambda: "after the stop" in screen_text(app))
    run(drive())


def test_backend_error_is_shown_with_what_to_do(tmp_path, repo):
    backend = FailingBackend(script(tmp_path, [{"text": "Back online."}]))
    app = ChatApp(make_config(repo, backend, base_url="http://127.0.0.1:9/v1"))

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await type_text(pilot, "hello")
            await wait_for(pilot, lambda: app.query(ErrorCard))
            shown = screen_text(app)
            assert "connection refused" in shown and "send the message again" in shown
            await type_text(pilot, "hello again")
            await wait_for(pilot, lambda: "Back online." in screen_text(app))
    run(drive())


def test_approve_always_stops_asking_for_that_kind(tmp_path, repo):
    second = {"name": "replace", "arguments": {"path": "app.py", "old": 'return "hi"',
                                               "new": 'return "hey"'}}
    app = ChatApp(make_config(repo, RecordingBackend(script(tmp_path, [
        {"tool_calls": [EDIT]}, {"tool_calls": [second]}, {"text": "done"}]))))

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await type_text(pilot, "edit twice")
            await wait_for(pilot, lambda: app._pending is not None)
            await pilot.press("a")
            await wait_for(pilot, lambda: not app.busy)
            assert len(app.query(ApprovalCard)) == 1
            assert 'return "hey"' in (repo / "app.py").read_text()
    run(drive())


def test_prompt_history_completion_and_palette(tmp_path, repo):
    app = ChatApp(make_config(repo, RecordingBackend(script(tmp_path, []))))

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            prompt = app.query_one(PromptInput)
            await type_text(pilot, "/tokens")
            await wait_for(pilot, lambda: "context:" in screen_text(app))
            await pilot.press("up")
            assert prompt.text == "/tokens"
            await pilot.press("down")
            assert prompt.text == ""
            prompt.insert("/mo")
            await pilot.press("tab")
            assert prompt.text == "/mode"  # /mode and /model: the common prefix, both shown
            assert "/mode  /model" in screen_text(app)
            prompt.load_text("/cl")
            prompt.move_cursor(prompt.document.end)
            await pilot.press("tab")
            assert prompt.text == "/clear "
            prompt.load_text("look at @ap")
            prompt.move_cursor(prompt.document.end)
            await pilot.press("tab")
            assert prompt.text == "look at @app.py "
            prompt.load_text("two")
            prompt.move_cursor(prompt.document.end)
            await pilot.press("ctrl+j")
            prompt.insert("lines")
            assert prompt.text == "two\nlines"
            # the other commands, typed and from the palette
            prompt.clear()
            await type_text(pilot, "/model other")
            assert "loads its model at start" in screen_text(app)
            await type_text(pilot, "/compact")
            assert "compacted:" in screen_text(app)
            await type_text(pilot, "/nope")
            assert "unknown command /nope" in screen_text(app)
            await type_text(pilot, "/clear")
            await pilot.pause()
            shown = screen_text(app)
            assert "new conversation" in shown and "/nope" not in shown
            assert app.agent.messages == []
            from textual.command import CommandPalette

            await pilot.press("ctrl+p")
            await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette))
            await pilot.press(*"/help")
            await pilot.pause(0.3)
            await pilot.press("enter")
            await wait_for(pilot, lambda: "Approval modes" in screen_text(app), what="help")
            assert prompt.text == "" and prompt.sent[-1] == "/clear"  # not typed in the prompt
            titles = [c.title for c in app.get_system_commands(app.screen)]
            assert {"/help", "/undo", "/diff", "/mode", "/model", "/compact", "/clear",
                    "/tokens", "/exit"} <= set(titles)
    run(drive())


def test_markup_and_junk_from_the_model_are_shown_as_text(tmp_path, repo):
    nasty = "echo '[/] [bold red]x[/bold red] [link=file:///etc]y'"
    app = ChatApp(make_config(repo, RecordingBackend(script(tmp_path, [
        {"text": "[/] [b]not markup[/b] \x1b[31m", "tool_calls": [
            {"name": "shell", "arguments": {"command": nasty}},
            {"name": "replace", "arguments": "{not json"},
            {"name": "no_such_tool", "arguments": {"path": "[/]"}}]},
        {"text": "done [/]"}])), mode="yolo"))

    async def drive():
        async with app.run_test(size=(100, 40)) as pilot:
            await type_text(pilot, "[/] hello [bold]")
            await wait_for(pilot, lambda: not app.busy and "done" in screen_text(app))
            shown = screen_text(app)
            assert "[/] hello [bold]" in shown and "[link=file:///etc]y" in shown
            assert "✗ no_such_tool [/]" in shown
            assert app.is_running
    run(drive())


def test_a_server_that_is_down_is_an_error_card_not_a_crash(repo):
    from loopcli.backends.factory import make_backend

    backend = make_backend("openai", model="m", base_url="http://127.0.0.1:9/v1")
    backend.client = backend.client.with_options(max_retries=0)
    app = ChatApp(make_config(repo, backend, base_url="http://127.0.0.1:9/v1"))

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await type_text(pilot, "hello")
            await wait_for(pilot, lambda: app.query(ErrorCard), timeout=30)
            shown = screen_text(app)
            assert "Is the server at http://127.0.0.1:9/v1 running" in shown
            assert app.is_running and not app.busy
    run(drive())


def test_tab_goes_back_to_a_pending_approval(tmp_path, repo):
    app = ChatApp(make_config(repo, RecordingBackend(script(tmp_path, [{"tool_calls": [RM]}]))))

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await type_text(pilot, "delete")
            await wait_for(pilot, lambda: app._pending is not None)
            app.query_one(PromptInput).focus()
            await pilot.press("tab")
            assert app.focused is app._pending[0]
            await pilot.press("n")
            await wait_for(pilot, lambda: not app.busy)
            assert (repo / "app.py").exists()
    run(drive())
