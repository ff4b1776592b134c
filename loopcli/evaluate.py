"""`loopcli eval`: SWE-bench-shaped tasks, each run in a throwaway copy, no Docker.

A task is a folder:

    repo/            the project as the user has it (a small git-free tree)
    issue.md         the issue, as a user would write it
    task.json        {"fail_to_pass": [ids], "pass_to_pass": [ids], "test_cmd": "python -m pytest"}
    test_patch/      optional: files laid over the repository before grading only (the tests
                     that decide the task, hidden from the agent as in SWE-bench)
    solution.jsonl   a reference solution for the scripted backend

Per task: a copy with the test patch must fail every FAIL_TO_PASS test and pass every
PASS_TO_PASS one, or the task is reported broken. Then the agent runs (`loopcli fix`) on a
fresh copy made a git repository; the test files named by the ids are put back from the task
(and the test patch laid over) so that edited tests do not count; the task is resolved when
every listed test passes. Test ids are pytest node ids, read from pytest's `-rA` summary.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from loopcli.fix import FixConfig, FixError, make_backend, run_fix

if TYPE_CHECKING:
    from loopcli.agent import Limits
    from loopcli.backends.base import Backend

GRADE_TIMEOUT = 300  # seconds for one grading run of a task's tests
_PASSED = re.compile(r"^PASSED (\S+)", re.M)
_COPY_IGNORE = shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.pyc")
_GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_AUTHOR_NAME": "loopcli-eval", "GIT_AUTHOR_EMAIL": "eval@localhost",
            "GIT_COMMITTER_NAME": "loopcli-eval", "GIT_COMMITTER_EMAIL": "eval@localhost"}


@dataclass
class Task:
    name: str
    root: Path
    issue: str
    fail_to_pass: list[str]
    pass_to_pass: list[str]
    test_cmd: str

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    @property
    def test_ids(self) -> list[str]:
        return self.fail_to_pass + self.pass_to_pass


@dataclass
class TaskResult:
    name: str
    outcome: str  # resolved, unresolved, broken
    agent_status: str | None = None  # the fix run's status
    steps: int = 0
    turns_well_formed: int = 0
    tokens: int = 0
    seconds: float = 0.0  # the whole task: checks, agent and grading
    tests: dict[str, bool] = field(default_factory=dict)  # test id -> passed after the run
    message: str = ""


@dataclass
class Report:
    results: list[TaskResult]

    def as_dict(self) -> dict:
        valid = [r for r in self.results if r.outcome != "broken"]
        turns = sum(r.steps for r in valid)
        return {
            "tasks": len(self.results),
            "broken": len(self.results) - len(valid),
            "resolved": sum(r.outcome == "resolved" for r in valid),
            "resolved_rate": _ratio(sum(r.outcome == "resolved" for r in valid), len(valid)),
            "well_formed_rate": _ratio(sum(r.turns_well_formed for r in valid), turns),
            "mean_steps": _ratio(turns, len(valid)),
            "mean_seconds": _ratio(sum(r.seconds for r in valid), len(valid)),
            "task_seconds": round(sum(r.seconds for r in self.results), 2),
            "results": [asdict(r) for r in self.results],
        }

    @property
    def exit_code(self) -> int:
        """3 if the backend failed on a task, 1 if a task is broken, else 0."""
        if any(r.agent_status == "backend_error" for r in self.results):
            return 3
        return 1 if any(r.outcome == "broken" for r in self.results) else 0


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


# ---- loading ------------------------------------------------------------------------------


def load_tasks(path: Path) -> list[Task]:
    """One task folder, or a folder of task folders (sorted by name)."""
    if (path / "task.json").is_file():
        return [load_task(path)]
    if not path.is_dir():
        raise FixError(f"tasks folder {path} does not exist")
    tasks = [load_task(p) for p in sorted(path.iterdir()) if (p / "task.json").is_file()]
    if not tasks:
        raise FixError(f"no task in {path}: a task is a folder with task.json, issue.md and repo/")
    return tasks


def load_task(root: Path) -> Task:
    try:
        spec = json.loads((root / "task.json").read_text(encoding="utf-8"))
        issue = (root / "issue.md").read_text(encoding="utf-8").strip()
    except (OSError, ValueError) as exc:
        raise FixError(f"task {root.name}: {exc}") from None
    if not isinstance(spec, dict):
        raise FixError(f"task {root.name}: task.json must hold a JSON object")
    ids = {key: spec.get(key) for key in ("fail_to_pass", "pass_to_pass")}
    if not all(isinstance(v, list) and all(isinstance(i, str) for i in v) for v in ids.values()):
        raise FixError(f"task {root.name}: task.json needs fail_to_pass and pass_to_pass lists "
                       "of pytest test ids")
    if not ids["fail_to_pass"] or not isinstance(spec.get("test_cmd"), str):
        raise FixError(f"task {root.name}: task.json needs a non-empty fail_to_pass and a test_cmd")
    if not issue or not (root / "repo").is_dir():
        raise FixError(f"task {root.name}: needs a non-empty issue.md and a repo/ folder")
    return Task(root.name, root, issue, ids["fail_to_pass"], ids["pass_to_pass"], spec["test_cmd"])


def task_backends(kind: str, model: str | None, base_url: str | None) -> Callable[[Task], Backend]:
    """A backend per task: a scripted one from the task's folder, or one shared backend."""
    if kind != "scripted":
        shared = make_backend(kind, model, base_url)
        return lambda task: shared
    script = model or "solution.jsonl"
    if Path(script).is_file():
        return lambda task: make_backend("scripted", script, None)
    return lambda task: make_backend("scripted", str(task.root / script), None)


