"""Weights kept compact in memory and multiplied from that form: `pack` and `linear`.

On a CPU where our kernel builds (cpu_kernels/qgemm.cpp), Q8_0, Q4_0, Q4_K, Q5_K and Q6_K
weights stay as the GGUF's own blocks (`BlockWeight`, exactly the file's bytes) and are
multiplied by that kernel: activations quantized to int8 per 32 values, integer block dot
products (llama.cpp's scheme). Without it (no compiler, LOOPCLI_CPU_KERNEL=0) and for the other
formats, the torch paths below are used.

Measured on this project's 2-core AVX2 CPU (docs in README, engine section): torch's packed
int4 CPU matmul (`_weight_int4pack_mm_for_cpu`, bf16 activations, bf16 group scales and
offsets) reads a 2816x1024 matrix in about a fifth of the time of an f32 matmul at one token,
and is as fast as f32 at 64 rows. So:

- Q4_0, Q4_1, Q4_K (4-bit values, groups of 32): one int4-packed matrix, `w = (u - 8) * s + z`.
- Q8_0, Q5_0, Q5_1, Q5_K (up to 8 bits, groups of 32): the integer split into its high and
  low nibble, two int4-packed matrices whose products add up (`q = 16 hi + lo - 128`).
- Q6_K (groups of 16, which the int4 kernel does not take) and any non-CPU device: int8
  values with f32 scales, dequantized one tile of rows at a time into the activation dtype.
- F32 / F16 / BF16: stored as they are; other dtypes upcast one tile at a time.

The packed paths round activations and group scales to bf16 (relative error about 2^-9,
the order of llama.cpp's own 8-bit activation quantization); the tiled path is exact.
`linear` is the one entry point, so kernels/ can put a Triton kernel behind it on CUDA.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import blocks, cpu_kernels

INT4 = (blocks.Q4_0, blocks.Q4_1, blocks.Q4_K)
SPLIT8 = (blocks.Q8_0, blocks.Q5_0, blocks.Q5_1, blocks.Q5_K)
TILE_ELEMS = 1 << 18  # values dequantized per tile: stays in L2
PACKED_MAX_ROWS = 8  # above this many activation rows, packed weights go through f32 tiles


class FloatWeight:
    def __init__(self, w: torch.Tensor):
        self.w = w
        self.rows, self.cols = w.shape

    def linear(self, x: torch.Tensor, tiles: bool = False) -> torch.Tensor:
        if self.w.dtype == x.dtype:
            return F.linear(x, self.w)
        return _tiled(x, self.rows, lambda a, b: self.w[a:b].to(x.dtype))

    @property
    def nbytes(self) -> int:
        return self.w.numel() * self.w.element_size()


class TiledWeight:
    """int8 values, f32 group scales (and offsets): dequantized per tile of rows."""

    def __init__(self, d: blocks.Decoded):
        self.q, self.scale, self.zero, self.group = d.q, d.scale, d.zero, d.group
        self.rows, self.cols = d.q.shape

    def _rows(self, a: int, b: int, dtype: torch.dtype) -> torch.Tensor:
        part = blocks.Decoded(self.q[a:b], self.scale[a:b], None if self.zero is None else self.zero[a:b], self.group)
        return part.dequantize().to(dtype)

    def linear(self, x: torch.Tensor, tiles: bool = False) -> torch.Tensor:
        return _tiled(x, self.rows, lambda a, b: self._rows(a, b, x.dtype))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.q, self.scale, self.zero) if t is not None)


@functools.cache
def int4_block() -> int | None:
    """Rows per block of torch's CPU int4 layout here (it follows the SIMD level torch picks:
    32 with AVX2, 64 with AVX-512), found by packing a probe; None for a layout we do not read
    (the int4 path is then not used)."""
    probe = torch.randint(0, 16, (128, 64), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe, 1)
    for block in (32, 64):
        if packed.numel() == probe.numel() // 2 and torch.equal(_unpack_block(packed, 64, block, 0, 128).int(), probe):
            return block
    return None


def _unpack_block(packed: torch.Tensor, cols: int, block: int, a: int, b: int) -> torch.Tensor:
    """Rows a..b (a a multiple of `block`) of 4-bit values. torch's CPU layout: blocks of
    `block` rows, per column k block / 2 bytes, byte j = row j (low nibble), row j + block / 2
    (high)."""
    blk = packed.view(-1, cols, block // 2)[a // block:(b + block - 1) // block]
    u = torch.cat([blk & 15, blk >> 4], dim=-1)  # [blocks, K, block]
    return u.transpose(1, 2).reshape(-1, cols)[:b - a]


class Int4Weight:
    """One or two int4-packed matrices (torch's CPU layout) whose products are summed."""

    def __init__(self, parts: list[tuple[torch.Tensor, torch.Tensor]], rows: int, cols: int):
        self.parts, self.rows, self.cols = parts, rows, cols

    @classmethod
    def from_decoded(cls, d: blocks.Decoded, ggml_type: int) -> "Int4Weight":
        rows, cols = d.q.shape
        pad = -rows % int4_block()  # whole blocks of rows: the layout `_unpack` reads
        q = F.pad(d.q.int(), (0, 0, 0, pad))
        s = F.pad(d.scale, (0, 0, 0, pad))
        z = F.pad(d.zero, (0, 0, 0, pad)) if d.zero is not None else torch.zeros_like(s)
        if ggml_type in INT4:  # u = q + 8 in [0, 15]: w = q s + z = (u - 8) s + z
            offset = 8 if ggml_type == blocks.Q4_0 else 0
            u = q + offset
            z = z + (8 - offset) * s
            halves = [(u, s, z)]
        else:  # u = q + 128 = 16 hi + lo: w = 16 s (hi - 8) + s (lo - 8) + (8 s + z)
            u = q + 128
            halves = [(u >> 4, 16 * s, torch.zeros_like(s)), (u & 15, s, 8 * s + z)]
        parts = []
        for nib, sc, zr in halves:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(nib.contiguous(), 1)
            sz = torch.stack([sc.t(), zr.t()], dim=-1).to(torch.bfloat16).contiguous()  # [K/32, N, 2]
            parts.append((packed, sz))
        return cls(parts, rows, cols)

    def _unpack(self, packed: torch.Tensor, a: int, b: int) -> torch.Tensor:
        return _unpack_block(packed, self.cols, int4_block(), a, b)

    def _rows(self, a: int, b: int, dtype: torch.dtype) -> torch.Tensor:
        """Rows a..b dequantized: (u - 8) s + z, or for a split pair, with u = 16 hi + lo
        rebuilt in one byte, 16 s (hi - 8) + s (lo - 8) + z = (u - 136) s + z."""
        u = self._unpack(self.parts[0][0], a, b)
        packed, sz = self.parts[-1]
        if len(self.parts) == 2:
            u = (u << 4) | self._unpack(packed, a, b)
        sc = sz[:, a:b].to(dtype)  # [K/32, rows, 2]
        w = (u.view(b - a, -1, 32).to(dtype) - (136 if len(self.parts) == 2 else 8)) * sc[..., 0].t()[..., None]
        return (w + sc[..., 1].t()[..., None]).view(b - a, self.cols)

    def linear(self, x: torch.Tensor, tiles: bool = False) -> torch.Tensor:
        shape = x.shape
        if tiles or x.numel() // self.cols > PACKED_MAX_ROWS:  # prefill: f32 tiles and a GEMM win
            return _tiled(x, self.rows, lambda a, b: self._rows(a, b, x.dtype), align=int4_block())
        xb = x.reshape(-1, self.cols).to(torch.bfloat16)
        y = None
        for packed, sz in self.parts:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(xb, packed, 32, sz)
            y = out.float() if y is None else y + out.float()
        return y[:, :self.rows].to(x.dtype).reshape(*shape[:-1], self.rows)

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() + s.numel() * s.element_size() for p, s in self.parts)


