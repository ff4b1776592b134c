"""Matmul straight from GGUF weight bytes: y = x @ W.T with W dequantized in registers.

`data` is one tensor as GGUF stores it: uint8 [N, row_bytes], one row of blocks per output
row (llama.cpp block layouts: Q8_0, Q4_0, Q4_K, Q5_K, Q6_K, and F32/F16/BF16 as raw bytes).
Every weight value is found by address arithmetic on its column k alone (block k // QK,
element k % QK), so one tile loop serves every format, and the torch twin uses the very same
formulas as gathers. The arithmetic order follows gguf-py's numpy dequantizers
(`(d * sc) * q - dmin * m`), so a tile is bit-identical to gguf-py's floats where the
compiler keeps that order (the interpreter does).

Two shapes of one kernel: decode (M = batch x R <= 8 rows: a broadcast multiply-and-sum,
no tensor-core padding; split-K when the rows alone give too few programs) and prefill
(`tl.dot` GEMM tiles, tensor cores for f16/bf16 activations).
"""

import torch

from ._triton import cdiv, interpreting, jit, next_pow2, tl, triton_ok

# GGML type ids (gguf.GGMLQuantizationType) -> (values per block, bytes per block)
F32, F16, Q4_0, Q8_0, Q4_K, Q5_K, Q6_K, BF16 = 0, 1, 2, 8, 12, 13, 14, 30
BLOCKS = {F32: (1, 4), F16: (1, 2), BF16: (1, 2), Q4_0: (32, 18), Q8_0: (32, 34),
          Q4_K: (256, 144), Q5_K: (256, 176), Q6_K: (256, 210)}
TYPES = tuple(BLOCKS)
DECODE_ROWS = 8  # up to this many activation rows: the GEMV-like kernel


def columns(data: torch.Tensor, ggml_type: int) -> int:
    n, size = BLOCKS[ggml_type]
    return data.shape[-1] // size * n


def _check(x: torch.Tensor, data: torch.Tensor, ggml_type: int) -> int:
    if ggml_type not in BLOCKS:
        raise ValueError(f"GGML type {ggml_type} is not supported here (supported: {sorted(BLOCKS)})")
    if data.dtype != torch.uint8 or data.dim() != 2:
        raise ValueError("weights must be GGUF bytes: uint8 [rows, row_bytes]")
    K = columns(data, ggml_type)
    if x.shape[-1] != K:
        raise ValueError(f"x has {x.shape[-1]} columns but the weight has {K}")
    return K


# ---------------------------------------------------------------------------------- torch twin

