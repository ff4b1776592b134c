"""G-SWA decode attention: all R rows of one decode step in one pair of kernels.

Row r = 0 is loop 0 (plain causal attention over the loop-0 cache); rows r >= 1 attend the
same loop-0 cache (global branch) and their own ring of the last W + 1 loop-r keys (local
branch), mixed per head by the gate: y = g * global + (1 - g) * local (plt-model.md §1.2).

Stage 1 (grid: KV heads x splits) reads each loop-0 key and value once for all R rows and
all query heads of its KV group (they are the rows of one tile) and writes a partial softmax
per split (flash-decoding). Stage 2 (grid: KV heads x R) merges the splits, runs the ring
for rows r >= 1 and mixes. The cache length is read from a device tensor and the grid
depends only on the cache capacity, so a CUDA graph can replay the step at any length.
The caller writes the step's K/V first (loop 0 into the cache, loop r into ring slot
t % ring: `write_step_kv`, one launch) and computes the gate (`step_gate`, one launch:
RMSNorm, the [nh, H] projection and the sigmoid of the hidden-state gate together).
"""

import torch
import torch.nn.functional as F

from ._triton import cdiv, jit, next_pow2, tl, triton_ok


def _attend(q, k, v, vis):
    """vis [1, S]: the keys every query row sees (their values only are read)."""
    s = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    v = v.float().masked_fill(~vis[0, :, None], 0.0)
    return torch.softmax(s.masked_fill(~vis, float("-inf")), -1) @ v


def ring_positions(t: int, ring: int, device=None) -> torch.Tensor:
    """Position held by each ring slot once position t is written (slot = pos % ring); < 0: empty."""
    slots = torch.arange(ring, device=device)
    return t - torch.remainder(t - slots, ring)


def gswa_decode_torch(q, k0, v0, length, ring_k=None, ring_v=None, gate=None, splits=None):
    """q [R, nh, hd] post-RoPE; k0/v0 [nkv, capacity, hd] with `length` (int or int tensor)
    valid positions, the step's own included; ring_k/v [R-1, nkv, ring, hd]; gate [R-1, nh]
    in (0, 1) -> y [R, nh, hd] in q's dtype. `splits` only shapes the kernel's work."""
    R, nh, hd = q.shape
    n = int(length)
    nkv = k0.shape[0]
    g = nh // nkv
    qg = q.transpose(0, 1).reshape(nkv, g * R, hd)  # each KV group's query rows together
    y = _attend(qg, k0[:, :n], v0[:, :n], torch.ones(1, n, dtype=torch.bool, device=q.device))
    y = y.view(nh, R, hd).transpose(0, 1)
    if R > 1:
        ring = ring_k.shape[2]
        vis = (ring_positions(n - 1, ring, q.device) >= 0)[None, :]
        kr = ring_k.repeat_interleave(g, 1)  # [R-1, nh, ring, hd]
        vr = ring_v.repeat_interleave(g, 1)
        loc = _attend(q[1:].unsqueeze(2), kr, vr, vis).squeeze(2)
        gl = gate.float()[..., None]
        y = torch.cat([y[:1], gl * y[1:] + (1 - gl) * loc])
    return y.to(q.dtype)


