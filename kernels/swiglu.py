"""SwiGLU on the stacked gate/up projection: [..., 2F] -> silu(gate) * up [..., F].

It can also write the result's int8 form (`Int8Rows`) for a decode matmul on quantized
weights that follows.
"""

import torch
import torch.nn.functional as F

from ._triton import cdiv, jit, tl, triton_ok
from .qmatmul_int8 import Int8Rows, _store_int8


def swiglu_torch(gate_up, int8: Int8Rows | None = None):
    g, u = gate_up.chunk(2, dim=-1)
    y = F.silu(g) * u
    if int8 is not None:
        int8.fill_torch(y)
    return y


@jit
def _swiglu_kernel(gu_ptr, y_ptr, q_ptr, d_ptr, s_ptr, FF, stride_gu, stride_y, BLOCK: tl.constexpr,
                   GROUP: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    k0 = tl.program_id(1) * BLOCK
    offs = k0 + tl.arange(0, BLOCK)
    inb = offs < FF
    g = tl.load(gu_ptr + row * stride_gu + offs, mask=inb, other=0.0)
    u = tl.load(gu_ptr + row * stride_gu + FF + offs, mask=inb, other=0.0)
    gf = g.to(tl.float32)
    silu = (gf / (1.0 + tl.exp(-gf))).to(g.dtype)  # rounded like torch's silu before the product
    y = silu * u
    tl.store(y_ptr + row * stride_y + offs, y, mask=inb)
    if GROUP:  # y as stored, quantized for the matmul that reads it (BLOCK holds whole groups)
        _store_int8(y.to(tl.float32), k0, row, FF, q_ptr, d_ptr, s_ptr, GROUP, BLOCK)


def swiglu(gate_up, int8: Int8Rows | None = None):
    """The Triton kernel (same signature as `swiglu_torch`)."""
    if not triton_ok(gate_up):
        return swiglu_torch(gate_up, int8)
    FF = gate_up.shape[-1] // 2
    gu = gate_up.reshape(-1, 2 * FF)
    gu = gu if gu.stride(-1) == 1 else gu.contiguous()
    y = torch.empty(gu.shape[0], FF, dtype=gate_up.dtype, device=gate_up.device)
    BLOCK = 1024
    q, d, s = int8[:3] if int8 is not None else (y, y, y)
    _swiglu_kernel[(gu.shape[0], cdiv(FF, BLOCK))](gu, y, q, d, s, FF, gu.stride(0), y.stride(0), BLOCK=BLOCK,
                                                   GROUP=int8.group if int8 is not None else 0, num_warps=4,
                                                   enable_fp_fusion=int8 is None)
    return y.reshape(*gate_up.shape[:-1], FF)
