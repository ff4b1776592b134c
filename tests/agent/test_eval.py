"""`loopcli eval` over benchmarks/tasks: the reference solutions resolve every task, a no-op
script none; broken tasks and edited tests are caught."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agentkit import call, put, run_cli, write_script
from agentkit import hermetic  # noqa: F401  (fixtures)
from loopcli.agent import Limits
from loopcli.evaluate import evaluate, load_tasks, task_backends
from loopcli.fix import FixError

TASKS = Path(__file__).resolve().parents[2] / "benchmarks" / "tasks"
NOOP = Path(__file__).resolve().parents[2] / "benchmarks" / "noop.jsonl"

pytestmark = pytest.mark.usefixtures("hermetic")


def run_eval(tasks, model=None, jobs=2):
    return evaluate(tasks, task_backends("scripted", model, None), Limits(max_steps=20), jobs=jobs)


def test_the_benchmark_has_ten_varied_tasks():
    tasks = load_tasks(TASKS)
    assert len(tasks) >= 10
    for task in tasks:
        assert len(task.issue) > 80, task.name
        assert task.fail_to_pass and task.pass_to_pass, task.name
        assert (task.root / "solution.jsonl").is_file(), task.name
        hidden = {p.relative_to(task.root / "test_patch").as_posix()
                  for p in (task.root / "test_patch").rglob("test_*.py")}
        assert {tid.split("::")[0] for tid in task.fail_to_pass} <= hidden, task.name


def test_reference_solutions_resolve_every_task():
    report = run_eval(load_tasks(TASKS)).as_dict()
    unresolved = [(r["name"], r["agent_status"], r["tests"]) for r in report["results"]
                  if r["outcome"] != "resolved"]
    assert not unresolved
    assert report["resolved_rate"] == 1.0 and report["well_formed_rate"] == 1.0
    assert report["broken"] == 0
    assert all(r["agent_status"] == "resolved" and r["steps"] >= 3 for r in report["results"])


def test_a_noop_script_resolves_nothing_through_the_cli(tmp_path, capsys, monkeypatch):
    code, out, err = run_cli(capsys, monkeypatch, "eval", str(TASKS), "--backend", "scripted",
                             "--model", str(NOOP), "--jobs", "2", "--json", "--out",
                             str(tmp_path / "out"))
    assert code == 0, err
    report = json.loads(out)
    assert report["resolved_rate"] == 0.0 and report["resolved"] == 0
    assert report["tasks"] == len(load_tasks(TASKS)) and report["broken"] == 0
    for result in report["results"]:
        assert result["outcome"] == "unresolved" and result["agent_status"] == "format_errors"
        task = load_tasks(TASKS / result["name"])[0]
        assert not any(result["tests"][t] for t in task.fail_to_pass)
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == report
    assert (tmp_path / "out" / "paginate-last-page.jsonl").is_file()


def copy_task(tmp_path: Path, name: str) -> Path:
    dest = tmp_path / "tasks" / name
    shutil.copytree(TASKS / name, dest)
    return dest


def test_a_task_whose_fail_to_pass_tests_already_pass_is_broken(tmp_path):
    task = copy_task(tmp_path, "paginate-last-page")
    pages = task / "repo" / "pager" / "pages.py"
    pages.write_text(pages.read_text().replace("total // per_page", "-(-total // per_page)"))
    report = run_eval(load_tasks(task.parent), jobs=1)
    result = report.results[0]
    assert result.outcome == "broken" and "FAIL_TO_PASS tests pass before the fix" in result.message
    assert "test_last_partial_page_is_reachable" in result.message
    assert report.exit_code == 1 and report.as_dict()["resolved_rate"] is None


def test_editing_the_deciding_tests_does_not_resolve_a_task(tmp_path):
    """F2P tests in the repository itself: a model that rewrites them still fails the task."""
    task = tmp_path / "tasks" / "clamp"
    put(task / "repo" / "calc.py", "def clamp(v, lo, hi):\n    return max(lo, v)\n")
    put(task / "repo" / "tests" / "test_calc.py",
        "from calc import clamp\n\n\ndef test_high():\n    assert clamp(9, 0, 5) == 5\n\n\n"
        "def test_low():\n    assert clamp(-1, 0, 5) == 0\n")
    put(task / "issue.md", "clamp(9, 0, 5) gives 9 instead of 5: the upper bound is ignored.\n")
    put(task / "task.json", json.dumps({"fail_to_pass": ["tests/test_calc.py::test_high"],
                                        "pass_to_pass": ["tests/test_calc.py::test_low"],
                                        "test_cmd": "python -m pytest -q"}))
    write_script(task / "solution.jsonl", [
        call("write", path="tests/test_calc.py", overwrite=True,
             content="def test_high():\n    pass\n\n\ndef test_low():\n    pass\n"),
        call("finish", summary="tests pass now"),
    ])
    result = run_eval(load_tasks(task.parent), jobs=1).results[0]
    assert result.agent_status == "resolved"  # the agent's own test run passed...
    assert result.outcome == "unresolved"  # ...but grading restores the real tests
    assert result.tests == {"tests/test_calc.py::test_high": False,
                            "tests/test_calc.py::test_low": True}


@pytest.mark.parametrize("spec, message", [
    ({"pass_to_pass": [], "test_cmd": "pytest"}, "fail_to_pass"),
    ({"fail_to_pass": ["t::x"], "pass_to_pass": "t::y", "test_cmd": "pytest"}, "lists"),
    ({"fail_to_pass": ["t::x"], "pass_to_pass": []}, "test_cmd"),
])
def test_malformed_task_is_bad_input(spec, message, tmp_path):
    task = tmp_path / "t"
    put(task / "task.json", json.dumps(spec))
    put(task / "issue.md", "an issue\n")
    (task / "repo").mkdir()
    with pytest.raises(FixError, match=message):
        load_tasks(task)


def test_missing_tasks_folder_exits_2(tmp_path, capsys, monkeypatch):
    code, out, err = run_cli(capsys, monkeypatch, "eval", str(tmp_path / "none"), "--backend",
                             "scripted")
    assert code == 2 and "does not exist" in err
