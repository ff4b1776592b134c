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
fresh copy made a git repository; the task is resolved when every listed test passes.

Grading is a trust boundary: the agent's code is not trusted to report on itself. Its diff is
applied to a fresh copy of the task's repository; the test files named by the ids and every
test-configuration file (conftest.py, pytest.ini, tox.ini, setup.cfg, pyproject.toml...) are
put back as the task has them (those the task lacks are removed) and the test patch is laid
over; pytest runs with this interpreter by absolute path with `-P` (the repository goes on
sys.path after the standard library and site-packages, so it cannot shadow pytest), plugin
autoloading off, in the sandbox of the run's policy; outcomes come from a JUnit XML report
written outside the repository and must agree with pytest's exit code. Test ids are pytest
node ids.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from loopcli.fix import FixConfig, FixError, make_backend, make_environment, run_fix

if TYPE_CHECKING:
    from loopcli.agent import Limits
    from loopcli.backends.base import Backend

GRADE_TIMEOUT = 300  # seconds for one grading run of a task's tests
# Files that configure pytest (or plug code into it): graded as the task has them, wherever
# they are in the tree.
TEST_CONFIG_FILES = frozenset({"conftest.py", "pytest.ini", ".pytest.ini", "pytest.toml",
                               ".pytest.toml", "tox.ini", "setup.cfg", "pyproject.toml"})
# pytest with the repository (the working directory) last on sys.path: run with -P, the
# repository is not on it when pytest is imported, and cannot shadow it or the stdlib.
_PYTEST_BOOT = ("import os, sys, pytest; sys.path.append(os.getcwd()); "
                "raise SystemExit(int(pytest.main(sys.argv[1:])))")
_GRADE_ENV = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONDONTWRITEBYTECODE": "1"}
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
             jobs: int = 1, sandbox: str = "workspace-write", network: bool = False) -> Report:
    """Run every task (`jobs` at a time); results in the order of `tasks`. The agent's
    commands and the grading run in the sandbox of policy `sandbox`."""
    with tempfile.TemporaryDirectory(prefix="loopcli-eval-") as tmp, _task_environment():
        def one(task: Task) -> TaskResult:
            result = run_task(task, backends, limits, Path(tmp) / task.name, out_dir,
                              sandbox=sandbox, network=network)
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
             out_dir: Path | None = None, sandbox: str = "workspace-write",
             network: bool = False) -> TaskResult:
    started = time.monotonic()
    problem = check_task(task, work / "check", sandbox)
    if problem:
        return TaskResult(task.name, "broken", message=problem,
                          seconds=round(time.monotonic() - started, 2))
    repo = _checkout(task, work / "repo")
    trajectory = (out_dir or work) / f"{task.name}.jsonl"
    fixed = run_fix(FixConfig(task.issue, repo, backends(task), test_cmd=task.test_cmd,
                              limits=limits, trajectory=trajectory,
                              store_dir=work / "checkpoints", map_cache=work / "repomap",
                              sandbox=sandbox, network=network))
    tests, note = grade(task, work / "grade", fixed.diff, sandbox)
    run = fixed.run
    return TaskResult(task.name, "resolved" if all(tests.values()) else "unresolved",
                      agent_status=fixed.status, steps=run.steps,
                      turns_well_formed=run.turns_well_formed, tokens=run.tokens,
                      seconds=round(time.monotonic() - started, 2), tests=tests,
                      message="; ".join(filter(None, [fixed.message, note])))


def check_task(task: Task, work: Path, sandbox: str = "workspace-write") -> str | None:
    """Why the task is broken (a FAIL_TO_PASS test passes unfixed, ...), or None."""
    tests, note = grade(task, work, None, sandbox)
    if note:
        return f"the unfixed copy cannot be graded: {note}"
    passing = [t for t in task.fail_to_pass if tests[t]]
    failing = [t for t in task.pass_to_pass if not tests[t]]
    problems = []
    if passing:
        problems.append(f"FAIL_TO_PASS tests pass before the fix: {', '.join(passing)}")
    if failing:
        problems.append(f"PASS_TO_PASS tests fail before the fix: {', '.join(failing)}")
    return "; ".join(problems) or None


