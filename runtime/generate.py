"""Token generation on top of the decode paths: sampling, the token loop, streamed text.

`Sampler` turns one logits vector into a token: a repetition penalty on the tokens seen, then
greedy at temperature 0, otherwise seeded sampling after temperature, top-k, top-p and min-p.
`generate_tokens` runs a model: the reference `PLTModel` (prefill, then one `fused_step` per
token) or an `Engine` (its own `generate`). `Generation` adds what a chat turn needs: stop on EOS ids, stop
strings and a token limit, and text deltas that never split a UTF-8 character.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from .decode import DecodeState, fused_step, prefill
from .model import PLTModel


@dataclass
class Sampler:
    temperature: float = 0.0  # 0: greedy (argmax)
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    seed: int | None = None  # None: a fresh random seed
    min_p: float = 0.0  # 0: off; else drop tokens below min_p x the top probability
    repetition_penalty: float = 1.0  # 1: off; seen tokens' logits divided (> 0) or multiplied

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        self._gen = torch.Generator()
        if self.seed is None:
            self._gen.seed()
        else:
            self._gen.manual_seed(self.seed)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution sampled from: softmax(logits / T), zero outside top-k and top-p."""
        if self.temperature == 0:
            return torch.nn.functional.one_hot(torch.argmax(logits), logits.numel()).float()
        logits = logits.float() / self.temperature
        if self.top_k and self.top_k < logits.numel():
            kth = torch.topk(logits, self.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        p = torch.softmax(logits, dim=-1)
        if self.top_p < 1:
            sorted_p, order = torch.sort(p, descending=True)
            # keep the smallest head whose mass reaches top_p (the first token always stays)
            drop_sorted = torch.cumsum(sorted_p, 0) - sorted_p >= self.top_p
            p = p.masked_fill(torch.empty_like(drop_sorted).scatter_(0, order, drop_sorted), 0.0)
            p = p / p.sum()
        if self.min_p > 0:
            p = p.masked_fill(p < self.min_p * p.max(), 0.0)
            p = p / p.sum()
        return p

    def penalize(self, logits: torch.Tensor, history: Sequence[int]) -> torch.Tensor:
        """CTRL-style penalty (as llama.cpp and transformers): a seen token's positive logit is
        divided by the penalty, a negative one multiplied."""
        if self.repetition_penalty == 1.0 or not history:
            return logits
        seen = torch.tensor(sorted(set(history)), dtype=torch.long, device=logits.device)
        logits = logits.float().clone()
        vals = logits[seen]
        logits[seen] = torch.where(vals > 0, vals / self.repetition_penalty, vals * self.repetition_penalty)
        return logits

    def __call__(self, logits: torch.Tensor, history: Sequence[int] = ()) -> int:
        logits = self.penalize(logits, history)
        if self.temperature == 0:
            return int(torch.argmax(logits))
        return int(torch.multinomial(self.probs(logits), 1, generator=self._gen))


def generate_tokens(model: PLTModel, prompt_ids: Sequence[int], sampler: Sampler,
                    max_new: int) -> Iterator[int]:
    """Yield up to `max_new` sampled tokens: prefill the prompt, then one fused step per token.

    The caller stops early by no longer iterating; a token is fed back only when the next one
    is asked for.
    """
    if not prompt_ids:
        raise ValueError("the prompt is empty; generation needs at least one token")
    if not isinstance(model, PLTModel):
        yield from model.generate(prompt_ids, sampler, max_new)
        return
    state = DecodeState.new(model, len(prompt_ids) + max_new)
    logits = prefill(model, state, torch.tensor(list(prompt_ids)))[-1]
    history = list(prompt_ids)
    for i in range(max_new):
        token = sampler(logits, history)
        history.append(token)
        yield token
        if i + 1 < max_new:
            logits = fused_step(model, state, token)


class TextStream:
    """Token ids in, text deltas out: whole characters only, stop strings held back and cut.

    Decoding re-reads only the last few ids (the way text-generation-inference does it), so a
    delta is emitted once the tokens since the last delta decode without a trailing U+FFFD.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str] = ()):
        self.decode = decode
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self._prefix = self._read = 0  # ids[prefix:read] decode to text already seen
        self._held = ""  # text that may be the start of a stop string
        self.stopped = False

    def push(self, token: int) -> str:
        self.ids.append(token)
        seen = self.decode(self.ids[self._prefix:self._read])
        text = self.decode(self.ids[self._prefix:])
        if len(text) <= len(seen) or text.endswith("\ufffd"):
            return ""  # an incomplete UTF-8 sequence: wait for the next token
        self._prefix, self._read = self._read, len(self.ids)
        return self._release(text[len(seen):])

    def flush(self) -> str:
        """The text still held at the end (a partial stop string, bytes that never completed)."""
        if self.stopped:
            return ""
        seen = self.decode(self.ids[self._prefix:self._read])
        rest = self._held + self.decode(self.ids[self._prefix:])[len(seen):]
        self._held = ""
        return rest

    def _release(self, new: str) -> str:
        text = self._held + new
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return text[:min(hits)]
        keep = max((n for s in self.stop for n in range(len(s) - 1, 0, -1)
                    if text.endswith(s[:n])), default=0)
        self._held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]


class Generation:
    """One completion as text deltas; after iterating, `finish_reason` and `completion_tokens`.

    finish_reason is "stop" (an EOS id or a stop string) or "length" (max_new tokens);
    completion_tokens counts every sampled token, the EOS token included.
    """

    def __init__(self, model: PLTModel, decode: Callable[[list[int]], str], prompt_ids: Sequence[int],
                 sampler: Sampler, max_new: int, eos_ids: Sequence[int] = (), stop: Sequence[str] = ()):
        self.model, self.prompt_ids, self.sampler, self.max_new = model, prompt_ids, sampler, max_new
        self.eos_ids = set(eos_ids)
        self.text = TextStream(decode, stop)
        self.finish_reason = "length"
        self.completion_tokens = 0

    def __iter__(self) -> Iterator[str]:
        for token in generate_tokens(self.model, self.prompt_ids, self.sampler, self.max_new):
            self.completion_tokens += 1
            if token in self.eos_ids:
                self.finish_reason = "stop"
                break
            delta = self.text.push(token)
            if delta:
                yield delta
            if self.text.stopped:
                self.finish_reason = "stop"
                return
        tail = self.text.flush()
        if tail:
            yield tail


def stop_ids(cfg, tokenizer) -> set[int]:
    """Every end-of-sequence id: the config's, the tokenizer's `eos_ids` and its eos token."""
    ids = set(cfg.eos_token_ids) | set(tokenizer.eos_ids)
    if tokenizer.eos_token is not None:
        ids.add(tokenizer.token_to_id(tokenizer.eos_token))
    ids.discard(None)  # an eos_token the vocabulary lacks
    return ids
