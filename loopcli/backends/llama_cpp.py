"""GGUF models that llama.cpp runs (llama, qwen2, ... and our R = 1 exports), in process.

Uses llama-cpp-python's chat completion with the GGUF's chat template (or `chat_format`).
Tool calls come back natively only with a function-calling `chat_format`
(e.g. "chatml-function-calling"); with the GGUF's own template the model writes them as text
and the agent parses them. LoopCoder (PLT) files are refused: only the local backend runs them.

The context length is `n_ctx` (`--ctx`) when given, else the model's training context capped
to fit memory (gguf_context.default_context).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from llama_cpp import Llama

from loopcli.runtime.errors import ModelError
from loopcli.runtime.gguf_format import PLT
from loopcli.runtime.gguf_load import check_gguf

from .base import DEFAULT_MAX_TOKENS, BackendError, Event, Usage
from .gguf_context import available_memory, default_context, read_metadata
from .openai_compat import StreamAssembler


class _CountingLlama(Llama):
    """Streamed chat completions carry no usage, so count tokens where they are made."""

    prompt_tokens = completion_tokens = 0

    def generate(self, tokens, *args, **kwargs):
        self.prompt_tokens, self.completion_tokens = len(tokens), 0
        for token in super().generate(tokens, *args, **kwargs):
            self.completion_tokens += 1  # every sampled token, the end-of-generation one included
            yield token


class LlamaCppBackend:
    name = "llama.cpp"

    def __init__(self, model_path: str | Path, n_ctx: int | None = None, n_threads: int | None = None,
                 chat_format: str | None = None, n_gpu_layers: int = 0, max_tokens: int | None = None,
                 temperature: float = 0.0, seed: int | None = None, **llama_kwargs):
        self.path = Path(model_path)
        try:
            check_gguf(self.path)  # llama.cpp never sees a file we refuse
        except ModelError as exc:
            raise BackendError(str(exc)) from None
        meta = read_metadata(self.path)
        arch = meta.arch
        if n_ctx is None:
            n_ctx = default_context(meta, self.path.stat().st_size, available_memory())
        if arch == PLT:
            raise BackendError(f"{self.path} is a LoopCoder (PLT) model, which llama.cpp cannot run; "
                               "use the local backend for it")
        try:
            self.llm = _CountingLlama(model_path=str(self.path), n_ctx=n_ctx, n_threads=n_threads,
                                      chat_format=chat_format, n_gpu_layers=n_gpu_layers,
                                      verbose=False, **llama_kwargs)
        except ValueError as exc:  # llama-cpp-python's only signal; the reason went to its log
            raise BackendError(f"llama.cpp could not load {self.path} (GGUF architecture {arch!r}): "
                               f"{exc}. Is the architecture one this llama-cpp-python knows?") from None
        self.context_window = self.llm.n_ctx()
        # a cap per call: without one llama.cpp generates until the context is full
        self.max_tokens, self.temperature, self.seed = max_tokens or DEFAULT_MAX_TOKENS, temperature, seed

    def stream(self, messages: list[dict], tools: list[dict]) -> Iterator[Event]:
        assembler = StreamAssembler()
        try:
            chunks = self.llm.create_chat_completion(
                messages=messages, tools=tools or None, stream=True, max_tokens=self.max_tokens,
                temperature=self.temperature, seed=self.seed)
            for chunk in chunks:
                yield from assembler.feed(chunk)
        except (ValueError, RuntimeError) as exc:  # context overflow, template errors, decode failures
            raise BackendError(f"llama.cpp failed on {self.path.name}: {exc}") from None
        yield from assembler.tool_calls()
        yield Usage(self.llm.prompt_tokens, self.llm.completion_tokens)
        yield assembler.finish()

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode(), add_bos=False, special=True))
