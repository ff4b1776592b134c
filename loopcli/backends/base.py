"""The one interface the agent talks to every model through.

A backend turns a message list (OpenAI chat format: system / user / assistant with optional
`tool_calls` / tool) plus tool schemas (OpenAI function format) into a stream of events: text
deltas, complete tool calls, token usage and a finish reason. Backends that cannot call tools
natively stream plain text; the agent then parses tool calls out of the text.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, Union

DEFAULT_MAX_TOKENS = 1024  # completion tokens per model call where the caller gives none


class BackendError(Exception):
    """The model or its server failed (unreachable, crashed, bad reply): exit code 3."""


@dataclass
class TextDelta:
    text: str


@dataclass
class ToolCall:
    name: str
    arguments: dict | str  # parsed JSON object, or the raw string when it did not parse
    id: str = ""


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens taken from the backend's kept state, not recomputed


@dataclass
class Progress:
    """Work under way inside one call (a local model prefilling or generating)."""
    stage: str  # "prefill" or "decode"
    done: int
    total: int


@dataclass
class Finish:
    reason: str  # "stop", "tool_calls", "length", ...


Event = Union[TextDelta, ToolCall, Usage, Finish, Progress]


@dataclass
class Reply:
    """A whole model turn, gathered from the events."""
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    finish_reason: str = "stop"


class Backend(Protocol):
    name: str
    context_window: int  # tokens

    def stream(self, messages: list[dict], tools: list[dict]) -> Iterator[Event]: ...

    def count_tokens(self, text: str) -> int: ...


def collect(events: Iterator[Event], on_text=None, on_progress=None) -> Reply:
    """Gather a stream into a Reply, passing text deltas to `on_text` and Progress events to
    `on_progress` as they come."""
    reply = Reply()
    for ev in events:
        if isinstance(ev, TextDelta):
            reply.text += ev.text
            if on_text:
                on_text(ev.text)
        elif isinstance(ev, ToolCall):
            reply.tool_calls.append(ev)
        elif isinstance(ev, Usage):
            reply.usage = ev
        elif isinstance(ev, Finish):
            reply.finish_reason = ev.reason
        elif isinstance(ev, Progress) and on_progress:
            on_progress(ev)
    return reply
