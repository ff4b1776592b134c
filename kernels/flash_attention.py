"""Prefill attention: flash attention over one or two KV sources under one softmax, GQA.

A key is visible to a query when its position is known (>= 0), not after the query
(causal) and, with a window W, at most W positions before it. Positions are explicit, so
the same kernel serves the loop-0 cache (key position = index) and PLT's local branch
(the ring of the last W + 1 loop-r keys, slots in any order, as a first source plus the
chunk's own keys as a second). A query that sees no key at all gets zeros, never NaN.
"""

import torch

from ._triton import cdiv, jit, next_pow2, tl, triton_ok


def _mask(q_pos, k_pos, window):
    vis = (k_pos[None, :] >= 0) & (k_pos[None, :] <= q_pos[:, None])
    if window is not None:
        vis &= q_pos[:, None] - k_pos[None, :] <= window
    return vis


def flash_attention_torch(q, q_pos, k, v, k_pos=None, k2=None, v2=None, k2_pos=None, window=None):
    """q [nh, T, hd], q_pos int [T]; k/v [nkv, S, hd] (k_pos [S], default 0..S-1); optional
    second source k2/v2 [nkv, S2, hd] with k2_pos; window W or None -> [nh, T, hd]."""
    nh, T, hd = q.shape
    if k_pos is None:
        k_pos = torch.arange(k.shape[1], device=q.device)
    if k2 is not None:
        k, v = torch.cat([k, k2], 1), torch.cat([v, v2], 1)
        k_pos = torch.cat([k_pos, torch.arange(k2.shape[1], device=q.device) if k2_pos is None else k2_pos])
    g = nh // k.shape[0]
    k = k.to(q.dtype).repeat_interleave(g, 0)
    v = v.to(q.dtype).masked_fill((k_pos < 0)[:, None], 0.0).repeat_interleave(g, 0)  # empty slots
    s = (q.float() @ k.float().transpose(1, 2)) * hd ** -0.5
    vis = _mask(q_pos.long(), k_pos.long(), window)
    p = torch.softmax(s.masked_fill(~vis, float("-inf")), -1).nan_to_num(0.0)  # no key: zeros
    return (p @ v.float()).to(q.dtype)


