"""Streaming text next to tool calls: what goes out at once and what is held for the parser."""

from __future__ import annotations

import json

from loopcli.serve.replies import HeldText, tool_calls

NAMES = {"read_file"}


def feed(text: str, size: int = 3) -> tuple[str, HeldText]:
    held, out = HeldText(), ""
    for i in range(0, len(text), size):
        out += held.push(text[i:i + size])
    return out, held


def test_prose_streams_and_a_call_is_held():
    text = 'Let me look.\n<tool_call>\n{"name": "read_file", "arguments": {"path": "a.py"}}\n</tool_call>'
    out, held = feed(text)
    assert out == "Let me look.\n" and held.holding and held.held == text[len(out):]
    content, calls = tool_calls(held.held, NAMES)
    assert content is None and calls[0]["function"]["name"] == "read_file"
    assert json.loads(calls[0]["function"]["arguments"]) == {"path": "a.py"}


def test_a_partial_marker_is_held_back_then_released():
    held = HeldText()
    assert held.push("x <tool") == "x "
    assert held.push(" is a tag") == "<tool is a tag" and not held.holding


def test_a_reply_opening_with_json_is_held_whole():
    out, held = feed('  {"name": "read_file", "arguments": {}}')
    assert out == "" and held.holding
    assert tool_calls(held.held, NAMES)[1][0]["function"]["arguments"] == "{}"


def test_a_code_fence_that_is_no_call_stays_text():
    text = "Here:\n```python\nprint(1)\n```\n"
    out, held = feed(text)
    content, calls = tool_calls(held.held, NAMES)
    assert calls == [] and out + content == text


def test_an_unknown_tool_is_left_as_text():
    text = '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>'
    assert tool_calls(text, NAMES) == (text, [])
