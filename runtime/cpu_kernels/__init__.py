"""Our CPU kernels, built once per machine on first use: quantized matmuls (qgemm.cpp) and one
layer of the fused decode step (step.cpp, which calls the matmul).

`get()` compiles the C++ source with torch's extension builder (g++ and ninja; the build is
cached in torch's extensions directory, TORCH_EXTENSIONS_DIR, and redone only when the source
changes) and returns a `Kernel`, or None with one warning when it cannot be built (no compiler,
a failed build), or when LOOPCLI_CPU_KERNEL=0 turns it off: callers then keep the torch path.
The library exports plain C functions called through ctypes (no Python binding to compile;
ctypes releases the GIL for the call) and threads with torch's own OpenMP pool.
"""

from __future__ import annotations

import ctypes
import os
import threading
import warnings
from pathlib import Path

import torch

SOURCES = [Path(__file__).with_name("qgemm.cpp"), Path(__file__).with_name("step.cpp")]
TYPES = (2, 8, 12, 13, 14)  # GGML ids the kernel reads: Q4_0, Q8_0, Q4_K, Q5_K, Q6_K
VALUES = {2: 32, 8: 32, 12: 256, 13: 256, 14: 256}  # values per block
BYTES = {2: 18, 8: 34, 12: 144, 13: 176, 14: 210}  # bytes per block
DECODE_ROWS = 4  # up to this many rows read the weights once, decoding blocks in registers
X8 = 0x100  # added to a type id: the weight is in the kernel's x8 layout (see `Kernel.repack`)
X8_TYPES = (8, 12, 14)  # Q8_0, Q4_K, Q6_K

_lock = threading.Lock()
_state: dict[str, object] = {}


class StepLayer(ctypes.Structure):
    """step.cpp's LayerArgs: one layer's sizes and weights (qkv and gate_up: up to 3 and 2 row
    blocks, each with its own type); every field is 8 bytes."""
    _fields_ = ([(n, ctypes.c_int64) for n in ("H", "nh", "nkv", "hd", "inter", "R", "ring", "layer", "layers",
                                               "gate_hidden", "scalar", "decode_rows", "wo_type", "down_type",
                                               "qkv_parts")]
                + [("qkv_type", ctypes.c_int64 * 3), ("qkv_rows", ctypes.c_int64 * 3),
                   ("gate_up_parts", ctypes.c_int64), ("gate_up_type", ctypes.c_int64 * 2),
                   ("gate_up_rows", ctypes.c_int64 * 2), ("eps", ctypes.c_double),
                   ("qkv", ctypes.c_void_p * 3), ("wo", ctypes.c_void_p), ("gate_up", ctypes.c_void_p * 2)]
                + [(n, ctypes.c_void_p) for n in ("down", "attn_norm", "ffn_norm", "qkv_bias", "gate_w", "gate_b",
                                                  "gate_norm")])


class StepSeq(ctypes.Structure):
    """step.cpp's Seq: a sequence's position, cache capacity and its f16 caches."""
    _fields_ = [("t", ctypes.c_int64), ("cap", ctypes.c_int64)] + [
        (n, ctypes.c_void_p) for n in ("k0", "v0", "rk", "rv")]


