"""The engine on the Triton kernels (kernels/): what `load` picks on CUDA.

Same state, same semantics as `Engine` (engine.py); only where the work runs differs:
weights stay as their GGUF bytes on the device and every matmul reads them directly
(`kernels.qmatmul`); norms, RoPE and SwiGLU are fused kernels; prefill attention is flash
attention over the loop-0 cache (global) and over ring + chunk (local); a decode step's
attention is the G-SWA kernel pair, one launch for all R rows. On CUDA the whole decode step
(embedding to logits) is captured once as a CUDA graph and replayed: its position comes from
a device tensor, so one graph serves every step until the cache is reallocated.

Formats the kernels do not read (Q4_1, Q5_0, Q5_1) keep the torch path of `qmatmul`.
"""

from __future__ import annotations

import torch

from loopcli.kernels import flash_attention as fa
from loopcli.kernels import gswa_decode as gd
from loopcli.kernels import qmatmul as kq
from loopcli.kernels._triton import triton_ok
from loopcli.kernels.qmatmul_int8 import Int8Rows
from loopcli.kernels.rms_norm import rms_norm
from loopcli.kernels.rope import rope
from loopcli.kernels.swiglu import swiglu

from . import qmatmul
from .engine import Engine, Layer, Raw, Stacked


class GGUFWeight:
    """A weight kept as its GGUF bytes on the device, multiplied by `kernels.qmatmul`; Q8_0,
    Q4_0 and Q6_K in the kernels' planar layout (the same bytes, aligned for wide loads)."""

    def __init__(self, ggml_type: int, data: torch.Tensor, cols: int):
        if ggml_type in kq.PLANES:
            ggml_type, data = ggml_type | kq.PLANAR, kq.to_planar(data, ggml_type)
        self.ggml_type, self.data = ggml_type, data
        self.rows, self.cols = data.shape[0], cols

    def linear(self, x: torch.Tensor, tiles: bool = False, int8: Int8Rows | None = None,
               residual: torch.Tensor | None = None) -> torch.Tensor:
        return kq.qmatmul(x, self.data, self.ggml_type, int8=int8, residual=residual)

    def int8_group(self, x: torch.Tensor) -> int | None:
        """The int8 group of this weight's input x when the matmul runs on dp4a (decode rows,
        a type it reads so), so that x's producer can write that form: None otherwise."""
        if x.numel() // x.shape[-1] > kq.DECODE_ROWS or self.ggml_type not in kq.INT8 or not triton_ok(x):
            return None
        return kq.act_group(self.ggml_type)

    @property
    def nbytes(self) -> int:
        return self.data.numel()


