"""The quantized matmul's int8 side: activations quantized as the CPU kernel does, and the
decode kernel that multiplies them by the weights' quants with integer dot products.

Activations meeting quantized weights are quantized to int8 per group (32 values; 256 for
the K formats): one f32 scale amax / 127, values times its inverse rounded half to even
(llama.cpp's scheme, and our CPU kernel's). Every row count computes with these values: the
prefill GEMM multiplies their dequantized floats, the decode kernel the integers themselves,
so a row's result depends on the row count only through float rounding.

Decode (`_qmv8_kernel`): 4 quants times 4 activations summed by one `dp4a` instruction; the
sums stay integers within a group (K formats: the whole 256-value super-block, sub-block
scales included), so a 32-bit word of quants costs a few instructions instead of a few per
value. Under the interpreter (no PTX) dp4a is the same sum in plain integer ops.
"""

from typing import NamedTuple

import torch

from ._triton import cdiv, interpreting, jit, tl

GROUP = {2: 32, 8: 32, 12: 256, 13: 256, 14: 256}  # activation values per scale, by base weight type
QUANT_BLOCK = 1024  # activation values per quantizer program (a multiple of 256)


class Int8Rows(NamedTuple):
    """Activations [M, K] in int8 form: values, f32 scale per `group`, int32 sum of every 16.
    A producer kernel (RMSNorm, SwiGLU) can fill one for the matmul that follows it, which then
    needs no quantizer launch of its own."""
    q: torch.Tensor
    d: torch.Tensor
    s: torch.Tensor
    group: int

    @staticmethod
    def empty(M: int, K: int, group: int, device) -> "Int8Rows":
        if K % group:
            raise ValueError(f"int8 activations: {K} values a row is not a multiple of the group {group}")
        return Int8Rows(torch.empty((M, K), dtype=torch.int8, device=device),
                        torch.empty((M, K // group), dtype=torch.float32, device=device),
                        torch.empty((M, K // 16), dtype=torch.int32, device=device), group)

    def fill_torch(self, x: torch.Tensor) -> None:
        """The torch twins' way to fill it: `quantize_rows_torch` of x [M, K]."""
        for out, val in zip(self[:3], quantize_rows_torch(x.reshape(self.q.shape), self.group)):
            out.copy_(val)


def quantize_rows_torch(x: torch.Tensor, group: int):
    """x [M, K] -> (int8 values [M, K], f32 scales [M, K / group], int32 sums of every 16
    values [M, K / 16]): the twin of `quantize_rows`."""
    M, K = x.shape
    xf = x.float().reshape(M, K // group, group)
    d = xf.abs().amax(-1) / 127
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    q = torch.round(xf * inv[..., None]).to(torch.int8).reshape(M, K)
    return q, d, q.reshape(M, K // 16, 16).sum(-1, dtype=torch.int32)


def dequantize_rows_torch(x: torch.Tensor, group: int) -> torch.Tensor:
    """x as the quantized matmul sees it: its int8 values times their scales, in x's dtype."""
    q, d, _ = quantize_rows_torch(x, group)
    M, K = x.shape
    return (q.float().reshape(M, K // group, group) * d[..., None]).reshape(M, K).to(x.dtype)


@jit
def _quantize_groups(x, G: tl.constexpr):
    """x f32 [NG, G] -> (int32 values [NG, G], f32 scales [NG]); the caller launches without
    FMA contraction (the product is rounded before the rounding to an integer, as on the CPU)."""
    d = tl.math.div_rn(tl.max(tl.abs(x), axis=1), 127.0)
    inv = tl.where(d > 0, tl.math.div_rn(tl.full(d.shape, 1.0, tl.float32), tl.where(d > 0, d, 1.0)), 0.0)
    # round half to even: adding 1.5 * 2^23 leaves the integer in the low mantissa bits
    return (x * inv[:, None] + 12582912.0).to(tl.int32, bitcast=True) - 0x4B400000, d


@jit
def _store_int8(x, k0, r, K, q_ptr, d_ptr, s_ptr, G: tl.constexpr, BLOCK: tl.constexpr):
    """Quantize x f32 [BLOCK] (row r's values k0 .. k0 + BLOCK; past K ignored) into an
    `Int8Rows` (k0 a multiple of G and 16)."""
    g = tl.arange(0, BLOCK // G)
    k = k0 + g[:, None] * G + tl.arange(0, G)[None, :]
    q, d = _quantize_groups(tl.reshape(x, (BLOCK // G, G)), G)
    tl.store(q_ptr + r * K + k, q.to(tl.int8), mask=k < K)
    gi = k0 // G + g
    tl.store(d_ptr + r * (K // G) + gi, d, mask=gi * G < K)
    si = k0 // 16 + tl.arange(0, BLOCK // 16)
    tl.store(s_ptr + r * (K // 16) + si, tl.sum(tl.reshape(q, (BLOCK // 16, 16)), axis=1), mask=si * 16 < K)


@jit
def _quantize_kernel(x_ptr, q_ptr, d_ptr, s_ptr, K, stride_x, stride_q, G: tl.constexpr, BLOCK: tl.constexpr,
                     DEQUANT: tl.constexpr):
    """One row's BLOCK values: DEQUANT writes q * d in x's dtype to q_ptr, else the int8 values,
    the scales (d_ptr) and the sums of every 16 (s_ptr)."""
    r, b = tl.program_id(0), tl.program_id(1)
    k = b * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + r * stride_x + k, mask=k < K, other=0.0).to(tl.float32)
    if DEQUANT:
        q, d = _quantize_groups(tl.reshape(x, (BLOCK // G, G)), G)
        y = tl.reshape(q.to(tl.float32) * d[:, None], (BLOCK,))
        tl.store(q_ptr + r * stride_q + k, y.to(q_ptr.dtype.element_ty), mask=k < K)
    else:
        _store_int8(x, b * BLOCK, r, K, q_ptr, d_ptr, s_ptr, G, BLOCK)


def quantize_rows(x: torch.Tensor, group: int, dequant: bool = False):
    """`quantize_rows_torch` on the GPU (or the interpreter); `dequant`: x's values as the
    matmul sees them instead (`dequantize_rows_torch`)."""
    M, K = x.shape
    grid = (M, cdiv(K, QUANT_BLOCK))
    opts = dict(G=group, BLOCK=QUANT_BLOCK, num_warps=4, enable_fp_fusion=False)
    if dequant:
        out = torch.empty_like(x)
        _quantize_kernel[grid](x, out, out, out, K, x.stride(0), out.stride(0), DEQUANT=True, **opts)
        return out
    rows = Int8Rows.empty(M, K, group, x.device)
    _quantize_kernel[grid](x, rows.q, rows.d, rows.s, K, x.stride(0), K, DEQUANT=False, **opts)
    return rows[:3]


# ---------------------------------------------------------------------------------- decode

@jit
def _dp4a(a, b, c, ASM: tl.constexpr):
    """c + the sum of the products of the 4 signed bytes of a and of b (int32 tensors)."""
    if ASM:
        return tl.inline_asm_elementwise("dp4a.s32.s32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, c],
                                         dtype=tl.int32, is_pure=True, pack=1)
    else:
        for i in tl.static_range(4):
            c += ((a << (24 - 8 * i)) >> 24) * ((b << (24 - 8 * i)) >> 24)
        return c


@jit
def _i2f(t):
    """int32 t with |t| < 2^22 -> float32, exactly, in one add: the bits of 1.5 * 2^23 + t
    (a conversion instruction issues at a quarter of the rate)."""
    return (t + 0x4B400000).to(tl.float32, bitcast=True) - 12582912.0


@jit
def _f16(ptr):
    return tl.load(ptr.to(tl.pointer_type(tl.float16))).to(tl.float32)


@jit
def _f16_masked(ptr, mask):
    return tl.load(ptr.to(tl.pointer_type(tl.float16)), mask=mask, other=0.0).to(tl.float32)


@jit
def _words(base, off):
    """int32 words `off` (word indices) from 4-byte aligned uint8 pointers `base`."""
    return tl.load(base.to(tl.pointer_type(tl.int32)) + off)


@jit
def _words_masked(base, off, mask):
    return tl.load(base.to(tl.pointer_type(tl.int32)) + off, mask=mask, other=0)


@jit
def _kscale(blk, j):
    """Q4_K / Q5_K: the 6-bit scale and min of sub-blocks j (int32 tensor, 0-7) of blocks
    `blk`, from the 12 scale bytes read as 3 words (bytes 4-7: scales 0-3 and the top bits of
    scales 4-7; 8-11: mins 0-3 and the top bits of mins 4-7; 12-15: the low bits of both)."""
    sh = (j % 4) * 8
    a = (_words(blk, 1 + 0 * j) >> sh) & 255
    b = (_words(blk, 2 + 0 * j) >> sh) & 255
    c = (_words(blk, 3 + 0 * j) >> sh) & 255
    low = j < 4
    return tl.where(low, a & 63, (c & 15) | ((a >> 2) & 48)), tl.where(low, b & 63, (c >> 4) | ((b >> 2) & 48))


@jit
def _row(acc, off, xq, xd, xs, r, M, K, s, q0, q1, w0, w1, sc0, sc1, mn0, mn1, u, x0, x1, o0, o1, dd, dm,
         TYPE: tl.constexpr, ASM: tl.constexpr):
    """Activation row r's share of span s: acc [BN, U, V4] += the block sums times their
    scales, off [BN, U, 1] += the offset terms (mins; 32 for Q6_K, 8 for Q4_0), subtracted at
    the end. q0 / q1: the two parts' quant words; x0 / x1: their activation word indices;
    o0 / o1: the index of each unit's first sum of 16."""
    ok = tl.full(x0.shape, r, tl.int32) < M  # uniform along the words: vector loads stay possible
    if TYPE == 264 or TYPE == 258:  # K need only be a multiple of 32
        ok = ok & (x0 * 4 < K)
    a0 = tl.load(xq + r * (K // 4) + x0, mask=ok, other=0)
    a1 = tl.load(xq + r * (K // 4) + x1, mask=ok, other=0)
    zero = tl.zeros(q0.shape, tl.int32)
    okb = tl.full(o0.shape, r, tl.int32) < M
    if TYPE == 12 or TYPE == 13 or TYPE == 270:  # one activation scale per 256-value span
        f = tl.load(xd + r * (K // 256) + s, mask=r < M, other=0.0)
        if TYPE == 270:  # Q6_K: |sum| up to 2^23: the conversion instruction
            t = _dp4a(q0, a0, zero, ASM) * sc0 + _dp4a(q1, a1, zero, ASM) * sc1
            acc += t.to(tl.float32) * (dd * f)
            xs0 = tl.load(xs + r * (K // 16) + o0, mask=okb, other=0)
            xs1 = tl.load(xs + r * (K // 16) + o1, mask=okb, other=0)
            off += (32 * (sc0 * xs0 + sc1 * xs1)).to(tl.float32) * (dd * f)
        else:
            t = _dp4a(q0, a0, zero, ASM) * sc0 + _dp4a(q1, a1, zero, ASM) * sc1
            acc += _i2f(t) * (dd * f)
            xs0 = tl.load(xs + r * (K // 16) + o0, mask=okb, other=0) + tl.load(xs + r * (K // 16) + o0 + 1, mask=okb, other=0)
            xs1 = tl.load(xs + r * (K // 16) + o1, mask=okb, other=0) + tl.load(xs + r * (K // 16) + o1 + 1, mask=okb, other=0)
            off += (mn0 * xs0 + mn1 * xs1).to(tl.float32) * (dm * f)
    elif TYPE == 264:  # Q8_0: the parts are blocks 0-3 and 4-7 of the span, one scale each
        f0 = tl.load(xd + r * (K // 32) + o0 // 2, mask=okb & (o0 * 16 < K), other=0.0)
        f1 = tl.load(xd + r * (K // 32) + o1 // 2, mask=okb & (o1 * 16 < K), other=0.0)
        acc += _i2f(_dp4a(q0, a0, zero, ASM)) * (w0 * f0) + _i2f(_dp4a(q1, a1, zero, ASM)) * (w1 * f1)
    else:  # Q4_0: the parts are each block's two nibbles, value q - 8
        f = tl.load(xd + r * (K // 32) + o0 // 2, mask=okb & (o0 * 16 < K), other=0.0)
        acc += _i2f(_dp4a(q0, a0, _dp4a(q1, a1, zero, ASM), ASM)) * (w0 * f)
        xs0 = tl.load(xs + r * (K // 16) + o0, mask=okb & (o0 * 16 < K), other=0)
        xs1 = tl.load(xs + r * (K // 16) + o0 + 1, mask=okb & (o0 * 16 < K), other=0)
        off += (8 * (xs0 + xs1)).to(tl.float32) * (w0 * f)
    return acc, off


@jit
def _qmv8_kernel(xq_ptr, xd_ptr, xs_ptr, w_ptr, y_ptr, part_ptr, lock_ptr, res_ptr, M, N, K, stride_ym, row_bytes,
                 spans_per_split, splits, TYPE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 SPLIT: tl.constexpr, RESIDUAL: tl.constexpr, ASM: tl.constexpr):
    """y [M, N] (SPLIT: K in `splits` ranges, `_store_result`) = activations
    (int8 xq, scales xd, sums of 16 xs) times weight rows of type TYPE (Q4_K, Q5_K, or the
    planar Q6_K / Q8_0 / Q4_0: their quants 4-byte aligned)."""
    pid_n, pid_k = tl.program_id(0), tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row = w_ptr + tl.minimum(offs_n, N - 1).to(tl.int64)[:, None, None] * row_bytes  # clamped: not stored
    s_lo = pid_k * spans_per_split
    s_hi = tl.minimum(tl.cdiv(K, 256), s_lo + spans_per_split)
    U: tl.constexpr = 4 if TYPE == 12 or TYPE == 13 or TYPE == 264 else 8
    V4: tl.constexpr = 32 // U
    u = tl.arange(0, U)[None, :, None]
    v = tl.arange(0, V4)[None, None, :]
    xq = xq_ptr.to(tl.pointer_type(tl.int32))
    acc0 = tl.zeros((BLOCK_N, U, V4), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_N, U, V4), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N, U, V4), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_N, U, V4), dtype=tl.float32)
    off0 = tl.zeros((BLOCK_N, U, 1), dtype=tl.float32)
    off1 = tl.zeros((BLOCK_N, U, 1), dtype=tl.float32)
    off2 = tl.zeros((BLOCK_N, U, 1), dtype=tl.float32)
    off3 = tl.zeros((BLOCK_N, U, 1), dtype=tl.float32)
    one = tl.full((BLOCK_N, U, 1), 1, tl.int32)
    unit = tl.full((BLOCK_N, 1, 1), 1.0, tl.float32)
    for s in range(s_lo, s_hi):
        # per part P: quant words q (values 0..63, or int8), unit scales sc / mins mn (int),
        # block factors w (Q8_0 / Q4_0), the activation word indices x and sums-of-16 index o
        sc0, sc1, mn0, mn1, w0, w1, dd, dm = one, one, one, one, unit, unit, unit, unit
        if TYPE == 12 or TYPE == 13:  # qs byte u*32 + j: low nibble value 64u + j, high 64u + 32 + j
            BB: tl.constexpr = 144 if TYPE == 12 else 176
            QS: tl.constexpr = 16 if TYPE == 12 else 48
            blk = row + s * BB
            w = _words(blk + QS, u * 8 + v)
            q0, q1 = w & 0x0F0F0F0F, (w >> 4) & 0x0F0F0F0F
            if TYPE == 13:  # qh byte j holds bit 4 of value j of every sub-block
                h = _words(blk + 16, v)
                q0 |= ((h >> (2 * u)) & 0x01010101) << 4
                q1 |= ((h >> (2 * u + 1)) & 0x01010101) << 4
            # the scales at the words' shape (the products' layout: no shuffling through shared
            # memory), the mins at the units'
            sc0 = _kscale(blk, 2 * u + 0 * v)[0]
            sc1 = _kscale(blk, 2 * u + 1 + 0 * v)[0]
            mn0 = _kscale(blk, 2 * u)[1]
            mn1 = _kscale(blk, 2 * u + 1)[1]
            dd, dm = _f16(blk), _f16(blk + 2)
            x0 = s * 64 + u * 16 + v
            x1 = x0 + 8
            o0 = s * 16 + u * 4
            o1 = o0 + 2
        elif TYPE == 270:  # planar Q6_K: unit u = 4h + 2a + j16, values h*128 + a*32 + j16*16 + 4v.. (+64)
            nb = K // 256
            hh, a, j16 = u // 4, (u // 2) % 2, u % 2
            ql = _words(row, s * 32 + u * 4 + v)
            qh = _words(row, nb * 32 + s * 16 + hh * 8 + j16 * 4 + v)
            q0 = (ql & 0x0F0F0F0F) | (((qh >> (2 * a)) & 0x03030303) << 4)
            q1 = ((ql >> 4) & 0x0F0F0F0F) | (((qh >> (2 * a + 4)) & 0x03030303) << 4)
            at = row + nb * 192 + s * 16 + hh * 8 + a * 2 + j16
            sc0 = tl.load(at).to(tl.int8, bitcast=True).to(tl.int32)
            sc1 = tl.load(at + 4).to(tl.int8, bitcast=True).to(tl.int32)
            dd = _f16(row + nb * 208 + s * 2)
            x0 = s * 64 + hh * 32 + a * 8 + j16 * 4 + v
            x1 = x0 + 16
            o0 = s * 16 + hh * 8 + a * 2 + j16
            o1 = o0 + 4
        elif TYPE == 264:  # planar Q8_0: part P = blocks 4P..4P+3 of the span, 8 words each
            b0 = s * 8 + u
            ok0, ok1 = b0 * 32 < K, (b0 + 4) * 32 < K  # K need only be a multiple of 32
            q0 = _words_masked(row, b0 * 8 + v, ok0)
            q1 = _words_masked(row, (b0 + 4) * 8 + v, ok1)
            w0 = _f16_masked(row + (K // 32) * 32 + b0 * 2, ok0)
            w1 = _f16_masked(row + (K // 32) * 32 + (b0 + 4) * 2, ok1)
            x0 = b0 * 8 + v
            x1 = x0 + 32
            o0 = b0 * 2
            o1 = o0 + 8
        else:  # planar Q4_0: 8 blocks of 16 quant bytes; part P = the low / high nibbles (values 0-15 / 16-31)
            b = s * 8 + u
            ok = b * 32 < K
            w = _words_masked(row, b * 4 + v, ok)
            q0, q1 = w & 0x0F0F0F0F, (w >> 4) & 0x0F0F0F0F
            w0 = _f16_masked(row + (K // 32) * 16 + b * 2, ok)
            x0 = b * 8 + v
            x1 = x0 + 4
            o0 = b * 2
            o1 = o0
        acc0, off0 = _row(acc0, off0, xq, xd_ptr, xs_ptr, 0, M, K, s, q0, q1, w0, w1, sc0, sc1, mn0, mn1, u,
                          x0, x1, o0, o1, dd, dm, TYPE, ASM)
        if BLOCK_M > 1:
            acc1, off1 = _row(acc1, off1, xq, xd_ptr, xs_ptr, 1, M, K, s, q0, q1, w0, w1, sc0, sc1, mn0, mn1, u,
                              x0, x1, o0, o1, dd, dm, TYPE, ASM)
        if BLOCK_M > 2:
            acc2, off2 = _row(acc2, off2, xq, xd_ptr, xs_ptr, 2, M, K, s, q0, q1, w0, w1, sc0, sc1, mn0, mn1, u,
                              x0, x1, o0, o1, dd, dm, TYPE, ASM)
            acc3, off3 = _row(acc3, off3, xq, xd_ptr, xs_ptr, 3, M, K, s, q0, q1, w0, w1, sc0, sc1, mn0, mn1, u,
                              x0, x1, o0, o1, dd, dm, TYPE, ASM)
    offs_m = tl.arange(0, BLOCK_M)
    y = tl.where(offs_m[None, :] == 0, _total(acc0, off0)[:, None], 0.0)
    if BLOCK_M > 1:
        y += tl.where(offs_m[None, :] == 1, _total(acc1, off1)[:, None], 0.0)
    if BLOCK_M > 2:
        y += tl.where(offs_m[None, :] == 2, _total(acc2, off2)[:, None], 0.0)
        y += tl.where(offs_m[None, :] == 3, _total(acc3, off3)[:, None], 0.0)
    _store_result(y, y_ptr, part_ptr, lock_ptr, res_ptr, M, N, stride_ym, splits, BLOCK_M, BLOCK_N, SPLIT, RESIDUAL)


@jit
def _store_out(v, y_ptr, res_ptr, at, keep, RESIDUAL: tl.constexpr):
    """v rounded to y's dtype; RESIDUAL: plus the residual at the same place, as torch's
    `residual + y` rounds it (y rounded first, the sum rounded again)."""
    v = v.to(y_ptr.dtype.element_ty)
    if RESIDUAL:
        v = (tl.load(res_ptr + at, mask=keep, other=0.0).to(tl.float32) + v.to(tl.float32)).to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + at, v, mask=keep)


@jit
def _store_result(y, y_ptr, part_ptr, lock_ptr, res_ptr, M, N, stride_ym, splits, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, RESIDUAL: tl.constexpr):
    """Store a program's y [BLOCK_N, BLOCK_M] (f32) at its columns of y [M, N] (plus the
    residual [M, N], same strides, when RESIDUAL). SPLIT: y is one K range's partial sums; it
    goes to its slice of part_ptr [splits, M, N], and the last program of the column tile to
    arrive (counted in lock_ptr) adds all slices in order 0, 1, ... and stores the total: the
    same bits whatever the arrival order, and no second launch. That last program resets the
    counter for the next launch (one stream at a time per device uses the counters)."""
    pid_n, pid_k = tl.program_id(0), tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    keep = (offs_m[None, :] < M) & (offs_n[:, None] < N)
    at = offs_m[None, :] * N + offs_n[:, None]
    at_y = offs_m[None, :] * stride_ym + offs_n[:, None]
    if SPLIT:
        tl.store(part_ptr + pid_k * M * N + at, y, mask=keep)
        tl.debug_barrier()  # every thread's slice stored before the count (released with it)
        if tl.atomic_add(lock_ptr + pid_n, 1, sem="acq_rel", scope="gpu") == splits - 1:
            total = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
            for k in range(0, splits):  # read from L2 (.cg): other SMs wrote them
                total += tl.load(part_ptr + k * M * N + at, mask=keep, other=0.0, cache_modifier=".cg")
            _store_out(total, y_ptr, res_ptr, at_y, keep, RESIDUAL)
            tl.atomic_xchg(lock_ptr + pid_n, 0)
    else:
        _store_out(y, y_ptr, res_ptr, at_y, keep, RESIDUAL)


@jit
def _total(acc, off):
    return tl.sum(tl.sum(acc, axis=2), axis=1) - tl.sum(tl.sum(off, axis=2), axis=1)


def launch_qmv8(x2: torch.Tensor, data: torch.Tensor, ggml_type: int, cfg: dict, y: torch.Tensor,
                part: torch.Tensor, locks: torch.Tensor, res: torch.Tensor | None, int8: Int8Rows | None = None):
    """Quantize x2 [M, K] (unless `int8` holds it already), then run `_qmv8_kernel` on the
    launch config `cfg` into y."""
    (M, K), N = x2.shape, data.shape[0]
    group = GROUP[ggml_type & 0xFF]
    given = int8 is not None and int8.group == group and int8.q.shape == x2.shape
    xq, xd, xs = int8[:3] if given else quantize_rows(x2, group)
    _qmv8_kernel[cfg["grid"]](xq, xd, xs, data, y, part, locks, y if res is None else res, M, N, K, y.stride(0),
                              data.stride(0), cfg["spans_per_split"], cfg["split_k"], TYPE=ggml_type,
                              BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], SPLIT=cfg["split_k"] > 1,
                              RESIDUAL=res is not None, ASM=not interpreting(), **cfg["options"])