def _f16_at(data: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    lo, hi = data[:, idx].to(torch.int32), data[:, idx + 1].to(torch.int32)
    return (lo | (hi << 8)).to(torch.int16).view(torch.float16).float()


def dequantize_torch(data: torch.Tensor, ggml_type: int) -> torch.Tensor:
    """GGUF bytes uint8 [N, row_bytes] -> float32 [N, K], by the kernel's address formulas."""
    N = data.shape[0]
    if ggml_type in (F32, F16, BF16):
        dt = {F32: torch.float32, F16: torch.float16, BF16: torch.bfloat16}[ggml_type]
        return data.contiguous().view(dt).reshape(N, -1).float()
    QK, BB = BLOCKS[ggml_type]
    k = torch.arange(columns(data, ggml_type), device=data.device)
    base, e = (k // QK) * BB, k % QK
    byte = lambda off: data[:, base + off].to(torch.int32)
    if ggml_type == Q8_0:
        return _f16_at(data, base) * data[:, base + 2 + e].view(torch.int8).float()
    if ggml_type == Q4_0:
        q = (byte(2 + e % 16) >> ((e // 16) * 4)) & 15
        return _f16_at(data, base) * (q - 8).float()
    if ggml_type == Q6_K:
        ql = (byte((e // 128) * 64 + e % 64) >> (((e % 128) // 64) * 4)) & 15
        qh = (byte(128 + (e // 128) * 32 + e % 32) >> (((e % 128) // 32) * 2)) & 3
        sc = data[:, base + 192 + e // 16].view(torch.int8).float()
        return (_f16_at(data, base + 208) * sc) * ((ql | (qh << 4)) - 32).float()
    sb = e // 32  # Q4_K, Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins
    a, b, c = byte(4 + sb), byte(8 + sb), byte(4 + torch.where(sb >= 4, sb - 4, 0))
    low = sb < 4
    sc = torch.where(low, a & 63, (b & 15) | ((c >> 2) & 48)).float()
    mn = torch.where(low, b & 63, (b >> 4) | ((a >> 2) & 48)).float()
    qs = 16 if ggml_type == Q4_K else 48
    q = (byte(qs + (e // 64) * 32 + e % 32) >> ((sb % 2) * 4)) & 15
    if ggml_type == Q5_K:
        q = q | (((byte(16 + e % 32) >> sb) & 1) << 4)
    return (_f16_at(data, base) * sc) * q.float() - _f16_at(data, base + 2) * mn


def qmatmul_torch(x: torch.Tensor, data: torch.Tensor, ggml_type: int, split_k: int | None = None) -> torch.Tensor:
    """Dequantize, then matmul (in x's dtype). `split_k` is accepted for the same signature."""
    _check(x, data, ggml_type)
    return x @ dequantize_torch(data, ggml_type).to(x.dtype).T


# ---------------------------------------------------------------------------------- Triton

@jit
def _f16_load(ptr, mask):
    lo = tl.load(ptr, mask=mask, other=0).to(tl.uint16)
    hi = tl.load(ptr + 1, mask=mask, other=0).to(tl.uint16)
    return (lo | (hi << 8)).to(tl.float16, bitcast=True).to(tl.float32)


@jit
def _dequant_tile(w_ptr, rows, k, mask, row_bytes, TYPE: tl.constexpr):
    """float32 [BLOCK_N, BLOCK_K] of rows (int64 [BLOCK_N, 1]) and columns k ([1, BLOCK_K])."""
    row = w_ptr + rows * row_bytes
    if TYPE == 0:  # F32
        w = tl.load((row + k * 4).to(tl.pointer_type(tl.float32)), mask=mask, other=0.0)
    elif TYPE == 1:  # F16
        w = tl.load((row + k * 2).to(tl.pointer_type(tl.float16)), mask=mask, other=0.0).to(tl.float32)
    elif TYPE == 30:  # BF16
        w = tl.load((row + k * 2).to(tl.pointer_type(tl.bfloat16)), mask=mask, other=0.0).to(tl.float32)
    elif TYPE == 8:  # Q8_0: f16 d, int8 qs[32]
        blk = row + (k // 32) * 34
        q = tl.load(blk + 2 + k % 32, mask=mask, other=0).to(tl.int8, bitcast=True).to(tl.float32)
        w = _f16_load(blk, mask) * q
    elif TYPE == 2:  # Q4_0: f16 d, qs[16] (low nibbles = values 0..15, high = 16..31)
        blk = row + (k // 32) * 18
        e = k % 32
        q = (tl.load(blk + 2 + e % 16, mask=mask, other=0).to(tl.int32) >> ((e // 16) * 4)) & 15
        w = _f16_load(blk, mask) * (q - 8).to(tl.float32)
    elif TYPE == 14:  # Q6_K: ql[128], qh[64], int8 scales[16], f16 d
        blk = row + (k // 256) * 210
        e = k % 256
        ql = (tl.load(blk + (e // 128) * 64 + e % 64, mask=mask, other=0).to(tl.int32) >> (((e % 128) // 64) * 4)) & 15
        qh = (tl.load(blk + 128 + (e // 128) * 32 + e % 32, mask=mask, other=0).to(tl.int32)
              >> (((e % 128) // 32) * 2)) & 3
        sc = tl.load(blk + 192 + e // 16, mask=mask, other=0).to(tl.int8, bitcast=True).to(tl.float32)
        w = (_f16_load(blk + 208, mask) * sc) * ((ql | (qh << 4)) - 32).to(tl.float32)
    else:  # Q4_K (12) / Q5_K (13): f16 d, f16 dmin, scales[12], (Q5_K: qh[32]), qs[128]
        BB: tl.constexpr = 144 if TYPE == 12 else 176
        QS: tl.constexpr = 16 if TYPE == 12 else 48
        blk = row + (k // 256) * BB
        e = k % 256
        sb = e // 32
        a = tl.load(blk + 4 + sb, mask=mask, other=0).to(tl.int32)
        b = tl.load(blk + 8 + sb, mask=mask, other=0).to(tl.int32)
        c = tl.load(blk + 4 + tl.where(sb >= 4, sb - 4, 0), mask=mask, other=0).to(tl.int32)
        low = sb < 4
        sc = tl.where(low, a & 63, (b & 15) | ((c >> 2) & 48)).to(tl.float32)
        mn = tl.where(low, b & 63, (b >> 4) | ((a >> 2) & 48)).to(tl.float32)
        q = (tl.load(blk + QS + (e // 64) * 32 + e % 32, mask=mask, other=0).to(tl.int32) >> ((sb % 2) * 4)) & 15
        if TYPE == 13:
            q = q | (((tl.load(blk + 16 + e % 32, mask=mask, other=0).to(tl.int32) >> sb) & 1) << 4)
        w = (_f16_load(blk, mask) * sc) * q.to(tl.float32) - _f16_load(blk + 2, mask) * mn
    return w


@jit
def _qmm_kernel(x_ptr, w_ptr, y_ptr, M, N, K, stride_xm, stride_ym, row_bytes, k_split,
                TYPE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                USE_DOT: tl.constexpr, ATOMIC: tl.constexpr):
    pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(offs_n, N - 1).to(tl.int64)[:, None]  # clamped: out-of-range rows are not stored
    k_lo = pid_k * k_split
    k_hi = tl.minimum(K, k_lo + k_split)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        kin = offs_k < k_hi
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=(offs_m[:, None] < M) & kin[None, :], other=0.0)
        w = _dequant_tile(w_ptr, rows, offs_k[None, :], kin[None, :], row_bytes, TYPE)
        if USE_DOT:
            acc += tl.dot(x, tl.trans(w.to(x.dtype)), input_precision="ieee")
        else:
            acc += tl.sum(x.to(tl.float32)[:, None, :] * w[None, :, :], axis=2)
    out = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    keep = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if ATOMIC:
        tl.atomic_add(out, acc, mask=keep)
    else:
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=keep)


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def qmatmul(x: torch.Tensor, data: torch.Tensor, ggml_type: int, split_k: int | None = None) -> torch.Tensor:
    """x [..., K] @ W.T -> [..., N] in x's dtype, W read from its GGUF bytes `data`.

    `split_k`: K ranges summed with atomics (decode); None chooses from the device's size.
    """
    K = _check(x, data, ggml_type)
    if not triton_ok(x):
        return qmatmul_torch(x, data, ggml_type)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M, N = x2.shape[0], data.shape[0]
    decode = M <= DECODE_ROWS
    if decode:  # the [BM, BN, BK] product stays at 8K values: no register spill at any row count
        BM = max(1, next_pow2(M))
        BN, BK, warps = 32, max(32, 256 // BM), 4
    else:
        BM, BN, BK, warps = 64, 64, 64, 4
    if interpreting():  # the interpreter pays per program and per op, hardly per value
        BN, BK = min(256, max(BN, next_pow2(N))), 256
        BM = BM if decode else 256
    grid_mn = cdiv(M, BM) * cdiv(N, BN)
    if split_k is None:  # enough programs to keep every SM reading; each split >= 4 K-tiles
        split_k = max(1, min(cdiv(2 * _sm_count(x.device), grid_mn), K // (4 * BK))) if decode else 1
    k_split = cdiv(cdiv(K, split_k), BK) * BK
    split_k = cdiv(K, k_split)
    atomic = split_k > 1
    y = torch.zeros(M, N, dtype=torch.float32, device=x.device) if atomic else torch.empty(M, N, dtype=x.dtype, device=x.device)
    grid = (cdiv(M, BM), cdiv(N, BN), split_k)
    _qmm_kernel[grid](x2, data, y, M, N, K, x2.stride(0), y.stride(0), data.stride(0), k_split,
                      TYPE=ggml_type, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, USE_DOT=not decode, ATOMIC=atomic,
                      num_warps=warps)
    return y.to(x.dtype).reshape(*lead, N)
