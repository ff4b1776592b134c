"""Matmul straight from GGUF weight bytes: y = x @ W.T with W dequantized in registers.

`data` is one tensor as GGUF stores it: uint8 [N, row_bytes], one row of blocks per output
row (llama.cpp block layouts: Q8_0, Q4_0, Q4_K, Q5_K, Q6_K, and F32/F16/BF16 as raw bytes).
The torch twin finds every weight value by address arithmetic on its column k alone (block
k // QK, element k % QK), as gathers; the kernels read each 256-value span's bytes as they
lie (below). Both keep the arithmetic order of gguf-py's numpy dequantizers
(`(d * sc) * q - dmin * m`), so a value is bit-identical to gguf-py's float where the
compiler keeps that order (the interpreter does).

Q8_0, Q4_0 and Q6_K blocks (34, 18 and 210 bytes) leave their quants at 2-byte alignment,
which allows no wide loads; the engine keeps them "planar" (`to_planar`, type id | PLANAR):
each row's quants, then its scales, then its f16 factors, each a contiguous plane, the row
padded to 16 bytes. The same bytes, rearranged once at load; the kernels read both layouts.

Activations meeting quantized weights are quantized to int8 first, as the CPU kernel and
llama.cpp do (`qmatmul_int8`: per 32 values, 256 for the K formats); float weights meet x as
it is. Three kernels: decode on int8 dot products (M = batch x R <= DECODE_ROWS rows, weights
whose quants are 4-byte aligned: `qmatmul_int8._qmv8_kernel`), decode on floats (the other
weights: multiply-and-add per value, the rows held by each thread), both with split-K when
the weight rows alone give too few programs, and prefill (`tl.dot` GEMM tiles on the
dequantized activations, tensor cores for f16/bf16).
"""

import torch

from ._triton import cdiv, interpreting, jit, next_pow2, tl, triton_ok
from .qmatmul_int8 import (GROUP, Int8Rows, _f16, _f16_masked, _kscale, _qmv8_kernel, _store_result,
                           dequantize_rows_torch, launch_qmv8, quantize_rows)

# GGML type ids (gguf.GGMLQuantizationType) -> (values per block, bytes per block)
F32, F16, Q4_0, Q8_0, Q4_K, Q5_K, Q6_K, BF16 = 0, 1, 2, 8, 12, 13, 14, 30
BLOCKS = {F32: (1, 4), F16: (1, 2), BF16: (1, 2), Q4_0: (32, 18), Q8_0: (32, 34),
          Q4_K: (256, 144), Q5_K: (256, 176), Q6_K: (256, 210)}
PLANAR = 0x100  # type id flag: the planar layout of a type in PLANES
# a block's byte ranges in plane order (quants, then scales, then f16 factors)
PLANES = {Q8_0: [(2, 34), (0, 2)], Q4_0: [(2, 18), (0, 2)], Q6_K: [(0, 128), (128, 192), (192, 208), (208, 210)]}
BLOCKS.update({t | PLANAR: BLOCKS[t] for t in PLANES})
TYPES = tuple(t for t in BLOCKS if not t & PLANAR)
DECODE_ROWS = 4  # up to this many activation rows: the GEMV-like kernel
INT8 = (Q4_K, Q5_K, Q6_K | PLANAR, Q8_0 | PLANAR, Q4_0 | PLANAR)  # decode on dp4a: quants 4-byte aligned


def act_group(ggml_type: int) -> int | None:
    """Activation values per int8 scale for this weight type; None: x is used as it is."""
    return GROUP.get(ggml_type & ~PLANAR)


def columns(data: torch.Tensor, ggml_type: int) -> int:
    n, size = BLOCKS[ggml_type]
    return data.shape[-1] // size * n  # a planar row's padding is under one block


def bytes_per_row(ggml_type: int, K: int) -> int:
    """Bytes of one row of K values; a planar row is padded to 16 bytes (aligned rows)."""
    n, size = BLOCKS[ggml_type]
    raw = K // n * size
    return raw + (-raw % 16 if ggml_type & PLANAR else 0)


