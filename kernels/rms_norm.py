"""RMSNorm, with the residual add fused: h = x + residual; y = weight * h / rms(h).

Computed in float32 and rounded to x's dtype before the weight, as the engine does. It can
also write y's int8 form (`Int8Rows`) for a decode matmul on quantized weights that follows.
"""

import torch

from ._triton import jit, next_pow2, tl, triton_ok
from .qmatmul_int8 import Int8Rows, _store_int8


def rms_norm_torch(x, weight, eps, residual=None, int8: Int8Rows | None = None):
    """x [..., H] (+ residual [..., H]) -> y, or (y, h) when a residual is given; `int8` is
    filled with y's int8 form when given."""
    h = x if residual is None else x + residual
    hf = h.float()
    y = weight * (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).to(h.dtype)
    if int8 is not None:
        int8.fill_torch(y)
    return y if residual is None else (y, h)


@jit
def _rms_kernel(x_ptr, r_ptr, w_ptr, y_ptr, h_ptr, q_ptr, d_ptr, s_ptr, H, stride_x, stride_r, stride_y, stride_h,
                eps, BLOCK: tl.constexpr, RESIDUAL: tl.constexpr, GROUP: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    inb = offs < H
    x = tl.load(x_ptr + row * stride_x + offs, mask=inb, other=0.0)
    if RESIDUAL:
        x = x + tl.load(r_ptr + row * stride_r + offs, mask=inb, other=0.0)
        tl.store(h_ptr + row * stride_h + offs, x, mask=inb)
    xf = x.to(tl.float32)
    inv = tl.rsqrt(tl.sum(xf * xf, 0) / H + eps)
    w = tl.load(w_ptr + offs, mask=inb, other=0.0)
    y = (w * (xf * inv).to(x.dtype)).to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + row * stride_y + offs, y, mask=inb)
    if GROUP:  # y as stored, quantized for the matmul that reads it
        _store_int8(y.to(tl.float32), 0, row, H, q_ptr, d_ptr, s_ptr, GROUP, BLOCK)


def rms_norm(x, weight, eps, residual=None, int8: Int8Rows | None = None):
    """The Triton kernel (same signature as `rms_norm_torch`); one program per row."""
    if not triton_ok(x):
        return rms_norm_torch(x, weight, eps, residual, int8)
    H = x.shape[-1]
    x2 = x.reshape(-1, H)
    r2 = x2 if residual is None else residual.reshape(-1, H)
    x2 = x2 if x2.stride(-1) == 1 else x2.contiguous()
    r2 = r2 if r2.stride(-1) == 1 else r2.contiguous()
    h = torch.empty_like(x2) if residual is not None else x2
    y = torch.empty(x2.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    BLOCK = next_pow2(max(H, int8.group if int8 is not None else 1))
    q, d, s = int8[:3] if int8 is not None else (y, y, y)
    _rms_kernel[(x2.shape[0],)](x2, r2, weight, y, h, q, d, s, H, x2.stride(0), r2.stride(0), y.stride(0),
                                h.stride(0), eps, BLOCK=BLOCK, RESIDUAL=residual is not None,
                                GROUP=int8.group if int8 is not None else 0,
                                num_warps=min(16, max(1, BLOCK // 512)), enable_fp_fusion=int8 is None)
    y = y.reshape(x.shape)
    return y if residual is None else (y, h.reshape(x.shape))
