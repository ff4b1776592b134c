"""The reference PLT model in plain torch, and its full-sequence (training-style) forward.

Submodules carry the Hugging Face names, so checkpoint tensors map onto parameters one to
one. A layer is split into `project` (norm, q/k/v, RoPE), `mix` (the G-SWA gate) and `finish`
(o_proj, residual, MLP) so that the three executions (full sequence here, naive and fused
decode in `decode.py`) share every weight-touching step and differ only in where K/V come
from. Spec: plt-model.md §1.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import Checkpoint
from .config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)


class Gate(nn.Module):
    """The per-head G-SWA gate g in (0, 1): how much of the global branch each head takes.

    Hidden mode (LoopCoder-V2): sigmoid(W gate_norm(x) + b) on the pre-norm residual x.
    Query mode: sigmoid(sum_d q[h, d] W[h, d] + b[h]) on the post-RoPE query.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.use_hidden = cfg.gate_use_hidden_states
        width = cfg.hidden_size if self.use_hidden else cfg.head_dim
        self.weight = nn.Parameter(torch.zeros(cfg.num_heads, width))
        self.bias = nn.Parameter(torch.zeros(cfg.num_heads))
        if self.use_hidden:
            self.gate_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """x [..., T, H], q [..., nh, T, hd] -> g [..., nh, T, 1], ready to scale head outputs."""
        if self.use_hidden:
            logits = F.linear(self.gate_norm(x), self.weight, self.bias).transpose(-1, -2)
        else:
            logits = torch.einsum("...htd,hd->...ht", q, self.weight) + self.bias[:, None]
        return torch.sigmoid(logits).unsqueeze(-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        H, hd = cfg.hidden_size, cfg.head_dim
        self.nh, self.nkv, self.hd = cfg.num_heads, cfg.num_kv_heads, hd
        self.q_proj = nn.Linear(H, cfg.num_heads * hd, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(H, cfg.num_kv_heads * hd, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(H, cfg.num_kv_heads * hd, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(cfg.num_heads * hd, H, bias=False)
        if cfg.is_plt:
            self.plt_gate = Gate(cfg)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def split_heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """[..., T, n * hd] -> [..., n, T, hd]"""
    return x.unflatten(-1, (n, -1)).transpose(-2, -3)


def merge_heads(y: torch.Tensor) -> torch.Tensor:
    """[..., n, T, hd] -> [..., T, n * hd]"""
    return y.transpose(-2, -3).flatten(-2)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax attention, GQA by head grouping. q [..., nh, T, hd], k/v [..., nkv, S, hd],
    mask [T, S] (True = visible) or None (every key visible)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x [..., T, H] -> q [..., nh, T, hd], k and v [..., nkv, T, hd]; RoPE on q and k."""
        at = self.self_attn
        a = self.input_layernorm(x)
        q = split_heads(at.q_proj(a), at.nh)
        k = split_heads(at.k_proj(a), at.nkv)
        v = split_heads(at.v_proj(a), at.nkv)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        return q, k, v

    def mix(self, x, q, y_glob, y_loc) -> torch.Tensor:
        """G-SWA: two separate softmax outputs mixed per head by the gate (loops >= 1)."""
        g = self.self_attn.plt_gate(x, q)
        return torch.lerp(y_loc, y_glob, g)  # g * y_glob + (1 - g) * y_loc in one op

    def finish(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = x + self.self_attn.o_proj(merge_heads(y))
        return h + self.mlp(self.post_attention_layernorm(h))


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


def shift_right(h_hat: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """The CLP one-token shift along T: position t gets h_hat[t - 1], position 0 gets `first`
    (zeros at a sequence start, the saved carry when continuing)."""
    return torch.cat([first.unsqueeze(-2), h_hat[..., :-1, :]], dim=-2)


class PLTModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @functools.cached_property
    def inv_freq(self) -> torch.Tensor:
        return self.cfg.rope_inv_freq()

    def rope(self, positions: torch.Tensor, dtype: torch.dtype):
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def loop_input(self, r: int, E: torch.Tensor, shifted: torch.Tensor | None) -> torch.Tensor:
        """u^(0) = E;  u^(r) = alpha * E + beta * h_hat^(r-1) shifted by one token."""
        if r == 0:
            return E
        return self.cfg.emb_scale * E + self.cfg.hidden_scale * shifted

    def loop_output(self, r: int, h: torch.Tensor) -> torch.Tensor:
        """h_hat^(r): the final norm after the last loop, and after every loop if configured."""
        last = r == self.cfg.num_loops - 1
        return self.model.norm(h) if (last or self.cfg.normalize_per_loop) else h

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, capture=None) -> torch.Tensor:
        """Full-sequence forward (plt-model.md §1.5): ids [B, T] -> logits [B, T, V].

        `capture` (optional, for diagnostics; nothing changes without it) is told what each
        step saw: `capture.attention(r, i, layer, x, q, (k_glob, v_glob), (k_loc, v_loc), y)`
        after attention in loop r, layer i (x the layer input; the global branch's K/V are
        loop 0's, the local branch's this loop's own; in loop 0 both are the same; y the
        attention output before o_proj), and `capture.loop(r, h_hat)` after each loop.
        """
        cfg = self.cfg
        T = ids.shape[-1]
        pos = torch.arange(T)
        E = self.model.embed_tokens(ids)
        cos, sin = self.rope(pos, E.dtype)
        causal = pos[None, :] <= pos[:, None]
        local = causal & (pos[:, None] - pos[None, :] <= cfg.window)
        kv0: list[tuple[torch.Tensor, torch.Tensor]] = []
        h_hat = None
        for r in range(cfg.num_loops):
            shifted = None if r == 0 else shift_right(h_hat, torch.zeros_like(E[..., 0, :]))
            h = self.loop_input(r, E, shifted)
            for i, layer in enumerate(self.model.layers):
                q, k, v = layer.project(h, cos, sin)
                if r == 0:
                    kv0.append((k, v))
                    y = attend(q, k, v, causal)
                else:
                    y_glob = attend(q, *kv0[i], causal)
                    y_loc = attend(q, k, v, local)
                    y = layer.mix(h, q, y_glob, y_loc)
                if capture is not None:
                    capture.attention(r, i, layer, h, q, kv0[i], (k, v), y)
                h = layer.finish(h, y)
            h_hat = self.loop_output(r, h)
            if capture is not None:
                capture.loop(r, h_hat)
        return self.lm_head(h_hat)


def load_model(path: str | Path, dtype: torch.dtype = torch.float32) -> PLTModel:
    """Build the model from an HF checkpoint directory or a GGUF file (dequantized), tensor by
    tensor (no second full copy)."""
    if Path(path).suffix == ".gguf":
        from .gguf_load import config_from_gguf, gguf_tensors, open_gguf

        reader = open_gguf(path)
        cfg = config_from_gguf(reader, str(path))
        tensors = gguf_tensors(reader, cfg)
    else:
        ckpt = Checkpoint(path)
        cfg, tensors = ckpt.config, ckpt.tensors()
    with torch.device("meta"):
        model = PLTModel(cfg)
    for name, tensor in tensors:
        assign_parameter(model, name, tensor.to(dtype))
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


def assign_parameter(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner, _, attr = name.rpartition(".")
    setattr(model.get_submodule(owner), attr, nn.Parameter(tensor, requires_grad=False))