def grade(task: Task, work: Path, diff: str | None = None,
          sandbox: str = "workspace-write") -> tuple[dict[str, bool], str]:
    """Apply `diff` to a fresh copy of the task's repository at `work`, put the tests and their
    configuration back, run the listed tests: (test id -> passed, a note when the grading
    itself went wrong; every test then counts as failed)."""
    failed = {tid: False for tid in task.test_ids}
    shutil.copytree(task.repo, work, ignore=_COPY_IGNORE)
    if diff and diff.strip():
        env = {**os.environ, **_GIT_ENV, "GIT_CEILING_DIRECTORIES": str(work.parent)}
        applied = subprocess.run(["git", "apply", "--whitespace=nowarn", "-"], cwd=work, env=env,
                                 input=diff.encode("utf-8", "replace"), capture_output=True)
        if applied.returncode:
            said = applied.stderr.decode("utf-8", "replace").strip()
            return failed, f"the agent's diff does not apply to the task's repository: {said}"
    restore_tests(task, work)
    words = shlex.split(task.test_cmd)
    options = words[next((i + 1 for i, w in enumerate(words) if Path(w).name == "pytest"),
                         len(words)):]
    flag = "-P" if sys.version_info >= (3, 11) else "-I"  # -I: the closest before 3.11
    with tempfile.TemporaryDirectory(prefix="loopcli-grade-") as reports:
        report = Path(reports) / "junit.xml"
        argv = [sys.executable, flag, "-c", _PYTEST_BOOT, *options, "-p", "no:cacheprovider",
                f"--rootdir={work}", f"--junitxml={report}", *task.test_ids]
        result = make_environment(work, sandbox, False).run(
            argv, timeout=GRADE_TIMEOUT, max_output=4000, writable=[Path(reports)], env=_GRADE_ENV)
        if result.timed_out:
            return failed, f"the tests timed out after {GRADE_TIMEOUT} s"
        outcomes = read_junit(report, task.test_ids)
    if outcomes is None:
        return failed, (f"pytest wrote no readable report (exit code {result.exit_code}): "
                        f"{result.output[-500:].strip()}")
    if (result.exit_code == 0) != all(outcomes.values()):
        return failed, (f"the report ({sum(outcomes.values())} of {len(outcomes)} listed tests "
                        f"passed) disagrees with pytest's exit code {result.exit_code}")
    return outcomes, ""


def restore_tests(task: Task, repo: Path) -> None:
    """Put back the test files named by the ids and every test-configuration file as the task
    has them (removing those it lacks), then lay the test patch over."""
    for folder, dirs, files in os.walk(repo):  # symlinked folders are not followed
        for name in TEST_CONFIG_FILES.intersection(files):
            os.unlink(os.path.join(folder, name))
    originals = {p.relative_to(task.repo).as_posix() for p in task.repo.rglob("*")
                 if p.name in TEST_CONFIG_FILES and p.is_file()}
    originals |= {tid.split("::")[0] for tid in task.test_ids
                  if (task.repo / tid.split("::")[0]).is_file()}
    for rel in sorted(originals):
        _put_back(task.repo / rel, repo, rel)
    patch = task.root / "test_patch"
    if patch.is_dir():
        for path in sorted(patch.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                _put_back(path, repo, path.relative_to(patch).as_posix())


def _put_back(source: Path, repo: Path, rel: str) -> None:
    """Copy `source` to repo/rel, replacing whatever stands there or on the way: a symlink
    the agent left is removed, never followed out of the copy."""
    parts = Path(rel).parts
    folder = repo
    for part in parts[:-1]:
        folder = folder / part
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            folder.unlink()
        folder.mkdir(exist_ok=True)
    target = folder / parts[-1]
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.is_symlink() or target.exists():
        target.unlink()
    shutil.copyfile(source, target)


def read_junit(report: Path, test_ids: list[str]) -> dict[str, bool] | None:
    """Test id -> passed, from pytest's JUnit XML report; None if there is none to read. A
    test passed if it is reported, and never with a failure, an error or a skip."""
    try:
        root = ElementTree.parse(report).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    passed, failed = set(), set()
    for case in root.iter("testcase"):
        key = (case.get("classname", ""), case.get("name", ""))
        bad = any(child.tag in ("failure", "error", "skipped") for child in case)
        (failed if bad else passed).add(key)
    return {tid: _junit_key(tid) in passed - failed for tid in test_ids}


def _junit_key(test_id: str) -> tuple[str, str]:
    """(classname, name) that pytest's junitxml writes for a node id."""
    address, bracket, params = test_id.partition("[")
    names = address.split("::")
    names[0] = names[0].replace("/", ".").removesuffix(".py")
    return ".".join(names[:-1]), names[-1] + bracket + params


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
    """For the agent's own test runs: this interpreter's `python` first on PATH (it has
    pytest), no bytecode files, and no pytest plugins: the tasks use plain pytest, and loading
    the plugins installed alongside loopcli (hypothesis, ...) costs more than a task's tests
    take to run."""
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
