"""SwiGLU on the stacked gate/up projection: [..., 2F] -> silu(gate) * up [..., F]."""

import torch
import torch.nn.functional as F

from ._triton import cdiv, jit, tl, triton_ok


def swiglu_torch(gate_up):
    g, u = gate_up.chunk(2, dim=-1)
    return F.silu(g) * u


@jit
def _swiglu_kernel(gu_ptr, y_ptr, FF, stride_gu, stride_y, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < FF
    g = tl.load(gu_ptr + row * stride_gu + offs, mask=inb, other=0.0)
    u = tl.load(gu_ptr + row * stride_gu + FF + offs, mask=inb, other=0.0)
    gf = g.to(tl.float32)
    silu = (gf / (1.0 + tl.exp(-gf))).to(g.dtype)  # rounded like torch's silu before the product
    tl.store(y_ptr + row * stride_y + offs, silu * u, mask=inb)


def swiglu(gate_up):
    """The Triton kernel (same signature as `swiglu_torch`)."""
    if not triton_ok(gate_up):
        return swiglu_torch(gate_up)
    FF = gate_up.shape[-1] // 2
    gu = gate_up.reshape(-1, 2 * FF)
    gu = gu if gu.stride(-1) == 1 else gu.contiguous()
    y = torch.empty(gu.shape[0], FF, dtype=gate_up.dtype, device=gate_up.device)
    BLOCK = 1024
    _swiglu_kernel[(gu.shape[0], cdiv(FF, BLOCK))](gu, y, FF, gu.stride(0), y.stride(0), BLOCK=BLOCK, num_warps=4)
    return y.reshape(*gate_up.shape[:-1], FF)
