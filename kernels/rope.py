"""Rotary position embedding, both pair layouts: "neox" rotates (i, i + hd/2) (Hugging Face
`rotate_half`, qwen2 GGUFs), "interleaved" rotates (2i, 2i + 1) (llama.cpp's llama arch)."""

import torch

from ._triton import jit, next_pow2, tl, triton_ok


def rope_torch(x, cos, sin, interleaved=False):
    """x [S, heads, hd], cos/sin [S, hd/2] (or [1, hd/2]: one position for all S rows)
    -> rotated x (new tensor, x's dtype)."""
    c, s = cos[:, None, :], sin[:, None, :]
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * c - b * s, b * c + a * s], dim=-1).flatten(-2)
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * c - b * s, b * c + a * s], dim=-1)


@jit
def _rope_kernel(x_ptr, c_ptr, s_ptr, y_ptr, NH, stride_xs, stride_xh, stride_ys, stride_yh, stride_c,
                 HALF: tl.constexpr, BLOCK_H: tl.constexpr, INTERLEAVED: tl.constexpr):
    pos = tl.program_id(0).to(tl.int64)
    hb = tl.program_id(1)
    heads = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    i = tl.arange(0, HALF)
    hin = (heads < NH)[:, None]
    if INTERLEAVED:
        ia, ib = 2 * i, 2 * i + 1
    else:
        ia, ib = i, i + HALF
    xa_ptr = x_ptr + pos * stride_xs + heads[:, None] * stride_xh
    a = tl.load(xa_ptr + ia[None, :], mask=hin, other=0.0)
    b = tl.load(xa_ptr + ib[None, :], mask=hin, other=0.0)
    c = tl.load(c_ptr + pos * stride_c + i)[None, :].to(a.dtype)
    s = tl.load(s_ptr + pos * stride_c + i)[None, :].to(a.dtype)
    ya_ptr = y_ptr + pos * stride_ys + heads[:, None] * stride_yh
    tl.store(ya_ptr + ia[None, :], a * c - b * s, mask=hin)
    tl.store(ya_ptr + ib[None, :], b * c + a * s, mask=hin)


def rope(x, cos, sin, interleaved=False):
    """The Triton kernel (same signature as `rope_torch`); one program per position and head block."""
    S, nh, hd = x.shape
    if not triton_ok(x) or hd != next_pow2(hd) or hd < 2:
        return rope_torch(x, cos, sin, interleaved)
    x = x if x.stride(-1) == 1 else x.contiguous()
    cos, sin = cos.expand(S, hd // 2), sin.expand(S, hd // 2)  # one row: all positions (stride 0, no copy)
    if cos.stride() != sin.stride() or cos.stride(-1) != 1:
        cos, sin = cos.contiguous(), sin.contiguous()
    y = torch.empty(S, nh, hd, dtype=x.dtype, device=x.device)
    BH = min(16, next_pow2(nh))
    _rope_kernel[(S, -(-nh // BH))](x, cos, sin, y, nh, x.stride(0), x.stride(1), y.stride(0), y.stride(1),
                                    cos.stride(0), HALF=hd // 2, BLOCK_H=BH, INTERLEAVED=interleaved, num_warps=4)
    return y
