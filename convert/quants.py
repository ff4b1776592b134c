"""Quantize float32 matrices into GGUF block formats.

Q4_K, Q5_K and Q6_K are our own numpy ports of llama.cpp's reference quantizers without an
importance matrix (``quantize_row_q{4,5,6}_K_ref`` in ``ggml/src/ggml-quants.c``), vectorised
over all blocks of a row chunk. The C code runs plain float32 arithmetic in a fixed order (no
FMA, sequential sums), so every sum here runs over axis 0 of an (elements, sub-blocks) array,
which numpy adds row by row in the same order; rounding is ``np.rint`` (round half to even),
which is what ``nearest_int``'s magic-number trick does. The output bytes are llama.cpp's
block layout. Every other type goes to gguf-py's ``gguf.quants.quantize``.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, QK_K, GGMLQuantizationType
from gguf import quants as gguf_quants

F32 = np.float32
_EPS = F32(1e-15)  # GROUP_MAX_EPS: below this a group counts as all zero
_CHUNK_ELEMS = 1 << 16  # elements per work chunk: keeps the temporaries in cache


def quantize(data: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """Quantize float32 ``data`` [rows, cols] to ``qtype``; returns uint8 [rows, row_bytes].

    Works through row chunks of about 64K values, so extra memory stays a few MB whatever
    the input size or dtype.
    Raises ValueError when cols is not a multiple of the type's block size (the caller then
    falls back to another type) and NotImplementedError for types neither we nor gguf-py
    can quantize.
    """
    qtype = GGMLQuantizationType(qtype)
    data = np.asarray(data)
    if data.ndim != 2:
        raise ValueError(f"expected a 2-D array [rows, cols], got shape {data.shape}")
    rows, cols = data.shape
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if cols % block_size:
        raise ValueError(f"row length {cols} is not a multiple of the {qtype.name} block size {block_size}")
    out = np.empty((rows, cols // block_size * type_size), dtype=np.uint8)
    if out.size == 0:
        return out
    step = max(1, _CHUNK_ELEMS // cols)
    for start in range(0, rows, step):
        # per-chunk cast: a float16/float64 input never gets a full float32 copy
        out[start:start + step] = _quantize_rows(np.ascontiguousarray(data[start:start + step], dtype=F32), qtype)
    return out


def _quantize_rows(rows: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    kernel = _K_QUANTS.get(qtype)
    if kernel is None:
        return gguf_quants.quantize(rows, qtype).view(np.uint8)
    return kernel(rows.reshape(-1, QK_K)).reshape(len(rows), -1)


# ---------------------------------------------------------------- shared helpers


def _levels(values: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """nearest_int then clamp, kept as float32 (exact small integers)."""
    rounded = np.rint(values)
    return np.clip(rounded, lo, hi, out=rounded)


def _to_sub_blocks(blocks: np.ndarray, size: int) -> np.ndarray:
    """(nb, 256) -> (size, nb*256/size): element index first, so sums over axis 0 are sequential."""
    return np.ascontiguousarray(blocks.reshape(-1, size).T)


def _fp16_bytes(values: np.ndarray) -> np.ndarray:
    return values.astype("<f2").view(np.uint8).reshape(-1, 2)


# ---------------------------------------------------------------- Q4_K / Q5_K


def _qkx2_search(x: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """make_qkx2_quants on every column of x (32, nsb) with weights av_x + |x|.

    Returns (scale, the_min, l_iscale, l_min, flat): l_iscale/l_min rebuild the chosen levels
    as levels(l_iscale * (x - l_min)); flat marks sub-blocks whose levels are all 0.
    """
    n = x.shape[0]
    av_x = np.sqrt((x * x).sum(0) / F32(n))
    w = av_x + np.abs(x)
    sum_w = w.sum(0)
    sum_x = (w * x).sum(0)
    mn = np.minimum(x.min(0), F32(0))
    mx = x.max(0)
    flat = mx == mn
    lv, wl, tmp = np.empty_like(x), np.empty_like(x), np.empty_like(x)  # reused: no per-step allocation

    def levels_at(iscale, mn):
        np.subtract(x, mn, out=lv)
        np.multiply(lv, iscale, out=lv)
        np.rint(lv, out=lv)
        return np.clip(lv, F32(0), F32(nmax), out=lv)

    def weighted_sse(scale, mn):
        np.multiply(lv, scale, out=tmp)
        np.add(tmp, mn, out=tmp)
        np.subtract(tmp, x, out=tmp)
        np.square(tmp, out=tmp)
        return np.multiply(tmp, w, out=tmp).sum(0)

    iscale = F32(nmax) / (mx - mn)
    scale = F32(1) / iscale
    levels_at(iscale, mn)
    best = weighted_sse(scale, mn)
    l_iscale, l_min = iscale, mn
    for step in range(nstep + 1):
        # min moves when a candidate wins, so later candidates depend on earlier ones
        iscale = (F32(F32(rmin) + F32(rdelta) * F32(step)) + F32(nmax)) / (mx - mn)
        levels_at(iscale, mn)
        np.multiply(w, lv, out=wl)
        sum_l = wl.sum(0)
        sum_l2 = np.multiply(wl, lv, out=tmp).sum(0)
        sum_xl = np.multiply(wl, x, out=tmp).sum(0)
        det = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
        positive = this_min > 0
        this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
        this_min = np.where(positive, F32(0), this_min)
        err = weighted_sse(this_scale, this_min)
        better = (det > 0) & (err < best) & ~flat
        best = np.where(better, err, best)
        scale = np.where(better, this_scale, scale)
        l_iscale = np.where(better, iscale, l_iscale)
        l_min = np.where(better, mn, l_min)
        mn = np.where(better, this_min, mn)
    return np.where(flat, F32(0), scale), -mn, l_iscale, l_min, flat


def _six_bit(values: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Quantize per-block scales (or mins) to 0..63 against the block's largest one."""
    inv = np.where(top > 0, F32(63) / np.where(top > 0, top, F32(1)), F32(0))
    q = np.rint(inv[:, None] * values).astype(np.int64)
    return np.minimum(q & 0xFF, 63).astype(np.uint8)  # C stores into uint8 before MIN(63, .)


