"""`loopcli fix`: run the agent headless on a repository until the issue is resolved.

Resolved means the model called finish AND the test command passed (or, with no test command,
the model called finish). The user's branch, index and uncommitted work are never touched:
tools run in the work tree with checkpoints, the model's commands and the test command run in
the sandbox of the chosen policy (tools/environment.py; `.git` is read-only inside it), and
`--commit` writes the agent's change (the diff from the run's first checkpoint) onto a new
branch through a temporary index, then puts the work tree back as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from loopcli.tools.errors import ToolError

if TYPE_CHECKING:  # the agent's modules load when a run starts, not with the CLI
    from loopcli.agent import Limits, RunResult
    from loopcli.backends.base import Backend
    from loopcli.tools.toolbox import Toolbox

EXIT_CODES = {"resolved": 0, "loop": 1, "backend_error": 3, "format_errors": 3, "limit": 4}
EXIT_BUSY = 5  # another run holds the repository's lock
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # Ctrl-C, SIGTERM (128 + signal number)
LOCK_WAIT = 3.0  # seconds a second run waits for the repository's lock before refusing
TEST_TIMEOUT = 900  # seconds for one run of the test command
TEST_OUTPUT_CHARS = 6000  # of the test output shown to the model (the end, where failures are)
_PYTHON_WORD = re.compile(r"^\s*python3?(?=\s|$)")
_NPM_PLACEHOLDER = "no test specified"


class FixError(Exception):
    """Bad input to `fix` (issue, repository, options): exit code 2."""


class Terminated(SystemExit):
    """SIGTERM arrived: unwinds the run like Ctrl-C (the result is recorded), then exits 143."""

    def __init__(self):
        super().__init__(EXIT_TERMINATED)


Emit = Callable[[dict], None]


@dataclass
class FixConfig:
    issue: str
    repo: Path
    backend: Backend
    model: str | None = None
    test_cmd: str | None = None
    limits: Limits | None = None  # default: Limits()
    branch: str | None = None  # commit the change onto this new branch
    trajectory: Path | None = None
    store_dir: Path | None = None  # checkpoint store (default: the user's cache)
    map_cache: Path | None = None  # repo map tag cache (default: the user's cache)
    sandbox: str = "workspace-write"  # policy for commands: tools.environment.POLICIES
    network: bool = False  # commands may reach the network (inside the sandbox)


@dataclass
class FixResult:
    status: str
    exit_code: int
    message: str
    diff: str
    run: RunResult
    trajectory: Path
    branch: str | None = None
    commit: str | None = None


@dataclass
class TestRun:
    passed: bool
    exit_code: int | None
    output: str
    seconds: float


# ---- input --------------------------------------------------------------------------------


def read_issue(arg: str, stdin=None) -> str:
    """ISSUE as text, `@file` or `-` (stdin); never empty."""
    if arg == "-":
        text, source = (stdin or sys.stdin).read(), "stdin"
    elif arg.startswith("@"):
        path = Path(arg[1:])
        try:
            text, source = path.read_text(encoding="utf-8"), str(path)
        except FileNotFoundError:
            raise FixError(f"issue file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise FixError(f"cannot read issue file {path}: {exc}") from None
    else:
        text, source = arg, "the ISSUE argument"
    if not text.strip():
        raise FixError(f"the issue is empty ({source}); describe what is wrong")
    return text.strip()


def check_repo(repo: Path) -> Path:
    if not repo.is_dir():
        raise FixError(f"repository {repo} is not a directory; give --repo DIR")
    return repo.resolve()


def make_backend(kind: str, model: str | None, base_url: str | None,
                 ctx: int | None = None) -> Backend:
    """loopcli.backends.factory's backend; its ValueErrors (bad choices, a malformed script)
    are bad input. `ctx`: the context length in tokens (None: the backend's default)."""
    from loopcli.backends.factory import make_backend as factory

    if kind in ("local", "llama.cpp") and model and not Path(model).exists():
        raise FixError(f"model {model} does not exist; give a .gguf file (or a checkpoint directory for local)")
    gguf_file = model and (kind == "llama.cpp" or Path(model).suffix == ".gguf" or not Path(model).is_dir())
    if kind in ("local", "llama.cpp") and gguf_file:
        from loopcli.runtime.gguf_load import check_gguf

        check_gguf(model)  # a corrupt file is bad input (exit 2), not a backend failure
    try:
        return factory(kind, model=model, base_url=base_url, ctx=ctx)
    except ValueError as exc:
        raise FixError(str(exc)) from None


# ---- tests --------------------------------------------------------------------------------


def detect_test_command(repo: Path) -> str | None:
    """The project's test command: pytest, npm, go or cargo, by the files present."""
    if _uses_pytest(repo):
        for venv in (".venv", "venv"):
            python = repo / venv / "bin" / "python"
            if python.is_file():
                return f"{shlex.quote(str(python))} -m pytest -q"
        return "python -m pytest -q"
    if _npm_test_script(repo):
        return "npm test"
    if (repo / "go.mod").is_file():
        return "go test ./..."
    if (repo / "Cargo.toml").is_file():
        return "cargo test"
    return None


def _uses_pytest(repo: Path) -> bool:
    markers = {"pytest.ini": "", "conftest.py": "", "tox.ini": "[pytest]",
               "setup.cfg": "[tool:pytest]", "pyproject.toml": "[tool.pytest"}
    for name, needle in markers.items():
        path = repo / name
        if path.is_file() and needle in path.read_text(encoding="utf-8", errors="replace"):
            return True
    for folder in (repo / "tests", repo / "test", repo):
        if folder.is_dir() and (any(folder.glob("test_*.py")) or any(folder.glob("*_test.py"))):
            return True
    return False


def _npm_test_script(repo: Path) -> bool:
    try:
        scripts = json.loads((repo / "package.json").read_text(encoding="utf-8")).get("scripts", {})
    except (OSError, ValueError, AttributeError):
        return False
    test = scripts.get("test", "") if isinstance(scripts, dict) else ""
    return bool(test) and _NPM_PLACEHOLDER not in test


def resolve_python(cmd: str, repo: Path) -> str:
    """A command starting with `python` or `python3` with the project's interpreter by absolute
    path instead (its venv, else this one), so that it runs where only `python3` is on PATH."""
    from loopcli.tools.environment import project_python

    return _PYTHON_WORD.sub(lambda m: shlex.quote(str(project_python(repo))), cmd, count=1)


def run_tests(toolbox: Toolbox, cmd: str, timeout: float = TEST_TIMEOUT) -> TestRun:
    """The test command, in the toolbox's environment (the sandbox of the run's policy)."""
    from loopcli.tools import shell

    started = time.monotonic()
    try:
        result = shell.run(toolbox.workspace, resolve_python(cmd, toolbox.workspace.root),
                           timeout=timeout, max_output=TEST_OUTPUT_CHARS,
                           environment=toolbox.environment)
    except ToolError as exc:  # e.g. refused as interactive
        return TestRun(False, None, str(exc), round(time.monotonic() - started, 3))
    return TestRun(result.exit_code == 0, result.exit_code, result.render(),
                   round(time.monotonic() - started, 3))


# ---- git ----------------------------------------------------------------------------------


def _git(repo: Path, *args: str, env: dict | None = None, stdin: str | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["git", *args], cwd=repo, env=env or os.environ.copy(), input=stdin,
                          capture_output=True, text=True)
    if check and proc.returncode:
        raise FixError(f"git {args[0]} failed in {repo}: {proc.stderr.strip()}")
    return proc


def default_branch() -> str:
    return time.strftime("loopcli/fix-%Y%m%d-%H%M%S")


def check_branch(repo: Path, branch: str) -> None:
    """Before the run: --commit needs a git repository with a commit and a new branch name."""
    if _git(repo, "rev-parse", "--is-inside-work-tree", check=False).stdout.strip() != "true":
        raise FixError(f"--commit needs a git repository; {repo} is not inside one")
    if _git(repo, "rev-parse", "--verify", "--quiet", "HEAD", check=False).returncode:
        raise FixError(f"--commit needs a commit to build on; the repository at {repo} has none")
    if _git(repo, "check-ref-format", "--branch", branch, check=False).returncode:
        raise FixError(f"{branch!r} is not a valid branch name")
    exists = _git(repo, "show-ref", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
    if exists.returncode == 0:
        raise FixError(f"branch {branch} already exists; choose another name with --branch")


def commit_diff(repo: Path, patch: bytes, branch: str, message: str) -> str:
    """Commit `patch` (`git diff --binary` bytes) on top of HEAD as new branch `branch`; the
    user's index and tree stay as is."""
    top = Path(_git(repo, "rev-parse", "--show-toplevel").stdout.strip())
    prefix = _git(repo, "rev-parse", "--show-prefix").stdout.strip()
    with tempfile.TemporaryDirectory(prefix="loopcli-index-") as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        if _git(top, "var", "GIT_AUTHOR_IDENT", check=False).returncode:
            env.update(GIT_AUTHOR_NAME="loopcli", GIT_AUTHOR_EMAIL="loopcli@localhost",
                       GIT_COMMITTER_NAME="loopcli", GIT_COMMITTER_EMAIL="loopcli@localhost")
        _git(top, "read-tree", "HEAD", env=env)
        directory = [f"--directory={prefix}"] if prefix else []
        # bytes in: binary files and non-UTF-8 text must reach the commit unchanged
        applied = subprocess.run(["git", "apply", "--cached", *directory, "-"], cwd=top, env=env,
                                 input=patch, capture_output=True)
        if applied.returncode:
            raise FixError("the agent's change does not apply to HEAD (it may overlap uncommitted "
                           f"changes): {applied.stderr.decode('utf-8', 'replace').strip()}")
        tree = _git(top, "write-tree", env=env).stdout.strip()
        head = _git(top, "rev-parse", "HEAD").stdout.strip()
        commit = _git(top, "commit-tree", tree, "-p", head, "-m", message, env=env).stdout.strip()
    _git(top, "update-ref", f"refs/heads/{branch}", commit, "")  # "": only if it does not exist
    return commit


def restore_start(toolbox: Toolbox, start: str) -> None:
    """Undo every checkpoint, so that the work tree is as it was at checkpoint `start`."""
    while toolbox.checkpoints.list():
        try:
            toolbox.checkpoints.undo()
        except ToolError:  # "nothing to undo": the tree matches every checkpoint left
            break
    if toolbox.checkpoints.diff(start):
        raise FixError("the work tree could not be put back as it was before the run")


# ---- the run ------------------------------------------------------------------------------


def make_environment(repo: Path, policy: str, network: bool):
    """Where the model's commands run for `policy`; FixError (exit 2) when it needs a sandbox
    that cannot be made here: never silently unconfined."""
    from loopcli.tools.environment import SandboxError
    from loopcli.tools.environment import make_environment as make

    try:
        return make(repo, policy, network)
    except ValueError as exc:
        raise FixError(str(exc)) from None
    except SandboxError as exc:
        raise FixError(f"cannot confine the model's commands: {exc}. Fix that, or opt out with "
                       "--sandbox danger-full-access (commands then run with all your "
                       "permissions, files, credentials and network)") from None


def default_trajectory(repo: Path) -> Path:
    from loopcli.agent import user_cache_dir

    name = time.strftime(f"fix-%Y%m%d-%H%M%S-{os.getpid()}.jsonl")
    return user_cache_dir("trajectories", repo) / name


def run_fix(config: FixConfig, emit: Emit | None = None) -> FixResult:
    """Run the agent on config.repo; every event goes to the trajectory, then to `emit`.

    Holds the repository's lock throughout (RepoBusy when another run keeps it for LOCK_WAIT
    seconds); SIGTERM ends the run like Ctrl-C, with a result event, as Terminated.
    """
    from loopcli.tools.repolock import RepoLock

    with RepoLock(config.repo).acquire(wait=LOCK_WAIT), _sigterm_raises():
        return _run_fix(config, emit)


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM raises Terminated in the main thread (once: a second one is ignored while the
    run records its end); other threads cannot take signals and run unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_fix(config: FixConfig, emit: Emit | None = None) -> FixResult:
    from loopcli.agent import Agent, Limits, Trajectory, build_system_prompt
    from loopcli.prompts import TASK_TEMPLATE
    from loopcli.tools.toolbox import Toolbox

    repo = config.repo
    limits = config.limits or Limits()
    if config.branch:
        check_branch(repo, config.branch)
    toolbox = Toolbox(repo, store_dir=config.store_dir,
                      environment=make_environment(repo, config.sandbox, config.network))
    start = toolbox.checkpoints.snapshot("start of loopcli fix")
    prompt = build_system_prompt(toolbox, config.backend, config.issue, config.test_cmd,
                                 config.map_cache)
    path = config.trajectory or default_trajectory(repo)
    with Trajectory(path) as trajectory:
        def record(event: dict) -> None:
            trajectory.write(event)
            if emit:
                emit(event)

        record({"type": "start", "repo": str(repo), "backend": config.backend.name,
                "model": config.model, "test_cmd": config.test_cmd, "trajectory": str(path),
                "sandbox": config.sandbox, "network": config.network,
                "limits": vars(limits), "issue": config.issue, "system_prompt": prompt})
        agent = Agent(config.backend, toolbox, prompt, limits=limits, record=record)
        if config.test_cmd:
            agent.verify = _verifier(toolbox, config.test_cmd, agent.emit, agent.time_left)
        try:
            run = agent.run(TASK_TEMPLATE.format(issue=config.issue))
            diff = toolbox.checkpoints.diff(start)
            result = FixResult(run.status, EXIT_CODES[run.status], run.message, diff, run, path)
            if config.branch and diff:
                _commit(toolbox, start, config, result, record)
        except (KeyboardInterrupt, Terminated) as exc:
            stop = ("terminated", EXIT_TERMINATED) if isinstance(exc, Terminated) \
                else ("interrupted", EXIT_INTERRUPTED)
            record({"type": "result", "status": stop[0], "exit_code": stop[1], "resolved": False,
                    "message": "stopped by SIGTERM" if stop[1] == EXIT_TERMINATED
                    else "stopped by Ctrl-C", "trajectory": str(path)})
            raise
        record(_result_event(result))
    return result


def _verifier(toolbox: Toolbox, cmd: str, emit: Callable[..., None],
              time_left: Callable[[], float | None] = lambda: None):
    from loopcli.prompts import TESTS_FAILED

    def verify() -> tuple[bool, str]:
        left = time_left()  # --max-time bounds the test run too
        timeout = TEST_TIMEOUT if left is None else max(1, min(TEST_TIMEOUT, left))
        test = run_tests(toolbox, cmd, timeout)
        emit("test", cmd=cmd, passed=test.passed, exit_code=test.exit_code,
             seconds=test.seconds, output=test.output)
        tail = test.output[-TEST_OUTPUT_CHARS:]
        return test.passed, TESTS_FAILED.format(cmd=cmd, code=test.exit_code, output=tail)
    return verify


def _commit(toolbox: Toolbox, start: str, config: FixConfig, result: FixResult,
            record: Emit) -> None:
    """Commit the change onto config.branch, then take it out of the work tree."""
    title = config.issue.splitlines()[0][:72]
    state = "resolved" if result.status == "resolved" else f"NOT resolved ({result.status})"
    message = f"loopcli fix: {title}\n\n{result.message}\n\nStatus: {state}\n"
    try:
        patch = toolbox.checkpoints.patch(start)
        result.commit = commit_diff(config.repo, patch, config.branch, message)
        result.branch = config.branch
        record({"type": "commit", "branch": config.branch, "commit": result.commit})
        restore_start(toolbox, start)
    except FixError as exc:
        where = (f"it is committed on {config.branch}" if result.commit
                 else "it is left in the work tree")
        record({"type": "error", "message": f"{exc}; {where}"})
        result.exit_code = result.exit_code or 1
        result.message = f"{result.message}; {exc}; {where}"


def _result_event(result: FixResult) -> dict:
    run = result.run
    return {"type": "result", "status": result.status, "exit_code": result.exit_code,
            "resolved": result.status == "resolved", "message": result.message,
            "limit": run.limit, "steps": run.steps, "tokens": run.tokens, "seconds": run.seconds,
            "turns_well_formed": run.turns_well_formed, "diff": result.diff,
            "branch": result.branch, "commit": result.commit, "trajectory": str(result.trajectory)}


def progress_line(event: dict) -> str | None:
    """One line of rich markup for stderr, or None for events not worth a line."""
    from rich.markup import escape

    kind = event["type"]
    step = f"[dim]step {event.get('step', 0):>3}[/]"
    if kind == "start":
        test = event["test_cmd"] or "none (finish alone resolves)"
        sandbox = event.get("sandbox", "?") + (" with network" if event.get("network") else "")
        return (f"loopcli fix in {event['repo']} with {event['backend']}; test command: {test}; "
                f"sandbox: {sandbox}")
    if kind == "model" and event["prose"].strip():
        return f"{step} [dim]{escape(event['prose'].strip().splitlines()[0][:120])}[/]"
    if kind == "tool":
        mark = "[green]ok[/]" if event["ok"] else "[red]failed[/]"
        args = json.dumps(event["arguments"], ensure_ascii=False)
        return f"{step} {event['name']} {escape(args[:100])} {mark}"
    if kind == "format_error":
        return f"{step} [yellow]format error[/]: {escape(event['errors'][0].splitlines()[0])}"
    if kind in ("nudge", "compaction", "limit", "error"):
        detail = event.get("message") or event.get("reason") or event.get("stage")
        return f"{step} [yellow]{kind}[/]: {escape(str(detail))}"
    if kind == "test":
        failed = f"[red]failed (exit {event['exit_code']})[/]"
        mark = "[green]passed[/]" if event["passed"] else failed
        return f"{step} tests {mark} in {event['seconds']:.1f} s"
    if kind == "progress":
        return f"{step} [dim]{event['stage']} {event['done']}/{event['total']} tokens[/]"
    if kind == "commit":
        return f"committed {event['commit'][:12]} on branch {event['branch']}"
    return None


class MeteredBackend:
    """A backend whose replies show live on a terminal while they stream: a transient status
    line on stderr with the text pieces received (one per token on llama.cpp, the local runtime
    and most servers) and their rate, cleared when the reply ends, so progress lines stay clean."""

    def __init__(self, backend: Backend, console):
        self.backend = backend
        self.name = backend.name
        self.console = console

    @property
    def context_window(self) -> int:
        return self.backend.context_window

    def count_tokens(self, text: str) -> int:
        return self.backend.count_tokens(text)

    def stream(self, messages: list[dict], tools: list[dict]):
        from loopcli.backends.base import TextDelta

        started = time.monotonic()
        first, tokens = None, 0
        with self.console.status("[dim]model: reading the prompt[/]") as status:
            for event in self.backend.stream(messages, tools):
                if isinstance(event, TextDelta):
                    tokens += 1
                    now = time.monotonic()
                    first = first or now
                    rate = (tokens - 1) / (now - first) if now > first else 0.0
                    status.update(f"[dim]model: {tokens} tokens, {rate:.1f} tok/s "
                                  f"(first after {first - started:.1f} s)[/]")
                yield event