@jit
def _source(acc, m, l, q, q_pos, k_ptr, v_ptr, pos_ptr, S, kvh, stride_kh, stride_ks, stride_vh, stride_vs,
            window, scale, HD: tl.constexpr, BLOCK_S: tl.constexpr, INDEX_POS: tl.constexpr,
            HAS_WINDOW: tl.constexpr):
    """Online softmax of q [BLOCK_T, HD] over one source's keys; returns (acc, m, l)."""
    offs_d = tl.arange(0, HD)
    lo = 0
    hi = S
    if INDEX_POS:  # positions = indices: skip tiles the causal mask or the window hides
        hi = tl.minimum(S, tl.max(q_pos) + 1)
        if HAS_WINDOW:
            lo = tl.maximum(0, tl.min(q_pos) - window) // BLOCK_S * BLOCK_S
    for s0 in range(lo, hi, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        inb = offs_s < S
        if INDEX_POS:
            kp = tl.where(inb, offs_s, -1)
        else:
            kp = tl.load(pos_ptr + offs_s, mask=inb, other=-1)
        k = tl.load(k_ptr + kvh * stride_kh + offs_s[:, None] * stride_ks + offs_d[None, :], mask=inb[:, None], other=0.0)
        v = tl.load(v_ptr + kvh * stride_vh + offs_s[:, None] * stride_vs + offs_d[None, :],
                    mask=(kp >= 0)[:, None], other=0.0)  # empty slots may hold anything
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision="ieee") * scale
        vis = (kp[None, :] >= 0) & (kp[None, :] <= q_pos[:, None])
        if HAS_WINDOW:
            vis = vis & (q_pos[:, None] - kp[None, :] <= window)
        s = tl.where(vis, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a fully masked row: no NaN
        alpha = tl.exp(m - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l = l * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision="ieee")
        m = m_new
    return acc, m, l


@jit
def _flash_kernel(q_ptr, qpos_ptr, o_ptr, k_ptr, v_ptr, kpos_ptr, S, k2_ptr, v2_ptr, k2pos_ptr, S2,
                  T, G, window, scale,
                  stride_qh, stride_qt, stride_oh, stride_ot,
                  stride_kh, stride_ks, stride_vh, stride_vs, stride_k2h, stride_k2s, stride_v2h, stride_v2s,
                  HD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr,
                  INDEX_POS: tl.constexpr, INDEX_POS2: tl.constexpr, TWO: tl.constexpr, HAS_WINDOW: tl.constexpr):
    h, tb = tl.program_id(0), tl.program_id(1)
    kvh = h // G
    offs_t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, HD)
    tin = offs_t < T
    q = tl.load(q_ptr + h * stride_qh + offs_t[:, None] * stride_qt + offs_d[None, :], mask=tin[:, None], other=0.0)
    # rows past T take the last valid position: they only bound the tile loop, never stored
    q_pos = tl.load(qpos_ptr + tl.minimum(offs_t, T - 1))
    acc = tl.zeros((BLOCK_T, HD), dtype=tl.float32)
    m = tl.full((BLOCK_T,), float("-inf"), dtype=tl.float32)
    l = tl.zeros((BLOCK_T,), dtype=tl.float32)
    acc, m, l = _source(acc, m, l, q, q_pos, k_ptr, v_ptr, kpos_ptr, S, kvh, stride_kh, stride_ks, stride_vh,
                        stride_vs, window, scale, HD, BLOCK_S, INDEX_POS, HAS_WINDOW)
    if TWO:
        acc, m, l = _source(acc, m, l, q, q_pos, k2_ptr, v2_ptr, k2pos_ptr, S2, kvh, stride_k2h, stride_k2s,
                            stride_v2h, stride_v2s, window, scale, HD, BLOCK_S, INDEX_POS2, HAS_WINDOW)
    out = acc / tl.where(l == 0.0, 1.0, l)[:, None]  # no visible key: zeros
    tl.store(o_ptr + h * stride_oh + offs_t[:, None] * stride_ot + offs_d[None, :],
             out.to(o_ptr.dtype.element_ty), mask=tin[:, None])


def _last_unit(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def flash_attention(q, q_pos, k, v, k_pos=None, k2=None, v2=None, k2_pos=None, window=None):
    """The Triton kernel (same signature as `flash_attention_torch`)."""
    nh, T, hd = q.shape
    if not triton_ok(q) or hd != next_pow2(hd) or hd < 16:
        return flash_attention_torch(q, q_pos, k, v, k_pos, k2, v2, k2_pos, window)
    q, k, v = _last_unit(q), _last_unit(k), _last_unit(v)
    two = k2 is not None
    if two:
        k2, v2 = _last_unit(k2), _last_unit(v2)
    else:
        k2, v2, k2_pos = k, v, k_pos
    o = torch.empty_like(q)
    q_pos = q_pos.to(torch.int32).contiguous()
    pos = lambda p: q_pos if p is None else p.to(torch.int32).contiguous()
    BT = 64 if T > 16 else 16
    BS = 64
    grid = (nh, cdiv(T, BT))
    _flash_kernel[grid](
        q, q_pos, o, k, v, pos(k_pos), k.shape[1], k2, v2, pos(k2_pos), k2.shape[1],
        T, nh // k.shape[0], -1 if window is None else int(window), hd ** -0.5,
        q.stride(0), q.stride(1), o.stride(0), o.stride(1),
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), k2.stride(0), k2.stride(1), v2.stride(0), v2.stride(1),
        HD=hd, BLOCK_T=BT, BLOCK_S=BS, INDEX_POS=k_pos is None, INDEX_POS2=k2_pos is None, TWO=two,
        HAS_WINDOW=window is not None, num_warps=4)
    return o
