"""`loopcli fix` keeps work safe: one run per repository, binary changes survive --commit,
SIGTERM leaves a result event."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentkit import FIX_TURNS, ISSUE, OPS_FIXED, TEST_CMD, call, git, read_events, run_cli
from agentkit import write_script
from agentkit import buggy_repo, fix_script, hermetic  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("hermetic")
BINARY = b"\x00\x01\xff\xfe binary \x80\x81\n\x00"


def fix_cmd(repo: Path, script: Path, trajectory: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "loopcli", "fix", ISSUE, "--repo", str(repo), "--backend",
            "scripted", "--model", str(script), "--test-cmd", TEST_CMD, "--trajectory",
            str(trajectory), *extra]


def test_binary_and_non_utf8_changes_survive_commit(buggy_repo, tmp_path, capsys, monkeypatch):
    (buggy_repo / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    git(buggy_repo, "add", "latin.txt")
    git(buggy_repo, "commit", "-q", "-m", "latin-1 file")
    turns = [call("shell", command="printf '\\000\\001\\377\\376 binary \\200\\201\\n\\000' "
                                   "> data.bin && printf 'na\\357ve\\n' >> latin.txt"),
             *FIX_TURNS]
    script = write_script(tmp_path / "s.jsonl", turns)
    code, out, err = run_cli(capsys, monkeypatch, "fix", ISSUE, "--repo", str(buggy_repo),
                             "--backend", "scripted", "--model", str(script), "--test-cmd",
                             TEST_CMD, "--branch", "fix/binary")
    assert code == 0, err
    show = lambda rel: subprocess.run(["git", "show", f"fix/binary:{rel}"], cwd=buggy_repo,
                                      capture_output=True, check=True).stdout
    assert show("data.bin") == BINARY
    assert show("latin.txt") == b"caf\xe9\nna\xefve\n"
    assert show("calc/ops.py").decode() == OPS_FIXED
    assert not (buggy_repo / "data.bin").exists()  # the work tree is put back as it was


def test_two_concurrent_runs_on_one_repository_lose_nothing(buggy_repo, tmp_path):
    # The first run edits a file, then its shell call waits until the second run has ended.
    release = tmp_path / "release"
    wait = f"for i in $(seq 1200); do [ -e {release} ] && break; sleep 0.1; done"
    runs = {}
    for name in ("first", "second"):
        turns = [call("write", path=f"{name}.txt", content=f"{name}\n"),
                 call("shell", command=wait), *FIX_TURNS[1:]]
        script = write_script(tmp_path / f"{name}.jsonl", turns)
        trajectory = tmp_path / f"{name}.trajectory.jsonl"
        runs[name] = subprocess.Popen(fix_cmd(buggy_repo, script, trajectory),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while name == "first" and not trajectory.exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # the first run holds the lock once its trajectory exists
    second_out, second_err = runs["second"].communicate(timeout=120)
    release.touch()
    first_out, first_err = runs["first"].communicate(timeout=120)
    assert runs["first"].returncode == 0, first_err
    assert (buggy_repo / "first.txt").read_text() == "first\n"
    assert (buggy_repo / "calc" / "ops.py").read_text() == OPS_FIXED
    assert runs["second"].returncode == 5, second_err
    assert "another loopcli run" in second_err and "working in" in second_err
    assert "Traceback" not in second_err
    assert not (buggy_repo / "second.txt").exists()


def test_a_second_run_waits_briefly_for_a_run_that_is_ending(buggy_repo, tmp_path):
    from loopcli.tools.repolock import RepoLock

    lock = RepoLock(buggy_repo).acquire()
    script = write_script(tmp_path / "s.jsonl", FIX_TURNS)
    proc = subprocess.Popen(fix_cmd(buggy_repo, script, tmp_path / "t.jsonl"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    lock.release()  # within LOCK_WAIT: the run goes ahead
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert (buggy_repo / "calc" / "ops.py").read_text() == OPS_FIXED


def test_sigterm_leaves_a_result_event_and_exit_143(buggy_repo, tmp_path):
    turns = [call("write", path="partial.txt", content="x\n"), call("shell", command="sleep 60")]
    script = write_script(tmp_path / "s.jsonl", turns)
    trajectory = tmp_path / "t.jsonl"
    proc = subprocess.Popen(fix_cmd(buggy_repo, script, trajectory), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until the shell call is running
        if trajectory.exists() and '"name": "write"' in trajectory.read_text():
            break
        time.sleep(0.1)
    time.sleep(1.0)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert time.monotonic() - started < 20  # the sleeping shell command is killed too
    assert "Traceback" not in err and "terminated by SIGTERM" in err
    last = read_events(trajectory)[-1]
    assert last["type"] == "result" and last["status"] == "terminated"
    assert last["exit_code"] == 143
    assert (buggy_repo / "partial.txt").read_text() == "x\n"  # work so far stays
    # the lock went with the process: a new run starts at once
    from loopcli.tools.repolock import RepoLock
    RepoLock(buggy_repo).acquire().release()


def test_result_events_of_a_normal_run_are_unchanged(buggy_repo, fix_script, capsys,
                                                     monkeypatch):
    code, out, err = run_cli(capsys, monkeypatch, "fix", ISSUE, "--repo", str(buggy_repo),
                             "--backend", "scripted", "--model", str(fix_script),
                             "--test-cmd", TEST_CMD, "--json")
    assert code == 0, err
    result = json.loads(out.splitlines()[-1])
    assert result["type"] == "result" and result["status"] == "resolved"
    assert os.environ.get("XDG_CACHE_HOME")  # the lock file lives in the test's cache
    assert list(Path(os.environ["XDG_CACHE_HOME"], "loopcli", "locks").glob("*.lock"))