def to_planar(data: torch.Tensor, ggml_type: int) -> torch.Tensor:
    """GGUF rows uint8 [N, nb * block] of a type in PLANES -> its planar rows (padded to 16)."""
    N, (_, size) = data.shape[0], BLOCKS[ggml_type]
    blocks = data.reshape(N, -1, size)
    planes = [blocks[:, :, a:b].reshape(N, -1) for a, b in PLANES[ggml_type]]
    pad = bytes_per_row(ggml_type | PLANAR, columns(data, ggml_type)) - data.shape[1]
    if pad:
        planes.append(torch.zeros(N, pad, dtype=torch.uint8, device=data.device))
    return torch.cat(planes, 1)


def from_planar(data: torch.Tensor, ggml_type: int) -> torch.Tensor:
    """The inverse of `to_planar` (ggml_type: the base type)."""
    N, (_, size) = data.shape[0], BLOCKS[ggml_type]
    nb = data.shape[1] // size
    parts, at = {}, 0
    for a, b in PLANES[ggml_type]:
        parts[a] = data[:, at:at + nb * (b - a)].reshape(N, nb, b - a)
        at += nb * (b - a)
    return torch.cat([parts[a] for a in sorted(parts)], 2).reshape(N, nb * size)


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
    if ggml_type & PLANAR:
        ggml_type &= ~PLANAR
        data = from_planar(data, ggml_type)
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
    """Quantize x to int8 and back (quantized weights), dequantize W, matmul (in x's dtype).
    `split_k` is accepted for the same signature."""
    K = _check(x, data, ggml_type)
    group = act_group(ggml_type)
    if group:
        x = dequantize_rows_torch(x.reshape(-1, K), group).reshape(x.shape)
    return x @ dequantize_torch(data, ggml_type).to(x.dtype).T


# ---------------------------------------------------------------------------------- Triton
#
# One pass reads one 256-value span of each of BLOCK_N weight rows (a K-quant super-block,
# 8 blocks of Q8_0 / Q4_0, 256 floats) as two "parts" of [BLOCK_N, U, V] values in the
# order the bytes lie: a quant byte is loaded once as part of a contiguous vector and its
# nibbles go to the parts, scales are loaded once per (row, unit of V values), and x is
# gathered in the matching order instead. Each value costs a few integer ops, one exact
# int -> float conversion by the float-exponent trick (conversion instructions issue at a
# quarter of the rate), one multiply-add for its scale and one per activation row.

@jit
def _u4f(q, offset: tl.constexpr):
    """int32 q in [0, 2^23) -> float32 q - offset, exactly, without a conversion instruction
    (the bits of 2^23 + q as a float, minus 2^23 + offset: one add)."""
    return (q | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + offset)


