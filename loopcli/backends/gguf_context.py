"""The context length to run a GGUF at when the user does not give one (`--ctx`).

The model's training context (`<arch>.context_length` in the GGUF), capped so that the model
file plus the KV cache (f16 K and V for every layer) plus llama.cpp's attention scratch (f32
scores of one 512-token batch against the whole context) fit in half of the memory available
when the backend starts (Linux MemAvailable); never below MIN_CTX (or the training context,
if that is smaller). An estimate: llama.cpp's own buffers vary with its version and options.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from loopcli.runtime.errors import ModelError
from loopcli.runtime.gguf_load import open_gguf

from .base import BackendError

BATCH = 512  # llama-cpp-python's default n_batch: the rows of one prompt-processing step
MIN_CTX = 2048
FALLBACK_CTX = 4096  # for a GGUF that does not say its training context


@dataclass(frozen=True)
class Metadata:
    """What the context choice needs from a GGUF's header."""

    arch: str | None
    train_ctx: int | None  # <arch>.context_length
    layers: int = 0
    heads: int = 0
    kv_heads: int = 0
    head_dim: int = 0

    def bytes_per_token(self) -> int:
        """Memory one more token of context costs: f16 K and V in every layer, and the f32
        attention scores of a prompt batch against it."""
        return 2 * self.layers * self.kv_heads * self.head_dim * 2 + BATCH * self.heads * 4


def read_metadata(path: Path) -> Metadata:
    """The GGUF's architecture and sizes; a missing or unreadable file is a BackendError."""
    try:
        reader = open_gguf(path)
    except ModelError as exc:
        raise BackendError(str(exc)) from None

    def number(key: str) -> int:
        field = reader.get_field(key)
        try:
            value = field.contents() if field is not None else 0
            return max(int(value if not isinstance(value, list) else max(value)), 0)
        except (TypeError, ValueError):
            return 0  # a field of the wrong type: treat as absent

    field = reader.get_field("general.architecture")
    arch = None if field is None else field.contents()
    if not isinstance(arch, str):
        return Metadata(arch=None, train_ctx=None)
    heads = number(f"{arch}.attention.head_count")
    head_dim = number(f"{arch}.attention.key_length")
    if not head_dim and heads:
        head_dim = number(f"{arch}.embedding_length") // heads
    return Metadata(arch=arch, train_ctx=number(f"{arch}.context_length") or None,
                    layers=number(f"{arch}.block_count"), heads=heads,
                    kv_heads=number(f"{arch}.attention.head_count_kv") or heads, head_dim=head_dim)


def default_context(meta: Metadata, model_bytes: int, available: int | None) -> int:
    """The training context, capped to what fits in half of `available` bytes (see above)."""
    train = meta.train_ctx or FALLBACK_CTX
    per_token = meta.bytes_per_token()
    if available is None or per_token <= 0:
        return train
    fits = (available // 2 - model_bytes) // per_token // 256 * 256
    return max(min(train, fits), min(train, MIN_CTX))


def available_memory() -> int | None:
    """Bytes of memory available now (Linux MemAvailable; else free pages; None if unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
