"""Optional Triton: `jit` and `tl` work as names whether or not Triton is installed."""

import os

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # the torch twins still work; kernels are plain functions never launched
    triton = None
    HAVE_TRITON = False

    class _Absent:
        def __getattr__(self, name):
            return None

    tl = _Absent()


def jit(fn):
    return triton.jit(fn) if HAVE_TRITON else fn


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_ok(t) -> bool:
    """Can a Triton kernel run on tensor `t` here (CUDA, or the CPU interpreter)?"""
    return HAVE_TRITON and (t.is_cuda or (t.device.type == "cpu" and interpreting()))


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()