@jit
def _part(row, s, K, P: tl.constexpr, TYPE: tl.constexpr, U: tl.constexpr, V: tl.constexpr):
    """Part P (0 or 1) of the 256-wide span s of rows `row` (uint8 pointers [BN, 1, 1]): the
    quants q [BN, U, V] as floats with their offset removed (float types: the values), the
    scale d and min m of each unit [BN, U, 1] (value = d * q - m; m only for Q4_K / Q5_K, d
    not for float types) and the part's columns within the span [1, U, V]. The parts split
    each quant byte's nibbles (Q4_K / Q5_K / Q6_K / Q4_0) or the span's halves (the rest)."""
    u = tl.arange(0, U)[None, :, None]
    v = tl.arange(0, V)[None, None, :]
    d = tl.full((1, 1, 1), 1.0, tl.float32)
    m = tl.full((1, 1, 1), 0.0, tl.float32)
    if TYPE == 12 or TYPE == 13:  # Q4_K / Q5_K: qs byte u*32+v: low nibble value u*64+v, high +32
        BB: tl.constexpr = 144 if TYPE == 12 else 176
        QS: tl.constexpr = 16 if TYPE == 12 else 48
        blk = row + s * BB
        qi = (tl.load(blk + QS + u * 32 + v).to(tl.int32) >> (4 * P)) & 15
        if TYPE == 13:  # qh[v] holds bit 4 of value v of every sub-block; read at the tile's shape
            qi = qi | (((tl.load(blk + 16 + v + 0 * u).to(tl.int32) >> (2 * u + P)) & 1) << 4)
        sc, mn = _kscale(blk, 2 * u + P)
        sc, mn = _u4f(sc, 0.0), _u4f(mn, 0.0)
        q = _u4f(qi, 0.0)
        d = _f16(blk) * sc
        m = _f16(blk + 2) * mn
        c = u * 64 + v + 32 * P
    elif TYPE == 14 or TYPE == 270:  # Q6_K: unit u = 4h + 2a + j16: values h*128 + a*32 + j16*16 + v (+64)
        h, a, j16 = u // 4, (u // 2) % 2, u % 2
        if TYPE == 14:  # ql[128], qh[64], scales[16], d in each 210-byte block
            ql_at, qh_at, sc_at, d_at = row + s * 210, row + s * 210 + 128, row + s * 210 + 192, row + s * 210 + 208
        else:  # planar: the planes of all nb blocks in turn
            nb = K // 256
            ql_at, qh_at, sc_at, d_at = row + s * 128, row + nb * 128 + s * 64, row + nb * 192 + s * 16, row + nb * 208 + s * 2
        ql = (tl.load(ql_at + u * 16 + v).to(tl.int32) >> (4 * P)) & 15
        qh = (tl.load(qh_at + h * 32 + j16 * 16 + v).to(tl.int32) >> (2 * a + 4 * P)) & 3
        q = _u4f(ql | (qh << 4), 32.0)
        d = _f16(d_at) * tl.load(sc_at + 4 * P + h * 8 + a * 2 + j16).to(tl.int8, bitcast=True).to(tl.float32)
        c = h * 128 + a * 32 + j16 * 16 + v + 64 * P
    elif TYPE == 2 or TYPE == 258:  # Q4_0: 8 blocks (f16 d, qs[16]); byte v: low nibble value v, high v + 16
        b = s * 8 + u
        ok = b * 32 < K  # K need only be a multiple of 32
        if TYPE == 2:
            q_at, d_at = row + b * 18 + 2, row + b * 18
        else:
            q_at, d_at = row + b * 16, row + (K // 32) * 16 + b * 2
        q = _u4f((tl.load(q_at + v, mask=ok, other=0).to(tl.int32) >> (4 * P)) & 15, 8.0)
        d = _f16_masked(d_at, ok)
        c = u * 32 + v + 16 * P
    elif TYPE == 8 or TYPE == 264:  # Q8_0: 8 blocks (f16 d, int8 qs[32]); blocks 0-3 and 4-7 as the parts
        b = s * 8 + u + 4 * P
        ok = b * 32 < K  # K need only be a multiple of 32
        if TYPE == 8:
            q_at, d_at = row + b * 34 + 2, row + b * 34
        else:
            q_at, d_at = row + b * 32, row + (K // 32) * 32 + b * 2
        # the int8 bits read as unsigned (x ^ 128 = x + 128), the offset taken off
        q = _u4f(tl.load(q_at + v, mask=ok, other=0).to(tl.int32) ^ 128, 128.0)
        d = _f16_masked(d_at, ok)
        c = u * 32 + v + 128 * P
    else:  # F32 / F16 / BF16: the span's values in order, masked past K
        c = u * 32 + v + 128 * P
        k = s * 256 + c
        if TYPE == 0:
            q = tl.load((row + k * 4).to(tl.pointer_type(tl.float32)), mask=k < K, other=0.0)
        elif TYPE == 1:
            q = tl.load((row + k * 2).to(tl.pointer_type(tl.float16)), mask=k < K, other=0.0).to(tl.float32)
        else:
            q = tl.load((row + k * 2).to(tl.pointer_type(tl.bfloat16)), mask=k < K, other=0.0).to(tl.float32)
    return q, d, m, c


@jit
def _values(q, d, m, TYPE: tl.constexpr):
    """One part's weight values d * q - m, in gguf-py's order."""
    if TYPE == 12 or TYPE == 13:
        w = d * q - m
    elif TYPE == 0 or TYPE == 1 or TYPE == 30:
        w = q
    else:
        w = d * q
    return w


@jit
def _xrow(xp, k, r, M, K, MASK_K: tl.constexpr):
    """Row r of x at columns k, float32; rows past M and columns past K read as 0. The row
    test is built from tl.full so the mask is uniform along k: vector loads stay possible."""
    ok = tl.full(k.shape, r, tl.int32) < M
    if MASK_K:
        ok = ok & (k < K)
    return tl.load(xp + k, mask=ok, other=0.0).to(tl.float32)


@jit
def _qmv_kernel(x_ptr, w_ptr, y_ptr, part_ptr, lock_ptr, res_ptr, M, N, K, stride_xm, stride_ym, row_bytes,
                spans_per_split, splits, TYPE: tl.constexpr, U: tl.constexpr, V: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, EVEN: tl.constexpr, SPLIT: tl.constexpr, RESIDUAL: tl.constexpr):
    pid_n, pid_k = tl.program_id(0), tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row = w_ptr + tl.minimum(offs_n, N - 1).to(tl.int64)[:, None, None] * row_bytes  # clamped: not stored
    s_lo = pid_k * spans_per_split
    s_hi = tl.minimum(tl.cdiv(K, 256), s_lo + spans_per_split)
    # one accumulator per activation row (up to 4), summed once after the loop; each row's x
    # meets the weight tile in the tile's own layout
    acc0 = tl.zeros((BLOCK_N, U, V), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_N, U, V), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N, U, V), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_N, U, V), dtype=tl.float32)
    for s in range(s_lo, s_hi):
        for p in tl.static_range(2):  # a quant byte's second read (the other nibble) is the same load
            q, d, m, c = _part(row, s, K, p, TYPE, U, V)
            w = _values(q, d, m, TYPE)
            k = s * 256 + c
            acc0 += w * _xrow(x_ptr, k, 0, M, K, not EVEN)
            if BLOCK_M > 1:
                acc1 += w * _xrow(x_ptr + stride_xm, k, 1, M, K, not EVEN)
            if BLOCK_M > 2:
                acc2 += w * _xrow(x_ptr + 2 * stride_xm, k, 2, M, K, not EVEN)
                acc3 += w * _xrow(x_ptr + 3 * stride_xm, k, 3, M, K, not EVEN)
    offs_m = tl.arange(0, BLOCK_M)
    y = tl.where(offs_m[None, :] == 0, tl.sum(tl.sum(acc0, axis=2), axis=1)[:, None], 0.0)
    if BLOCK_M > 1:
        y += tl.where(offs_m[None, :] == 1, tl.sum(tl.sum(acc1, axis=2), axis=1)[:, None], 0.0)
    if BLOCK_M > 2:
        y += tl.where(offs_m[None, :] == 2, tl.sum(tl.sum(acc2, axis=2), axis=1)[:, None], 0.0)
        y += tl.where(offs_m[None, :] == 3, tl.sum(tl.sum(acc3, axis=2), axis=1)[:, None], 0.0)
    _store_result(y, y_ptr, part_ptr, lock_ptr, res_ptr, M, N, stride_ym, splits, BLOCK_M, BLOCK_N, SPLIT, RESIDUAL)


