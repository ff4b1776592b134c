"""Rebuilding the model from a GGUF file alone: config from its metadata, weights dequantized.

This is the reference path (plain torch, f32); the fast runtime keeps the quantized blocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import torch

from .config import ModelConfig
from .errors import ModelError
from .gguf_format import HF_ARCH, PLT, PLT_KEYS, ROPE_FREQS, hf_name, needs_permute, unpermute_from_llama


def open_gguf(path: str | Path) -> gguf.GGUFReader:
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p} does not exist; give a .gguf file or a checkpoint directory")
    try:
        return gguf.GGUFReader(p)
    except (ValueError, OSError, IndexError) as exc:
        raise ModelError(f"{p} is not a readable GGUF file ({exc}); re-convert it") from None


def _field(r: gguf.GGUFReader, key: str, default=None):
    f = r.get_field(key)
    return default if f is None else f.contents()


def config_from_gguf(r: gguf.GGUFReader, source: str = "GGUF") -> ModelConfig:
    arch = _field(r, "general.architecture")
    if arch not in HF_ARCH:
        raise ModelError(f"{source}: GGUF architecture {arch!r} is not supported (supported: {', '.join(HF_ARCH)})")
    names = {t.name: t for t in r.tensors}
    H = int(_field(r, f"{arch}.embedding_length"))
    nh = int(_field(r, f"{arch}.attention.head_count"))
    scaling = None
    if ROPE_FREQS in names:
        scaling = {"rope_type": "freq_factors", "factors": names[ROPE_FREQS].data.astype(np.float64).tolist()}
    elif _field(r, f"{arch}.rope.scaling.type") == "linear":
        scaling = {"rope_type": "linear", "factor": float(_field(r, f"{arch}.rope.scaling.factor"))}
    eos = _field(r, "tokenizer.ggml.eos_token_id")
    common = dict(
        arch=HF_ARCH[arch],
        vocab_size=int(names["token_embd.weight"].shape[1]),
        hidden_size=H,
        intermediate_size=int(_field(r, f"{arch}.feed_forward_length")),
        num_layers=int(_field(r, f"{arch}.block_count")),
        num_heads=nh,
        num_kv_heads=int(_field(r, f"{arch}.attention.head_count_kv", nh)),
        head_dim=int(_field(r, f"{arch}.attention.key_length", H // nh)),
        rms_norm_eps=float(_field(r, f"{arch}.attention.layer_norm_rms_epsilon")),
        rope_theta=float(_field(r, f"{arch}.rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        max_position_embeddings=int(_field(r, f"{arch}.context_length", 4096)),
        tie_word_embeddings="output.weight" not in names,
        attention_bias="blk.0.attn_q.bias" in names,
        bos_token_id=_field(r, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (int(eos),),
    )
    if arch == PLT:
        plt = {field: _field(r, f"{PLT}.{key}") for field, key in PLT_KEYS.items()}
        missing = [f"{PLT}.{PLT_KEYS[f]}" for f, v in plt.items() if v is None]
        if missing:
            raise ModelError(f"{source} lacks {', '.join(missing)}; re-convert it with loopcli convert")
        common.update(plt)
    return ModelConfig(**common)


def gguf_tensors(r: gguf.GGUFReader, cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, dequantized f32 tensor), one at a time; llama-layout q/k rows un-permuted."""
    arch = _field(r, "general.architecture")
    for t in r.tensors:
        if t.name == ROPE_FREQS:
            continue
        name = hf_name(t.name)
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = tuple(int(d) for d in reversed(t.shape))
        data = np.array(data, dtype=np.float32).reshape(shape)  # a copy: the file map is read-only
        which = needs_permute(arch, name)
        if which:
            data = unpermute_from_llama(data, cfg.num_heads if which == "q" else cfg.num_kv_heads)
        yield name, torch.from_numpy(np.ascontiguousarray(data))
