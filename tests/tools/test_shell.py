import os
import signal
import sys
import time

import psutil
import pytest

from loopcli.tools.errors import ToolError
from loopcli.tools.shell import ShellResult, interactive_refusal, run
from loopcli.tools.workspace import Workspace


@pytest.fixture
def ws(tmp_path):
    return Workspace(tmp_path)


def gone(pid: int, within: float = 3.0) -> bool:
    """Whether `pid` has exited (a zombie waiting for its reaper counts as exited)."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_exit_code_and_merged_output(ws):
    result = run(ws, "echo out; echo err >&2; exit 3")
    assert result.exit_code == 3 and not result.timed_out and result.elided == 0
    assert result.output == "out\nerr\n"
    assert result.render() == "out\nerr\n[exit code 3]"


def test_runs_in_the_workspace_root_with_non_interactive_env(ws, tmp_path):
    result = run(ws, 'pwd; echo "$PAGER $GIT_PAGER $GIT_EDITOR $TERM $NO_COLOR"')
    assert result.output.split("\n")[:2] == [str(tmp_path), "cat cat true dumb 1"]


def test_stdin_is_closed(ws):
    started = time.monotonic()
    result = run(ws, "cat; read line; echo read=$?", timeout=10)
    assert result.output == "read=1\n" and time.monotonic() - started < 5


def test_no_output_and_signals_are_rendered(ws):
    assert run(ws, "true").render() == "(no output)\n[exit code 0]"
    killed = run(ws, "kill -SEGV $$")
    assert killed.exit_code == -signal.SIGSEGV
    assert killed.render().endswith("[exit code -11: killed by SIGSEGV]")


def test_timeout_kills_the_whole_process_group(ws, tmp_path):
    # one child that dies on SIGTERM, one that ignores it and needs SIGKILL
    stubborn = (f"{sys.executable} -c 'import os, signal, time; "
                "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "open(\"stubborn.pid\", \"w\").write(str(os.getpid())); time.sleep(100)'")
    command = f"sleep 100 & echo $! > child.pid; {stubborn} & echo started; wait"
    started = time.monotonic()
    result = run(ws, command, timeout=1.5)
    assert result.timed_out and result.exit_code is None
    assert result.output == "started\n"
    assert "timed out after 1.5 s" in result.render()
    assert time.monotonic() - started < 8
    for name in ("child.pid", "stubborn.pid"):
        assert gone(int((tmp_path / name).read_text())), f"{name} survived the timeout"


def test_huge_output_keeps_head_and_tail_and_counts_the_rest(ws):
    command = "echo FIRST; head -c 10000000 /dev/zero | tr '\\0' 'x'; echo; echo LAST"
    result = run(ws, command, max_output=30_000)
    assert result.exit_code == 0
    assert result.output.startswith("FIRST\n") and result.output.endswith("LAST\n")
    total = len("FIRST\n") + 10_000_000 + len("\nLAST\n")
    assert total - 30_000 <= result.elided <= total
    assert f"[... {result.elided:,} bytes" in result.output
    assert len(result.output) < 31_000


def test_cut_prefers_line_boundaries_and_counts_lines(ws):
    result = run(ws, "seq 1 100000", max_output=2_000)
    head, _, rest = result.output.partition("[... ")
    marker, _, tail = rest.partition("\n")
    assert head.endswith("\n") and head.split("\n")[-2].isdigit()
    kept = [int(x) for x in head.split() + tail.split()]
    assert kept == sorted(kept) and kept[0] == 1 and kept[-1] == 100000
    assert f"({100000 - len(kept):,} line breaks)" in marker


def test_background_job_holding_the_output_does_not_block(ws, tmp_path):
    started = time.monotonic()
    result = run(ws, "sleep 30 & echo $! > bg.pid; echo done", timeout=20)
    try:
        assert result.exit_code == 0 and result.output == "done\n" and result.detached
        assert time.monotonic() - started < 5
        assert "Redirect it to a file" in result.render()
    finally:
        os.kill(int((tmp_path / "bg.pid").read_text()), signal.SIGKILL)


def test_colour_codes_and_carriage_return_redraws_are_cleaned(ws):
    result = run(ws, r"printf '\033[31mred\033[0m\n10%%\r50%%\r100%%\nwin\r\n'")
    assert result.output == "red\n100%\nwin\n"


@pytest.mark.parametrize("command", ["", "   "])
def test_empty_command_is_refused(ws, command):
    with pytest.raises(ToolError, match="empty"):
        run(ws, command)


def test_bad_timeout_is_refused(ws):
    with pytest.raises(ToolError, match="timeout"):
        run(ws, "true", timeout=0)


# ---- interactive programs ------------------------------------------------------------------

@pytest.mark.parametrize("command, hint", [
    ("vim app.py", "editor"),
    ("nano README.md", "editor"),
    ("emacs x", "editor"),
    ("/usr/bin/vi x", "editor"),
    ("git log | less", "pager"),
    ("more notes.txt", "pager"),
    ("top", "full-screen"),
    ("htop", "full-screen"),
    ("watch ls", "never-ending"),
    ("tail -f app.log", "never ends"),
    ("git commit", "git commit -m"),
    ("git commit --amend", "git commit -m"),
    ("git -C sub commit -a", "git commit -m"),
    ("git rebase -i HEAD~3", "rebase -i"),
    ("git add -p", "patch/interactive"),
    ("git clean -fdi", "patch/interactive"),
    ("git checkout --patch src", "patch/interactive"),
    ("python", "interactive session"),
    ("python3", "interactive session"),
    ("python3.12 -u", "interactive session"),
    ("node", "interactive session"),
    ("irb", "interactive session"),
    ("bash", "interactive session"),
    ("ls && python3", "interactive session"),
    ("cd src; vim x", "editor"),
    ("sudo -u root nano x", "editor"),
    ("FOO=1 timeout 10 vim x", "editor"),
    ("bash -c 'vim x'", "editor"),
    ("if true; then vim x; fi", "editor"),
    ("echo start\nvim x", "editor"),
])
def test_interactive_commands_are_refused_before_running(ws, tmp_path, command, hint):
    assert hint in interactive_refusal(command)
    with pytest.raises(ToolError, match="terminal|never ends"):
        run(ws, f"touch ran.marker; {command}")
    assert not (tmp_path / "ran.marker").exists()


@pytest.mark.parametrize("command", [
    "echo vim",
    "echo 'vim x' | grep vim",
    "python -c 'print(1)'",
    "python3 -m pytest -q",
    "python script.py",
    "python -uc 'print(1)'",
    "echo 'print(1)' | python",
    "python - <<'EOF'\nprint('vim is not run here')\nEOF",
    "cat > notes.txt <<EOF\nvim\nless\nit's fine\nEOF",
    "node -e 'console.log(1)'",
    "node server.js",
    "bash script.sh",
    "bash -lc 'ls'",
    "git commit -m 'msg'",
    "git commit -am 'msg'",
    "git commit --amend --no-edit",
    "git commit -F msg.txt",
    "GIT_EDITOR=true git commit",
    "git rebase main",
    "git add -A",
    "git commit -i x.py -m 'include'",
    "git stash push -m 'wip'",
    "git --no-pager log -5",
    "git tag v1",
    "tail -n 20 app.log",
    "command -v vim",
    "which less",
    "vim -es -c 'wq' x",
    "emacs --batch -l build.el",
    "python --version",
    "pip install -e .",
    "grep -r 'less' . | head",
    "python 'unbalanced",
])
def test_ordinary_commands_are_not_refused(command):
    assert interactive_refusal(command) is None


def test_render_of_a_timed_out_result():
    result = ShellResult(exit_code=None, output="partial\n", timed_out=True, timeout=30)
    assert result.render().split("\n")[0] == "partial"
    assert "timed out after 30 s" in result.render()
