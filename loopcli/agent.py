"""The agent loop, after mini-swe-agent: a linear message list, exceptions as control flow.

One step = check the limits, fit the context, one model call, then each tool call it made.
Every event (model turn, tool call and result, format error, nudge, compaction, limit) goes to
`record` as it happens, which writes the trajectory; the run ends by an AgentExit exception:
Resolved (finish accepted), LimitReached, RepeatedFormatErrors, Stuck or ModelFailed.

Tool calls come natively from the backend or, when it sends none, are parsed from the reply's
text (loopcli.toolcalls). A reply without a readable call is a format error sent back to the
model; three in a row end the run. A call identical to the one before gets a nudge; a third
identical call in a row ends the run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from loopcli import prompts
from loopcli.backends.base import Backend, BackendError, ToolCall, collect
from loopcli.toolcalls import parse_tool_calls
from loopcli.tools.repomap import RepoMap
from loopcli.tools.toolbox import Toolbox

MAX_FORMAT_ERRORS = 3
MAX_IDENTICAL_CALLS = 3  # the 2nd identical call in a row is nudged, the 3rd ends the run
MESSAGE_OVERHEAD = 4  # tokens a chat template adds around each message
KEEP_LOG_LINES = 40  # steps listed in a compaction summary
ARG_PREVIEW = 60
MAX_ARG_DEPTH = 32  # tool arguments are flat; deeper JSON is refused before anything walks it
_SURROGATES = re.compile("[\ud800-\udfff]")  # lone ones cannot be encoded as UTF-8
_TOO_DEEP = f"(arguments nested more than {MAX_ARG_DEPTH} levels deep; send a flat JSON object)"
_LINE_BREAKS = {ord(c): f"\\u{ord(c):04x}" for c in "\x85\u2028\u2029"}


class AgentExit(Exception):
    """Ends the run; each subclass's `status` is what the run reports."""
    status: str


class Resolved(AgentExit):
    status = "resolved"


class LimitReached(AgentExit):
    status = "limit"

    def __init__(self, limit: str, message: str):
        super().__init__(message)
        self.limit = limit  # "steps", "tokens", "time" or "context"


class RepeatedFormatErrors(AgentExit):
    status = "format_errors"


class Stuck(AgentExit):
    status = "loop"


class ModelFailed(AgentExit):
    status = "backend_error"


class Answered(AgentExit):
    """Chat only: the model replied without a tool call, which ends the user's turn."""
    status = "answered"


class Stopped(AgentExit):
    """The user stopped the turn (Ctrl+C in the chat)."""
    status = "stopped"


class FormatError(Exception):
    """A reply whose tool calls could not be read; the message is sent back to the model."""


@dataclass
class Limits:
    max_steps: int = 50
    max_tokens: int | None = None  # prompt + completion tokens over the whole run
    max_seconds: float | None = None


@dataclass
class RunResult:
    status: str  # resolved, limit, format_errors, loop, backend_error
    message: str
    limit: str | None
    steps: int
    tokens: int
    seconds: float
    turns_well_formed: int  # model turns whose tool calls all parsed


Record = Callable[[dict], None]
Verify = Callable[[], "tuple[bool, str]"]  # (passed, what to tell the model when not)
# Asked before each tool call: None runs it, a string is sent back to the model instead.
Approve = Callable[[ToolCall], "str | None"]


