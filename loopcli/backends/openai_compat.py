"""Any OpenAI-compatible chat server as a backend: vLLM, llama-server, llama_cpp.server, ollama.

Replies are streamed; native tool calls arrive as per-index fragments (id and name once, the
arguments JSON in pieces) and are assembled here into whole `ToolCall`s. A server that does not
call tools natively streams the call as text, which the agent parses (loopcli.toolcalls).

Server errors become BackendErrors carrying the server's own message: HTTP 4xx/5xx answers,
error objects sent inside the stream (``{"error": ...}``, vLLM's ``{"object": "error", ...}``),
and a context overflow, which is named as such. A stream that ends without any output or
finish reason (llama-server reports errors on a stream in a form SSE clients skip) is asked
again without streaming, once, to get the server's error.

The context window is `context_window` when given (``--ctx``); otherwise the server's, read
on first use from vLLM's ``/v1/models`` (``max_model_len``) or llama.cpp server's ``/props``
(``default_generation_settings.n_ctx`` or ``n_ctx``), else DEFAULT_CONTEXT.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlparse

import openai

from .base import BackendError, Event, Finish, TextDelta, ToolCall, Usage

MAX_CALLS = 256  # tool-call slots per reply; a larger index from a server starts a new slot
# What a malformed stream raises while openai's client decodes it: a data line that is not
# JSON (JSONDecodeError), or JSON of a shape the client's models reject.
MALFORMED_STREAM = (ValueError, TypeError, AttributeError, KeyError, RecursionError)
START_HINT = ("Is the server running? Start one with `python -m llama_cpp.server --model MODEL.gguf "
              "--port 8000`, `llama-server -m MODEL.gguf --port 8000` or `vllm serve MODEL`, "
              "or pass the right base URL")


class StreamAssembler:
    """Turns OpenAI-style chat completion chunks (as dicts) into events.

    `feed` yields text deltas at once; tool calls are whole only at the end (`tool_calls`).
    `finish_reason`, `usage` and `chunks` (how many chunks carried output) are kept for the end.
    """

    def __init__(self):
        self._calls: dict[int, dict] = {}
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.chunks = 0

    def feed(self, chunk: dict) -> Iterator[TextDelta]:
        """Pieces of the wrong type (a server bug or a hostile server) are skipped, not fatal."""
        if not isinstance(chunk, dict):
            return
        u = chunk.get("usage")
        if isinstance(u, dict):
            self.usage = Usage(_count(u.get("prompt_tokens")), _count(u.get("completion_tokens")))
        for choice in _dicts(chunk.get("choices")):
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            content = _text(delta.get("content"))
            fragments = _dicts(delta.get("tool_calls"))
            if content or fragments:
                self.chunks += 1
            if content:
                yield TextDelta(content)
            for fragment in fragments:
                self._add_fragment(fragment)
            self.finish_reason = _text(choice.get("finish_reason")) or self.finish_reason

    def _add_fragment(self, fragment: dict) -> None:
        index = fragment.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < MAX_CALLS:
            index = len(self._calls)
        slot = self._calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
        fn = fragment.get("function") if isinstance(fragment.get("function"), dict) else {}
        slot["id"] = slot["id"] or _text(fragment.get("id"))
        # the name comes whole (llama-cpp-python repeats it in every fragment): keep the first
        slot["name"] = slot["name"] or _text(fn.get("name"))
        slot["arguments"] += _text(fn.get("arguments"))

    def finish(self) -> Finish:
        """The server's finish reason; some servers send none after tool calls."""
        return Finish(self.finish_reason or ("tool_calls" if self._calls else "stop"))

    def tool_calls(self) -> list[ToolCall]:
        return [ToolCall(c["name"], _arguments(c["arguments"]), c["id"] or f"call_{i}")
                for i, c in sorted(self._calls.items())]


def _dicts(value) -> list[dict]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _text(value) -> str:
    return value if isinstance(value, str) else ""


