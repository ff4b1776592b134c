"""`loopcli fix` end to end with the scripted backend: outcome, diff, exit codes, events, and the
user's branch, index and uncommitted work left alone (with and without --commit)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agentkit import (FIX_TURNS, ISSUE, OPS_BUGGY, OPS_FIXED, TEST_CMD, call, git,
                      make_buggy_repo, put, read_events, run_cli, write_script)
from agentkit import buggy_repo, fix_script, hermetic  # noqa: F401  (fixtures)
from loopcli.agent import Limits
from loopcli.backends.base import BackendError
from loopcli.fix import FixConfig, FixError, detect_test_command, read_issue, run_fix

pytestmark = pytest.mark.usefixtures("hermetic")


def fix_args(repo: Path, script: Path, *extra: str) -> list[str]:
    return ["fix", ISSUE, "--repo", str(repo), "--backend", "scripted", "--model", str(script),
            "--test-cmd", TEST_CMD, *extra]


def suite_passes(repo: Path) -> bool:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                          cwd=repo, capture_output=True).returncode == 0


def changed_lines(diff: str) -> list[str]:
    return [line for line in diff.splitlines()
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def test_fixes_the_bug_with_a_minimal_diff(buggy_repo, fix_script, tmp_path, capsys, monkeypatch):
    assert not suite_passes(buggy_repo)
    trajectory = tmp_path / "run.jsonl"
    code, out, err = run_cli(capsys, monkeypatch, *fix_args(buggy_repo, fix_script),
                             "--trajectory", str(trajectory))
    assert code == 0, err
    assert (buggy_repo / "calc" / "ops.py").read_text() == OPS_FIXED
    assert suite_passes(buggy_repo)
    # stdout is exactly the diff: one file, one line changed
    assert out.startswith("diff --git a/calc/ops.py b/calc/ops.py")
    assert changed_lines(out) == ["-        return low", "+        return high"]
    assert "resolved" in err.splitlines()[-1]
    events = read_events(trajectory)
    assert [e["type"] for e in events if e["type"] in ("start", "test", "result")] == \
        ["start", "test", "result"]
    assert events[-1]["status"] == "resolved" and events[-1]["exit_code"] == 0


def test_json_events_on_stdout(buggy_repo, fix_script, capsys, monkeypatch):
    code, out, err = run_cli(capsys, monkeypatch, *fix_args(buggy_repo, fix_script), "--json")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "result"
    assert kinds.count("model") == 3 and kinds.count("tool") == 2 and kinds.count("test") == 1
    result = events[-1]
    assert result["resolved"] is True and result["exit_code"] == 0 and result["steps"] == 3
    assert changed_lines(result["diff"]) == ["-        return low", "+        return high"]
    assert Path(result["trajectory"]).is_file()
    test = next(e for e in events if e["type"] == "test")
    assert test["passed"] and test["cmd"] == TEST_CMD


def test_finish_with_failing_tests_is_not_accepted(buggy_repo, tmp_path, capsys, monkeypatch):
    script = write_script(tmp_path / "s.jsonl", [
        call("finish", summary="done"),  # tests still fail: the model is told and goes on
        *FIX_TURNS,
    ])
    code, out, err = run_cli(capsys, monkeypatch, *fix_args(buggy_repo, script), "--json")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    tests = [e for e in events if e["type"] == "test"]
    assert [t["passed"] for t in tests] == [False, True]
    first_finish = next(e for e in events if e["type"] == "tool" and e["name"] == "finish")
    assert not first_finish["ok"] and "test_clamp_high" in first_finish["output"]


def test_without_test_command_finish_resolves(buggy_repo, fix_script, capsys, monkeypatch):
    code, out, err = run_cli(capsys, monkeypatch, "fix", ISSUE, "--repo", str(buggy_repo),
                             "--backend", "scripted", "--model", str(fix_script), "--json")
    assert code == 0, err
    start = json.loads(out.splitlines()[0])
    assert start["test_cmd"] == "python -m pytest -q"  # detected: the repo has tests/test_*.py
    (buggy_repo / "tests" / "test_ops.py").unlink()
    (buggy_repo / "calc" / "ops.py").write_text(OPS_BUGGY)
    code, out, err = run_cli(capsys, monkeypatch, "fix", ISSUE, "--repo", str(buggy_repo),
                             "--backend", "scripted", "--model", str(fix_script), "--json")
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and events[0]["test_cmd"] is None
    assert not [e for e in events if e["type"] == "test"]


def test_step_limit_exits_4_with_a_trajectory(buggy_repo, tmp_path, capsys, monkeypatch):
    script = write_script(tmp_path / "s.jsonl",
                          [call("view", path="calc/ops.py", start=n) for n in range(1, 10)])
    trajectory = tmp_path / "t.jsonl"
    code, out, err = run_cli(capsys, monkeypatch, *fix_args(buggy_repo, script), "--max-steps",
                             "3", "--trajectory", str(trajectory))
    assert code == 4
    assert "limit" in err.splitlines()[-1] and "exit code 4" in err.splitlines()[-1]
    events = read_events(trajectory)
    limit = next(e for e in events if e["type"] == "limit")
    assert limit["limit"] == "steps" and limit["step"] == 3
    assert events[-1]["status"] == "limit" and events[-1]["exit_code"] == 4
    assert len([e for e in events if e["type"] == "tool"]) == 3


def test_three_format_errors_exit_3(buggy_repo, tmp_path, capsys, monkeypatch):
    script = write_script(tmp_path / "s.jsonl", [{"text": '<tool_call>{"name": "view"'}] * 3)
    code, out, err = run_cli(capsys, monkeypatch, *fix_args(buggy_repo, script), "--json")
    assert code == 3
    result = json.loads(out.splitlines()[-1])
    assert result["status"] == "format_errors" and result["turns_well_formed"] == 0


def test_backend_failure_exits_3(buggy_repo):
    class Down:
        name, context_window = "down", 8192

        def stream(self, messages, tools):
            raise BackendError("connection refused at http://127.0.0.1:9")

        def count_tokens(self, text):
            return len(text) // 4

    result = run_fix(FixConfig(ISSUE, buggy_repo, Down(), test_cmd=TEST_CMD))
    assert (result.status, result.exit_code) == ("backend_error", 3)
    assert "connection refused" in result.message


def test_unreachable_server_exits_3(buggy_repo, capsys, monkeypatch):
    pytest.importorskip("loopcli.backends.factory")
    code, out, err = run_cli(capsys, monkeypatch, "fix", ISSUE, "--repo", str(buggy_repo),
                             "--backend", "openai", "--model", "m", "--base-url",
                             "http://127.0.0.1:9/v1", "--max-steps", "2")
    assert code == 3, err
    assert "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["fix", "   ", "--repo", "."], "issue is empty"),
    (["fix", "@/nonexistent/issue.md"], "does not exist"),
    (["fix", "x", "--repo", "/nonexistent/dir"], "not a directory"),
    (["fix", "x", "--backend", "gpt-cloud"], "Invalid value for '--backend'"),
    (["fix", "x", "--backend", "scripted"], "needs a model"),
    (["fix", "x", "--backend", "scripted", "--model", "/nonexistent.jsonl"], "does not exist"),
    (["fix", "x", "--backend", "local", "--model", "/nonexistent.gguf"], "model /nonexistent.gguf does not exist"),
    (["fix", "x", "--backend", "llama.cpp", "--model", "/nonexistent.gguf"], "does not exist"),
])
def test_bad_input_exits_2(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, monkeypatch, *args)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_malformed_script_exits_2(tmp_path, capsys, monkeypatch):
    script = tmp_path / "s.jsonl"
    script.write_text('{"text": "ok"}\n{"tool_calls": [{"arguments": {}}]}\n')
    code, out, err = run_cli(capsys, monkeypatch, "fix", "x", "--repo", str(tmp_path),
                             "--backend", "scripted", "--model", str(script))
    assert code == 2 and "s.jsonl:2" in err


def test_issue_from_stdin_and_file(tmp_path):
    assert read_issue("-", stdin=__import__("io").StringIO("  crash on empty input \n")) == \
        "crash on empty input"
    put(tmp_path / "issue.md", "Title\n\nbody\n")
    assert read_issue(f"@{tmp_path / 'issue.md'}") == "Title\n\nbody"
    with pytest.raises(FixError, match="empty"):
        read_issue("-", stdin=__import__("io").StringIO("\n"))


def test_issue_from_stdin_on_the_command_line(buggy_repo, fix_script, capsys, monkeypatch):
    args = fix_args(buggy_repo, fix_script, "--json")
    args[1] = "-"
    code, out, err = run_cli(capsys, monkeypatch, *args, stdin=ISSUE + "\n")
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["issue"] == ISSUE


# ---- the user's work stays as it was ------------------------------------------------------


def add_user_work(repo: Path) -> dict:
    """A feature branch, one staged and one unstaged change and an untracked file."""
    git(repo, "checkout", "-q", "-b", "feature")
    put(repo / "calc" / "__init__.py", '"""calc package."""\n')
    git(repo, "add", "calc/__init__.py")  # staged
    put(repo / "tests" / "test_ops.py", (repo / "tests" / "test_ops.py").read_text() + "\n# wip\n")
    put(repo / "notes.txt", "my notes\n")  # untracked
    return git_state(repo)


def git_state(repo: Path) -> dict:
    return {
        "branch": git(repo, "symbolic-ref", "HEAD").strip(),
        "head": git(repo, "rev-parse", "HEAD").strip(),
        "index": git(repo, "diff", "--cached"),
        "status": git(repo, "status", "--porcelain"),
        "unstaged": git(repo, "diff"),
        "notes": (repo / "notes.txt").read_text(),
        "branches": git(repo, "branch", "--list"),
    }


def test_user_work_is_kept_without_commit(buggy_repo, fix_script, capsys, monkeypatch):
    before = add_user_work(buggy_repo)
    code, out, err = run_cli(capsys, monkeypatch, *fix_args(buggy_repo, fix_script))
    assert code == 0, err
    after = git_state(buggy_repo)
    for key in ("branch", "head", "index", "notes", "branches"):
        assert after[key] == before[key], key
    # the work tree holds the user's changes plus exactly the agent's
    assert "# wip" in (buggy_repo / "tests" / "test_ops.py").read_text()
    assert (buggy_repo / "calc" / "ops.py").read_text() == OPS_FIXED
    assert changed_lines(out) == ["-        return low", "+        return high"]


def test_commit_puts_only_the_agents_change_on_a_new_branch(buggy_repo, fix_script, capsys,
                                                            monkeypatch):
    before = add_user_work(buggy_repo)
    tree_before = {p: (buggy_repo / p).read_bytes() for p in
                   ("calc/ops.py", "calc/__init__.py", "tests/test_ops.py", "notes.txt")}
    code, out, err = run_cli(capsys, monkeypatch, *fix_args(buggy_repo, fix_script, "--json",
                                                            "--branch", "fix/clamp"))
    assert code == 0, err
    result = json.loads(out.splitlines()[-1])
    assert result["branch"] == "fix/clamp" and result["commit"]
    after = git_state(buggy_repo)
    for key in ("branch", "head", "index", "status", "unstaged", "notes"):
        assert after[key] == before[key], key
    assert tree_before == {p: (buggy_repo / p).read_bytes() for p in tree_before}
    # the branch is HEAD plus exactly the agent's change
    assert git(buggy_repo, "rev-parse", "fix/clamp^").strip() == before["head"]
    assert git(buggy_repo, "diff", "--name-only", before["head"], "fix/clamp") == "calc/ops.py\n"
    assert git(buggy_repo, "show", "fix/clamp:calc/ops.py") == OPS_FIXED
    assert "clamp" in git(buggy_repo, "log", "-1", "--format=%s", "fix/clamp")


def test_commit_default_branch_name(buggy_repo, fix_script, capsys, monkeypatch):
    code, out, err = run_cli(capsys, monkeypatch, *fix_args(buggy_repo, fix_script, "--json",
                                                            "--commit"))
    assert code == 0, err
    branch = json.loads(out.splitlines()[-1])["branch"]
    assert branch.startswith("loopcli/fix-")
    assert git(buggy_repo, "show", f"{branch}:calc/ops.py") == OPS_FIXED
    assert git(buggy_repo, "symbolic-ref", "--short", "HEAD").strip() == "main"
    assert (buggy_repo / "calc" / "ops.py").read_text() == OPS_BUGGY


def test_commit_from_a_subdirectory_of_the_repository(tmp_path, fix_script, capsys, monkeypatch):
    top = tmp_path / "mono"
    make_buggy_repo(top / "x")  # its own repository: move its files into a bigger one
    shutil.rmtree(top / "x" / "proj" / ".git")
    put(top / "README.md", "monorepo\n")
    git(top, "init", "-q", "-b", "main")
    git(top, "add", "-A")
    git(top, "commit", "-q", "-m", "initial")
    sub = top / "x" / "proj"
    code, out, err = run_cli(capsys, monkeypatch, *fix_args(sub, fix_script, "--branch", "fix"))
    assert code == 0, err
    assert git(top, "diff", "--name-only", "main", "fix") == "x/proj/calc/ops.py\n"
    assert git(top, "status", "--porcelain") == ""


def test_change_overlapping_uncommitted_work_is_left_in_the_tree(buggy_repo, tmp_path, capsys,
                                                                 monkeypatch):
    ops = buggy_repo / "calc" / "ops.py"
    ops.write_text(ops.read_text().replace("if value > high:", "if value > high:  # mine"))
    script = write_script(tmp_path / "s.jsonl", [
        call("replace", path="calc/ops.py", old="        return low\n    return value",
             new="        return high\n    return value"),
        call("finish", summary="fixed"),
    ])
    code, out, err = run_cli(capsys, monkeypatch, *fix_args(buggy_repo, script, "--json",
                                                            "--branch", "fix/clamp"))
    assert code == 1
    events = [json.loads(line) for line in out.splitlines()]
    error = next(e for e in events if e["type"] == "error")
    assert "does not apply to HEAD" in error["message"]
    assert events[-1]["status"] == "resolved" and events[-1]["branch"] is None
    assert "fix/clamp" not in git(buggy_repo, "branch", "--list")
    assert "# mine" in ops.read_text() and "return high" in ops.read_text()
    assert git(buggy_repo, "diff", "--cached") == ""


def test_commit_needs_a_repository_and_a_new_branch(buggy_repo, fix_script, tmp_path, capsys,
                                                    monkeypatch):
    plain = tmp_path / "plain"
    plain.mkdir()
    code, out, err = run_cli(capsys, monkeypatch, *fix_args(plain, fix_script, "--commit"))
    assert code == 2 and "needs a git repository" in err
    code, out, err = run_cli(capsys, monkeypatch, *fix_args(buggy_repo, fix_script, "--branch",
                                                            "main"))
    assert code == 2 and "already exists" in err
    assert (buggy_repo / "calc" / "ops.py").read_text() == OPS_BUGGY  # refused before running


def test_git_commands_that_write_fail_on_the_read_only_git(buggy_repo, tmp_path):
    script = write_script(tmp_path / "s.jsonl", [
        call("shell", command="git add -A && git commit -qm sneaky"),
        call("shell", command="git status --short && git log --oneline"),
        *FIX_TURNS,
    ])
    head = git(buggy_repo, "rev-parse", "HEAD")
    from loopcli.backends.scripted import ScriptedBackend

    trajectory = tmp_path / "t.jsonl"
    result = run_fix(FixConfig(ISSUE, buggy_repo, ScriptedBackend(script), test_cmd=TEST_CMD,
                               limits=Limits(max_steps=10), trajectory=trajectory))
    assert result.status == "resolved"
    assert git(buggy_repo, "rev-parse", "HEAD") == head
    assert git(buggy_repo, "diff", "--cached") == ""
    tools = [e for e in read_events(trajectory) if e["type"] == "tool"]
    assert not tools[0]["ok"] and "Read-only file system" in tools[0]["output"]
    assert tools[1]["ok"] and "initial" in tools[1]["output"]


@pytest.mark.parametrize("policy", ["workspace-write", "danger-full-access"])
def test_the_test_command_finds_python_where_only_python3_is_on_path(policy, buggy_repo,
                                                                   fix_script, tmp_path, capsys,
                                                                   monkeypatch):
    """`python -m pytest` runs with the project's interpreter by absolute path (this one, as
    the project has no venv), not whatever `python` PATH has, or none (exit 127)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("bash", "git", "python3"):
        (bin_dir / name).symlink_to(shutil.which(name, path="/usr/bin:/bin"))
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    code, out, err = run_cli(capsys, monkeypatch, *fix_args(buggy_repo, fix_script, "--json",
                                                            "--sandbox", policy))
    assert code == 0, err
    test = next(e for e in map(json.loads, out.splitlines()) if e["type"] == "test")
    assert code == 0 and test["passed"], test["output"]


@pytest.mark.parametrize("files, expected", [
    ({"pyproject.toml": "[tool.pytest.ini_options]\n"}, "python -m pytest -q"),
    ({"tests/test_a.py": ""}, "python -m pytest -q"),
    ({"package.json": '{"scripts": {"test": "jest"}}'}, "npm test"),
    ({"package.json": '{"scripts": {"test": "echo \\"Error: no test specified\\" && exit 1"}}'},
     None),
    ({"go.mod": "module x\n"}, "go test ./..."),
    ({"Cargo.toml": "[package]\n"}, "cargo test"),
    ({"README.md": "hi"}, None),
])
def test_detect_test_command(files, expected, tmp_path):
    for name, text in files.items():
        put(tmp_path / name, text)
    assert detect_test_command(tmp_path) == expected


def test_detect_prefers_the_projects_venv(tmp_path):
    put(tmp_path / "pytest.ini", "[pytest]\n")
    put(tmp_path / ".venv" / "bin" / "python", "")
    assert detect_test_command(tmp_path) == f"{tmp_path / '.venv' / 'bin' / 'python'} -m pytest -q"
