"""A backend that replays model turns from a JSONL file: the model of tests and of `eval` checks.

Each line is one turn: ``{"text": "...", "tool_calls": [{"name": ..., "arguments": {...}}]}``,
both keys optional. Native calls come back as ToolCall events; ``text`` may itself hold tool
calls in a text format (Hermes, Qwen3-Coder XML, fenced JSON) to exercise the agent's parser.
Once the script is used up, every further turn is a fixed final text without calls.

It is a replay, not a model: it ignores what it is sent, except to count prompt tokens.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from .base import Event, Finish, TextDelta, ToolCall, Usage

EXHAUSTED_TEXT = "The script has no more turns."
# A deterministic stand-in for a tokenizer: words and single punctuation marks.
_TOKEN = re.compile(r"\w+|[^\w\s]")


class ScriptError(ValueError):
    """The script file is missing or malformed; the message names the line."""


class ScriptedBackend:
    name = "scripted"

    def __init__(self, path: str | Path, context_window: int = 32_768):
        self.path = Path(path)
        self.context_window = context_window
        self.turns = load_script(self.path)
        self.calls = 0  # turns served, the exhausted ones included

    def stream(self, messages: list[dict], tools: list[dict]) -> Iterator[Event]:
        turn = self.turns[self.calls] if self.calls < len(self.turns) else {"text": EXHAUSTED_TEXT}
        self.calls += 1
        text = turn.get("text", "")
        if text:
            yield TextDelta(text)
        calls = turn.get("tool_calls", [])
        for i, call in enumerate(calls):
            yield ToolCall(call["name"], call.get("arguments", {}), id=f"scripted_{self.calls}_{i}")
        prompt = sum(self.count_tokens(_dumps(m, ensure_ascii=False)) for m in messages)
        completion = self.count_tokens(text) + sum(self.count_tokens(_dumps(c)) for c in calls)
        yield Usage(prompt, completion)
        yield Finish("tool_calls" if calls else "stop")

    def count_tokens(self, text: str) -> int:
        return len(_TOKEN.findall(text))


def _dumps(value, ensure_ascii: bool = True) -> str:
    """JSON for counting tokens; "" for what cannot be dumped (nested too deeply)."""
    try:
        return json.dumps(value, ensure_ascii=ensure_ascii)
    except (ValueError, TypeError, RecursionError):
        return ""


def load_script(path: Path) -> list[dict]:
    """The turns of a script file, checked line by line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ScriptError(f"script {path} does not exist; give a JSONL file of model turns") \
            from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScriptError(f"cannot read script {path}: {exc}") from None
    turns = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            turns.append(_check_turn(line, f"{path}:{number}"))
    return turns


def _check_turn(line: str, where: str) -> dict:
    try:
        turn = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ScriptError(f"{where}: not JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise ScriptError(f"{where}: the JSON is nested too deeply to read") from None
    if not isinstance(turn, dict) or set(turn) - {"text", "tool_calls"}:
        raise ScriptError(f'{where}: a turn is an object with "text" and/or "tool_calls"')
    if not isinstance(turn.get("text", ""), str):
        raise ScriptError(f'{where}: "text" must be a string')
    calls = turn.get("tool_calls", [])
    if not isinstance(calls, list) or not all(
        isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls
    ):
        raise ScriptError(f'{where}: "tool_calls" must be a list of '
                          '{"name": ..., "arguments": {...}} objects')
    return turn