def _pack_scale_min(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Pack 8 six-bit scales and mins into llama.cpp's 12 bytes (get_scale_min_k4 inverse)."""
    packed = np.empty((len(ls), 12), dtype=np.uint8)
    packed[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    packed[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return packed


def _minmax_levels(blocks: np.ndarray, nmax: int, rmin: float, nstep: int):
    """Shared Q4_K/Q5_K body: returns d, dmin (fp16), packed scales and levels (nb, 256)."""
    nb = len(blocks)
    x = _to_sub_blocks(blocks, 32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scale, the_min, l_iscale, l_min, flat = _qkx2_search(x, nmax, rmin, 0.1, nstep)
        scales, mins = scale.reshape(nb, 8), the_min.reshape(nb, 8)
        max_scale = np.maximum(scales.max(1), F32(0))
        max_min = np.maximum(mins.max(1), F32(0))
        ls, lm = _six_bit(scales, max_scale), _six_bit(mins, max_min)
        d = (max_scale / F32(63)).astype(np.float16)
        dmin = (max_min / F32(63)).astype(np.float16)
        sub_d = (d.astype(F32)[:, None] * ls.astype(F32)).reshape(-1)
        sub_m = (dmin.astype(F32)[:, None] * lm.astype(F32)).reshape(-1)
        levels = _levels((x + sub_m) / sub_d, 0, nmax)
        # a zero sub-block scale skips requantization: the search's levels stay in the block
        keep = np.flatnonzero(sub_d == 0)
        if len(keep):
            search = _levels(l_iscale[keep] * (x[:, keep] - l_min[keep]), 0, nmax)
            levels[:, keep] = np.where(flat[keep], F32(0), search)
    levels = levels.T.reshape(nb, QK_K).astype(np.uint8)
    return d, dmin, _pack_scale_min(ls, lm), levels


def _nibbles(levels: np.ndarray) -> np.ndarray:
    """Each 64 values -> 32 bytes: first 32 in the low nibbles, next 32 in the high ones."""
    pairs = (levels & 0xF).reshape(-1, 4, 2, 32)
    return (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(-1, 128)


def _quantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin, scales, levels = _minmax_levels(blocks, 15, -1.0, 20)
    return np.concatenate([_fp16_bytes(d), _fp16_bytes(dmin), scales, _nibbles(levels)], axis=1)


def _quantize_q5_k(blocks: np.ndarray) -> np.ndarray:
    d, dmin, scales, levels = _minmax_levels(blocks, 31, -0.5, 15)
    # fifth bits: bit k of qh[j] belongs to value 32*k + j
    high = (levels >> 4).reshape(-1, 8, 32)
    qh = np.bitwise_or.reduce(high << np.arange(8, dtype=np.uint8)[None, :, None], axis=1)
    return np.concatenate([_fp16_bytes(d), _fp16_bytes(dmin), scales, qh, _nibbles(levels)], axis=1)


# ---------------------------------------------------------------- Q6_K


def _qx_search(x: np.ndarray, mx: np.ndarray, nmax: int):
    """make_qx_quants(rmse_type=1, no weights) on every column of x (16, nsb).

    mx holds each column's first value of largest magnitude. Returns (scale, l_iscale):
    levels(l_iscale * x) + nmax are the chosen levels (all 0 where scale is 0 from a zero group).
    """
    w = x * x
    wx = w * x
    lv, tmp = np.empty_like(x), np.empty_like(x)  # reused: no per-step allocation

    def sums(iscale):
        np.multiply(x, iscale, out=lv)
        np.rint(lv, out=lv)
        np.clip(lv, F32(-nmax), F32(nmax - 1), out=lv)
        sumlx = np.multiply(wx, lv, out=tmp).sum(0)
        np.multiply(w, lv, out=tmp)
        return sumlx, np.multiply(tmp, lv, out=tmp).sum(0)

    iscale = F32(-nmax) / mx
    sumlx, suml2 = sums(iscale)
    scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
    best = scale * sumlx
    l_iscale = iscale
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(F32(nmax) + F32(0.1) * F32(step)) / mx
        sumlx, suml2 = sums(iscale)
        # the C test is sumlx^2 > best*suml2 with a rounded running best: keep it literally
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        scale = np.where(better, sumlx / suml2, scale)
        best = np.where(better, scale * sumlx, best)
        l_iscale = np.where(better, iscale, l_iscale)
    return scale, l_iscale


def _first_largest_magnitude(x: np.ndarray) -> np.ndarray:
    """Per column of x, the first value of largest |x|, as the C loop keeps it.

    Only columns holding both +amax and -amax need the position; argmax over the short
    axis is slow in numpy, so it runs on those columns alone.
    """
    amax = np.abs(x).max(0)
    positive, negative = (x == amax).any(0), (x == -amax).any(0)
    mx = np.where(positive, amax, -amax)
    tie = np.flatnonzero(positive & negative)
    if len(tie):
        sub = x[:, tie]
        mx[tie] = sub[np.abs(sub).argmax(0), np.arange(len(tie))]
    return mx


def _quantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    nb = len(blocks)
    x = _to_sub_blocks(blocks, 16)
    mx = _first_largest_magnitude(x)
    zero = np.abs(mx) < _EPS
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scale, l_iscale = _qx_search(x, mx, 32)
        scale = np.where(zero, F32(0), scale)
        scales = scale.reshape(nb, 16)
        max_scale = scales[np.arange(nb), np.abs(scales).argmax(1)]  # first largest |scale|
        empty = np.abs(max_scale) < _EPS  # whole block written as zeros
        iscale = F32(-128) / max_scale
        d = np.where(empty, F32(0), F32(1) / iscale).astype(np.float16)
        q_scales = np.minimum(np.rint(iscale[:, None] * scales), F32(127))
        q_scales = np.where(empty[:, None], F32(0), q_scales).astype(np.int8)
        sub_d = (d.astype(F32)[:, None] * q_scales.astype(F32)).reshape(-1)
        levels = _levels(x / sub_d, -32, 31) + F32(32)
        # a zero sub-block scale skips requantization: the search's levels stay in the block
        keep = np.flatnonzero(sub_d == 0)
        if len(keep):
            search = _levels(l_iscale[keep] * x[:, keep], -32, 31) + F32(32)
            levels[:, keep] = np.where(zero[keep], F32(0), search)
    levels = levels.T.reshape(nb, QK_K).astype(np.uint8)
    levels[empty] = 0
    # per 128 values (4 quarters of 32): ql pairs quarters 0|2 and 1|3, qh holds 2 bits of each
    quarters = levels.reshape(nb, 2, 4, 32)
    ql = (quarters[:, :, 0:2] & 0xF) | ((quarters[:, :, 2:4] & 0xF) << 4)
    qh = np.bitwise_or.reduce((quarters >> 4) << np.array([0, 2, 4, 6], dtype=np.uint8)[:, None], axis=2)
    return np.concatenate(
        [ql.reshape(nb, 128), qh.reshape(nb, 64), q_scales.view(np.uint8), _fp16_bytes(d)], axis=1
    )


_K_QUANTS = {
    GGMLQuantizationType.Q4_K: _quantize_q4_k,
    GGMLQuantizationType.Q5_K: _quantize_q5_k,
    GGMLQuantizationType.Q6_K: _quantize_q6_k,
}
