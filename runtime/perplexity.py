"""Perplexity by llama.cpp's `llama-perplexity` method, on the reference forward or the engine.

The text is tokenized once and cut into chunks of `ctx` tokens; each chunk is scored from
scratch (with BOS in its first slot when the tokenizer adds one), and only the second half of
each chunk counts, so every scored token sees at least ctx/2 tokens of context.
With a `base` model (llama-perplexity's KL mode), the same positions also give the mean
KL(base || model) and the share of positions where both put the same token on top.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import ModelError
from .model import PLTModel
from .tokenizer import Tokenizer


@dataclass
class PerplexityResult:
    ppl: float
    n_tokens: int
    nll: list[float]
    mean_kld: float | None = None  # KL(base || model), nats per scored token
    same_top1: float | None = None  # share of scored tokens with the same argmax


def chunk_logits(model, chunk: torch.Tensor) -> torch.Tensor:
    """Logits [T, V] of one chunk from a cold state: a PLTModel or an Engine."""
    if isinstance(model, PLTModel):
        return model(chunk[None])[0].float()
    return model.logits(chunk.tolist()).float()


def perplexity(
    model: PLTModel,
    tokenizer: Tokenizer,
    text: str,
    ctx: int,
    on_chunk: Callable[[int, int], None] | None = None,
    base=None,
) -> PerplexityResult:
    if ctx < 4:
        raise ModelError(f"--ctx must be at least 4, got {ctx}")
    tokens = tokenizer.encode(text, add_bos=False)
    n_chunks = len(tokens) // ctx
    if n_chunks == 0:
        raise ModelError(
            f"the text has {len(tokens)} tokens, fewer than one chunk of --ctx {ctx}; "
            "use a longer text or a smaller --ctx"
        )
    first = ctx // 2
    nll: list[float] = []
    kld: list[float] = []
    same: list[bool] = []
    for c in range(n_chunks):
        chunk = torch.tensor(tokens[c * ctx:(c + 1) * ctx])
        if tokenizer.add_bos:
            chunk[0] = tokenizer.bos_id
        # logits at j predict token j + 1; score j in [first, ctx - 1)
        logp = F.log_softmax(chunk_logits(model, chunk)[first:ctx - 1], dim=-1)
        target = chunk[first + 1:ctx]
        nll.extend((-logp.gather(1, target[:, None]).squeeze(1)).tolist())
        if base is not None:
            base_logp = F.log_softmax(chunk_logits(base, chunk)[first:ctx - 1], dim=-1)
            kld.extend((base_logp.exp() * (base_logp - logp)).sum(-1).tolist())
            same.extend((base_logp.argmax(-1) == logp.argmax(-1)).tolist())
        if on_chunk:
            on_chunk(c + 1, n_chunks)
    result = PerplexityResult(ppl=math.exp(sum(nll) / len(nll)), n_tokens=len(nll), nll=nll)
    if base is not None:
        result.mean_kld, result.same_top1 = sum(kld) / len(kld), sum(same) / len(same)
    return result