class Agent:
    def __init__(self, backend: Backend, toolbox: Toolbox, system_prompt: str, *,
                 limits: Limits | None = None, record: Record | None = None,
                 verify: Verify | None = None, on_text: Callable[[str], None] | None = None,
                 approve: Approve | None = None, conversational: bool = False):
        self.backend = backend
        self.toolbox = toolbox
        self.system_prompt = system_prompt
        self.limits = limits or Limits()
        self.record = record or (lambda event: None)
        self.verify = verify
        self.on_text = on_text  # each text delta as it streams (the chat shows them live)
        self.approve = approve
        self.conversational = conversational  # a reply without a tool call ends the turn
        self.tools = toolbox.schemas() + [prompts.FINISH_SCHEMA]
        self.tool_names = {t["function"]["name"] for t in self.tools}
        self.messages: list[dict] = []
        self.steps = self.tokens = self.turns_well_formed = 0
        self._start = time.monotonic()
        self._format_errors = 0
        self._last_call: str | None = None
        self._same_calls = 0
        self._log: list[str] = []  # one line per tool call, for compaction summaries
        self._labels: dict[str, str] = {}  # tool_call_id -> short call description
        self._token_cache: dict[str, int] = {}
        self._tools_tokens = backend.count_tokens(json.dumps(self.tools))

    # ---- the loop -------------------------------------------------------------------------

    def run(self, task: str) -> RunResult:
        self.messages = [{"role": "system", "content": self.system_prompt},
                         {"role": "user", "content": task}]
        self._start = time.monotonic()
        return self._until_exit()

    def ask(self, text: str) -> RunResult:
        """Chat: one user turn on top of the conversation so far, run until the model answers
        without a tool call, calls finish, or a limit is hit (limits count per turn)."""
        if not self.messages:
            self.messages = [{"role": "system", "content": self.system_prompt}]
        self.messages.append({"role": "user", "content": text})
        self.steps = 0
        self._format_errors = 0
        self._start = time.monotonic()
        return self._until_exit()

    def _until_exit(self) -> RunResult:
        while True:
            try:
                self.step()
            except AgentExit as exc:
                return self._result(exc)

    def step(self) -> None:
        self._check_limits()
        self._fit_context()
        self.steps += 1
        try:
            calls, errors = self._read_calls(*self._query())
        except FormatError as exc:
            self._format_error(str(exc))
            return
        self._format_errors = 0
        for call in calls:
            self._execute(call)
        if errors:  # some calls were read, others not: say which after the results
            self.messages.append({"role": "user", "content": prompts.format_error(errors)})

    def _query(self):
        """One model call; returns the reply and the prompt's size in tokens."""
        context = self.context_tokens()
        try:
            reply = collect(self.backend.stream(self.messages, self.tools), on_text=self.on_text,
                            on_progress=lambda p: self.emit(
                "progress", stage=p.stage, done=p.done, total=p.total))
        except AgentExit:  # raised by on_text: the user stopped the reply
            raise
        except BackendError as exc:
            self.emit("error", message=str(exc))
            raise ModelFailed(f"{self.backend.name} backend failed: {exc}") from exc
        except Exception as exc:  # a backend bug or a reply it could not handle: still exit 3
            message = f"{type(exc).__name__}: {exc}"
            self.emit("error", message=message)
            raise ModelFailed(f"{self.backend.name} backend failed: {message}") from exc
        reply = _sanitized(reply)
        used = reply.usage.prompt_tokens + reply.usage.completion_tokens
        self.tokens += used or context + self.backend.count_tokens(reply.text)
        return reply, context

    def _read_calls(self, reply, context: int) -> tuple[list[ToolCall], list[str]]:
        """The reply's calls with ids (native or parsed) and the errors of calls that were not
        readable; records the turn and appends it. Raises FormatError when no call was read."""
        if reply.tool_calls:
            prose, calls, errors = reply.text, reply.tool_calls, []
        else:
            parsed = parse_tool_calls(reply.text, self.tool_names)
            prose, calls, errors = parsed.text, parsed.calls, parsed.errors
        calls = [ToolCall(c.name, _safe_arguments(c.arguments), c.id or f"call_{self.steps}_{i}")
                 for i, c in enumerate(calls)]
        self.emit("model", text=reply.text, prose=prose, finish_reason=reply.finish_reason,
                  tool_calls=[_call_dict(c) for c in calls],
                  usage={"prompt_tokens": reply.usage.prompt_tokens,
                         "completion_tokens": reply.usage.completion_tokens,
                         "cached_tokens": reply.usage.cached_tokens},
                  context_tokens=context)
        if not calls:
            self.messages.append({"role": "assistant", "content": reply.text})
            if errors:
                raise FormatError(prompts.format_error(errors))
            if self.conversational:
                raise Answered(prose)
            cut = " Your reply was cut off at the output limit: keep replies shorter." \
                if reply.finish_reason == "length" else ""
            raise FormatError(prompts.NO_TOOL_CALL + cut)
        # History keeps calls in the structured form, so the model sees well-formed calls.
        self.messages.append({"role": "assistant", "content": prose,
                              "tool_calls": [_openai_call(c) for c in calls]})
        if errors:
            self.emit("format_error", errors=errors, consecutive=0)
        else:
            self.turns_well_formed += 1
        return calls, errors

    def _format_error(self, message: str) -> None:
        self._format_errors += 1
        self.emit("format_error", errors=[message], consecutive=self._format_errors)
        self.messages.append({"role": "user", "content": message})
        if self._format_errors >= MAX_FORMAT_ERRORS:
            raise RepeatedFormatErrors(
                f"{MAX_FORMAT_ERRORS} replies in a row without a well-formed tool call")

    def _execute(self, call: ToolCall) -> None:
        self._check_repeat(call)
        started = time.monotonic()
        denied = self.approve(call) if self.approve and call.name != "finish" else None
        if denied is not None:
            output, ok = denied, False
        elif call.name == "finish":
            output, ok = self._finish(call)
        else:
            result = self.toolbox.call(call.name, self._within_time(call))
            output, ok = clean_text(result.output), result.ok  # file names may not be UTF-8
        if self._same_calls == MAX_IDENTICAL_CALLS - 1:
            self.emit("nudge", reason="repeated_call", call=_label(call))
            output = f"{output}\n\n{prompts.REPEAT_NUDGE}"
        self._labels[call.id] = _label(call)
        self._log.append(f"step {self.steps}: {_label(call)} -> {'ok' if ok else 'failed'}")
        self.messages.append({"role": "tool", "tool_call_id": call.id, "content": output})
        self.emit("tool", id=call.id, name=call.name, arguments=call.arguments, ok=ok,
                  output=output, seconds=round(time.monotonic() - started, 3))

    def _check_repeat(self, call: ToolCall) -> None:
        key = f"{call.name}:{_canonical(call.arguments)}"
        self._same_calls = self._same_calls + 1 if key == self._last_call else 1
        self._last_call = key
        if self._same_calls >= MAX_IDENTICAL_CALLS:
            raise Stuck(f"the model repeated the call {_label(call)} after being told not to")

    def _finish(self, call: ToolCall) -> tuple[str, bool]:
        summary = _arguments(call.arguments).get("summary", "")
        if self.verify is None:
            raise Resolved(str(summary))
        passed, report = self.verify()
        if passed:
            raise Resolved(str(summary))
        return report, False

    # ---- limits and context ---------------------------------------------------------------

    def _check_limits(self) -> None:
        limits = self.limits
        if self.steps >= limits.max_steps:
            self._limit("steps", f"step limit of {limits.max_steps} reached")
        if limits.max_tokens is not None and self.tokens >= limits.max_tokens:
            self._limit("tokens", f"token limit of {limits.max_tokens:,} reached "
                                  f"({self.tokens:,} used)")
        elapsed = time.monotonic() - self._start
        if limits.max_seconds is not None and elapsed >= limits.max_seconds:
            self._limit("time", f"time limit of {limits.max_seconds:g} s reached")

    def time_left(self) -> float | None:
        """Seconds left of --max-time (None: no time limit)."""
        if self.limits.max_seconds is None:
            return None
        return self.limits.max_seconds - (time.monotonic() - self._start)

    def _within_time(self, call: ToolCall) -> dict | str:
        """The call's arguments, a shell timeout cut to the time left, so --max-time holds."""
        left = self.time_left()
        args = _arguments(call.arguments)
        if left is None or call.name != "shell" or not args:
            return call.arguments
        if left <= 0:
            self._limit("time", f"time limit of {self.limits.max_seconds:g} s reached")
        try:
            asked = float(args.get("timeout") or self.toolbox.shell_timeout)
        except (TypeError, ValueError):
            return call.arguments  # the toolbox reports the bad timeout
        return {**args, "timeout": max(1, min(int(asked), math.ceil(left)))}

    def _limit(self, limit: str, message: str) -> None:
        self.emit("limit", limit=limit, message=message)
        raise LimitReached(limit, message)

    def context_budget(self) -> int:
        """Prompt tokens allowed: the window less room for the reply."""
        window = self.backend.context_window
        return window - min(4096, window // 4)

    def context_tokens(self) -> int:
        return self._tools_tokens + sum(self._message_tokens(m) for m in self.messages)

    def _message_tokens(self, message: dict) -> int:
        text = message.get("content") or ""
        if message.get("tool_calls"):
            text += json.dumps(message["tool_calls"])
        if text not in self._token_cache:
            self._token_cache[text] = self.backend.count_tokens(text) + MESSAGE_OVERHEAD
        return self._token_cache[text]

    def _fit_context(self) -> None:
        """Stub old tool outputs, then summarise old steps, before the context overflows."""
        budget = self.context_budget()
        before = self.context_tokens()
        if before <= budget:
            return
        self._stub_old_outputs()
        stubbed = self.context_tokens()
        self.emit("compaction", stage="stub_outputs", tokens_before=before, tokens_after=stubbed)
        if stubbed <= budget:
            return
        self._summarise_old_steps()
        summarised = self.context_tokens()
        self.emit("compaction", stage="summary", tokens_before=stubbed, tokens_after=summarised)
        if summarised > budget:
            self._limit("context", f"the conversation needs {summarised:,} tokens even after "
                                   f"compaction; the context window allows {budget:,}")

    def compact(self) -> tuple[int, int]:
        """Chat's /compact: stub the outputs of old tool calls now; (tokens before, after)."""
        before = self.context_tokens()
        self._stub_old_outputs()
        after = self.context_tokens()
        self.emit("compaction", stage="stub_outputs", tokens_before=before, tokens_after=after)
        return before, after

    def _last_assistant(self) -> int:
        return max((i for i, m in enumerate(self.messages) if m["role"] == "assistant"),
                   default=len(self.messages))

    def _stub_old_outputs(self) -> None:
        for message in self.messages[:self._last_assistant()]:
            if message["role"] != "tool" or message["tool_call_id"] not in self._labels:
                continue
            label = self._labels.pop(message["tool_call_id"])
            stub = prompts.COMPACTED_OUTPUT.format(
                call=label, tokens=self.backend.count_tokens(message["content"]))
            if len(stub) < len(message["content"]):
                message["content"] = stub

    def _summarise_old_steps(self) -> None:
        """Replace everything between the task and the latest turn by a list of the steps."""
        lines = self._log[-KEEP_LOG_LINES:]
        skipped = len(self._log) - len(lines)
        if skipped:
            lines.insert(0, f"({skipped} earlier steps not listed)")
        summary = {"role": "user", "content": "\n".join([prompts.SUMMARY_HEADER, *lines])}
        self.messages = self.messages[:2] + [summary] + self.messages[self._last_assistant():]

    # ---- reporting ------------------------------------------------------------------------

    def emit(self, kind: str, **fields) -> None:
        """Record an event stamped with the step count and the seconds since the run began."""
        self.record({"type": kind, "step": self.steps,
                     "t": round(time.monotonic() - self._start, 3), **fields})

    def _result(self, exc: AgentExit) -> RunResult:
        return RunResult(status=exc.status, message=str(exc),
                         limit=getattr(exc, "limit", None), steps=self.steps, tokens=self.tokens,
                         seconds=round(time.monotonic() - self._start, 3),
                         turns_well_formed=self.turns_well_formed)


class Trajectory:
    """The run's events as JSONL, each line flushed as soon as it is written."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "w", encoding="utf-8")

    def write(self, event: dict) -> None:
        self._file.write(json_line(event) + "\n")
        self._file.flush()

    def __enter__(self) -> Trajectory:
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()


# ---- helpers ------------------------------------------------------------------------------


def json_line(event: dict) -> str:
    """`event` as one line of JSON that encodes as UTF-8 whatever it holds: lone surrogates (a
    non-UTF-8 file or directory name) and the characters str.splitlines() breaks at (U+0085,
    U+2028, U+2029) are written as escapes; both only occur inside JSON strings."""
    line = json.dumps(event, ensure_ascii=False, default=str).translate(_LINE_BREAKS)
    return _SURROGATES.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


def clean_text(text: str) -> str:
    """`text` with lone surrogates (from a model, or a non-UTF-8 file name) as U+FFFD."""
    return _SURROGATES.sub("\ufffd", text) if isinstance(text, str) else str(text)


def _sanitized(reply):
    """The reply's text, tool names and ids without lone surrogates (arguments: see
    _safe_arguments)."""
    reply.text = clean_text(reply.text)
    reply.tool_calls = [ToolCall(clean_text(c.name), c.arguments, clean_text(c.id or ""))
                        for c in reply.tool_calls]
    return reply


def _safe_arguments(arguments):
    """Arguments that json can dump and the toolbox can check: a dict at most MAX_ARG_DEPTH
    deep with clean strings, or a string (the toolbox reports one that is not a JSON object)."""
    value = arguments
    if isinstance(arguments, str):
        arguments = clean_text(arguments)
        try:
            value = json.loads(arguments)
        except RecursionError:
            return _TOO_DEEP
        except ValueError:
            return arguments
        if not isinstance(value, dict):
            return arguments
    if _deeper_than(value, MAX_ARG_DEPTH):
        return _TOO_DEEP
    if not isinstance(value, dict):  # the toolbox says it must be an object
        return "" if value is None else clean_text(json.dumps(value, default=str)[:1000])
    return _clean_json(value)


def _deeper_than(value, limit: int) -> bool:
    """Whether `value` nests containers more than `limit` deep (iterative: no recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth >= limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def _clean_json(value):
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): _clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_json(v) for v in value]
    return value