@jit
def _qmm_kernel(x_ptr, w_ptr, y_ptr, M, N, K, stride_xm, stride_ym, row_bytes,
                TYPE: tl.constexpr, U: tl.constexpr, V: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, EVEN: tl.constexpr):
    """Prefill: tensor-core tiles, each span's two parts dequantized in registers once for
    BLOCK_M activation rows."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row = w_ptr + tl.minimum(offs_n, N - 1).to(tl.int64)[:, None, None] * row_bytes  # clamped: not stored
    xrow = x_ptr + offs_m.to(tl.int64)[:, None, None] * stride_xm
    min_ = offs_m[:, None, None] < M
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for s in range(0, tl.cdiv(K, 256)):
        for p in tl.static_range(2):  # one part's tiles live at a time
            q, d, m, c = _part(row, s, K, p, TYPE, U, V)
            k = s * 256 + c
            if EVEN:
                x = tl.load(xrow + k, mask=min_, other=0.0)
            else:
                x = tl.load(xrow + k, mask=min_ & (k < K), other=0.0)
            w = tl.reshape(_values(q, d, m, TYPE).to(x.dtype), (BLOCK_N, U * V))
            acc = tl.dot(tl.reshape(x, (BLOCK_M, U * V)), tl.trans(w), acc, input_precision="ieee")
    out = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@jit
def _rows_kernel(ids_ptr, w_ptr, y_ptr, N, K, row_bytes, stride_y, TYPE: tl.constexpr, U: tl.constexpr,
                 V: tl.constexpr):
    """Row ids[i] of the weight, span s, dequantized into y[i] (an embedding lookup); an id
    outside 0..N-1 gives zeros and reads nothing past the weight."""
    i, s = tl.program_id(0), tl.program_id(1)
    rid = tl.load(ids_ptr + i).to(tl.int64)
    ok = (rid >= 0) & (rid < N)
    row = w_ptr + tl.where(ok, rid, 0) * row_bytes + tl.zeros((1, 1, 1), dtype=tl.int64)
    for p in tl.static_range(2):
        q, d, m, c = _part(row, s, K, p, TYPE, U, V)
        k = s * 256 + c
        w = tl.where(ok, _values(q, d, m, TYPE), 0.0)
        tl.store(y_ptr + i * stride_y + k, w.to(y_ptr.dtype.element_ty), mask=k < K)


def lookup_rows(data: torch.Tensor, ggml_type: int, ids: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Rows `ids` (int tensor [n], on data's device) of GGUF bytes data -> [n, K] in dtype, in one
    launch; the twin: `dequantize_torch(data[ids], ggml_type).to(dtype)`. The kernel gives zeros
    for an id out of range (it cannot raise from the device; callers check ids first)."""
    K = columns(data, ggml_type)
    ids = ids.reshape(-1)
    if not triton_ok(data):
        return dequantize_torch(data[ids], ggml_type).to(dtype)
    y = torch.empty((ids.numel(), K), dtype=dtype, device=data.device)
    U, V = PARTS.get(ggml_type, (4, 32))
    _rows_kernel[(ids.numel(), cdiv(K, 256))](ids, data, y, data.shape[0], K, data.stride(0), y.stride(0),
                                              TYPE=ggml_type, U=U, V=V, num_warps=4)
    return y