class Kernel:
    def __init__(self, lib: ctypes.CDLL):
        self._f = lib.loopcli_qgemm
        self._f.restype = ctypes.c_int
        self._f.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                            ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
        self.avx2 = bool(lib.loopcli_qgemm_has_avx2())
        self._x8_bytes = lib.loopcli_x8_bytes
        self._x8_bytes.restype = ctypes.c_int64
        self._x8_bytes.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        self._x8_repack = lib.loopcli_x8_repack
        self._x8_repack.restype = None
        self._x8_repack.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        self._step = lib.loopcli_step_layer
        self._step.restype = ctypes.c_int
        self._step.argtypes = [ctypes.POINTER(StepLayer), ctypes.c_int64, ctypes.POINTER(StepSeq),
                               ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]

    def repack(self, raw: torch.Tensor, ggml_type: int, cols: int) -> tuple[torch.Tensor, int]:
        """GGUF rows -> (the weight as the kernel reads it fastest, the type id to pass with it).
        With AVX2, Q8_0, Q4_K and Q6_K rows are interleaved in groups of 8 (the x8 layout: Q8_0 and
        Q6_K the same bytes, Q4_K 2.8 % more); everything else is returned as it is."""
        if (not self.avx2 or ggml_type not in X8_TYPES or raw.dim() != 2 or cols % VALUES[ggml_type]
                or raw.shape[1] != cols // VALUES[ggml_type] * BYTES[ggml_type]):  # never read past a row
            return raw, ggml_type
        size = self._x8_bytes(ggml_type, raw.shape[0], cols)
        if size == 0:
            return raw, ggml_type
        raw = raw.contiguous()
        out = torch.empty(size, dtype=torch.uint8)
        self._x8_repack(ggml_type, raw.data_ptr(), raw.shape[0], cols, out.data_ptr())
        return out, ggml_type | X8

    def step_layer(self, layer: StepLayer, seqs, cos: torch.Tensor, sin: torch.Tensor, U: torch.Tensor) -> None:
        """One layer of the fused decode step in place on U [B*R, H] (f32, contiguous), for the
        len(seqs) sequences of a `StepSeq` array; cos/sin f32 [B, hd] at their positions."""
        if self._step(ctypes.byref(layer), len(seqs), seqs, cos.data_ptr(), sin.data_ptr(), U.data_ptr()):
            raise ValueError("step: a layer weight is not a kernel format")

    def qgemm(self, x: torch.Tensor, raw: torch.Tensor, ggml_type: int, tiles: bool = False,
              scalar: bool = False, rows: int | None = None) -> torch.Tensor:
        """x float [M, K] @ W.T for W's GGUF rows `raw` uint8 [N, row bytes] -> float32 [M, N],
        or for a repacked weight (`ggml_type` with X8, `raw` flat) of `rows` rows.

        `tiles` (or more than DECODE_ROWS rows): weight rows unpacked a tile at a time and shared
        by all activation rows, whose results then do not depend on M; otherwise (decode) blocks
        are decoded in registers. The x8 layout takes one path for every M. `scalar` forces the
        portable code (tests compare the two; it does not read the x8 layout)."""
        x = x.to(torch.float32).contiguous()
        m, k = x.shape
        if ggml_type & X8:  # a repacked weight: `raw` is flat, `rows` says how many rows it holds
            base = ggml_type & ~X8
            n = rows if rows is not None else -1
            ok = (base in X8_TYPES and raw.dtype == torch.uint8 and raw.dim() == 1 and raw.is_contiguous()
                  and n > 0 and k % VALUES[base] == 0 and raw.numel() == self._x8_bytes(base, n, k))
        else:
            n = raw.shape[0] if raw.dim() == 2 else -1
            ok = (ggml_type in VALUES and k % VALUES[ggml_type] == 0 and raw.dtype == torch.uint8 and raw.dim() == 2
                  and raw.is_contiguous() and raw.shape[1] == k // VALUES[ggml_type] * BYTES[ggml_type])
        if not ok:
            raise ValueError(f"qgemm: GGML type {ggml_type} with {k} columns is not a kernel format "
                             f"for rows of {raw.shape[-1]} bytes")
        y = torch.empty(m, n, dtype=torch.float32)
        if self._f(x.data_ptr(), m, k, raw.data_ptr(), n, ggml_type, int(scalar),
                   int(tiles or m > DECODE_ROWS), y.data_ptr()):
            raise ValueError(f"qgemm: GGML type {ggml_type} is not a kernel format")
        return y


def get() -> Kernel | None:
    """The compiled kernel, or None (torch path)."""
    with _lock:
        if "kernel" not in _state:
            _state["kernel"] = _build()
        return _state["kernel"]


def _build() -> Kernel | None:
    if os.environ.get("LOOPCLI_CPU_KERNEL", "1") == "0":
        return None
    try:
        from torch.utils import cpp_extension

        path = cpp_extension.load(name="loopcli_qgemm", sources=[str(p) for p in SOURCES], is_python_module=False,
                                  extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"])
        return Kernel(ctypes.CDLL(path))
    except Exception as exc:  # no compiler, a failed build: the torch path still works
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        why = next((line for line in lines if "error:" in line), lines[-1]).strip()[:300]  # the compiler's line
        warnings.warn(f"loopcli: the CPU kernel could not be built ({why}); "
                      "quantized matmuls use the slower torch path", RuntimeWarning, stacklevel=3)
        return None
