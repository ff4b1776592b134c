"""Incremental execution of the PLT model with KV caches and carries (plt-model.md §1.6).

Per sequence state: the loop-0 (global) K/V cache of every layer, one sliding-window ring
buffer of K/V per extra loop and layer, and the carries c_r = h_hat^(r-1) of the last
processed position (zero at the sequence start).

Two executions use it:
- `prefill` runs the loops one after another over a chunk of tokens, continuing from the
  state. With one token per call it is the vendor's *naive* decode (R passes per token).
- `fused_step` runs all R loops of one token as R rows of a single pass: every weight is
  read once per step, which is what makes a 2-loop model decode as fast as a 1-loop one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .model import PLTModel, attend, shift_right


@dataclass
class DecodeState:
    k0: torch.Tensor  # [L, nkv, max_len, hd]   loop-0 keys (post-RoPE), every position
    v0: torch.Tensor
    ring_k: torch.Tensor  # [R-1, L, nkv, ring, hd]  keys of loop r >= 1, slot = pos % ring
    ring_v: torch.Tensor
    carries: torch.Tensor  # [R-1, H]  carries[r-1] = c_r = h_hat^(r-1) at the last position
    length: int = 0

    @classmethod
    def new(cls, model: PLTModel, max_len: int) -> "DecodeState":
        cfg = model.cfg
        dtype = model.model.embed_tokens.weight.dtype
        extra = cfg.num_loops - 1
        ring = min(cfg.window + 1, max_len)
        kv = (cfg.num_layers, cfg.num_kv_heads, max_len, cfg.head_dim)
        rkv = (extra, cfg.num_layers, cfg.num_kv_heads, ring, cfg.head_dim)
        return cls(
            k0=torch.zeros(kv, dtype=dtype),
            v0=torch.zeros(kv, dtype=dtype),
            ring_k=torch.zeros(rkv, dtype=dtype),
            ring_v=torch.zeros(rkv, dtype=dtype),
            carries=torch.zeros(extra, cfg.hidden_size, dtype=dtype),
        )

    @property
    def max_len(self) -> int:
        return self.k0.shape[2]

    @property
    def ring_size(self) -> int:
        return self.ring_k.shape[3]

    def ring_positions(self, length: int) -> torch.Tensor:
        """The position each ring slot holds once `length` tokens are in (-1: empty)."""
        slots = torch.arange(self.ring_size)
        last = length - 1
        pos = last - torch.remainder(last - slots, self.ring_size)
        return torch.where(pos >= 0, pos, torch.full_like(pos, -1))

    def reserve(self, n: int) -> None:
        if self.length + n > self.max_len:
            raise ValueError(
                f"the decode state holds {self.max_len} positions; {self.length} used, {n} more asked"
            )


@torch.no_grad()
def prefill(model: PLTModel, state: DecodeState, ids: torch.Tensor) -> torch.Tensor:
    """Run a chunk ids [S] through all loops in order, continuing from `state`; logits [S, V].

    The chunk's shifted input for loop r is [c_r, h_hat^(r-1)[:-1]]; afterwards c_r is the
    chunk's last h_hat^(r-1), and the last ring-size loop-r K/V are in the ring.
    """
    cfg = model.cfg
    S, p = ids.shape[0], state.length
    state.reserve(S)
    pos = torch.arange(p, p + S)
    E = model.model.embed_tokens(ids)
    cos, sin = model.rope(pos, E.dtype)
    glob_mask = torch.arange(p + S)[None, :] <= pos[:, None]
    ring_pos = state.ring_positions(p)
    key_pos = torch.cat([ring_pos, pos])
    dist = pos[:, None] - key_pos[None, :]
    loc_mask = (key_pos[None, :] >= 0) & (dist >= 0) & (dist <= cfg.window)
    keep = min(S, state.ring_size)  # chunk positions that stay in the ring
    slots = torch.remainder(pos[S - keep:], state.ring_size)
    h_hat = None
    for r in range(cfg.num_loops):
        shifted = None if r == 0 else shift_right(h_hat, state.carries[r - 1])
        if r > 0:
            state.carries[r - 1] = h_hat[-1]
        h = model.loop_input(r, E, shifted)
        for i, layer in enumerate(model.model.layers):
            q, k, v = layer.project(h, cos, sin)
            if r == 0:
                state.k0[i, :, p:p + S] = k
                state.v0[i, :, p:p + S] = v
                y = attend(q, state.k0[i, :, :p + S], state.v0[i, :, :p + S], glob_mask)
            else:
                y_glob = attend(q, state.k0[i, :, :p + S], state.v0[i, :, :p + S], glob_mask)
                rk, rv = state.ring_k[r - 1, i], state.ring_v[r - 1, i]
                y_loc = attend(q, torch.cat([rk, k], 1), torch.cat([rv, v], 1), loc_mask)
                rk[:, slots], rv[:, slots] = k[:, S - keep:], v[:, S - keep:]
                y = layer.mix(h, q, y_glob, y_loc)
            h = layer.finish(h, y)
        h_hat = model.loop_output(r, h)
    state.length += S
    return model.lm_head(h_hat)


@torch.no_grad()
def fused_step(model: PLTModel, state: DecodeState, token: int) -> torch.Tensor:
    """Decode one token with all R loops as R rows of one pass; logits [V].

    Row r computes loop r of this token: its input needs only c_r from the previous step, and
    its global branch reads the loop-0 K/V of this position, written by row 0 of the same
    layer before attention. Rows r >= 1 never write the global cache; row 0 never reads a ring.
    """
    cfg = model.cfg
    R, t = cfg.num_loops, state.length
    state.reserve(1)
    e = model.model.embed_tokens(torch.tensor([token]))  # [1, H]
    U = torch.cat([e, cfg.emb_scale * e + cfg.hidden_scale * state.carries]) if R > 1 else e
    cos, sin = model.rope(torch.tensor([t]), e.dtype)
    slot = t % state.ring_size
    filled = state.ring_positions(t + 1) >= 0
    ring_valid = None if bool(filled.all()) else filled[None, :]  # no mask: SDPA's fast path
    for i, layer in enumerate(model.model.layers):
        q, k, v = layer.project(U, cos, sin)  # q [nh, R, hd], k/v [nkv, R, hd]
        state.k0[i, :, t] = k[:, 0]
        state.v0[i, :, t] = v[:, 0]
        # all R rows attend the same global cache in one call (rows share the KV reads)
        y = attend(q, state.k0[i, :, :t + 1], state.v0[i, :, :t + 1], None)
        if R > 1:
            state.ring_k[:, i, :, slot] = k[:, 1:].transpose(0, 1)
            state.ring_v[:, i, :, slot] = v[:, 1:].transpose(0, 1)
            q_loc = q[:, 1:].transpose(0, 1).unsqueeze(2)  # [R-1, nh, 1, hd]
            y_loc = attend(q_loc, state.ring_k[:, i], state.ring_v[:, i], ring_valid)
            y_loc = y_loc.squeeze(2).transpose(0, 1)  # [nh, R-1, hd]
            mixed = layer.mix(U[1:], q[:, 1:], y[:, 1:], y_loc)
            y = torch.cat([y[:, :1], mixed], dim=1)
        U = layer.finish(U, y)
    if cfg.normalize_per_loop:
        Y = model.model.norm(U)
    else:  # only the last loop is normed; earlier rows carry their raw output
        Y = torch.cat([U[:-1], model.model.norm(U[-1:])])
    state.carries.copy_(Y[:-1])
    state.length += 1
    return model.lm_head(Y[-1])