@jit
def _split_kernel(q_ptr, k_ptr, v_ptr, len_ptr, pacc_ptr, pml_ptr,
                  R, G, NKV, SPLITS, scale, stride_qr, stride_qh, stride_kh, stride_ks, stride_vh, stride_vs,
                  HD: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_S: tl.constexpr):
    kvh, sp = tl.program_id(0), tl.program_id(1)
    n = tl.load(len_ptr)
    chunk = tl.cdiv(tl.cdiv(n, SPLITS), BLOCK_S) * BLOCK_S
    lo = sp * chunk
    hi = tl.minimum(n, lo + chunk)
    j = tl.arange(0, BLOCK_Q)  # row j = (loop r = j // G, head kvh * G + j % G)
    r = j // G
    head = kvh * G + j % G
    jin = r < R
    offs_d = tl.arange(0, HD)
    q = tl.load(q_ptr + r[:, None] * stride_qr + head[:, None] * stride_qh + offs_d[None, :],
                mask=jin[:, None], other=0.0)
    acc = tl.zeros((BLOCK_Q, HD), dtype=tl.float32)
    m = tl.full((BLOCK_Q,), float("-inf"), dtype=tl.float32)
    l = tl.zeros((BLOCK_Q,), dtype=tl.float32)
    for s0 in range(lo, hi, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        sin = offs_s < hi
        k = tl.load(k_ptr + kvh * stride_kh + offs_s[:, None] * stride_ks + offs_d[None, :], mask=sin[:, None], other=0.0)
        v = tl.load(v_ptr + kvh * stride_vh + offs_s[:, None] * stride_vs + offs_d[None, :], mask=sin[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision="ieee") * scale
        s = tl.where(sin[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp(m - m_new)  # m_new is finite: every tile here has a visible key
        p = tl.exp(s - m_new[:, None])
        l = l * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision="ieee")
        m = m_new
    base = (kvh * SPLITS + sp) * BLOCK_Q
    tl.store(pacc_ptr + (base + j)[:, None] * HD + offs_d[None, :], acc)
    tl.store(pml_ptr + (base + j) * 2, m)  # an empty split keeps m = -inf, l = 0
    tl.store(pml_ptr + (base + j) * 2 + 1, l)


@jit
def _merge_kernel(q_ptr, rk_ptr, rv_ptr, gate_ptr, len_ptr, pacc_ptr, pml_ptr, y_ptr,
                  G, SPLITS, RING, scale, stride_qr, stride_qh, stride_yr, stride_yh,
                  stride_rr, stride_rh, stride_rs, stride_vr, stride_vh, stride_vs, stride_gr,
                  HD: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_RING: tl.constexpr):
    kvh, r = tl.program_id(0), tl.program_id(1)
    jg = tl.arange(0, BLOCK_G)
    gin = jg < G
    head = kvh * G + jg
    j = r * G + jg  # this loop's rows in the split partials
    offs_d = tl.arange(0, HD)
    acc = tl.zeros((BLOCK_G, HD), dtype=tl.float32)
    m = tl.full((BLOCK_G,), float("-inf"), dtype=tl.float32)
    l = tl.zeros((BLOCK_G,), dtype=tl.float32)
    for sp in range(0, SPLITS):
        base = (kvh * SPLITS + sp) * BLOCK_Q
        a = tl.load(pacc_ptr + (base + j)[:, None] * HD + offs_d[None, :], mask=gin[:, None], other=0.0)
        mi = tl.load(pml_ptr + (base + j) * 2, mask=gin, other=float("-inf"))
        li = tl.load(pml_ptr + (base + j) * 2 + 1, mask=gin, other=0.0)
        m_new = tl.maximum(m, mi)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # all splits so far empty: no NaN
        wa, wi = tl.exp(m - m_safe), tl.exp(mi - m_safe)
        acc = acc * wa[:, None] + a * wi[:, None]
        l = l * wa + li * wi
        m = m_new
    y = acc / tl.where(l == 0.0, 1.0, l)[:, None]
    if r > 0:  # the local branch over this loop's ring, then the gate
        q = tl.load(q_ptr + r * stride_qr + head[:, None] * stride_qh + offs_d[None, :], mask=gin[:, None], other=0.0)
        t = tl.load(len_ptr) - 1
        slots = tl.arange(0, BLOCK_RING)
        sin = slots < RING
        pos = t - ((t - slots + RING) % RING)  # t - slots > -RING: a non-negative operand
        vis = sin & (pos >= 0)
        rb = (r - 1) * stride_rr + kvh * stride_rh
        vb = (r - 1) * stride_vr + kvh * stride_vh
        k = tl.load(rk_ptr + rb + slots[:, None] * stride_rs + offs_d[None, :], mask=sin[:, None], other=0.0)
        v = tl.load(rv_ptr + vb + slots[:, None] * stride_vs + offs_d[None, :], mask=vis[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision="ieee") * scale
        s = tl.where(vis[None, :], s, float("-inf"))
        mx = tl.max(s, 1)
        p = tl.exp(s - tl.where(mx == float("-inf"), 0.0, mx)[:, None])
        den = tl.sum(p, 1)
        loc = tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision="ieee") / tl.where(den == 0.0, 1.0, den)[:, None]
        g = tl.load(gate_ptr + (r - 1) * stride_gr + head, mask=gin, other=0.0).to(tl.float32)
        y = g[:, None] * y + (1.0 - g[:, None]) * loc
    tl.store(y_ptr + r * stride_yr + head[:, None] * stride_yh + offs_d[None, :],
             y.to(y_ptr.dtype.element_ty), mask=gin[:, None])


def default_splits(capacity: int, nkv: int, device: torch.device) -> int:
    """Enough (KV head, split) programs for two per SM, each split >= 256 cached positions."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2
    return max(1, min(cdiv(2 * sms, nkv), cdiv(capacity, 256)))


def gswa_decode(q, k0, v0, length, ring_k=None, ring_v=None, gate=None, splits=None):
    """The Triton kernels (same signature as `gswa_decode_torch`)."""
    R, nh, hd = q.shape
    if not triton_ok(q) or hd != next_pow2(hd) or hd < 16:
        return gswa_decode_torch(q, k0, v0, length, ring_k, ring_v, gate)
    nkv, cap = k0.shape[0], k0.shape[1]
    G = nh // nkv
    if not torch.is_tensor(length):
        length = torch.tensor([int(length)], dtype=torch.int32, device=q.device)
    splits = splits or default_splits(cap, nkv, q.device)
    q = q if q.stride(-1) == 1 else q.contiguous()
    gate = gate.contiguous() if gate is not None else None
    BQ = max(16, next_pow2(R * G))
    pacc = torch.empty(nkv * splits * BQ, hd, dtype=torch.float32, device=q.device)
    pml = torch.empty(nkv * splits * BQ, 2, dtype=torch.float32, device=q.device)
    scale = hd ** -0.5
    _split_kernel[(nkv, splits)](q, k0, v0, length, pacc, pml, R, G, nkv, splits, scale,
                                 q.stride(0), q.stride(1), k0.stride(0), k0.stride(1), v0.stride(0), v0.stride(1),
                                 HD=hd, BLOCK_Q=BQ, BLOCK_S=64, num_warps=4)
    y = torch.empty_like(q)
    if R > 1:
        rk, rv, gt, ring = ring_k, ring_v, gate, ring_k.shape[2]
    else:  # no ring: stage 2 only merges (any tensor stands in for the unused pointers)
        rk, rv, gt, ring = k0.unsqueeze(0), v0.unsqueeze(0), q, 1
    _merge_kernel[(nkv, R)](q, rk, rv, gt, length, pacc, pml, y, G, splits, ring, scale,
                            q.stride(0), q.stride(1), y.stride(0), y.stride(1),
                            rk.stride(0), rk.stride(1), rk.stride(2), rv.stride(0), rv.stride(1), rv.stride(2),
                            gt.stride(0),
                            HD=hd, BLOCK_Q=BQ, BLOCK_G=max(16, next_pow2(G)), BLOCK_RING=max(16, next_pow2(ring)),
                            num_warps=4)
    return y


# ------------------------------------------------------------------ the step's K/V and gate

def write_step_kv_torch(k, v, k0, v0, t, ring_k=None, ring_v=None):
    """k, v [nkv, R, hd]: the step's keys and values of every loop. Loop 0 goes into k0 / v0
    [nkv, capacity, hd] at position t (int64 tensor [1]), loop r >= 1 into slot t % ring of
    ring_k / ring_v [R-1, nkv, ring, hd], in the caches' dtype."""
    k0.index_copy_(1, t, k[:, :1].to(k0.dtype))
    v0.index_copy_(1, t, v[:, :1].to(v0.dtype))
    if k.shape[1] > 1:
        slot = torch.remainder(t, ring_k.shape[2])
        ring_k.index_copy_(2, slot, k[:, 1:].transpose(0, 1).unsqueeze(2).to(ring_k.dtype))
        ring_v.index_copy_(2, slot, v[:, 1:].transpose(0, 1).unsqueeze(2).to(ring_v.dtype))


@jit
def _kv_kernel(k_ptr, v_ptr, k0_ptr, v0_ptr, rk_ptr, rv_ptr, t_ptr, RING, stride_kh, stride_kr, stride_vh,
               stride_vr, stride_0h, stride_0s, stride_1h, stride_1s, stride_rr, stride_rh, stride_rs,
               stride_wr, stride_wh, stride_ws, HD: tl.constexpr):
    h, r = tl.program_id(0), tl.program_id(1)
    d = tl.arange(0, HD)
    t = tl.load(t_ptr)
    kk = tl.load(k_ptr + h * stride_kh + r * stride_kr + d)
    vv = tl.load(v_ptr + h * stride_vh + r * stride_vr + d)
    if r == 0:
        tl.store(k0_ptr + h * stride_0h + t * stride_0s + d, kk.to(k0_ptr.dtype.element_ty))
        tl.store(v0_ptr + h * stride_1h + t * stride_1s + d, vv.to(v0_ptr.dtype.element_ty))
    else:
        slot = t % RING
        tl.store(rk_ptr + (r - 1) * stride_rr + h * stride_rh + slot * stride_rs + d, kk.to(rk_ptr.dtype.element_ty))
        tl.store(rv_ptr + (r - 1) * stride_wr + h * stride_wh + slot * stride_ws + d, vv.to(rv_ptr.dtype.element_ty))


def write_step_kv(k, v, k0, v0, t, ring_k=None, ring_v=None):
    """The Triton kernel (same signature as `write_step_kv_torch`): one launch for all loops."""
    nkv, R, hd = k.shape
    if not triton_ok(k) or hd != next_pow2(hd) or k.stride(-1) != 1 or v.stride(-1) != 1:
        return write_step_kv_torch(k, v, k0, v0, t, ring_k, ring_v)
    rk, rv = (ring_k, ring_v) if R > 1 else (k0.unsqueeze(0), v0.unsqueeze(0))  # unused pointers then
    _kv_kernel[(nkv, R)](k, v, k0, v0, rk, rv, t, rk.shape[2], k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                         k0.stride(0), k0.stride(1), v0.stride(0), v0.stride(1), rk.stride(0), rk.stride(1),
                         rk.stride(2), rv.stride(0), rv.stride(1), rv.stride(2), HD=hd, num_warps=1)


def step_gate_torch(x, norm_w, gate_w, gate_b, eps):
    """x [S, H]: the pre-norm inputs of loops r >= 1 -> the hidden-state G-SWA gate [S, nh]
    = sigmoid(gate_w @ rms_norm(x) + gate_b), each step rounded to x's dtype as the engine does."""
    xf = x.float()
    n = norm_w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return torch.sigmoid(F.linear(n, gate_w, gate_b))


@jit
def _gate_kernel(x_ptr, nw_ptr, w_ptr, b_ptr, g_ptr, H, NH, stride_x, stride_w, stride_g, eps,
                 BLOCK_H: tl.constexpr, CHUNK: tl.constexpr):
    r, hb = tl.program_id(0), tl.program_id(1)
    offs = tl.arange(0, CHUNK)
    heads = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    hin = heads < NH
    ss = tl.zeros((CHUNK,), dtype=tl.float32)
    for k in range(0, H, CHUNK):
        xf = tl.load(x_ptr + r * stride_x + k + offs, mask=k + offs < H, other=0.0).to(tl.float32)
        ss += xf * xf
    inv = tl.rsqrt(tl.sum(ss, 0) / H + eps)
    acc = tl.zeros((BLOCK_H, CHUNK), dtype=tl.float32)
    for k in range(0, H, CHUNK):
        inb = k + offs < H
        x = tl.load(x_ptr + r * stride_x + k + offs, mask=inb, other=0.0)
        n = tl.load(nw_ptr + k + offs, mask=inb, other=0.0) * (x.to(tl.float32) * inv).to(x.dtype)
        w = tl.load(w_ptr + heads[:, None] * stride_w + (k + offs)[None, :], mask=hin[:, None] & inb[None, :], other=0.0)
        acc += w.to(tl.float32) * n.to(tl.float32)[None, :]
    dt = g_ptr.dtype.element_ty
    logit = (tl.sum(acc, 1) + tl.load(b_ptr + heads, mask=hin, other=0.0).to(tl.float32)).to(dt)
    tl.store(g_ptr + r * stride_g + heads, tl.sigmoid(logit.to(tl.float32)).to(dt), mask=hin)


def step_gate(x, norm_w, gate_w, gate_b, eps):
    """The Triton kernel (same signature as `step_gate_torch`): one launch for all rows."""
    if not triton_ok(x):
        return step_gate_torch(x, norm_w, gate_w, gate_b, eps)
    S, H = x.shape
    NH = gate_w.shape[0]
    x = x if x.stride(-1) == 1 else x.contiguous()
    g = torch.empty((S, NH), dtype=torch.promote_types(gate_w.dtype, x.dtype), device=x.device)
    BLOCK_H = 4
    _gate_kernel[(S, cdiv(NH, BLOCK_H))](x, norm_w, gate_w, gate_b, g, H, NH, x.stride(0), gate_w.stride(0),
                                        g.stride(0), eps, BLOCK_H=BLOCK_H, CHUNK=512, num_warps=4)
    return g