# ---- running ------------------------------------------------------------------------------


def evaluate(tasks: list[Task], backends: Callable[[Task], Backend], limits: Limits,
             out_dir: Path | None = None, on_result: Callable[[TaskResult], None] | None = None,
             jobs: int = 1) -> Report:
    """Run every task (`jobs` at a time); results in the order of `tasks`."""
    with tempfile.TemporaryDirectory(prefix="loopcli-eval-") as tmp, _task_environment():
        def one(task: Task) -> TaskResult:
            result = run_task(task, backends, limits, Path(tmp) / task.name, out_dir)
            if on_result:
                on_result(result)
            return result

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(one, tasks))
    report = Report(results)
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return report


def run_task(task: Task, backends: Callable[[Task], Backend], limits: Limits, work: Path,
             out_dir: Path | None = None) -> TaskResult:
    started = time.monotonic()
    problem = check_task(task, work / "check")
    if problem:
        return TaskResult(task.name, "broken", message=problem,
                          seconds=round(time.monotonic() - started, 2))
    repo = _checkout(task, work / "repo")
    trajectory = (out_dir or work) / f"{task.name}.jsonl"
    fixed = run_fix(FixConfig(task.issue, repo, backends(task), test_cmd=task.test_cmd,
                              limits=limits, trajectory=trajectory,
                              store_dir=work / "checkpoints", map_cache=work / "repomap"))
    tests = grade(task, repo)
    run = fixed.run
    return TaskResult(task.name, "resolved" if all(tests.values()) else "unresolved",
                      agent_status=fixed.status, steps=run.steps,
                      turns_well_formed=run.turns_well_formed, tokens=run.tokens,
                      seconds=round(time.monotonic() - started, 2), tests=tests,
                      message=fixed.message)


def check_task(task: Task, work: Path) -> str | None:
    """Why the task is broken (a FAIL_TO_PASS test passes unfixed, ...), or None."""
    shutil.copytree(task.repo, work, ignore=_COPY_IGNORE)
    tests = grade(task, work)
    passing = [t for t in task.fail_to_pass if tests[t]]
    failing = [t for t in task.pass_to_pass if not tests[t]]
    problems = []
    if passing:
        problems.append(f"FAIL_TO_PASS tests pass before the fix: {', '.join(passing)}")
    if failing:
        problems.append(f"PASS_TO_PASS tests fail before the fix: {', '.join(failing)}")
    return "; ".join(problems) or None


def grade(task: Task, repo: Path) -> dict[str, bool]:
    """Put the task's test files back, run the listed tests; test id -> passed."""
    for test_file in {tid.split("::")[0] for tid in task.test_ids}:
        original = task.repo / test_file
        if original.is_file():
            shutil.copyfile(original, repo / test_file)
    if (task.root / "test_patch").is_dir():
        shutil.copytree(task.root / "test_patch", repo, dirs_exist_ok=True, ignore=_COPY_IGNORE)
    cmd = f"{task.test_cmd} -rA -p no:cacheprovider {' '.join(map(shlex.quote, task.test_ids))}"
    try:
        proc = subprocess.run(cmd, shell=True, cwd=repo, capture_output=True, text=True,
                              timeout=GRADE_TIMEOUT, stdin=subprocess.DEVNULL)
        passed = set(_PASSED.findall(proc.stdout))
    except subprocess.TimeoutExpired:
        passed = set()
    return {tid: tid in passed for tid in task.test_ids}


def _checkout(task: Task, repo: Path) -> Path:
    """The task's repository as a fresh git repository with one commit."""
    shutil.copytree(task.repo, repo, ignore=_COPY_IGNORE)
    env = {**os.environ, **_GIT_ENV}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "task"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)
    with open(repo / ".git" / "info" / "exclude", "a", encoding="utf-8") as exclude:
        exclude.write("__pycache__/\n.pytest_cache/\n")
    return repo


@contextlib.contextmanager
def _task_environment():
    """This interpreter's `python` first on PATH (it has pytest), no bytecode files, and no
    pytest plugins: the tasks use plain pytest, and loading the plugins installed alongside
    loopcli (hypothesis, ...) costs more than a task's tests take to run."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    changes = {"PATH": path, "PYTHONDONTWRITEBYTECODE": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    saved = {key: os.environ.get(key) for key in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def render_report(report: Report) -> str:
    """A plain-text table: one row per task, then the totals."""
    data = report.as_dict()
    rows = [f"{'task':<28} {'outcome':<11} {'agent':<14} {'steps':>5} {'well-formed':>11} "
            f"{'seconds':>8}"]
    for r in report.results:
        rows.append(f"{r.name:<28} {r.outcome:<11} {r.agent_status or '-':<14} {r.steps:>5} "
                    f"{r.turns_well_formed:>5}/{r.steps:<5} {r.seconds:>8.1f}")
        if r.outcome == "broken":
            rows.append(f"  broken: {r.message}")
    rate = data["resolved_rate"]
    well = data["well_formed_rate"]
    rows.append(f"resolved {data['resolved']}/{data['tasks'] - data['broken']}"
                f" ({'-' if rate is None else f'{rate:.0%}'}), well-formed turns "
                f"{'-' if well is None else f'{well:.0%}'}, broken {data['broken']}, "
                f"{data['task_seconds']:.1f} s over all tasks")
    return "\n".join(rows)