def _count(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _arguments(raw: str) -> dict | str:
    """The arguments object, or the raw string when it is not a JSON object (the agent reports it)."""
    try:
        value = json.loads(raw) if raw.strip() else {}
    except (json.JSONDecodeError, RecursionError):
        return raw
    return value if isinstance(value, dict) else raw


def _api_url(base_url: str) -> str:
    """Servers put the API under /v1; accept a bare http://host:port too."""
    url = base_url.rstrip("/")
    return url + "/v1" if urlparse(url).path in ("", "/") else url


DEFAULT_CONTEXT = 32768  # when the server does not say
DISCOVERY_TIMEOUT = 10.0  # seconds for each context-window query
MAX_CONTEXT = 1 << 24  # a larger number from a server is not believed
_OVERFLOW = re.compile(r"context (length|size|window)|exceed_context|context_length_exceeded|"
                       r"maximum context|too many tokens|prompt is too long", re.IGNORECASE)


class OpenAIBackend:
    name = "openai"

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 timeout: float = 600.0, max_retries: int = 2, context_window: int | None = None,
                 max_tokens: int | None = None, temperature: float | None = None):
        self.base_url = _api_url(base_url)
        self.model = model
        self.timeout = timeout
        self._context_window = context_window
        self._models: list[dict] | None = None
        self.max_tokens, self.temperature = max_tokens, temperature
        # local servers ignore the key, but the client insists on one
        self.api_key = api_key or "not-needed"
        self.client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key,
                                    timeout=timeout, max_retries=max_retries)

    @property
    def context_window(self) -> int:
        """The given window, else the server's (asked once), else DEFAULT_CONTEXT."""
        if self._context_window is None:
            self._context_window = self._server_context() or DEFAULT_CONTEXT
        return self._context_window

    @context_window.setter
    def context_window(self, tokens: int) -> None:
        self._context_window = tokens

    def stream(self, messages: list[dict], tools: list[dict]) -> Iterator[Event]:
        request = {"model": self._model_name(), "messages": messages, "stream": True,
                   "stream_options": {"include_usage": True}}
        if tools:
            request["tools"] = tools
        if self.max_tokens is not None:
            request["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            request["temperature"] = self.temperature
        assembler = StreamAssembler()
        try:
            with self.client.chat.completions.create(**request) as chunks:
                for chunk in chunks:
                    data = chunk.model_dump(exclude_none=True)
                    self._raise_error_chunk(data)
                    yield from assembler.feed(data)
        except openai.OpenAIError as exc:
            raise self._error(exc) from None
        except MALFORMED_STREAM as exc:
            raise BackendError(f"the model server at {self.base_url} sent a malformed stream "
                               f"({type(exc).__name__}: {str(exc)[:200]}); check its log and "
                               "that it speaks the OpenAI chat API") from None
        if not assembler.chunks and assembler.finish_reason is None:
            self._raise_unexplained_end(request)
        yield from assembler.tool_calls()
        yield assembler.usage or self._estimated_usage(messages, tools, assembler.chunks)
        yield assembler.finish()

    def count_tokens(self, text: str) -> int:
        return -(-len(text) // 4)  # about 4 characters per token for code and English

    def _estimated_usage(self, messages, tools, chunks: int) -> Usage:
        """For servers that send no usage (llama_cpp.server): characters / 4 for the prompt and
        one token per streamed chunk, which is how llama.cpp-style servers stream."""
        prompt = json.dumps(messages, ensure_ascii=False) + (json.dumps(tools) if tools else "")
        return Usage(self.count_tokens(prompt), chunks)

    def _model_name(self) -> str:
        """The configured model, else the first one the server lists (they usually serve one)."""
        if self.model is None:
            try:
                models = [m.get("id") for m in self._listed_models()]
            except openai.OpenAIError as exc:
                raise self._error(exc) from None
            models = [m for m in models if isinstance(m, str) and m]
            if not models:
                raise BackendError(f"the model server at {self.base_url} lists no models; "
                                   "pass the model name explicitly")
            self.model = models[0]
        return self.model

    def _listed_models(self) -> list[dict]:
        if self._models is None:
            self._models = [m.model_dump() for m in self.client.models.list()]
        return self._models

    def _server_context(self) -> int | None:
        """The context window the server reports: vLLM's max_model_len for the model in use,
        else llama.cpp server's /props. None when it says nothing readable."""
        try:
            models = self._listed_models()
        except openai.OpenAIError:
            models = []
        mine = [m for m in models if self.model is None or m.get("id") == self.model]
        for entry in mine[:1]:
            if _tokens(entry.get("max_model_len")):
                return _tokens(entry.get("max_model_len"))
        root = self.base_url.removesuffix("/v1")
        request = urllib.request.Request(f"{root}/props",
                                         headers={"Authorization": f"Bearer {self.api_key}"})
        try:
            with urllib.request.urlopen(request, timeout=DISCOVERY_TIMEOUT) as reply:
                props = json.loads(reply.read(1 << 20))
        except (OSError, ValueError):  # unreachable, HTTP errors, not JSON
            return None
        if not isinstance(props, dict):
            return None
        settings = props.get("default_generation_settings")
        from_settings = _tokens(settings.get("n_ctx")) if isinstance(settings, dict) else None
        return from_settings or _tokens(props.get("n_ctx"))

    def _raise_error_chunk(self, data: dict) -> None:
        """An error sent as a stream chunk ends the turn with the server's message."""
        error = data.get("error") if "error" in data else (
            data if data.get("object") == "error" else None)
        if error is not None:
            raise self._server_error(None, error)

    def _raise_unexplained_end(self, request: dict) -> None:
        """The stream ended with nothing: ask once without streaming to learn why."""
        try:
            once = {k: v for k, v in request.items() if k != "stream_options"}
            self.client.chat.completions.create(**{**once, "stream": False, "max_tokens": 1})
        except openai.OpenAIError as exc:
            raise self._error(exc) from None
        raise BackendError(f"the model server at {self.base_url} ended its reply without any "
                           "output or finish reason; check its log")

    def _server_error(self, status: int | None, body) -> BackendError:
        """The server's own message, and what to do when it is a context overflow."""
        where = f"the model server at {self.base_url}"
        message = _message(body)
        answered = f"{where} answered HTTP {status}" if status else f"{where} reported an error"
        if _OVERFLOW.search(message):
            inner = body.get("error", body) if isinstance(body, dict) else None
            told = _tokens(inner.get("n_ctx")) if isinstance(inner, dict) else None
            if told:
                self._context_window = told
            window = f"{told:,}" if told else "its"
            return BackendError(
                f"{answered}: the conversation does not fit {window} context window: {message}. "
                "Start the server with a larger context (vLLM --max-model-len, llama-server -c), "
                "or pass --ctx with the server's window so that loopcli compacts in time.")
        return BackendError(f"{answered}: {message}")

    def _error(self, exc: openai.OpenAIError) -> BackendError:
        where = f"the model server at {self.base_url}"
        if isinstance(exc, openai.APITimeoutError):
            return BackendError(f"{where} did not answer within {self.timeout:g} s; it may be "
                                "overloaded or still loading. Raise the timeout or check its log.")
        if isinstance(exc, openai.APIConnectionError):
            cause = f" ({exc.__cause__})" if exc.__cause__ else ""
            return BackendError(f"cannot reach {where}{cause}. {START_HINT}.")
        if isinstance(exc, openai.AuthenticationError):
            return BackendError(f"{where} rejected the API key (HTTP 401); pass the right key "
                                "(api_key / OPENAI_API_KEY).")
        if isinstance(exc, openai.NotFoundError):
            return BackendError(f"{where} answered HTTP 404 ({exc.message}); check that the base URL "
                                f"ends in /v1 and that it serves the model {self.model!r}.")
        if isinstance(exc, openai.APIStatusError):
            return self._server_error(exc.status_code, exc.body if exc.body is not None
                                      else exc.response.text)
        if isinstance(exc, openai.APIError) and exc.body is not None:  # an error inside the stream
            return self._server_error(None, exc.body)
        return BackendError(f"{where} failed: {exc}")


def _tokens(value) -> int | None:
    """A context size a server sent, if it is a plausible one."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_CONTEXT:
        return None
    return value


def _message(body) -> str:
    """The human part of an error body: OpenAI's error.message, vLLM's message, FastAPI's
    detail, or the text itself (clipped: it is the server's, not ours)."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            for key in ("message", "detail", "msg"):
                if isinstance(inner.get(key), str) and inner[key].strip():
                    return inner[key].strip()[:1000]
        elif isinstance(inner, str) and inner.strip():
            return inner.strip()[:1000]
        if isinstance(body.get("detail"), str):
            return body["detail"][:1000]
    text = body if isinstance(body, str) else json.dumps(body, default=str)
    return " ".join(text.split())[:1000] or "(no message)"
