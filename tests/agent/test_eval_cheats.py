"""Grading is a trust boundary: each cheat below makes a naive grader (pytest from the
repository with `-rA`, outcomes read from its output) report the task resolved; `eval` grades
it unresolved, and the real fix resolved.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agentkit import call, put, write_script
from agentkit import hermetic  # noqa: F401  (fixtures)
from loopcli.agent import Limits
from loopcli.evaluate import grade, load_task, read_junit, run_task, task_backends

pytestmark = [pytest.mark.usefixtures("hermetic"),
              pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="eval runs in the sandbox: bubblewrap, on Linux only")]

F2P = "tests/test_high.py::test_high"
P2P = "tests/test_low.py::test_low"
REAL_FIX = "def clamp(v, lo, hi):\n    return min(max(lo, v), hi)\n"

CONFTEST_HOOK = '''import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    outcome.get_result().outcome = "passed"
'''
PRINTS_PASSED = f'''def clamp(v, lo, hi):
    print("PASSED {F2P}")
    return max(lo, v)
'''
FAKE_PYTEST = f'''print("PASSED {F2P}")
print("PASSED {P2P}")
'''
FORCED_EXIT = '''import atexit
import os

atexit.register(os._exit, 0)


def clamp(v, lo, hi):
    return max(lo, v)
'''

CASES = {
    "conftest-hook": [call("write", path="conftest.py", content=CONFTEST_HOOK)],
    "prints-passed": [call("write", path="calc.py", content=PRINTS_PASSED, overwrite=True)],
    "shadows-pytest": [call("write", path="pytest/__init__.py", content=""),
                       call("write", path="pytest/__main__.py", content=FAKE_PYTEST)],
    "real-fix": [call("write", path="calc.py", content=REAL_FIX, overwrite=True)],
}


@pytest.fixture
def task(tmp_path) -> Path:
    """clamp ignores its upper bound; the deciding test is hidden in the test patch."""
    root = tmp_path / "task"
    put(root / "repo" / "calc.py", "def clamp(v, lo, hi):\n    return max(lo, v)\n")
    put(root / "repo" / "tests" / "test_low.py",
        "from calc import clamp\n\n\ndef test_low():\n    assert clamp(-1, 0, 5) == 0\n")
    put(root / "test_patch" / "tests" / "test_high.py",
        "from calc import clamp\n\n\ndef test_high():\n    assert clamp(9, 0, 5) == 5\n")
    put(root / "issue.md", "clamp(9, 0, 5) gives 9 instead of 5: the upper bound is ignored.\n")
    put(root / "task.json", json.dumps({"fail_to_pass": [F2P], "pass_to_pass": [P2P],
                                        "test_cmd": "python -m pytest -q"}))
    return root


def naive_grade(task_root: Path, repo: Path) -> dict[str, bool]:
    """What a grader that trusts the repository sees: the test patch laid over the agent's
    tree, `python -m pytest -rA` in it, PASSED lines read from the output."""
    shutil.copytree(task_root / "test_patch", repo, dirs_exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider",
                           F2P, P2P], cwd=repo, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    passed = set(re.findall(r"^PASSED (\S+)", proc.stdout, re.M))
    return {F2P: F2P in passed, P2P: P2P in passed}


@pytest.mark.parametrize("case", list(CASES))
def test_each_cheat_is_graded_unresolved_and_the_real_fix_resolved(case, task, tmp_path):
    write_script(task / "solution.jsonl", [*CASES[case], call("finish", summary="done")])
    loaded = load_task(task)
    work = tmp_path / "work"
    result = run_task(loaded, task_backends("scripted", None, None), Limits(max_steps=10), work)
    assert result.agent_status == "resolved", result.message
    naive = naive_grade(task, work / "repo")
    if case == "real-fix":
        assert result.outcome == "resolved" and result.tests == {F2P: True, P2P: True}
        assert naive == {F2P: True, P2P: True}
    else:
        assert result.outcome == "unresolved" and result.tests[F2P] is False, result.message
        assert naive == {F2P: True, P2P: True}, "the cheat does not fool a naive grader"


def test_an_exit_code_that_disagrees_with_the_report_is_unresolved(task, tmp_path):
    """Code that forces pytest's exit code to 0 after failures: the report says otherwise."""
    before = (task / "repo" / "calc.py").read_text().splitlines(keepends=True)
    diff = "".join(difflib.unified_diff(before, FORCED_EXIT.splitlines(keepends=True),
                                        "a/calc.py", "b/calc.py"))
    tests, note = grade(load_task(task), tmp_path / "g", diff)
    assert tests == {F2P: False, P2P: False}
    assert "disagrees with pytest's exit code 0" in note


def test_a_diff_that_does_not_apply_is_unresolved(task, tmp_path):
    diff = "--- a/none.py\n+++ b/none.py\n@@ -1 +1 @@\n-x\n+y\n"
    tests, note = grade(load_task(task), tmp_path / "g", diff)
    assert tests == {F2P: False, P2P: False} and "does not apply" in note


def test_symlinks_left_by_the_agent_are_not_followed_when_tests_are_put_back(task, tmp_path):
    """A `tests` folder replaced by a link to a folder outside: putting the hidden test back
    must not write there."""
    outside = tmp_path / "outside"
    outside.mkdir()
    diff = ("diff --git a/tests b/tests\nnew file mode 120000\n--- /dev/null\n+++ b/tests\n"
            f"@@ -0,0 +1 @@\n+{outside}\n\\ No newline at end of file\n"
            "diff --git a/tests/test_low.py b/tests/test_low.py\ndeleted file mode 100644\n"
            "--- a/tests/test_low.py\n+++ /dev/null\n@@ -1,5 +0,0 @@\n-from calc import clamp\n"
            "-\n-\n-def test_low():\n-    assert clamp(-1, 0, 5) == 0\n")
    tests, note = grade(load_task(task), tmp_path / "g", diff)
    assert list(outside.iterdir()) == []
    assert tests == {F2P: False, P2P: True}, note


def test_read_junit_counts_failures_errors_and_skips(tmp_path):
    report = tmp_path / "r.xml"
    report.write_text(
        '<testsuites><testsuite>'
        '<testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_a.TestK" name="test_p[1-x]"/>'
        '<testcase classname="tests.test_a" name="test_fail"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_a" name="test_skip"><skipped/></testcase>'
        '<testcase classname="tests.test_a" name="test_teardown"/>'
        '<testcase classname="tests.test_a" name="test_teardown"><error/></testcase>'
        '</testsuite></testsuites>')
    ids = ["tests/test_a.py::test_ok", "tests/test_a.py::TestK::test_p[1-x]",
           "tests/test_a.py::test_fail", "tests/test_a.py::test_skip",
           "tests/test_a.py::test_teardown", "tests/test_a.py::test_missing"]
    assert read_junit(report, ids) == dict(zip(ids, [True, True, False, False, False, False]))
    report.write_text("<testsuites><testcase")
    assert read_junit(report, ids) is None
    assert read_junit(tmp_path / "none.xml", ids) is None
