"""Our in-process runtime as a backend: the engine (loopcli.runtime.engine) on CPU.

It is the only backend that runs LoopCoder (PLT) models today. The prompt is the model's own
chat template rendered with the tool schemas; the model writes tool calls as text, which the
agent parses (loopcli.toolcalls). The engine keeps the last call's state, so an agent step
prefills only what the conversation added since (reported as `cached_tokens` in the usage).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from loopcli.runtime.chat import render_chat
from loopcli.runtime.engine import Cancelled, load
from loopcli.runtime.errors import ModelError
from loopcli.runtime.generate import Sampler, TextStream, stop_ids
from loopcli.runtime.tokenizer import Tokenizer

from .base import DEFAULT_MAX_TOKENS, BackendError, Event, Finish, Progress, TextDelta, Usage

DECODE_PROGRESS_EVERY = 32  # generated tokens between progress events


class LocalBackend:
    name = "local"

    def __init__(self, model_path: str | Path, max_context: int = 32768, max_tokens: int | None = None,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                 repetition_penalty: float = 1.0, seed: int | None = None, stop: Sequence[str] = (),
                 threads: int | None = None):
        try:
            self.engine = load(model_path, max_context=max_context, threads=threads)
            self.tokenizer = Tokenizer.load(model_path)
        except ModelError as exc:
            raise BackendError(str(exc)) from None
        self.model = self.engine  # what generate_tokens runs
        if not self.tokenizer.chat_template:
            raise BackendError(f"{model_path} has no chat template; the local backend needs one "
                               "to build prompts (re-convert from a checkpoint that has it)")
        self.context_window = self.engine.max_context
        self.eos_ids = stop_ids(self.engine.cfg, self.tokenizer)
        self.max_tokens, self.stop = max_tokens or DEFAULT_MAX_TOKENS, tuple(stop)
        self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                             repetition_penalty=repetition_penalty, seed=seed)
        Sampler(**self.sampling)  # reject bad sampling options now, not on the first turn
        self.cancel = threading.Event()  # set from another thread to stop the current call

    def stream(self, messages: list[dict], tools: list[dict]) -> Iterator[Event]:
        ids = self._prompt_ids(messages, tools)
        room = self.context_window - len(ids)
        if room <= 0:
            raise BackendError(f"the prompt has {len(ids)} tokens but the context window is "
                               f"{self.context_window}; shorten the conversation")
        self.cancel.clear()
        max_new = min(self.max_tokens, room)
        text = TextStream(self.tokenizer.decode, self.stop)
        finish, completion, cached = "length", 0, None
        try:
            for kind, *value in self.engine.events(ids, Sampler(**self.sampling), max_new, self.cancel):
                if kind == "prefill":
                    cached = self.engine.last_reused
                    yield Progress("prefill", value[0], value[1])
                    continue
                if cached is None:  # the prompt was already in the state: nothing prefilled
                    cached = self.engine.last_reused
                completion += 1
                if value[0] in self.eos_ids:
                    finish = "stop"
                    break
                delta = text.push(value[0])
                if delta:
                    yield TextDelta(delta)
                if text.stopped:
                    finish = "stop"
                    break
                if completion % DECODE_PROGRESS_EVERY == 0:
                    yield Progress("decode", completion, max_new)
        except Cancelled:
            finish = "cancelled"
        except ModelError as exc:
            raise BackendError(str(exc)) from None
        tail = text.flush()
        if tail:
            yield TextDelta(tail)
        yield Usage(len(ids), completion, cached or 0)
        yield Finish(finish)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_bos=False))

    def _prompt_ids(self, messages: list[dict], tools: list[dict]) -> list[int]:
        tok = self.tokenizer
        try:
            prompt = render_chat(tok.chat_template, messages, tools or None, add_generation_prompt=True,
                                 bos_token=tok.bos_token or "", eos_token=tok.eos_token or "")
        except ModelError as exc:
            raise BackendError(str(exc)) from None
        # templates that write the BOS themselves must not get a second one
        return tok.encode(prompt, add_bos=tok.add_bos and not (tok.bos_token and prompt.startswith(tok.bos_token)))
