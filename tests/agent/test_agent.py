"""The agent loop with the scripted backend: tool-call formats and their recovery, format-error
and repeat limits, step/token/time limits, compaction, the trajectory, the system prompt."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agentkit import FIX_TURNS, ISSUE, OPS_FIXED, TEST_CMD, call, put, read_events, write_script
from agentkit import buggy_repo, hermetic  # noqa: F401  (fixtures)
from loopcli import prompts
from loopcli.agent import Agent, Limits, build_system_prompt
from loopcli.backends.base import Finish, TextDelta, ToolCall
from loopcli.backends.scripted import EXHAUSTED_TEXT, ScriptedBackend
from loopcli.fix import FixConfig, run_fix
from loopcli.tools.toolbox import Toolbox

HERMES_VIEW = '<tool_call>\n{"name": "view", "arguments": {"path": "calc/ops.py"}}\n</tool_call>'
XML_VIEW = ("<tool_call>\n<function=view>\n<parameter=path>\ncalc/ops.py\n</parameter>\n"
            "</function>\n</tool_call>")
FENCED_VIEW = '```json\n{"name": "view", "arguments": {"path": "calc/ops.py"}}\n```'

pytestmark = pytest.mark.usefixtures("hermetic")


def make_agent(repo: Path, script: Path, *, window: int = 32_768, verify=None, events=None,
               limits: Limits | None = None, backend=None) -> Agent:
    backend = backend or ScriptedBackend(script, context_window=window)
    record = events.append if events is not None else None
    return Agent(backend, Toolbox(repo), "You fix bugs in this repository.", record=record,
                 verify=verify, limits=limits or Limits(max_steps=30))


def run_script(repo: Path, tmp_path: Path, turns: list[dict], **options):
    events: list[dict] = []
    agent = make_agent(repo, write_script(tmp_path / "script.jsonl", turns), events=events,
                       **options)
    return agent, agent.run(ISSUE), events


def after(agent: Agent, text: str) -> dict:
    """The message that follows the assistant message whose content is `text`."""
    index = next(i for i, m in enumerate(agent.messages)
                 if m["role"] == "assistant" and m["content"] == text)
    return agent.messages[index + 1]


# ---- tool-call formats --------------------------------------------------------------------


@pytest.mark.parametrize("view", [HERMES_VIEW, XML_VIEW, FENCED_VIEW])
def test_text_tool_calls_in_each_format(view, buggy_repo, tmp_path):
    agent, result, events = run_script(buggy_repo, tmp_path, [
        {"text": f"Let me look.\n{view}"},
        FIX_TURNS[1],
        {"text": view.replace('"view"', '"finish"').replace("=view", "=finish")
                     .replace("path", "summary")},
    ])
    assert result.status == "resolved" and result.turns_well_formed == 3
    tool = next(e for e in events if e["type"] == "tool")
    assert tool["name"] == "view" and tool["ok"] and "def clamp" in tool["output"]
    # history keeps the call structured and the prose without the markup
    assistant = agent.messages[2]
    assert assistant["content"] == "Let me look."
    arguments = assistant["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments) == {"path": "calc/ops.py"}
    assert agent.messages[3]["role"] == "tool"
    assert (buggy_repo / "calc" / "ops.py").read_text() == OPS_FIXED


@pytest.mark.parametrize("broken, fixed, fmt, problem", [
    ('<tool_call>\n{"name": "view", "arguments": {"path": "calc/ops.py"}\n</tool_call>',
     HERMES_VIEW, "Hermes/Qwen <tool_call> JSON", "invalid JSON"),
    ("<tool_call>\n<function=view>\n<parameter=path>\ncalc/ops.py\n</parameter>\nplease\n"
     "</function>\n</tool_call>", XML_VIEW, "Qwen3-Coder <tool_call> XML", "unexpected text"),
    ('```json\n{"name": "view", "arguments": {"path": calc/ops.py}}\n```',
     FENCED_VIEW, "fenced JSON", "invalid JSON"),
])
def test_malformed_call_gets_the_format_error_and_the_next_turn_works(
        broken, fixed, fmt, problem, buggy_repo, tmp_path):
    agent, result, events = run_script(buggy_repo, tmp_path, [
        {"text": broken}, {"text": fixed}, call("finish", summary="looked"),
    ])
    assert result.status == "resolved"
    error = after(agent, broken)
    assert error["role"] == "user"
    assert f"Malformed tool call ({fmt})" in error["content"] and problem in error["content"]
    assert "Expected form" in error["content"]
    assert [e["consecutive"] for e in events if e["type"] == "format_error"] == [1]
    tool = next(e for e in events if e["type"] == "tool")
    assert tool["name"] == "view" and tool["ok"] and tool["step"] == 2
    assert result.turns_well_formed == 2 and result.steps == 3


def test_reply_without_a_call_and_unknown_tool(buggy_repo, tmp_path):
    agent, result, events = run_script(buggy_repo, tmp_path, [
        {"text": "I think the bug is in clamp."},
        {"text": HERMES_VIEW.replace('"view"', '"open_file"')},
        call("finish", summary="done"),
    ])
    assert result.status == "resolved"
    assert after(agent, "I think the bug is in clamp.")["content"] == prompts.NO_TOOL_CALL
    assert [e["consecutive"] for e in events if e["type"] == "format_error"] == [1, 2]
    errors = [e["errors"][0] for e in events if e["type"] == "format_error"]
    assert "unknown tool 'open_file'" in errors[1] and "view" in errors[1]


def test_three_format_errors_in_a_row_end_the_run(buggy_repo, tmp_path):
    agent, result, events = run_script(buggy_repo, tmp_path, [
        {"text": "<tool_call>{bad</tool_call>"},
        {"text": "no call here"},
        {"text": '```json\n{"name": 1, "arguments": {}}\n```'},
        call("finish", summary="never reached"),
    ])
    assert result.status == "format_errors" and result.steps == 3
    assert [e["consecutive"] for e in events if e["type"] == "format_error"] == [1, 2, 3]


def test_a_good_turn_resets_the_format_error_count(buggy_repo, tmp_path):
    bad = {"text": "<tool_call>{bad</tool_call>"}
    agent, result, _ = run_script(buggy_repo, tmp_path, [
        bad, bad, call("view", path="calc/ops.py"), bad, bad, call("finish", summary="ok"),
    ])
    assert result.status == "resolved" and result.turns_well_formed == 2


def test_good_and_bad_calls_in_one_reply(buggy_repo, tmp_path):
    text = HERMES_VIEW + '\n<tool_call>{"name": "search", "arguments": {"pattern": </tool_call>'
    agent, result, events = run_script(buggy_repo, tmp_path, [
        {"text": text}, call("finish", summary="ok")])
    assert result.status == "resolved" and result.turns_well_formed == 1
    assert [m["role"] for m in agent.messages[2:5]] == ["assistant", "tool", "user"]
    assert "invalid JSON" in agent.messages[4]["content"]


def test_script_running_out_replies_without_calls(tmp_path):
    backend = ScriptedBackend(write_script(tmp_path / "s.jsonl", [call("view", path=".")]))
    first = list(backend.stream([], []))
    assert [type(e) for e in first[:1]] == [ToolCall]
    rest = list(backend.stream([], []))
    assert rest[0] == TextDelta(EXHAUSTED_TEXT) and rest[-1] == Finish("stop")
    assert not [e for e in rest if isinstance(e, ToolCall)]


def test_native_calls_without_id_get_one(buggy_repo, tmp_path):
    class NoIds(ScriptedBackend):
        def stream(self, messages, tools):
            for event in super().stream(messages, tools):
                is_call = isinstance(event, ToolCall)
                yield ToolCall(event.name, event.arguments) if is_call else event

    backend = NoIds(write_script(tmp_path / "s.jsonl", [call("view", path="calc/ops.py"),
                                                        call("finish", summary="x")]))
    agent = make_agent(buggy_repo, tmp_path / "s.jsonl", backend=backend)
    assert agent.run(ISSUE).status == "resolved"
    assert agent.messages[2]["tool_calls"][0]["id"] == "call_1_0"
    assert agent.messages[3]["tool_call_id"] == "call_1_0"


# ---- repeats ------------------------------------------------------------------------------


def test_repeated_call_is_nudged_then_the_run_goes_on(buggy_repo, tmp_path):
    view = call("view", path="calc/ops.py")
    agent, result, events = run_script(buggy_repo, tmp_path, [
        view, view, call("view", path="tests/test_ops.py"), view, call("finish", summary="ok")])
    assert result.status == "resolved"
    assert [e["step"] for e in events if e["type"] == "nudge"] == [2]
    outputs = [m["content"] for m in agent.messages if m["role"] == "tool"]
    assert prompts.REPEAT_NUDGE in outputs[1] and prompts.REPEAT_NUDGE not in outputs[0]


def test_repeating_after_the_nudge_stops_the_run(buggy_repo, tmp_path):
    view = call("view", path="calc/ops.py")
    # the same call written in another format still counts as the same call
    agent, result, events = run_script(buggy_repo, tmp_path, [view, {"text": XML_VIEW}, view, view])
    assert result.status == "loop" and result.steps == 3
    assert "view(path='calc/ops.py')" in result.message
    assert len([e for e in events if e["type"] == "tool"]) == 2  # the third is not run


# ---- limits -------------------------------------------------------------------------------


def test_step_limit_is_checked_before_each_call(buggy_repo, tmp_path):
    turns = [call("view", path="calc/ops.py", start=n) for n in range(1, 9)]
    agent, result, events = run_script(buggy_repo, tmp_path, turns, limits=Limits(max_steps=4))
    assert (result.status, result.limit, result.steps) == ("limit", "steps", 4)
    assert agent.backend.calls == 4
    assert events[-1]["type"] == "limit" and events[-1]["limit"] == "steps"


def test_token_limit(buggy_repo, tmp_path):
    turns = [call("view", path="calc/ops.py", start=n) for n in range(1, 9)]
    agent, result, _ = run_script(buggy_repo, tmp_path, turns, limits=Limits(max_tokens=3000))
    assert (result.status, result.limit) == ("limit", "tokens")
    assert result.tokens >= 3000 and result.steps < 8


def test_time_limit(buggy_repo, tmp_path):
    class Slow(ScriptedBackend):
        def stream(self, messages, tools):
            time.sleep(0.05)
            yield from super().stream(messages, tools)

    script = write_script(tmp_path / "s.jsonl", [call("view", path="calc/ops.py", start=n)
                                                for n in range(1, 9)])
    agent = make_agent(buggy_repo, script, backend=Slow(script),
                       limits=Limits(max_seconds=0.08))
    result = agent.run(ISSUE)
    assert (result.status, result.limit) == ("limit", "time") and result.steps == 2


# ---- compaction ---------------------------------------------------------------------------


@pytest.fixture
def big_repo(buggy_repo):
    put(buggy_repo / "data.py", "".join(f"value_{n} = {n} * 2\n" for n in range(150)))
    return buggy_repo


def window_for(repo: Path, tmp_path: Path, extra: int) -> int:
    """A context window whose prompt budget is the fixed prompt plus `extra` tokens."""
    agent = make_agent(repo, write_script(tmp_path / "probe.jsonl", []))
    agent.messages = [{"role": "system", "content": agent.system_prompt},
                      {"role": "user", "content": ISSUE}]
    return int((agent.context_tokens() + extra) / 0.75) + 1


def test_old_tool_outputs_are_stubbed_when_the_context_fills(big_repo, tmp_path):
    views = [call("view", path="data.py", start=n, limit=150) for n in (1, 2, 3)]
    window = window_for(big_repo, tmp_path, 2500)  # room for about two views of data.py
    agent, result, events = run_script(big_repo, tmp_path, views + [call("finish", summary="ok")],
                                       window=window)
    assert result.status == "resolved"
    compactions = [e for e in events if e["type"] == "compaction"]
    assert compactions and compactions[0]["stage"] == "stub_outputs"
    assert compactions[0]["tokens_after"] < compactions[0]["tokens_before"]
    outputs = [m["content"] for m in agent.messages if m["role"] == "tool"]
    assert outputs[0].startswith("[output of view(path='data.py', start=1, limit=150) removed")
    assert "value_149 = 149 * 2" in outputs[2]  # the newest output is kept whole
    for event in events:
        if event["type"] == "model":
            assert event["context_tokens"] <= agent.context_budget()


def test_old_steps_are_summarised_when_stubs_are_not_enough(big_repo, tmp_path):
    thinking = "I am thinking about the value table. " * 60
    turns = [{"text": thinking, "tool_calls": [{"name": "view", "arguments": {"path": "data.py",
                                                                             "start": n}}]}
             for n in range(1, 7)]
    window = window_for(big_repo, tmp_path, 2500)
    agent, result, events = run_script(big_repo, tmp_path, turns + [call("finish", summary="ok")],
                                       window=window)
    assert result.status == "resolved"
    assert "summary" in [e["stage"] for e in events if e["type"] == "compaction"]
    summary = next(m["content"] for m in agent.messages if m["role"] == "user"
                   and m["content"].startswith(prompts.SUMMARY_HEADER))
    assert "step 1: view(path='data.py', start=1) -> ok" in summary
    assert agent.messages[:2][1]["content"] == ISSUE  # the task itself is never dropped


def test_context_that_cannot_fit_is_a_limit(buggy_repo, tmp_path):
    window = window_for(buggy_repo, tmp_path, -200)
    agent, result, events = run_script(buggy_repo, tmp_path, [call("finish", summary="x")],
                                       window=window)
    assert (result.status, result.limit, result.steps) == ("limit", "context", 0)


# ---- trajectory and system prompt ---------------------------------------------------------


def test_trajectory_is_written_before_each_model_call(buggy_repo, tmp_path):
    trajectory = tmp_path / "t.jsonl"
    seen: list[list[str]] = []

    class Watching(ScriptedBackend):
        def stream(self, messages, tools):
            seen.append([e["type"] for e in read_events(trajectory)])
            yield from super().stream(messages, tools)

    backend = Watching(write_script(tmp_path / "s.jsonl", FIX_TURNS))
    run_fix(FixConfig(ISSUE, buggy_repo, backend, test_cmd=TEST_CMD, trajectory=trajectory))
    assert seen[0] == ["start"]
    assert seen[1] == ["start", "model", "tool"]
    assert seen[2] == ["start", "model", "tool", "model", "tool"]
    assert [e["type"] for e in read_events(trajectory)] == \
        ["start", "model", "tool", "model", "tool", "model", "test", "result"]


def test_system_prompt_has_tools_agents_md_and_repo_map(buggy_repo, tmp_path):
    put(buggy_repo / "AGENTS.md", "Always run the tests with -x.\n")
    backend = ScriptedBackend(write_script(tmp_path / "s.jsonl", []))
    prompt = build_system_prompt(Toolbox(buggy_repo), backend, ISSUE, TEST_CMD)
    assert "Always run the tests with -x." in prompt
    assert "def clamp(value, low, high)" in prompt  # the repo map, ranked towards the issue
    for signature in ("view(path: string, start?: integer, limit?: integer)",
                      "replace(path: string, old: string, new: string, all?: boolean)",
                      "finish(summary: string)"):
        assert signature in prompt
    assert TEST_CMD in prompt and "<tool_call>" in prompt
    assert not (buggy_repo / ".loopcli-cache").exists()  # the map's cache is not in the repo
