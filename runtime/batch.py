"""Fused CLP decode of several sequences at once, for the server.

Each sequence keeps its own `engine.State` (KV cache, rings, carries, snapshots); the weights
are the engine's. One `decode_step` feeds one token to each of B sequences: the R loop rows of
every sequence are stacked into B x R rows, so each weight matrix is read once per step for
all of them, and only attention (which reads each sequence's own cache) runs per sequence.

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
from .engine import Engine, State, attend, rms_norm


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
    cfg = engine.cfg
    R = cfg.num_loops
    dt, kvt, dev = engine.dtype, engine.kv_dtype, engine.device
    kept = engine.state
    try:
        for st in states:  # grow each cache (raises ContextLimitError before anything changes)
            engine.state = st
            engine._reserve(1)
    finally:
        engine.state = kept
    pos = [st.length for st in states]
    e = engine.embed(torch.tensor(list(tokens), device=dev)).to(dt)  # [B, H]
    rows = []
    for b, st in enumerate(states):
        rows.append(e[b:b + 1])
        if R > 1:
            rows.append(cfg.emb_scale * e[b:b + 1] + cfg.hidden_scale * st.carries)
    U = torch.cat(rows)  # [B*R, H]: sequence b owns rows b*R .. b*R + R - 1
    cos, sin = engine._rope(torch.tensor(pos).repeat_interleave(R))
    ring = cfg.window + 1
    for i, layer in enumerate(engine.layers):
        q, k, v = engine._project(layer, U, cos, sin, tiles=False)  # q [nh, B*R, hd]
        ys = []
        for b, st in enumerate(states):
            t, a = pos[b], b * R
            qb, kb, vb = q[:, a:a + R], k[:, a:a + R], v[:, a:a + R]
            st.k0[i, :, t] = kb[:, 0].to(kvt)
            st.v0[i, :, t] = vb[:, 0].to(kvt)
            y = attend(qb, st.k0[i, :, :t + 1].to(dt), st.v0[i, :, :t + 1].to(dt), None)
            if R > 1:
                slot = t % ring
                valid = None if t + 1 >= ring else (torch.arange(ring, device=dev) <= t)[None, :]
                st.ring_k[:, i, :, slot] = kb[:, 1:].transpose(0, 1).to(kvt)
                st.ring_v[:, i, :, slot] = vb[:, 1:].transpose(0, 1).to(kvt)
                q_loc = qb[:, 1:].transpose(0, 1).unsqueeze(2)  # [R-1, nh, 1, hd]
                y_loc = attend(q_loc, st.ring_k[:, i].to(dt), st.ring_v[:, i].to(dt), valid)
                y_loc = y_loc.squeeze(2).transpose(0, 1)
                mixed = torch.lerp(y_loc, y[:, 1:], engine._gate(layer, U[a + 1:a + R], qb[:, 1:]))
                y = torch.cat([y[:, :1], mixed], dim=1)
            ys.append(y)
        U = engine._finish(layer, U, torch.cat(ys, dim=1), tiles=False)
    last = []
    for b, st in enumerate(states):
        Ub = U[b * R:(b + 1) * R]
        if cfg.normalize_per_loop:
            Y = rms_norm(Ub, engine.norm, cfg.rms_norm_eps)
        else:
            Y = torch.cat([Ub[:-1], rms_norm(Ub[-1:], engine.norm, cfg.rms_norm_eps)])
        st.carries.copy_(Y[:-1])
        st.tokens.append(int(tokens[b]))
        last.append(Y[-1])
        engine.state = st
        engine._snapshot()
    engine.state = kept
    logits = engine.head(torch.stack(last))
    for b, st in enumerate(states):
        st.last_logits = logits[b]
    return logits
