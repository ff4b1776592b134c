"""Fused ops for the looped model: each module holds a Triton kernel and its plain-torch twin
with the same signature (`op` and `op_torch`).

Triton is optional: without it the modules still import and the torch twins work. A Triton
op runs on CUDA tensors, or on CPU tensors under the Triton interpreter (`TRITON_INTERPRET=1`,
set before these modules are imported: Triton reads it when a kernel is decorated).
"""

from ._triton import HAVE_TRITON, interpreting, triton_ok

__all__ = ["HAVE_TRITON", "interpreting", "triton_ok"]