def _arguments(arguments: dict | str) -> dict:
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments or "{}")
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _canonical(arguments: dict | str) -> str:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            return arguments
    return json.dumps(arguments, sort_keys=True, ensure_ascii=False)


def _label(call: ToolCall) -> str:
    """`view(path='a.py')`: the call, its arguments clipped."""
    args = _arguments(call.arguments)
    shown = ", ".join(f"{k}={_clip(repr(v))}" for k, v in args.items())
    return f"{call.name}({shown})"


def _clip(text: str) -> str:
    return text if len(text) <= ARG_PREVIEW else text[:ARG_PREVIEW - 1] + "…"


def _call_dict(call: ToolCall) -> dict:
    return {"id": call.id, "name": call.name, "arguments": call.arguments}


def _openai_call(call: ToolCall) -> dict:
    arguments = call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)
    return {"id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": arguments}}


# ---- building the system prompt -----------------------------------------------------------


def user_cache_dir(kind: str, root: Path) -> Path:
    """A per-repository folder under the user's cache (never inside the repository)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(os.fsencode(root.resolve())).hexdigest()[:16]
    return cache / "loopcli" / kind / f"{root.resolve().name}-{digest}"


def read_agents_md(root: Path) -> str:
    path = root / "AGENTS.md"
    if not path.is_file():
        return ""
    data = path.read_bytes()[:prompts.AGENTS_MD_MAX_BYTES]
    return data.decode("utf-8", "replace")


def build_system_prompt(toolbox: Toolbox, backend: Backend, issue: str,
                        test_cmd: str | None = None, map_cache: Path | None = None) -> str:
    """Tool docs, AGENTS.md and a repo map ranked towards the identifiers the issue names."""
    root = toolbox.workspace.root
    mentioned = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]{2,}", issue))
    budget = max(128, min(4096, backend.context_window // 8))
    repo_map = RepoMap(toolbox.workspace, cache_dir=map_cache or user_cache_dir("repomap", root))
    return prompts.system_prompt(
        str(root), toolbox.schemas() + [prompts.FINISH_SCHEMA],
        repo_map=repo_map.render(mentioned_idents=mentioned, token_budget=budget,
                                 count_tokens=backend.count_tokens),
        agents_md=read_agents_md(root), test_cmd=test_cmd,
    )
