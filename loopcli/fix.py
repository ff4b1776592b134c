"""`loopcli fix`: run the agent headless on a repository until the issue is resolved.

Resolved means the model called finish AND the test command passed (or, with no test command,
the model called finish). The user's branch, index and uncommitted work are never touched:
tools run in the work tree with checkpoints, git commands that change git state are refused,
and `--commit` writes the agent's change (the diff from the run's first checkpoint) onto a new
branch through a temporary index, then puts the work tree back as it was.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
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
TEST_TIMEOUT = 900  # seconds for one run of the test command
TEST_OUTPUT_CHARS = 6000  # of the test output shown to the model (the end, where failures are)
# git subcommands that only read; any other one could move a branch or write the index.
READ_ONLY_GIT = frozenset({"status", "diff", "log", "show", "grep", "blame", "ls-files", "ls-tree",
                           "rev-parse", "describe", "cat-file", "shortlog", "help", "version"})
_GIT_SUBCOMMAND = re.compile(r"(?:^|[\s;&|(`])git((?:\s+-\S+)*)\s+([\w-]+)")
_NPM_PLACEHOLDER = "no test specified"


class FixError(Exception):
    """Bad input to `fix` (issue, repository, options): exit code 2."""


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


def make_backend(kind: str, model: str | None, base_url: str | None) -> Backend:
    """loopcli.backends.factory's backend; its ValueErrors (bad choices, a malformed script)
    are bad input."""
    from loopcli.backends.factory import make_backend as factory

    if kind in ("local", "llama.cpp") and model and not Path(model).exists():
        raise FixError(f"model {model} does not exist; give a .gguf file (or a checkpoint directory for local)")
    try:
        return factory(kind, model=model, base_url=base_url)
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


def run_tests(toolbox: Toolbox, cmd: str, timeout: float = TEST_TIMEOUT) -> TestRun:
    from loopcli.tools import shell

    started = time.monotonic()
    try:
        result = shell.run(toolbox.workspace, cmd, timeout=timeout, max_output=TEST_OUTPUT_CHARS)
    except ToolError as exc:  # e.g. refused as interactive
        return TestRun(False, None, str(exc), round(time.monotonic() - started, 3))
    return TestRun(result.exit_code == 0, result.exit_code, result.render(),
                   round(time.monotonic() - started, 3))


# ---- git ----------------------------------------------------------------------------------


def refuse_git_writes(name: str, arguments: dict | str) -> str | None:
    """A refusal for shell commands that run git subcommands able to change git state."""
    if name != "shell":
        return None
    command = arguments.get("command", "") if isinstance(arguments, dict) else str(arguments)
    for match in _GIT_SUBCOMMAND.finditer(command):
        if match.group(1).strip() or match.group(2) not in READ_ONLY_GIT:
            return (f"Refused: `git {match.group(2)}` could change the user's branch, index or "
                    "history, which this session must not touch. Only edit files; loopcli "
                    "records your change itself. Read-only git commands are allowed: "
                    f"{', '.join(sorted(READ_ONLY_GIT))} (without options before the subcommand).")
    return None


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


def commit_diff(repo: Path, diff: str, branch: str, message: str) -> str:
    """Commit `diff` on top of HEAD as new branch `branch`; the user's index and tree stay as is."""
    top = Path(_git(repo, "rev-parse", "--show-toplevel").stdout.strip())
    prefix = _git(repo, "rev-parse", "--show-prefix").stdout.strip()
    with tempfile.TemporaryDirectory(prefix="loopcli-index-") as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        if _git(top, "var", "GIT_AUTHOR_IDENT", check=False).returncode:
            env.update(GIT_AUTHOR_NAME="loopcli", GIT_AUTHOR_EMAIL="loopcli@localhost",
                       GIT_COMMITTER_NAME="loopcli", GIT_COMMITTER_EMAIL="loopcli@localhost")
        _git(top, "read-tree", "HEAD", env=env)
        directory = [f"--directory={prefix}"] if prefix else []
        applied = _git(top, "apply", "--cached", *directory, "-", env=env, stdin=diff, check=False)
        if applied.returncode:
            raise FixError("the agent's change does not apply to HEAD (it may overlap uncommitted "
                           f"changes): {applied.stderr.strip()}")
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


def default_trajectory(repo: Path) -> Path:
    from loopcli.agent import user_cache_dir

    name = time.strftime(f"fix-%Y%m%d-%H%M%S-{os.getpid()}.jsonl")
    return user_cache_dir("trajectories", repo) / name


def run_fix(config: FixConfig, emit: Emit | None = None) -> FixResult:
    """Run the agent on config.repo; every event goes to the trajectory, then to `emit`."""
    from loopcli.agent import Agent, Limits, Trajectory, build_system_prompt
    from loopcli.prompts import TASK_TEMPLATE
    from loopcli.tools.toolbox import Toolbox

    repo = config.repo
    limits = config.limits or Limits()
    if config.branch:
        check_branch(repo, config.branch)
    toolbox = Toolbox(repo, store_dir=config.store_dir)
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
                "limits": vars(limits), "issue": config.issue, "system_prompt": prompt})
        agent = Agent(config.backend, toolbox, prompt, limits=limits, record=record,
                      guard=refuse_git_writes)
        if config.test_cmd:
            agent.verify = _verifier(toolbox, config.test_cmd, agent.emit)
        try:
            run = agent.run(TASK_TEMPLATE.format(issue=config.issue))
        except KeyboardInterrupt:
            record({"type": "result", "status": "interrupted", "exit_code": 130})
            raise
        diff = toolbox.checkpoints.diff(start)
        result = FixResult(run.status, EXIT_CODES[run.status], run.message, diff, run, path)
        if config.branch and diff:
            _commit(toolbox, start, config, result, record)
        record(_result_event(result))
    return result


def _verifier(toolbox: Toolbox, cmd: str, emit: Callable[..., None]):
    from loopcli.prompts import TESTS_FAILED

    def verify() -> tuple[bool, str]:
        test = run_tests(toolbox, cmd)
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
        result.commit = commit_diff(config.repo, result.diff, config.branch, message)
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
        return f"loopcli fix in {event['repo']} with {event['backend']}; test command: {test}"
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
