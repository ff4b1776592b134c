"""The model's text turned into OpenAI reply pieces: content, tool_calls, usage.

Tool calls are written by the model as text (Qwen3-Coder XML, Hermes JSON...) and parsed with
the agent's own parser (`loopcli.toolcalls`). While streaming, text is sent as it comes until
something that may open a call appears (`HeldText`); from there on it is held, and at the end
parsed: calls go out as `tool_calls`, anything else as content.
"""

from __future__ import annotations

import json

from loopcli.toolcalls import parse_tool_calls

# what may start a call: the tagged forms, a fence, and (at the very start) a JSON value
MARKERS = ("<tool_call>", "<function=", "```")


def tool_calls(text: str, names: set[str]) -> tuple[str | None, list[dict]]:
    """(content, tool_calls) of a whole reply. Without a valid call the text is left as it is,
    so a client that parses calls itself still sees what the model wrote."""
    result = parse_tool_calls(text, names)
    if not result.calls:
        return text, []
    calls = [{"id": c.id, "type": "function",
              "function": {"name": c.name, "arguments": c.arguments if isinstance(c.arguments, str)
                           else json.dumps(c.arguments, ensure_ascii=False)}}
             for c in result.calls]
    return result.text.strip() or None, calls


class HeldText:
    """Text deltas in, the part that cannot belong to a tool call out; the rest kept in `held`."""

    def __init__(self):
        self.started = False  # some non-blank text has gone out
        self.holding = False
        self.held = ""

    def push(self, delta: str) -> str:
        if self.holding:
            self.held += delta
            return ""
        text = self.held + delta
        if not self.started:
            if not text.strip():
                self.held = text
                return ""
            if text.lstrip().startswith(("{", "[")):
                self.holding, self.held = True, text
                return ""
        hits = [i for i in (text.find(m) for m in MARKERS) if i >= 0]
        if hits:
            cut = min(hits)
            self.holding, self.held = True, text[cut:]
            out = text[:cut]
        else:  # keep back a tail that may be the start of a marker
            keep = max((n for m in MARKERS for n in range(len(m) - 1, 0, -1) if text.endswith(m[:n])), default=0)
            self.held = text[len(text) - keep:] if keep else ""
            out = text[:len(text) - keep]
        self.started = self.started or bool(out.strip())
        return out


def usage(prompt: int, completion: int, cached: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}
