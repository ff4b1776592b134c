"""The runtime engine: compact weights, chunked prefill, fused CLP decode, prefix reuse.

One structure for every device: `device` and `dtype` (activations) are parameters, the
matmul goes through `qmatmul.linear` and attention through `attend`, so CUDA kernels can
replace either without touching the rest.

Per sequence state (plt-model.md §1.6): the loop-0 K/V cache of every layer (`kv_dtype`,
f16 by default), one ring of the last W + 1 K/V per extra loop and layer, and the carries
c_r = h_hat^(r-1) of the last position. The engine keeps the last request's state: a new
request resumes at the longest common prefix. The loop-0 cache is valid at any position;
rings and carries are only known where a snapshot was taken (every `SNAPSHOT` positions and
at each prompt's end), so a PLT request resumes at the last snapshot inside the common prefix
and recomputes at most a few dozen tokens.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import blocks, cpu_kernels, qmatmul
from .config import ModelConfig
from .errors import ModelError

PREFILL_CHUNK = 256  # prompt tokens per pass: bounds the attention and MLP workspace
SNAPSHOT = 64  # PLT state is snapshotted at multiples of this position
MAX_SNAPSHOTS = 64
ATTN_SCORES = 1 << 24  # attention scores computed at once (64 MB in f32)
LOCAL_ROWS = 64  # prefill rows whose local windows are gathered at once (bounds that copy)


class ContextLimitError(ModelError):
    """A request does not fit the engine's context limit."""