class BlockWeight:
    """The GGUF blocks multiplied by our CPU kernel (cpu_kernels): as stored, or for Q8_0, Q4_K
    and Q6_K rearranged once into the kernel's x8 layout (`kernel_type` then says so)."""

    def __init__(self, raw: torch.Tensor, ggml_type: int, cols: int, kernel: cpu_kernels.Kernel):
        self.ggml_type, self.kernel = ggml_type, kernel
        self.rows, self.cols = raw.shape[0], cols
        self.raw, self.kernel_type = kernel.repack(raw, ggml_type, cols)

    def linear(self, x: torch.Tensor, tiles: bool = False) -> torch.Tensor:
        y = self.kernel.qgemm(x.reshape(-1, self.cols), self.raw, self.kernel_type, tiles=tiles, rows=self.rows)
        return y.to(x.dtype).reshape(*x.shape[:-1], self.rows)

    @property
    def nbytes(self) -> int:
        return self.raw.numel()


Weight = FloatWeight | TiledWeight | Int4Weight | BlockWeight


def _tiled(x: torch.Tensor, rows: int, tile_of, align: int = 16) -> torch.Tensor:
    """x @ W.T with W produced tile by tile (rows a..b, a a multiple of `align`) by `tile_of`."""
    cols = x.shape[-1]
    step = max(align, TILE_ELEMS // cols // align * align)
    if step >= rows:
        return F.linear(x, tile_of(0, rows))
    out = torch.empty(*x.shape[:-1], rows, dtype=x.dtype, device=x.device)
    for a in range(0, rows, step):
        b = min(rows, a + step)
        out[..., a:b] = F.linear(x, tile_of(a, b))
    return out


PACK_ROWS = 2048  # rows decoded and packed at a time: bounds the temporaries while loading


def pack(ggml_type: int, raw: torch.Tensor, cols: int, device: torch.device | str = "cpu",
         packed: bool = True) -> Weight:
    """Raw GGUF bytes uint8 [rows, row_bytes] -> the weight form this device multiplies from.

    `packed=False` keeps every block format on the exact tiled path.
    """
    device = torch.device(device)
    if ggml_type in blocks.FLOAT:
        w = raw.contiguous().view(blocks.FLOAT[ggml_type]).reshape(raw.shape[0], cols)
        return FloatWeight(w.to(device).clone())
    kernel = cpu_kernels.get() if packed and device.type == "cpu" and ggml_type in cpu_kernels.TYPES else None
    if kernel is not None:
        return BlockWeight(raw.contiguous(), ggml_type, cols, kernel)  # the bytes as read (or repacked once)
    if packed and device.type == "cpu" and ggml_type in INT4 + SPLIT8 and int4_block():
        # blocks of rows are independent in the packed layout: pack a slice of whole blocks at a time
        step = -(-PACK_ROWS // int4_block()) * int4_block()
        pieces = [Int4Weight.from_decoded(blocks.decode(ggml_type, raw[a:a + step], cols), ggml_type)
                  for a in range(0, raw.shape[0], step)]
        if len(pieces) == 1:
            return pieces[0]
        parts = [(torch.cat([p.parts[i][0] for p in pieces]), torch.cat([p.parts[i][1] for p in pieces], dim=1))
                 for i in range(len(pieces[0].parts))]
        return Int4Weight(parts, raw.shape[0], cols)
    d = blocks.decode(ggml_type, raw, cols)
    return TiledWeight(blocks.Decoded(d.q.to(device), d.scale.to(device),
                                      None if d.zero is None else d.zero.to(device), d.group))


def linear(x: torch.Tensor, w: Weight, bias: torch.Tensor | None = None, tiles: bool = False) -> torch.Tensor:
    """x @ W.T (+ bias). `tiles`: always the dequantized-tile path (prefill), so that results
    do not depend on how many rows a chunk has."""
    y = w.linear(x, tiles)
    return y if bias is None else y + bias
