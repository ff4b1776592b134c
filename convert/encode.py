"""Reading, checking and quantizing one tensor: the work the converter spreads over processes.

Only numpy and gguf-py here (no torch): each worker process stays small. Rows are read in
chunks straight from the safetensors file (gguf-py's header reader gives the byte range), so
neither a whole tensor nor the file's mapped pages pile up in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType
from gguf.utility import SafetensorsLocal

from loopcli.runtime.errors import ModelError
from loopcli.runtime.gguf_format import permute_for_llama

from .quants import quantize

CHUNK_ELEMENTS = 1 << 22  # 16 MB of f32 per quantization chunk
_ITEM = {"BF16": 2, "F16": 2, "F32": 4}


@dataclass(frozen=True)
class TensorJob:
    hf: str  # the HF name, for messages
    file: Path
    key: str  # the name inside the file
    shape: tuple[int, ...]
    qtype: GGMLQuantizationType
    permute_heads: int = 0  # > 0: llama.cpp's q/k row order over this many heads


def encode(job: TensorJob) -> np.ndarray:
    """The tensor's GGUF data (quantized bytes, or floats for float types)."""
    tensor = SafetensorsLocal(job.file).tensors[job.key]
    cols = job.shape[-1]
    rows = int(np.prod(job.shape[:-1], dtype=np.int64)) if len(job.shape) > 1 else 1
    # a permuted q/k tensor is reordered within heads: read it whole (it is H x H at most)
    step = rows if job.permute_heads else max(1, CHUNK_ELEMENTS // cols)
    parts = []
    for start in range(0, rows, step):
        data = _read_rows(tensor, start, min(rows, start + step), cols)
        if not np.isfinite(data).all():
            bad = "NaN" if np.isnan(data).any() else "Inf"
            raise ModelError(f"tensor {job.hf} contains {bad} values; the checkpoint is corrupt, re-download it")
        if job.permute_heads:
            data = permute_for_llama(data, job.permute_heads)
        parts.append(quantize(data, job.qtype))
    out = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return out.reshape(-1) if len(job.shape) == 1 else out


def _read_rows(tensor, start: int, stop: int, cols: int) -> np.ndarray:
    """Rows [start, stop) as float32, mapped only for the copy."""
    item = _ITEM[tensor.dtype]
    rng = tensor.data_range
    raw = np.memmap(rng.filename, mode="r", offset=rng.offset + start * cols * item,
                    shape=((stop - start) * cols * item,))
    try:
        if tensor.dtype == "BF16":  # bf16 is the top half of an f32
            data = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            data = raw.view(np.float16 if tensor.dtype == "F16" else np.float32).astype(np.float32)
    finally:
        del raw  # unmaps
    return data.reshape(stop - start, cols)