class Cancelled(Exception):
    """The caller's cancel event was set; the state stays consistent at the last finished step."""


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax attention, GQA by head grouping: q [..., nh, T, hd], k/v [..., nkv, S, hd], mask
    [T, S] (True = visible) or None. Query rows go in pieces whose scores fit ATTN_SCORES
    values, so the workspace stays bounded whatever the context. (Plain matmuls: torch's CPU
    SDPA was several times slower at decode shapes here.)"""
    *lead, nh, T, hd = q.shape
    S = k.shape[-2]
    rows = max(1, ATTN_SCORES // (nh * S))
    if T > rows:
        return torch.cat([attend(q[..., a:a + rows, :], k, v, None if mask is None else mask[a:a + rows])
                          for a in range(0, T, rows)], dim=-2)
    nkv = k.shape[-3]
    g = nh // nkv
    scores = (q.reshape(*lead, nkv, g * T, hd) @ k.transpose(-1, -2)) * hd ** -0.5
    if mask is not None:
        scores.view(*lead, nkv, g, T, S).masked_fill_(~mask, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ v).view(*lead, nh, T, hd)


def attend_chunk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`attend` for a prefill chunk (many query rows): torch's fused attention, which never holds
    the whole [T, S] score matrix and on this project's CPU ran a 256 x 256 chunk in half the
    time of the plain matmuls. Each query row's result depends only on its keys."""
    return F.scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), attn_mask=mask,
                                          enable_gqa=True).squeeze(0)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def default_threads() -> int:
    """Physical cores this process may use (OMP_NUM_THREADS wins): no hyper-thread pairs."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or allowed
        logical = psutil.cpu_count(logical=True) or allowed
        allowed = max(1, allowed * physical // logical)
    except ImportError:
        pass
    return max(1, allowed)


# ---------------------------------------------------------------------------------- weights

@dataclass
class Layer:
    attn_norm: torch.Tensor
    qkv: qmatmul.Weight  # q, k and v rows stacked (one matmul) when their types agree
    qkv_bias: torch.Tensor | None
    wo: qmatmul.Weight
    ffn_norm: torch.Tensor
    gate_up: qmatmul.Weight  # gate and up rows stacked
    down: qmatmul.Weight
    gate_w: torch.Tensor | None = None  # PLT gate (f32: [nh, H] or [nh, hd])
    gate_b: torch.Tensor | None = None
    gate_norm: torch.Tensor | None = None


class Stacked:
    """Row blocks of different formats that together act as one weight."""

    def __init__(self, parts: list[qmatmul.Weight]):
        self.parts = parts
        self.rows, self.cols = sum(p.rows for p in parts), parts[0].cols

    def linear(self, x: torch.Tensor, tiles: bool = False) -> torch.Tensor:
        return torch.cat([qmatmul.linear(x, p, tiles=tiles) for p in self.parts], dim=-1)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)


@dataclass
class Raw:
    """One tensor as GGUF stores it: type id and bytes uint8 [rows, row_bytes]."""
    ggml_type: int
    data: torch.Tensor
    cols: int

    def floats(self) -> torch.Tensor:
        return blocks.dequantize(self.ggml_type, self.data, self.cols)


class RowTable:
    """The token embedding kept in its file format; only looked-up rows are decoded."""

    def __init__(self, raw: Raw):
        self.raw = raw

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return blocks.dequantize(self.raw.ggml_type, self.raw.data[ids], self.raw.cols)

    @property
    def nbytes(self) -> int:
        return self.raw.data.numel()


def _stack_raw(parts: list[Raw], device, packed: bool) -> qmatmul.Weight | Stacked:
    if all(p.ggml_type == parts[0].ggml_type for p in parts):
        data = torch.cat([p.data for p in parts])
        return qmatmul.pack(parts[0].ggml_type, data, parts[0].cols, device, packed)
    return Stacked([qmatmul.pack(p.ggml_type, p.data, p.cols, device, packed) for p in parts])


def _gguf_raw(path: str | Path) -> tuple[ModelConfig, dict[str, Raw]]:
    from .gguf_format import ROPE_FREQS, hf_name, needs_permute, unpermute_from_llama
    from .gguf_load import config_from_gguf, nonfinite, open_gguf

    r = open_gguf(path)
    cfg = config_from_gguf(r, str(path))
    arch = r.get_field("general.architecture").contents()
    out: dict[str, Raw] = {}
    for t in r.tensors:
        if t.name == ROPE_FREQS:
            continue
        ggml_type = int(t.tensor_type)
        if ggml_type not in blocks.FLOAT and ggml_type not in blocks.BLOCK:
            raise ModelError(f"{path}: tensor {t.name} has type {getattr(t.tensor_type, 'name', ggml_type)}, "
                             f"which the engine does not read (supported: {', '.join(blocks.NAMES.values())})")
        try:
            name = hf_name(t.name)
        except KeyError:
            raise ModelError(f"{path}: unknown tensor {t.name}; re-convert it with loopcli convert") from None
        bad = nonfinite(t)  # a NaN in one block would silently poison every logit
        if bad:
            raise ModelError(f"{path}: tensor {t.name} contains {bad} values; the file is corrupt, re-convert it")
        cols = int(t.shape[0])
        rows = int(t.n_elements) // cols
        data = np.asarray(t.data).reshape(-1).view(np.uint8).reshape(rows, -1)
        which = needs_permute(arch, name)
        if which:  # llama.cpp's pair layout -> rotate-half; rows move whole, blocks untouched
            heads = cfg.num_heads if which == "q" else cfg.num_kv_heads
            data = unpermute_from_llama(data if rows > 1 else data.reshape(cols, -1), heads).reshape(rows, -1)
        out[name] = Raw(ggml_type, torch.from_numpy(np.array(data)), cols)
    return cfg, out


def _checkpoint_raw(path: str | Path) -> tuple[ModelConfig, dict[str, Raw]]:
    from .checkpoint import Checkpoint

    ckpt = Checkpoint(path)
    kinds = {torch.float32: blocks.F32, torch.float16: blocks.F16, torch.bfloat16: blocks.BF16}
    out = {}
    for name, t in ckpt.tensors():
        if t.dtype not in kinds:
            t = t.float()
        cols = t.shape[-1]
        data = t.contiguous().reshape(-1, cols).view(torch.uint8)
        out[name] = Raw(kinds[t.dtype], data, cols)
    return ckpt.config, out


# ---------------------------------------------------------------------------------- state

@dataclass
class State:
    k0: torch.Tensor  # [L, nkv, capacity, hd]  loop-0 keys (post-RoPE)
    v0: torch.Tensor
    ring_k: torch.Tensor  # [R-1, L, nkv, ring, hd]  slot = position % ring
    ring_v: torch.Tensor
    carries: torch.Tensor  # [R-1, H]
    tokens: list[int] = field(default_factory=list)
    snapshots: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    last_logits: torch.Tensor | None = None  # of the last position, when known

    @property
    def length(self) -> int:
        return len(self.tokens)


class Engine:
    def __init__(self, cfg: ModelConfig, raw: dict[str, Raw], device="cpu", dtype=torch.float32,
                 kv_dtype=torch.float16, max_context: int | None = None, packed: bool = True,
                 source: str = "model"):
        self.cfg, self.source = cfg, source
        self.device, self.dtype, self.kv_dtype = torch.device(device), dtype, kv_dtype
        self.max_context = min(max_context or cfg.max_position_embeddings, cfg.max_position_embeddings)
        self.last_reused = 0  # prompt tokens the last `start` took from the kept state
        # decode step's layers in C++ where it applies (False: torch ops; "scalar": no AVX2, for tests)
        self.cpu_step: bool | str = os.environ.get("LOOPCLI_CPU_STEP", "1") != "0"
        self._step_args: list | None = None
        self._step_cfg: ModelConfig | None = None  # the cfg the step arguments were built for
        self._build(raw, packed)
        self.inv_freq = cfg.rope_inv_freq().to(self.device)
        self.state = self._empty_state(0)

    # ------------------------------------------------------------------ weights
    def _build(self, raw: dict[str, Raw], packed: bool) -> None:
        cfg, dev, dt = self.cfg, self.device, self.dtype
        vec = lambda n: raw.pop(n).floats().reshape(-1).to(dev, dt)
        opt = lambda n: vec(n) if n in raw else None
        embed = raw.pop("model.embed_tokens.weight")
        head = raw.pop("lm_head.weight", None) or embed
        self.lm_head = self._weight([head], packed)
        self.embed = RowTable(Raw(embed.ggml_type, embed.data.to(dev), embed.cols))
        self.norm = vec("model.norm.weight")
        self.layers: list[Layer] = []
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            biases = [opt(a + f"{x}_proj.bias") for x in "qkv"]
            layer = Layer(
                attn_norm=vec(p + "input_layernorm.weight"),
                qkv=self._weight([raw.pop(a + f"{x}_proj.weight") for x in "qkv"], packed),
                qkv_bias=torch.cat(biases) if biases[0] is not None else None,
                wo=self._weight([raw.pop(a + "o_proj.weight")], packed),
                ffn_norm=vec(p + "post_attention_layernorm.weight"),
                gate_up=self._weight([raw.pop(p + "mlp.gate_proj.weight"), raw.pop(p + "mlp.up_proj.weight")], packed),
                down=self._weight([raw.pop(p + "mlp.down_proj.weight")], packed),
            )
            if cfg.is_plt:
                layer.gate_w = raw.pop(a + "plt_gate.weight").floats().to(dev, dt)
                layer.gate_b = vec(a + "plt_gate.bias")
                layer.gate_norm = opt(a + "plt_gate.gate_norm.weight")
            self.layers.append(layer)

    def _weight(self, parts: list[Raw], packed: bool):
        """Row blocks that act as one weight, in the form this engine multiplies from."""
        if len(parts) == 1:
            return qmatmul.pack(parts[0].ggml_type, parts[0].data, parts[0].cols, self.device, packed)
        return _stack_raw(parts, self.device, packed)

    @property
    def weight_bytes(self) -> int:
        ws = [self.lm_head, self.embed] + [w for l in self.layers for w in (l.qkv, l.wo, l.gate_up, l.down)]
        return sum(w.nbytes for w in ws)

    # ------------------------------------------------------------------ state
    def _empty_state(self, capacity: int) -> State:
        cfg = self.cfg
        extra = cfg.num_loops - 1
        ring = cfg.window + 1
        kv = (cfg.num_layers, cfg.num_kv_heads, capacity, cfg.head_dim)
        rkv = (extra, cfg.num_layers, cfg.num_kv_heads, ring, cfg.head_dim)
        z = lambda shape, dt: torch.zeros(shape, dtype=dt, device=self.device)
        return State(z(kv, self.kv_dtype), z(kv, self.kv_dtype), z(rkv, self.kv_dtype), z(rkv, self.kv_dtype),
                     z((extra, cfg.hidden_size), self.dtype))

    def _reserve(self, n: int) -> None:
        st = self.state
        need = st.length + n
        if need > self.max_context:
            raise ContextLimitError(
                f"{need} tokens do not fit the context limit of {self.max_context} tokens; "
                "shorten the prompt or raise the limit (--ctx)")
        cap = st.k0.shape[2]
        if need <= cap:
            return
        new = min(self.max_context, max(need, 2 * cap, 256))
        for name in ("k0", "v0"):
            old = getattr(st, name)
            grown = torch.zeros((*old.shape[:2], new, old.shape[3]), dtype=old.dtype, device=old.device)
            grown[:, :, :cap] = old
            setattr(st, name, grown)

    def reset(self) -> None:
        self.state = self._empty_state(0)

    def _snapshot(self, force: bool = False) -> None:
        """Keep rings and carries at this position (PLT only: R = 1 resumes anywhere)."""
        st = self.state
        if self.cfg.num_loops == 1 or st.length in st.snapshots or (st.length % SNAPSHOT and not force):
            return
        st.snapshots[st.length] = (st.ring_k.clone(), st.ring_v.clone(), st.carries.clone())
        while len(st.snapshots) > MAX_SNAPSHOTS:
            st.snapshots.pop(next(iter(st.snapshots)))

    def _rewind(self, keep: int) -> int:
        """Cut the state back to a resumable position <= keep; returns that position."""
        st = self.state
        if self.cfg.num_loops > 1:
            points = [p for p in st.snapshots if p <= keep]
            keep = max(points, default=0)
            st.snapshots = {p: s for p, s in st.snapshots.items() if p <= keep}
            if keep == 0:
                st.ring_k.zero_(), st.ring_v.zero_(), st.carries.zero_()
            else:
                rk, rv, c = st.snapshots[keep]
                st.ring_k.copy_(rk), st.ring_v.copy_(rv), st.carries.copy_(c)
        if keep < st.length:
            del st.tokens[keep:]
            st.last_logits = None
        return keep

    # ------------------------------------------------------------------ forward pieces
    def _rope(self, pos: torch.Tensor):
        freqs = pos.to(self.device).float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    def _project(self, layer: Layer, x: torch.Tensor, cos, sin, tiles: bool):
        """x [S, H] -> q [nh, S, hd], k and v [nkv, S, hd] (RoPE on q and k)."""
        cfg = self.cfg
        a = rms_norm(x, layer.attn_norm, cfg.rms_norm_eps)
        qkv = qmatmul.linear(a, layer.qkv, layer.qkv_bias, tiles)
        nq, nk = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        q, k, v = qkv.split([nq, nk, nk], dim=-1)
        q = q.unflatten(-1, (cfg.num_heads, -1)).transpose(0, 1)
        k = k.unflatten(-1, (cfg.num_kv_heads, -1)).transpose(0, 1)
        v = v.unflatten(-1, (cfg.num_kv_heads, -1)).transpose(0, 1)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v

    def _gate(self, layer: Layer, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """The G-SWA gate [nh, S, 1] from the pre-norm input x [S, H] (or the query)."""
        if self.cfg.gate_use_hidden_states:
            logits = F.linear(rms_norm(x, layer.gate_norm, self.cfg.rms_norm_eps), layer.gate_w, layer.gate_b).t()
        else:
            logits = torch.einsum("htd,hd->ht", q, layer.gate_w) + layer.gate_b[:, None]
        return torch.sigmoid(logits).unsqueeze(-1)

    def _finish(self, layer: Layer, x: torch.Tensor, y: torch.Tensor, tiles: bool) -> torch.Tensor:
        h = x + qmatmul.linear(y.transpose(0, 1).flatten(-2), layer.wo, tiles=tiles)
        gu = qmatmul.linear(rms_norm(h, layer.ffn_norm, self.cfg.rms_norm_eps), layer.gate_up, tiles=tiles)
        g, u = gu.chunk(2, dim=-1)
        return h + qmatmul.linear(F.silu(g) * u, layer.down, tiles=tiles)

    def _kv(self, t: torch.Tensor) -> torch.Tensor:
        """What attention reads back: values rounded through the cache dtype."""
        return t.to(self.kv_dtype).to(self.dtype)

    def _prefill_chunk(self, ids: torch.Tensor) -> torch.Tensor:
        """All loops over one chunk, continuing the state; returns the last loop's h_hat [S, H].
        Subclasses change where the work runs through _project, _finish, _norm and the
        _prefill_keys / _attend_global / _attend_local trio, not this order of state updates."""
        cfg, st = self.cfg, self.state
        S, p = ids.shape[0], st.length
        self._reserve(S)
        pos = torch.arange(p, p + S, device=self.device)
        E = self.embed(ids).to(self.dtype)
        cos, sin = self._rope(pos)
        keys = self._prefill_keys(p, pos)
        if cfg.num_loops > 1:
            keep = min(S, cfg.window + 1)
            new_slots = torch.remainder(pos[S - keep:], cfg.window + 1)
        h_hat = None
        for r in range(cfg.num_loops):
            if r == 0:
                h = E
            else:
                shifted = torch.cat([st.carries[r - 1:r], h_hat[:-1]])
                st.carries[r - 1] = h_hat[-1]
                h = cfg.emb_scale * E + cfg.hidden_scale * shifted
            for i, layer in enumerate(self.layers):
                q, k, v = self._project(layer, h, cos, sin, tiles=True)
                if r == 0:
                    st.k0[i, :, p:p + S] = k.to(self.kv_dtype)
                    st.v0[i, :, p:p + S] = v.to(self.kv_dtype)
                y = self._attend_global(q, i, pos, keys)
                if r > 0:
                    rk, rv = st.ring_k[r - 1, i], st.ring_v[r - 1, i]
                    y_loc = self._attend_local(q, k, v, rk, rv, pos, keys)
                    rk[:, new_slots] = k[:, S - keep:].to(self.kv_dtype)
                    rv[:, new_slots] = v[:, S - keep:].to(self.kv_dtype)
                    y = torch.lerp(y_loc, y, self._gate(layer, h, q))
                h = self._finish(layer, h, y, tiles=True)
            last = r == cfg.num_loops - 1
            h_hat = self._norm(h) if (last or cfg.normalize_per_loop) else h
        st.tokens.extend(ids.tolist())
        return h_hat

    def _norm(self, h: torch.Tensor) -> torch.Tensor:
        return rms_norm(h, self.norm, self.cfg.rms_norm_eps)

    def _prefill_keys(self, p: int, pos: torch.Tensor) -> dict:
        """What the chunk at positions `pos` (from p) attends: the cache up to its end, the
        global causal mask, and for loops r >= 1 the ring slots in position order and each row's
        window (W + 1 positions) as indices into ring + chunk, with the mask of positions < 0."""
        S, ring = pos.shape[0], self.cfg.window + 1
        keys = {"end": p + S, "glob_mask": torch.arange(p + S, device=self.device)[None, :] <= pos[:, None]}
        if self.cfg.num_loops > 1:
            slots = torch.arange(ring, device=self.device)
            keys["ring_order"] = torch.argsort((p - 1) - torch.remainder(p - 1 - slots, ring))  # positions p - ring ..
            keys["window"] = torch.arange(S, device=self.device)[:, None] + slots[None, :] + 1  # row s: p + s - W ..
            keys["window_mask"] = ((pos[:, None] - self.cfg.window + slots[None, :]) >= 0)[:, None, None, :]
        return keys

    def _attend_global(self, q: torch.Tensor, i: int, pos: torch.Tensor, keys: dict) -> torch.Tensor:
        """The chunk's queries over layer i's loop-0 cache up to the chunk's end."""
        st, end = self.state, keys["end"]
        return attend_chunk(q, st.k0[i, :, :end].to(self.dtype), st.v0[i, :, :end].to(self.dtype), keys["glob_mask"])

    def _attend_local(self, q, k, v, rk, rv, pos: torch.Tensor, keys: dict) -> torch.Tensor:
        """The chunk's queries over the loop's last W + 1 positions: the ring (before the chunk)
        and the chunk's own K/V. Each row attends its own window, gathered in position order, so
        its result does not depend on which chunk it came in: a resumed prefill (prefix reuse)
        gives the cold run's bits (attending ring + chunk at once differed in the last bit, which
        the next int8-rounded matmul input turned into up to 6e-3 on a 2,000-token prompt)."""
        order = keys["ring_order"]
        K = torch.cat([rk.to(self.dtype)[:, order], self._kv(k)], 1)  # [nkv, ring + S, hd] in position order
        V = torch.cat([rv.to(self.dtype)[:, order], self._kv(v)], 1)
        out = []
        for a in range(0, q.shape[1], LOCAL_ROWS):
            idx = keys["window"][a:a + LOCAL_ROWS]
            y = F.scaled_dot_product_attention(q[:, a:a + LOCAL_ROWS].transpose(0, 1).unsqueeze(2),
                                               K[:, idx].transpose(0, 1), V[:, idx].transpose(0, 1),
                                               attn_mask=keys["window_mask"][a:a + LOCAL_ROWS], enable_gqa=True)
            out.append(y.squeeze(2).transpose(0, 1))
        return torch.cat(out, 1)

    def _fused_step(self, token: int) -> torch.Tensor:
        """All R loops of one token as R rows of one pass; returns the last row's h_hat [H]."""
        return self._decode_rows([self.state], [token])[0]

    def _decode_rows(self, states: Sequence[State], tokens: Sequence[int]) -> torch.Tensor:
        """Feed tokens[b] to states[b]: the R loop rows of every sequence stacked into B x R rows,
        so each weight is read once for all; returns each sequence's last-row h_hat [B, H]."""
        cfg = self.cfg
        R = cfg.num_loops
        kept = self.state
        try:
            for st in states:  # grow each cache (raises ContextLimitError before anything changes)
                self.state = st
                self._reserve(1)
        finally:
            self.state = kept
        pos = [st.length for st in states]
        e = self.embed(torch.tensor(list(tokens), device=self.device)).to(self.dtype)  # [B, H]
        rows = []
        for b, st in enumerate(states):
            rows.append(e[b:b + 1])
            if R > 1:
                rows.append(cfg.emb_scale * e[b:b + 1] + cfg.hidden_scale * st.carries)
        U = torch.cat(rows)  # [B*R, H]: sequence b owns rows b*R .. b*R + R - 1
        kernel = self._cpu_step_layers(states)
        if kernel is not None:
            self._layers_in_cpp(kernel, states, pos, U)
        else:
            U = self._layers_in_torch(states, pos, U)
        last = []
        for b, st in enumerate(states):
            Ub = U[b * R:(b + 1) * R]
            if cfg.normalize_per_loop:
                Y = rms_norm(Ub, self.norm, cfg.rms_norm_eps)
            else:
                Y = torch.cat([Ub[:-1], rms_norm(Ub[-1:], self.norm, cfg.rms_norm_eps)])
            st.carries.copy_(Y[:-1])
            st.tokens.append(int(tokens[b]))
            last.append(Y[-1])
            self.state = st
            self._snapshot()
        self.state = kept
        return torch.stack(last)

    def _layers_in_torch(self, states: Sequence[State], pos: list[int], U: torch.Tensor) -> torch.Tensor:
        """Every layer of the decode step with torch ops (any device, dtype and weight format)."""
        cfg, dt, kvt = self.cfg, self.dtype, self.kv_dtype
        R, ring = cfg.num_loops, cfg.window + 1
        cos, sin = self._rope(torch.tensor(pos).repeat_interleave(R))
        for i, layer in enumerate(self.layers):
            q, k, v = self._project(layer, U, cos, sin, tiles=False)  # q [nh, B*R, hd]
            ys = []
            for b, st in enumerate(states):
                t, a = pos[b], b * R
                qb, kb, vb = q[:, a:a + R], k[:, a:a + R], v[:, a:a + R]
                st.k0[i, :, t] = kb[:, 0].to(kvt)
                st.v0[i, :, t] = vb[:, 0].to(kvt)
                y = attend(qb, st.k0[i, :, :t + 1].to(dt), st.v0[i, :, :t + 1].to(dt), None)
                if R > 1:
                    slot = t % ring
                    valid = None if t + 1 >= ring else (torch.arange(ring, device=self.device) <= t)[None, :]
                    st.ring_k[:, i, :, slot] = kb[:, 1:].transpose(0, 1).to(kvt)
                    st.ring_v[:, i, :, slot] = vb[:, 1:].transpose(0, 1).to(kvt)
                    q_loc = qb[:, 1:].transpose(0, 1).unsqueeze(2)  # [R-1, nh, 1, hd]
                    y_loc = attend(q_loc, st.ring_k[:, i].to(dt), st.ring_v[:, i].to(dt), valid)
                    y_loc = y_loc.squeeze(2).transpose(0, 1)
                    mixed = torch.lerp(y_loc, y[:, 1:], self._gate(layer, U[a + 1:a + R], qb[:, 1:]))
                    y = torch.cat([y[:, :1], mixed], dim=1)
                ys.append(y)
            U = self._finish(layer, U, torch.cat(ys, dim=1), tiles=False)
        return U

    def _cpu_step_layers(self, states: Sequence[State]):
        """The kernel that runs the decode step's layers in C++ (cpu_kernels/step.cpp), or None
        where that does not apply: turned off (`cpu_step`, LOOPCLI_CPU_STEP=0), not a CPU f32
        engine with f16 caches, a layer weight that is not the kernel's (`BlockWeight`), no kernel."""
        if not self.cpu_step:
            return None
        if self._step_args is None or self._step_cfg is not self.cfg:  # at first use (and if cfg is swapped)
            self._step_args, self._step_cfg = self._build_step_args() or [], self.cfg
        if not self._step_args:
            return None
        cfg = self.cfg
        kv = (cfg.num_layers, cfg.num_kv_heads)
        ring = (cfg.num_loops - 1, *kv, cfg.window + 1, cfg.head_dim)
        for st in states:  # the kernel writes the caches through their pointers: they must be what it expects
            if not all(t.is_contiguous() and t.dtype == self.kv_dtype for t in (st.k0, st.v0, st.ring_k, st.ring_v)):
                return None
            if (st.k0.shape[:2] != kv or st.k0.shape[3] != cfg.head_dim or st.v0.shape != st.k0.shape
                    or st.ring_k.shape != ring or st.ring_v.shape != ring or st.length >= st.k0.shape[2]):
                return None
        return self._step_kernel

    def _build_step_args(self) -> list | None:
        """One `cpu_kernels.StepLayer` per layer, or None where the C++ step does not apply. Every
        size the C++ code relies on is checked here (the torch path raises its own errors)."""
        cfg = self.cfg
        if self.device.type != "cpu" or self.dtype != torch.float32 or self.kv_dtype != torch.float16:
            return None
        H, nh, nkv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        if nh % nkv or hd % 2:
            return None
        parts = lambda w: w.parts if isinstance(w, Stacked) else [w]

        def fits(w, most: int, rows: int, cols: int) -> bool:  # kernel row blocks of this shape
            ps = parts(w)
            return (len(ps) <= most and sum(p.rows for p in ps) == rows and all(
                isinstance(p, qmatmul.BlockWeight) and p.cols == cols and p.raw.is_contiguous()
                and cols % cpu_kernels.VALUES[p.ggml_type] == 0 for p in ps))

        def floats(t: torch.Tensor | None, n: int) -> bool:
            return t is not None and t.numel() == n

        for l in self.layers:
            inter = l.down.cols
            if not (fits(l.qkv, 3, (nh + 2 * nkv) * hd, H) and fits(l.wo, 1, H, nh * hd)
                    and fits(l.gate_up, 2, 2 * inter, H) and fits(l.down, 1, H, inter)
                    and floats(l.attn_norm, H) and floats(l.ffn_norm, H)
                    and (l.qkv_bias is None or floats(l.qkv_bias, (nh + 2 * nkv) * hd))):
                return None
            if cfg.is_plt and not (floats(l.gate_w, nh * (H if cfg.gate_use_hidden_states else hd))
                                   and floats(l.gate_b, nh)
                                   and (not cfg.gate_use_hidden_states or floats(l.gate_norm, H))):
                return None
        keep = []  # contiguous f32 copies the blocks point to, alive as long as the engine

        def ptr(t: torch.Tensor | None) -> int | None:
            if t is None:
                return None
            t = t.to(torch.float32).contiguous()
            keep.append(t)
            return t.data_ptr()

        def blocks_of(w, n):  # (count, types, rows, pointers) of up to n row blocks
            ps = parts(w)
            pad = lambda xs: xs + [0] * (n - len(xs))
            return (len(ps), (ctypes.c_int64 * n)(*pad([p.kernel_type for p in ps])),
                    (ctypes.c_int64 * n)(*pad([p.rows for p in ps])),
                    (ctypes.c_void_p * n)(*pad([p.raw.data_ptr() for p in ps])))

        args = []
        for i, l in enumerate(self.layers):
            nqkv, tqkv, rqkv, wqkv = blocks_of(l.qkv, 3)
            ngu, tgu, rgu, wgu = blocks_of(l.gate_up, 2)
            args.append(cpu_kernels.StepLayer(
                H=H, nh=nh, nkv=nkv, hd=hd, inter=l.down.cols, R=cfg.num_loops, ring=cfg.window + 1, layer=i,
                layers=cfg.num_layers, gate_hidden=int(cfg.gate_use_hidden_states), scalar=0,
                decode_rows=cpu_kernels.DECODE_ROWS,
                wo_type=l.wo.kernel_type, down_type=l.down.kernel_type,
                qkv_parts=nqkv, qkv_type=tqkv, qkv_rows=rqkv, gate_up_parts=ngu, gate_up_type=tgu, gate_up_rows=rgu,
                eps=cfg.rms_norm_eps, qkv=wqkv, wo=l.wo.raw.data_ptr(), gate_up=wgu, down=l.down.raw.data_ptr(),
                attn_norm=ptr(l.attn_norm), ffn_norm=ptr(l.ffn_norm), qkv_bias=ptr(l.qkv_bias),
                gate_w=ptr(l.gate_w), gate_b=ptr(l.gate_b), gate_norm=ptr(l.gate_norm)))
        self._step_keep, self._step_kernel = keep, self.layers[0].wo.kernel
        return args

    def _layers_in_cpp(self, kernel, states: Sequence[State], pos: list[int], U: torch.Tensor) -> None:
        cos, sin = self._rope(torch.tensor(pos))  # [B, hd]
        seqs = (cpu_kernels.StepSeq * len(states))(*[  # built per step: _reserve moves k0/v0
            cpu_kernels.StepSeq(t, st.k0.shape[2], st.k0.data_ptr(), st.v0.data_ptr(), st.ring_k.data_ptr(),
                                st.ring_v.data_ptr()) for t, st in zip(pos, states)])
        scalar = int(self.cpu_step == "scalar")
        for blk in self._step_args:
            blk.scalar = scalar
            kernel.step_layer(blk, seqs, cos, sin, U)

    def head(self, h_hat: torch.Tensor, tiles: bool = False) -> torch.Tensor:
        """Logits as f32 on the CPU, where the sampler works."""
        return qmatmul.linear(h_hat, self.lm_head, tiles=tiles).float().cpu()

    # ------------------------------------------------------------------ public API
    def prefill(self, ids: Sequence[int], cancel: threading.Event | None = None,
                all_logits: bool = False, on_progress=None) -> torch.Tensor:
        """Bring the state to `ids`, reusing the longest common prefix of the kept state.

        Returns the logits of the last position [V], or with `all_logits` of every position of
        a cold run [T, V]. `on_progress(done, total)` is called after each chunk.
        """
        steps = self.prefill_steps(ids, cancel, all_logits)
        while True:
            try:
                done, total = next(steps)
            except StopIteration as end:
                return end.value
            if on_progress:
                on_progress(done, total)

    @torch.inference_mode()
    def prefill_steps(self, ids: Sequence[int], cancel: threading.Event | None = None,
                      all_logits: bool = False):
        """`prefill` as a generator: yields (tokens done, total) per chunk, returns the logits."""
        ids = list(ids)
        if not ids:
            raise ModelError("the prompt is empty; give at least one token")
        if len(ids) > self.max_context:
            raise ContextLimitError(
                f"the prompt has {len(ids)} tokens but the context limit is {self.max_context}; "
                "shorten the prompt or raise the limit (--ctx)")
        bad = [t for t in ids if not 0 <= t < self.cfg.vocab_size]
        if bad:
            raise ModelError(f"token id {bad[0]} is outside the vocabulary (0..{self.cfg.vocab_size - 1})")
        st = self.state
        common = 0
        for a, b in zip(st.tokens, ids):
            if a != b:
                break
            common += 1
        if not all_logits and common == len(ids) == st.length and st.last_logits is not None:
            self.last_reused = common  # the very same tokens: nothing to compute
            return st.last_logits
        start = self._rewind(0 if all_logits else min(common, len(ids) - 1))
        self.last_reused = start
        outs = []
        h_hat = None
        pos = start
        while pos < len(ids):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            end = min(len(ids), (pos // PREFILL_CHUNK + 1) * PREFILL_CHUNK)
            h_hat = self._prefill_chunk(torch.tensor(ids[pos:end], device=self.device))
            if all_logits:
                outs.append(self.head(h_hat, tiles=True))
            pos = end
            self._snapshot(force=pos == len(ids))
            yield pos, len(ids)
        st.last_logits = outs[-1][-1] if all_logits else self.head(h_hat[-1], tiles=True)
        return torch.cat(outs) if all_logits else st.last_logits

    def _check_token(self, token: int) -> None:
        if not 0 <= int(token) < self.cfg.vocab_size:
            raise ModelError(f"token id {int(token)} is outside the vocabulary (0..{self.cfg.vocab_size - 1})")

    @torch.inference_mode()
    def step(self, token: int) -> torch.Tensor:
        """Feed one token (fused decode); logits of the next [V]."""
        self._check_token(token)
        logits = self.head(self._fused_step(int(token)))
        self.state.last_logits = logits
        return logits

    @torch.inference_mode()
    def logits(self, ids: Sequence[int]) -> torch.Tensor:
        """Logits of every position of `ids` from a cold state, chunk by chunk [T, V]."""
        self.reset()
        return self.prefill(ids, all_logits=True)

    def events(self, prompt_ids: Sequence[int], sampler, max_new: int,
               cancel: threading.Event | None = None) -> Iterator[tuple]:
        """("prefill", done, total) per prompt chunk, then ("token", id) per sampled token,
        each as soon as it is known. Stops at `max_new` tokens or the context limit."""
        room = self.max_context - len(prompt_ids)
        if room <= 0:
            raise ContextLimitError(
                f"the prompt has {len(prompt_ids)} tokens but the context limit is {self.max_context}; "
                "shorten the prompt or raise the limit (--ctx)")
        max_new = min(max_new, room)
        steps = self.prefill_steps(prompt_ids, cancel)
        while True:
            try:
                done, total = next(steps)
            except StopIteration as end:
                logits = end.value
                break
            yield "prefill", done, total
        history = list(prompt_ids)
        for i in range(max_new):
            token = sampler(logits, history)
            history.append(token)
            yield "token", token
            if i + 1 < max_new:
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                logits = self.step(token)

    def generate(self, prompt_ids: Sequence[int], sampler, max_new: int,
                 cancel: threading.Event | None = None) -> Iterator[int]:
        """Yield up to `max_new` sampled tokens, each as soon as it is sampled."""
        for kind, *value in self.events(prompt_ids, sampler, max_new, cancel):
            if kind == "token":
                yield value[0]


def load(path: str | Path, device="cpu", dtype: torch.dtype = torch.float32,
         kv_dtype: torch.dtype = torch.float16, max_context: int | None = None,
         threads: int | None = None, packed: bool = True, kernels: str | None = None) -> Engine:
    """An Engine for a GGUF file (loopcoder, llama, qwen2) or an HF checkpoint directory.

    `kernels`: "triton" (the default on CUDA when Triton is installed), "torch" (the default
    elsewhere), or None for that default; the LOOPCLI_KERNELS variable sets it too.
    """
    torch.set_num_threads(threads or default_threads())
    p = Path(path)
    if p.suffix == ".gguf" or p.is_file():
        cfg, raw = _gguf_raw(p)
    else:
        cfg, raw = _checkpoint_raw(p)
    engine = engine_class(device, kernels)(cfg, raw, device, dtype, kv_dtype, max_context, packed, source=str(p))
    del raw
    _return_freed_memory()
    return engine


def engine_class(device, kernels: str | None = None) -> type[Engine]:
    """The one place where ops are chosen by device: Triton kernels on CUDA (when installed),
    torch elsewhere. Forcing "triton" on CPU tensors needs Triton's interpreter."""
    kernels = kernels or os.environ.get("LOOPCLI_KERNELS") or None
    if kernels not in (None, "triton", "torch"):
        raise ModelError(f"kernels must be 'triton' or 'torch', not {kernels!r}")
    on_cuda = torch.device(device).type == "cuda"
    if kernels == "torch" or (kernels is None and not on_cuda):
        return Engine  # without importing Triton: its library alone is ~70 MB resident
    from loopcli.kernels import HAVE_TRITON, interpreting  # no kernel is compiled by this import

    if kernels is None:
        kernels = "triton" if on_cuda and HAVE_TRITON else "torch"
    if kernels == "torch":
        return Engine
    if not HAVE_TRITON:
        raise ModelError("the Triton kernels need the triton package: pip install triton")
    if not on_cuda and not interpreting():
        raise ModelError("the Triton kernels run on CUDA, or on the CPU under TRITON_INTERPRET=1 "
                         "(set in the environment before loopcli starts)")
    from .triton_engine import TritonEngine

    return TritonEngine


def _return_freed_memory() -> None:
    """Hand the decoding temporaries back to the OS (glibc keeps freed heap pages otherwise,
    about 0.3 x the model here)."""
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass  # not glibc: nothing to do
