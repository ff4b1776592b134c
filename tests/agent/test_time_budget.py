"""--max-time holds during tool calls too: a shell call and the test run on finish get at most
the time left as their timeout (issue 8, item 6). Outcomes are asserted, not durations."""

from __future__ import annotations

import re

import pytest

from agentkit import ISSUE, call, write_script
from agentkit import buggy_repo, hermetic  # noqa: F401  (fixtures)
from loopcli.agent import Agent, Limits
from loopcli.backends.scripted import ScriptedBackend
from loopcli.fix import FixConfig, run_fix
from loopcli.tools.toolbox import Toolbox

pytestmark = pytest.mark.usefixtures("hermetic")


def killed_after(output: str) -> float:
    found = re.search(r"timed out after ([\d.]+) s", output)
    assert found, output
    return float(found.group(1))


def test_a_shell_call_gets_at_most_the_time_left(buggy_repo, tmp_path):
    script = write_script(tmp_path / "s.jsonl", [call("shell", command="sleep 60", timeout=600)])
    events = []
    agent = Agent(ScriptedBackend(script), Toolbox(buggy_repo), "You fix bugs.",
                  record=events.append, limits=Limits(max_steps=5, max_seconds=3))
    result = agent.run(ISSUE)
    tool = next(e for e in events if e["type"] == "tool")
    assert tool["ok"] is False and killed_after(tool["output"]) <= 3
    assert result.status == "limit" and result.limit == "time"


def test_a_shorter_timeout_the_model_asks_for_is_kept(buggy_repo, tmp_path):
    script = write_script(tmp_path / "s.jsonl", [call("shell", command="sleep 60", timeout="1")])
    events = []
    agent = Agent(ScriptedBackend(script), Toolbox(buggy_repo), "You fix bugs.",
                  record=events.append, limits=Limits(max_steps=2, max_seconds=600))
    agent.run(ISSUE)
    assert killed_after(next(e for e in events if e["type"] == "tool")["output"]) == 1


def test_the_test_run_on_finish_gets_at_most_the_time_left(buggy_repo, tmp_path):
    script = write_script(tmp_path / "s.jsonl", [call("finish", summary="done")])
    config = FixConfig(ISSUE, buggy_repo, ScriptedBackend(script), test_cmd="sleep 60",
                       limits=Limits(max_steps=5, max_seconds=3),
                       trajectory=tmp_path / "t.jsonl", store_dir=tmp_path / "store",
                       map_cache=tmp_path / "map")
    events = []
    result = run_fix(config, events.append)
    test = next(e for e in events if e["type"] == "test")
    assert test["passed"] is False and test["exit_code"] is None
    assert killed_after(test["output"]) <= 3
    assert result.status == "limit"