# ----------------------------------------------------------------------------- launching

PARTS = {Q4_K: (4, 32), Q5_K: (4, 32), Q6_K: (8, 16), Q4_0: (8, 16)}  # (U, V); others (4, 32)
PARTS.update({t | PLANAR: PARTS.get(t, (4, 32)) for t in PLANES})


# the GEMM's activation rows per tile and launch options, by compute capability (0: the rest):
# each weight value is dequantized once per tile of rows, so more rows spend fewer instructions
# a flop. Hopper: 256 rows in two pipeline stages (three need 280 KB of shared memory), but
# Q5_K, Q6_K and float weights spill registers at 256 rows and keep 128 in three stages.
GEMM_TILE = {90: (256, dict(num_warps=8, num_stages=2)), 0: (32, dict(num_warps=4, num_stages=2))}
GEMM_TILE_HOPPER_SMALL = (128, dict(num_warps=8, num_stages=3))


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _arch(device: torch.device) -> int:
    if device.type != "cuda":
        return 90
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def launch_config(M: int, N: int, K: int, ggml_type: int, sms: int, split_k: int | None = None,
                  interpret: bool = False, arch: int = 90, block_n: int | None = None,
                  num_warps: int | None = None, per_sm: int = 4, int8: bool = True,
                  gemm_tile: tuple | None = None) -> dict:
    """The kernel, tile sizes and grid for an [M, K] x [N, K]^T product on `sms` SMs of
    compute capability `arch` (x 10). benchmarks/kernel_sass.py compiles exactly what this
    says; benchmarks/gpu.py times the decode kernels' other choices too (`block_n`,
    `num_warps`, `per_sm`: the programs per SM that split-K aims for; `int8=False`: the float
    decode kernel on the dequantized activations where dp4a would do), and the GEMM's
    (`gemm_tile`: (rows, launch options) as in GEMM_TILE)."""
    if M <= DECODE_ROWS:
        BM = next_pow2(M)
        kernel = "qmv8" if int8 and ggml_type in INT8 else "qmv"
        if interpret:
            BN = block_n or min(64, next_pow2(N))
        elif kernel == "qmv8":  # a thread's share of a span's words outweighs its scale reads from 8 on
            BN = block_n or (64 if BM == 1 else 32)
        else:
            BN = block_n or max(8, 32 // BM)
            if ggml_type & ~PLANAR == Q6_K and not block_n:
                BN = min(BN, 16)  # 32 rows of Q6_K spill registers
        U, V = PARTS.get(ggml_type, (4, 32))
        spans = cdiv(K, 256)
        programs = cdiv(N, BN)
        if split_k is None:  # enough programs for per_sm per SM, each split >= 4 spans
            split_k = max(1, min(cdiv(per_sm * sms, programs), spans // 4))
        per = cdiv(spans, split_k)
        split_k = cdiv(spans, per)
        return dict(kernel=kernel, BLOCK_M=BM, BLOCK_N=BN, U=U, V=V, spans_per_split=per, split_k=split_k,
                    EVEN=K % 256 == 0, grid=(programs, split_k), options=dict(num_warps=num_warps or 4),
                    weights_per_iter=BN * 256)
    U, V = PARTS.get(ggml_type, (4, 32))
    if interpret:  # the interpreter pays per program and per op, hardly per value
        BM, BN, options = min(256, next_pow2(M)), min(256, next_pow2(N)), dict(num_warps=4)
    else:  # tiles that fit the registers without spilling (tests/kernels/test_cuda_compile.py)
        rows, options = GEMM_TILE.get(arch, GEMM_TILE[0])
        if arch == 90 and (act_group(ggml_type) is None or ggml_type & ~PLANAR in (Q5_K, Q6_K)):
            rows, options = GEMM_TILE_HOPPER_SMALL
        rows, options = gemm_tile or (rows, options)
        BN = 16 if arch < 90 and ggml_type & ~PLANAR == Q6_K else 32  # Q6_K spills at 32 before Hopper
        BM = max(16, min(rows, next_pow2(M)))
    return dict(kernel="qmm", BLOCK_M=BM, BLOCK_N=BN, U=U, V=V, split_k=1, EVEN=K % 256 == 0,
                grid=(cdiv(M, BM), cdiv(N, BN)), options=options, weights_per_iter=BN * 256)


def kernel_signature(ggml_type: int, M: int, N: int, K: int, cfg: dict, xdtype: str, residual: bool = False):
    """(kernel, {arg: type}, {int arg: value}, constexprs, launch options) of a launch_config,
    for compiling ahead of time as a launch would (the int values decide Triton's alignment
    hints); `residual`: the decode kernels adding a residual as they store."""
    split = cfg["split_k"] > 1
    args = {"x_ptr": f"*{xdtype}", "w_ptr": "*u8", "y_ptr": f"*{xdtype}", "M": "i32", "N": "i32", "K": "i32",
            "stride_xm": "i32", "stride_ym": "i32", "row_bytes": "i32"}
    values = dict(M=M, N=N, K=K, stride_xm=K, stride_ym=N, row_bytes=bytes_per_row(ggml_type, K))
    decode = {"part_ptr": "*fp32", "lock_ptr": "*i32", "res_ptr": f"*{xdtype}"}  # after y_ptr
    if cfg["kernel"] == "qmv8":
        args = {"xq_ptr": "*i8", "xd_ptr": "*fp32", "xs_ptr": "*i32", "w_ptr": "*u8", "y_ptr": f"*{xdtype}",
                **decode, "M": "i32", "N": "i32", "K": "i32", "stride_ym": "i32", "row_bytes": "i32",
                "spans_per_split": "i32", "splits": "i32"}
        values.update(spans_per_split=cfg["spans_per_split"], splits=cfg["split_k"])
        del values["stride_xm"]
        consts = dict(TYPE=ggml_type, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], SPLIT=split, RESIDUAL=residual,
                      ASM=True)
        return _qmv8_kernel, args, values, consts, cfg["options"]
    if cfg["kernel"] == "qmv":
        args = {"x_ptr": f"*{xdtype}", "w_ptr": "*u8", "y_ptr": f"*{xdtype}", **decode, "M": "i32", "N": "i32",
                "K": "i32", "stride_xm": "i32", "stride_ym": "i32", "row_bytes": "i32", "spans_per_split": "i32",
                "splits": "i32"}
        values.update(spans_per_split=cfg["spans_per_split"], splits=cfg["split_k"])
        consts = dict(TYPE=ggml_type, U=cfg["U"], V=cfg["V"], BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                      EVEN=cfg["EVEN"], SPLIT=split, RESIDUAL=residual)
        return _qmv_kernel, args, values, consts, cfg["options"]
    consts = dict(TYPE=ggml_type, U=cfg["U"], V=cfg["V"], BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                  EVEN=cfg["EVEN"])
    return _qmm_kernel, args, values, consts, cfg["options"]


def qmatmul(x: torch.Tensor, data: torch.Tensor, ggml_type: int, split_k: int | None = None,
            int8: Int8Rows | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ W.T -> [..., N] in x's dtype, W read from its GGUF bytes `data`.

    `split_k`: K ranges whose partial sums the last of their programs adds (decode, in a
    fixed order: the same inputs give the same bits); None chooses from the device's size.
    `int8`: x's int8 form when its producer made it (the dp4a decode kernel then quantizes
    nothing itself). `residual` [..., N]: added to the product (as `residual + y` in x's
    dtype), by the decode kernels as they store it.
    """
    K = _check(x, data, ggml_type)
    if residual is not None and residual.shape != (*x.shape[:-1], data.shape[0]):
        raise ValueError(f"residual has shape {tuple(residual.shape)}, the product {(*x.shape[:-1], data.shape[0])}")
    if not triton_ok(x):
        y = qmatmul_torch(x, data, ggml_type)
        return y if residual is None else residual + y
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M, N = x2.shape[0], data.shape[0]
    cfg = launch_config(M, N, K, ggml_type, _sm_count(x.device), split_k, interpreting(), _arch(x.device))
    res = None if residual is None else residual.reshape(M, N).to(x2.dtype).contiguous()
    return launch(x2, data, ggml_type, cfg, int8, res).reshape(*lead, N)


_LOCKS: dict = {}  # device -> int32 arrival counters of split-K column tiles, all 0 between launches


def _locks(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed counters for n column tiles (each launch leaves them at 0 again)."""
    have = _LOCKS.get(device)
    if have is None or have.numel() < n:
        have = _LOCKS[device] = torch.zeros(max(n, 1 << 14), dtype=torch.int32, device=device)
    return have


def launch(x2: torch.Tensor, data: torch.Tensor, ggml_type: int, cfg: dict, int8: Int8Rows | None = None,
           res: torch.Tensor | None = None):
    """Run a `launch_config` on x2 [M, K] (unit stride along K) -> [M, N] in x2's dtype (plus
    res [M, N], contiguous, when given)."""
    (M, K), N = x2.shape, data.shape[0]
    split = cfg["split_k"]
    y = torch.empty((M, N), dtype=x2.dtype, device=x2.device)
    part = torch.empty((split, M, N) if split > 1 else (1,), dtype=torch.float32, device=x2.device)
    locks = _locks(x2.device, cfg["grid"][0])
    group = act_group(ggml_type)
    if cfg["kernel"] == "qmv8":
        launch_qmv8(x2, data, ggml_type, cfg, y, part, locks, res, int8)
        return y
    if group:  # the values the int8 kernel would see, as floats
        x2 = quantize_rows(x2, group, dequant=True)
    if cfg["kernel"] == "qmv":
        _qmv_kernel[cfg["grid"]](x2, data, y, part, locks, y if res is None else res, M, N, K, x2.stride(0),
                                 y.stride(0), data.stride(0), cfg["spans_per_split"], split, TYPE=ggml_type,
                                 U=cfg["U"], V=cfg["V"], BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                                 EVEN=cfg["EVEN"], SPLIT=split > 1, RESIDUAL=res is not None, **cfg["options"])
        return y
    _qmm_kernel[cfg["grid"]](x2, data, y, M, N, K, x2.stride(0), y.stride(0), data.stride(0),
                             TYPE=ggml_type, U=cfg["U"], V=cfg["V"], BLOCK_M=cfg["BLOCK_M"],
                             BLOCK_N=cfg["BLOCK_N"], EVEN=cfg["EVEN"], **cfg["options"])
    return y if res is None else res + y
