"""Our in-process runtime as a backend: the reference model on CPU, slow but exact.

It is the only backend that runs LoopCoder (PLT) models today. The prompt is the model's own
chat template rendered with the tool schemas; the model writes tool calls as text, which the
agent parses (loopcli.toolcalls).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from loopcli.runtime.chat import render_chat
from loopcli.runtime.errors import ModelError
from loopcli.runtime.generate import Generation, Sampler
from loopcli.runtime.model import load_model
from loopcli.runtime.tokenizer import Tokenizer

from .base import BackendError, Event, Finish, TextDelta, Usage


class LocalBackend:
    name = "local"

    def __init__(self, model_path: str | Path, max_context: int = 32768, max_tokens: int = 1024,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int | None = None, stop: Sequence[str] = ()):
        try:
            self.model = load_model(model_path)
            self.tokenizer = Tokenizer.load(model_path)
        except ModelError as exc:
            raise BackendError(str(exc)) from None
        if not self.tokenizer.chat_template:
            raise BackendError(f"{model_path} has no chat template; the local backend needs one "
                               "to build prompts (re-convert from a checkpoint that has it)")
        cfg = self.model.cfg
        self.context_window = min(cfg.max_position_embeddings, max_context)
        self.eos_ids = set(cfg.eos_token_ids) | self.tokenizer.eos_ids
        self.max_tokens, self.stop = max_tokens, tuple(stop)
        self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        Sampler(**self.sampling)  # reject bad sampling options now, not on the first turn

    def stream(self, messages: list[dict], tools: list[dict]) -> Iterator[Event]:
        ids = self._prompt_ids(messages, tools)
        room = self.context_window - len(ids)
        if room <= 0:
            raise BackendError(f"the prompt has {len(ids)} tokens but the context window is "
                               f"{self.context_window}; shorten the conversation")
        gen = Generation(self.model, self.tokenizer.decode, ids, Sampler(**self.sampling),
                         min(self.max_tokens, room), self.eos_ids, self.stop)
        for delta in gen:
            yield TextDelta(delta)
        yield Usage(len(ids), gen.completion_tokens)
        yield Finish(gen.finish_reason)

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
        return tok.encode(prompt, add_bos=tok.add_bos and not prompt.startswith(tok.bos_token))
