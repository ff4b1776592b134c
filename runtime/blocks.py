"""GGUF weight blocks decoded in torch, as integers plus per-group scales and offsets.

Every supported block format dequantizes as `w = q * scale + zero` over groups of `group`
consecutive values of a row (llama.cpp's `dequantize_row_*`, with the sub-block scales of
the K formats already multiplied out). Keeping that split lets the runtime hold weights as
small integers and multiply from them (qmatmul.py) instead of expanding them to floats.
Input is the tensor's raw bytes, one row of blocks per matrix row: uint8 [rows, row_bytes].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# GGML type ids (gguf.GGMLQuantizationType) -> (values per block, bytes per block)
F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, BF16 = 0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 30
BLOCK = {Q4_0: (32, 18), Q4_1: (32, 20), Q5_0: (32, 22), Q5_1: (32, 24), Q8_0: (32, 34),
         Q4_K: (256, 144), Q5_K: (256, 176), Q6_K: (256, 210)}
FLOAT = {F32: torch.float32, F16: torch.float16, BF16: torch.bfloat16}
NAMES = {F32: "F32", F16: "F16", BF16: "BF16", Q4_0: "Q4_0", Q4_1: "Q4_1", Q5_0: "Q5_0",
         Q5_1: "Q5_1", Q8_0: "Q8_0", Q4_K: "Q4_K", Q5_K: "Q5_K", Q6_K: "Q6_K"}


@dataclass
class Decoded:
    q: torch.Tensor  # int8 [rows, cols]
    scale: torch.Tensor  # float32 [rows, cols // group]
    zero: torch.Tensor | None  # float32 [rows, cols // group], None when all zero
    group: int

    def dequantize(self) -> torch.Tensor:
        rows, cols = self.q.shape
        w = self.q.view(rows, -1, self.group).float() * self.scale[..., None]
        if self.zero is not None:
            w = w + self.zero[..., None]
        return w.view(rows, cols)


def _f16(b: torch.Tensor) -> torch.Tensor:
    """Two bytes (little-endian) along the last axis -> float32."""
    return b.contiguous().view(torch.float16).squeeze(-1).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[..., 16] bytes -> [..., 32] values: low nibbles first, then high (Q4_0 .. Q5_1)."""
    return torch.cat([qs & 0xF, qs >> 4], dim=-1)


def _bits(b: torch.Tensor, n: int) -> torch.Tensor:
    """[..., k] bytes -> [..., 8k] bits, little-endian (bit j of the word at position j)."""
    shifts = torch.arange(8, dtype=torch.uint8, device=b.device)
    return ((b[..., :, None] >> shifts) & 1).flatten(-2)[..., :n]


def _k_scales(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 12 packed bytes of Q4_K / Q5_K -> 8 six-bit scales and 8 six-bit mins."""
    lo, mid, hi = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = torch.cat([lo & 63, (hi & 0xF) | ((lo >> 6) << 4)], dim=-1)
    mn = torch.cat([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], dim=-1)
    return sc.float(), mn.float()


def decode(ggml_type: int, raw: torch.Tensor, cols: int) -> Decoded:
    """raw uint8 [rows, row_bytes] of one of the BLOCK formats -> Decoded."""
    if ggml_type not in BLOCK:
        raise ValueError(f"GGML type {ggml_type} is not a supported block format")
    n, size = BLOCK[ggml_type]
    rows = raw.shape[0]
    b = raw.reshape(rows, cols // n, size)
    zero = None
    if ggml_type in (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0):
        d = _f16(b[..., 0:2])
        if ggml_type == Q8_0:
            q = b[..., 2:].contiguous().view(torch.int8)
        else:
            off = 4 if ggml_type in (Q4_1, Q5_1) else 2
            if ggml_type in (Q4_1, Q5_1):
                zero = _f16(b[..., 2:4])
            if ggml_type in (Q5_0, Q5_1):
                high = _bits(b[..., off:off + 4], 32) << 4
                off += 4
            q = _nibbles(b[..., off:off + 16])
            if ggml_type in (Q5_0, Q5_1):
                q = q | high
            q = q.to(torch.int8)
            if ggml_type == Q4_0:
                q = q - 8
            elif ggml_type == Q5_0:
                q = q - 16
        scale, group = d, 32
    elif ggml_type in (Q4_K, Q5_K):
        d, dmin = _f16(b[..., 0:2]), _f16(b[..., 2:4])
        sc, mn = _k_scales(b[..., 4:16])
        qs = b[..., -128:].reshape(rows, -1, 4, 32)  # 4 chunks of 64 values
        q = torch.stack([qs & 0xF, qs >> 4], dim=3).reshape(rows, -1, 256)
        if ggml_type == Q5_K:
            qh = b[..., 16:48]  # bit 2c (low half) and 2c+1 (high half) of chunk c
            shifts = torch.arange(8, dtype=torch.uint8, device=raw.device)
            high = ((qh[..., None, :] >> shifts[:, None]) & 1).reshape(rows, -1, 256)
            q = q | (high << 4)
        q = q.to(torch.int8)
        scale = (d[..., None] * sc).reshape(rows, -1)
        zero = (-(dmin[..., None] * mn)).reshape(rows, -1)
        group = 32
    else:  # Q6_K: ql[128], qh[64], scales int8[16], d
        ql, qh = b[..., 0:128].reshape(rows, -1, 2, 64), b[..., 128:192].reshape(rows, -1, 2, 32)
        sc = b[..., 192:208].contiguous().view(torch.int8).float()
        d = _f16(b[..., 208:210])
        parts = [(ql[..., :32] & 0xF) | (((qh >> 0) & 3) << 4),
                 (ql[..., 32:] & 0xF) | (((qh >> 2) & 3) << 4),
                 (ql[..., :32] >> 4) | (((qh >> 4) & 3) << 4),
                 (ql[..., 32:] >> 4) | (((qh >> 6) & 3) << 4)]
        q = (torch.stack(parts, dim=3).reshape(rows, -1, 256).to(torch.int8) - 32)
        scale = (d[..., None] * sc).reshape(rows, -1)
        group = 16
    return Decoded(q.reshape(rows, cols), scale.reshape(rows, -1), None if zero is None else zero.reshape(rows, -1), group)


def dequantize(ggml_type: int, raw: torch.Tensor, cols: int) -> torch.Tensor:
    """Any supported type's raw bytes [rows, row_bytes] -> float32 [rows, cols]."""
    if ggml_type in FLOAT:
        return raw.contiguous().view(FLOAT[ggml_type]).reshape(raw.shape[0], cols).float()
    return decode(ggml_type, raw, cols).dequantize()
