"""Fused CLP decode of several sequences at once, for the server.

Each sequence keeps its own `engine.State` (KV cache, rings, carries, snapshots); the weights
are the engine's. One `decode_step` feeds one token to each of B sequences through the engine's
own decode step (`Engine._decode_rows`): the R loop rows of every sequence are stacked into
B x R rows, so each weight matrix is read once per step for all of them, and only attention
(which reads each sequence's own cache) runs per sequence.

The engine's quantized matmuls take one path up to a number of rows and another beyond,
which may round differently: torch's int4 kernel up to `qmatmul.PACKED_MAX_ROWS` rows, then
f32 tiles; our CPU kernel (cpu_kernels) decodes blocks in registers up to `DECODE_ROWS` rows,
then multiplies interleaved tiles of 8 weight rows, which sums in another order. `group_size` gives how
many sequences stay on the path a sequence decoded alone takes: callers step larger batches in
groups of that size, so a sequence's tokens are the same whether it runs alone or beside others.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import cpu_kernels, qmatmul
from .engine import Engine, State


def group_size(engine: Engine) -> int:
    """Sequences per step that keep every matmul on the engine's decode path."""
    rows = qmatmul.PACKED_MAX_ROWS
    if engine.device.type == "cpu" and cpu_kernels.get() is not None:
        rows = min(rows, cpu_kernels.DECODE_ROWS)
    return max(1, rows // engine.cfg.num_loops)


@torch.inference_mode()
def decode_step(engine: Engine, states: Sequence[State], tokens: Sequence[int]) -> torch.Tensor:
    """Feed tokens[b] to states[b] for every b (all R loops, one pass over the weights);
    returns the next-token logits [B, V] (f32, CPU), like `Engine.step` for each sequence."""
    logits = engine.head(engine._decode_rows(states, tokens))
    for b, st in enumerate(states):
        st.last_logits = logits[b]
    return logits