def _int8_for(w, x: torch.Tensor) -> Int8Rows | None:
    """Buffers for the int8 form of w's input (x: that input, or anything with its rows) when
    every part of w reads it (`GGUFWeight.int8_group`), for the kernel that makes the input
    to fill: None otherwise."""
    parts = w.parts if isinstance(w, Stacked) else [w]
    groups = {p.int8_group(x) if isinstance(p, GGUFWeight) else None for p in parts}
    if len(groups) != 1 or None in groups:
        return None
    return Int8Rows.empty(x.numel() // x.shape[-1], w.cols, groups.pop(), x.device)


def _linear(x: torch.Tensor, w, bias: torch.Tensor | None, int8: Int8Rows | None,
            residual: torch.Tensor | None = None) -> torch.Tensor:
    """`residual +` qmatmul.linear, handing x's int8 form (made by x's producer) to the
    GGUFWeights; a single GGUFWeight adds the residual as its kernel stores."""
    if isinstance(w, GGUFWeight) and bias is None:
        return w.linear(x, int8=int8, residual=residual)
    parts = w.parts if isinstance(w, Stacked) else [w]
    if int8 is None:
        y = qmatmul.linear(x, w, bias)
    else:
        y = torch.cat([p.linear(x, int8=int8) for p in parts], -1) if len(parts) > 1 else w.linear(x, int8=int8)
        y = y if bias is None else y + bias
    return y if residual is None else residual + y


class KernelRowTable:
    """The token embedding kept in its file format; looked-up rows are decoded by one kernel
    launch (`kernels.qmatmul.lookup_rows`) into the engine's dtype."""

    def __init__(self, raw: Raw, dtype: torch.dtype):
        self.raw, self.dtype = raw, dtype

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return kq.lookup_rows(self.raw.data, self.raw.ggml_type, ids, self.dtype)

    @property
    def nbytes(self) -> int:
        return self.raw.data.numel()


class TritonEngine(Engine):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.embed.raw.ggml_type in kq.TYPES:
            self.embed = KernelRowTable(self.embed.raw, self.dtype)
        self.graphs = self.device.type == "cuda"  # capture the decode step
        self._graph = None  # (key, graph, static token, static position, static logits)

    def _weight(self, parts: list[Raw], packed: bool):
        one = lambda p: (GGUFWeight(p.ggml_type, p.data.to(self.device), p.cols) if p.ggml_type in kq.TYPES
                         else qmatmul.pack(p.ggml_type, p.data, p.cols, self.device, packed))
        if all(p.ggml_type == parts[0].ggml_type for p in parts) and parts[0].ggml_type in kq.TYPES:
            return GGUFWeight(parts[0].ggml_type, torch.cat([p.data for p in parts]).to(self.device), parts[0].cols)
        return one(parts[0]) if len(parts) == 1 else Stacked([one(p) for p in parts])

    # ------------------------------------------------------------------ forward pieces
    def _project(self, layer: Layer, x: torch.Tensor, cos, sin, tiles: bool):
        cfg = self.cfg
        int8 = _int8_for(layer.qkv, x)
        a = rms_norm(x, layer.attn_norm, cfg.rms_norm_eps, int8=int8)
        qkv = _linear(a, layer.qkv, layer.qkv_bias, int8)
        S, nh, nkv, hd = x.shape[0], cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        qkv = qkv.view(S, nh + 2 * nkv, hd)
        half = hd // 2
        qk = rope(qkv[:, :nh + nkv], cos[:, :half], sin[:, :half])  # one launch for q and k
        return qk[:, :nh].transpose(0, 1), qk[:, nh:].transpose(0, 1), qkv[:, nh + nkv:].transpose(0, 1)

    def _finish(self, layer: Layer, x: torch.Tensor, y: torch.Tensor, tiles: bool) -> torch.Tensor:
        attn = qmatmul.linear(y.transpose(0, 1).flatten(-2), layer.wo)
        int8 = _int8_for(layer.gate_up, attn)
        a, h = rms_norm(attn, layer.ffn_norm, self.cfg.rms_norm_eps, residual=x, int8=int8)
        gu = _linear(a, layer.gate_up, None, int8)
        int8 = _int8_for(layer.down, gu)
        return _linear(swiglu(gu, int8=int8), layer.down, None, int8, residual=h)

    def _final_norm(self, U: torch.Tensor) -> torch.Tensor:
        eps = self.cfg.rms_norm_eps
        if self.cfg.normalize_per_loop:
            return rms_norm(U, self.norm, eps)
        return torch.cat([U[:-1], rms_norm(U[-1:], self.norm, eps)])

    def _norm(self, h: torch.Tensor) -> torch.Tensor:
        return rms_norm(h, self.norm, self.cfg.rms_norm_eps)

    # prefill attention: flash attention instead of masks (Engine._prefill_chunk drives it)
    def _prefill_keys(self, p: int, pos: torch.Tensor) -> dict:
        keys = {"end": p + pos.shape[0]}
        if self.cfg.num_loops > 1:
            keys["ring_pos"] = gd.ring_positions(p - 1, self.cfg.window + 1, self.device)
        return keys

    def _attend_global(self, q: torch.Tensor, i: int, pos: torch.Tensor, keys: dict) -> torch.Tensor:
        end = keys["end"]
        return fa.flash_attention(q, pos, self.state.k0[i, :, :end], self.state.v0[i, :, :end])

    def _attend_local(self, q, k, v, rk, rv, pos: torch.Tensor, keys: dict) -> torch.Tensor:
        kvt = self.kv_dtype
        return fa.flash_attention(q, pos, rk, rv, keys["ring_pos"], k.to(kvt), v.to(kvt), pos,
                                  window=self.cfg.window)

    def _decode(self, token: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One fused CLP step on device tensors only (token int64 [1], position int64 [1]):
        no host sync, so it can be captured. Returns the last row's h_hat [H]."""
        cfg, st = self.cfg, self.state
        R = cfg.num_loops
        e = self.embed(token).to(self.dtype)
        U = torch.cat([e, cfg.emb_scale * e + cfg.hidden_scale * st.carries]) if R > 1 else e
        cos, sin = self._rope(t)
        length = (t + 1).to(torch.int32)
        for i, layer in enumerate(self.layers):
            q, k, v = self._project(layer, U, cos, sin, tiles=False)  # q [nh, R, hd]
            ring_k = ring_v = gate = None
            if R > 1:
                ring_k, ring_v = st.ring_k[:, i], st.ring_v[:, i]
                if cfg.gate_use_hidden_states and layer.gate_norm is not None:  # one launch
                    gate = gd.step_gate(U[1:], layer.gate_norm, layer.gate_w, layer.gate_b, cfg.rms_norm_eps)
                else:
                    gate = self._gate(layer, U[1:], q[:, 1:]).squeeze(-1).t()  # [R-1, nh]
            gd.write_step_kv(k, v, st.k0[i], st.v0[i], t, ring_k, ring_v)  # first: every row reads loop 0's
            y = gd.gswa_decode(q.transpose(0, 1), st.k0[i], st.v0[i], length, ring_k, ring_v, gate)
            U = self._finish(layer, U, y.transpose(0, 1), tiles=False)
        Y = self._final_norm(U)
        st.carries.copy_(Y[:-1])
        return Y[-1]

    def _fused_step(self, token: int) -> torch.Tensor:
        st = self.state
        t = st.length
        self._reserve(1)
        dev = self.device
        h = self._decode(torch.tensor([token], device=dev), torch.tensor([t], device=dev))
        st.tokens.append(token)
        self._snapshot()
        return h

    # ------------------------------------------------------------------ CUDA graph
    def step(self, token: int) -> torch.Tensor:
        if not self.graphs:
            return super().step(token)
        self._check_token(token)  # the graph reads the embedding row at whatever id it is given
        with torch.inference_mode():
            return self._graph_step(int(token))

    def _graph_step(self, token: int) -> torch.Tensor:
        """The decode step (embedding to logits) as a replayed CUDA graph. The graph holds the
        state's addresses: it is captured again when the cache grows or the state is replaced."""
        st = self.state
        self._reserve(1)
        key = (st.k0.data_ptr(), st.ring_k.data_ptr(), st.carries.data_ptr(), st.k0.shape[2])
        if self._graph is None or self._graph[0] != key:
            logits = self.head(self._fused_step(token))  # eager: this step, and Triton compiles here
            try:
                self._graph = (key, *self._capture())
            except RuntimeError:  # capture is an optimisation: stay eager on this device
                self.graphs, self._graph = False, None
            st.last_logits = logits
            return logits
        _, graph, tok, pos, out = self._graph
        tok.fill_(token)
        pos.fill_(st.length)
        graph.replay()
        st.tokens.append(token)
        self._snapshot()
        st.last_logits = out.float().cpu()
        return st.last_logits

    def _capture(self):
        """Warm up on a side stream (lazy initialisations must not happen while capturing) by
        running the last step again, with the state it touches put back; then capture."""
        st, dev = self.state, self.device
        t = st.length - 1
        tok = torch.full((1,), st.tokens[-1], dtype=torch.long, device=dev)
        pos = torch.full((1,), t, dtype=torch.long, device=dev)
        kept = [st.ring_k.clone(), st.ring_v.clone(), st.carries.clone(), st.k0[:, :, t].clone(), st.v0[:, :, t].clone()]
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        try:
            with torch.cuda.stream(side):
                qmatmul.linear(self._decode(tok, pos), self.lm_head)
        finally:
            torch.cuda.current_stream(dev).wait_stream(side)
            for dst, src in zip([st.ring_k, st.ring_v, st.carries, st.k0[:, :, t], st.v0[:, :, t]], kept):
                dst.copy_(src)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # records only: the state is not touched now
            out = qmatmul.linear(self._decode(tok, pos), self.lm_head)
        return graph, tok, pos, out
