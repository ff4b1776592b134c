"""Rebuilding the model from a GGUF file alone: config from its metadata, weights dequantized.

Every consumer of a GGUF goes through here, so the checks live here: `open_gguf` validates the
file's structure (runtime/gguf_read.py); `config_from_gguf` validates what a model of a known
architecture needs (keys and their types, every tensor by name and shape, the vocabulary);
`check_finite` finds NaN/Inf weights from the blocks' float fields without dequantizing.
`check_gguf` does all of it before a file goes to llama.cpp. The reference path here is plain
torch, f32; the fast runtime keeps the quantized blocks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import gguf
import numpy as np
import torch

from .checkpoint import expected_tensors
from .config import ModelConfig
from .errors import ModelError
from .gguf_format import (HF_ARCH, PLT, PLT_KEYS, ROPE_FREQS, gguf_name, hf_name, needs_permute,
                          unpermute_from_llama)
from .gguf_read import GGUFFile

Q = gguf.GGMLQuantizationType
V = gguf.GGUFValueType
_MISSING = object()
# Where a block's float fields sit: type -> (field byte offsets, field width in bytes). Only
# these can be NaN/Inf (the rest are integer quants), so checking them is exact. ggml-common.h.
FLOAT_FIELDS = {
    Q.F32: ((0,), 4), Q.F16: ((0,), 2), Q.BF16: ((0,), 2), Q.F64: ((0,), 8),
    Q.Q4_0: ((0,), 2), Q.Q4_1: ((0, 2), 2), Q.Q5_0: ((0,), 2), Q.Q5_1: ((0, 2), 2),
    Q.Q8_0: ((0,), 2), Q.Q8_1: ((0, 2), 2), Q.Q2_K: ((80, 82), 2), Q.Q3_K: ((108,), 2),
    Q.Q4_K: ((0, 2), 2), Q.Q5_K: ((0, 2), 2), Q.Q6_K: ((208,), 2), Q.Q8_K: ((0,), 4),
    Q.IQ2_XXS: ((0,), 2), Q.IQ2_XS: ((0,), 2), Q.IQ3_XXS: ((0,), 2), Q.IQ1_S: ((0,), 2),
    Q.IQ4_NL: ((0,), 2), Q.IQ3_S: ((0,), 2), Q.IQ2_S: ((0,), 2), Q.IQ4_XS: ((0,), 2),
    Q.TQ1_0: ((52,), 2), Q.TQ2_0: ((64,), 2),
}  # not here: integer types, and IQ1_M and MXFP4, whose scales are not plain floats
# a float field's bits by its width: (as unsigned, exponent mask, mantissa mask)
_BITS = {2: (np.uint16, 0x7C00, 0x03FF), 4: (np.uint32, 0x7F800000, 0x007FFFFF),
        8: (np.uint64, 0x7FF0000000000000, 0x000FFFFFFFFFFFFF)}


def open_gguf(path: str | Path) -> GGUFFile:
    """The file's metadata and tensor table, validated; tensor data stays mapped, unread."""
    return GGUFFile(path)


def _field(r: GGUFFile, key: str, default=None):
    f = r.get_field(key)
    return default if f is None else f.contents()


def _typed(r: GGUFFile, key: str, kind: type, source: str, default=_MISSING, positive: bool = False):
    """The value of `key`, which must be a scalar of `kind` (int, float, bool) or a str."""
    f = r.get_field(key)
    if f is None:
        if default is _MISSING:
            raise ModelError(f"{source} lacks the metadata key {key}; re-convert it with loopcli convert")
        return default
    value = f.contents()
    ok = isinstance(value, kind) if kind is not float else isinstance(value, (int, float))
    if not ok or f.types[0] == V.ARRAY or (kind is int and isinstance(value, bool)):
        raise ModelError(f"{source}: metadata key {key} is {str(value)[:40]!r}, not a {kind.__name__}; "
                         "re-convert it with loopcli convert")
    if positive and value <= 0:
        raise ModelError(f"{source}: metadata key {key} is {value}, it must be positive; re-convert it")
    return value


def architecture(r: GGUFFile, source: str) -> str:
    """general.architecture, which every GGUF model must have."""
    return _typed(r, "general.architecture", str, source)


def config_from_gguf(r: GGUFFile, source: str = "GGUF") -> ModelConfig:
    """The model config from the metadata, after checking the keys, every tensor (name and
    shape) and the vocabulary against it."""
    arch = architecture(r, source)
    if arch not in HF_ARCH:
        raise ModelError(f"{source}: GGUF architecture {arch!r} is not supported (supported: {', '.join(HF_ARCH)})")
    names = {t.name: t for t in r.tensors}
    if "token_embd.weight" not in names:
        raise ModelError(f"{source} has no tensor token_embd.weight; re-convert it with loopcli convert")
    integer = lambda key, default=_MISSING: _typed(r, f"{arch}.{key}", int, source, default, True)  # noqa: E731
    real = lambda key, default=_MISSING: float(_typed(r, f"{arch}.{key}", float, source, default))  # noqa: E731
    H, nh = integer("embedding_length"), integer("attention.head_count")
    nkv = integer("attention.head_count_kv", nh)
    layers = integer("block_count")
    if layers > len(r.tensors) or nh % nkv:
        raise ModelError(f"{source}: block_count {layers} or head counts {nh}/{nkv} do not match its "
                         f"{len(r.tensors)} tensors; re-convert it")
    scaling = None
    if ROPE_FREQS in names:
        scaling = {"rope_type": "freq_factors", "factors": names[ROPE_FREQS].data.astype(np.float64).tolist()}
    elif _field(r, f"{arch}.rope.scaling.type") == "linear":
        scaling = {"rope_type": "linear", "factor": real("rope.scaling.factor")}
    eos = _typed(r, "tokenizer.ggml.eos_token_id", int, source, None)
    common = dict(
        arch=HF_ARCH[arch],
        vocab_size=int(names["token_embd.weight"].shape[-1]),
        hidden_size=H,
        intermediate_size=integer("feed_forward_length"),
        num_layers=layers,
        num_heads=nh,
        num_kv_heads=nkv,
        head_dim=integer("attention.key_length", H // nh),
        rms_norm_eps=real("attention.layer_norm_rms_epsilon"),
        rope_theta=real("rope.freq_base", 10000.0),
        rope_scaling=scaling,
        max_position_embeddings=integer("context_length", 4096),
        tie_word_embeddings="output.weight" not in names,
        attention_bias="blk.0.attn_q.bias" in names,
        bos_token_id=_typed(r, "tokenizer.ggml.bos_token_id", int, source, None),
        eos_token_ids=() if eos is None else (eos,),
    )
    if arch == PLT:
        kinds = {"num_loops": int, "window": int, "normalize_per_loop": bool, "emb_scale": float,
                 "hidden_scale": float, "gate_use_hidden_states": bool}
        for field, key in PLT_KEYS.items():
            common[field] = _typed(r, f"{PLT}.{key}", kinds[field], source)
    cfg = ModelConfig(**common)
    _check_tensors(r, cfg, arch, source)
    _check_vocab(r, cfg.vocab_size, source)
    return cfg


def _check_tensors(r: GGUFFile, cfg: ModelConfig, arch: str, source: str) -> None:
    """Exactly the tensors `cfg` needs, each with its shape (GGUF dims reversed)."""
    expected = {gguf_name(hf): shape for hf, shape in expected_tensors(cfg).items()}
    if cfg.rope_kind == "freq_factors":
        expected[ROPE_FREQS] = (cfg.head_dim // 2,)
    got = {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in r.tensors}
    missing = [n for n in expected if n not in got]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ModelError(f"{source} lacks tensor {missing[0]}{more} that its {arch} metadata needs; "
                         "re-convert it with loopcli convert")
    extra = [n for n in got if n not in expected]
    if extra:
        raise ModelError(f"{source} has tensor {extra[0]}, which a {arch} model of its metadata does "
                         "not have (renamed or corrupt?); re-convert it with loopcli convert")
    for name, shape in expected.items():
        if got[name] != shape:
            raise ModelError(f"{source}: tensor {name} has shape {list(got[name])}, its metadata needs "
                             f"{list(shape)}; re-convert it with loopcli convert")


def _check_vocab(r: GGUFFile, n_vocab: int, source: str) -> None:
    """The tokenizer arrays agree with each other and with the embedding's rows."""
    _typed(r, "tokenizer.ggml.model", str, source)
    want = {"tokenizer.ggml.tokens": V.STRING, "tokenizer.ggml.token_type": V.INT32,
            "tokenizer.ggml.scores": V.FLOAT32, "tokenizer.ggml.merges": V.STRING}
    for key, vtype in want.items():
        f = r.get_field(key)
        if f is None and key != "tokenizer.ggml.tokens":
            continue
        if f is None or f.types[0] != V.ARRAY or (len(f) and f.types[-1] != vtype):
            raise ModelError(f"{source}: metadata key {key} is missing or not an array of "
                             f"{vtype.name.lower()}; re-convert it with loopcli convert")
        if key != "tokenizer.ggml.merges" and len(f) != n_vocab:
            raise ModelError(f"{source}: {key} has {len(f)} entries but token_embd has {n_vocab} rows; "
                             "re-convert it with loopcli convert")
    merges = r.get_field("tokenizer.ggml.merges")
    if merges is not None and len(merges):  # BPE: each merge "a b" joins two tokens into a third
        vocab = set(r.get_field("tokenizer.ggml.tokens").contents())
        listed = merges.contents()
        sides = " ".join(listed).split(" ")
        if len(sides) != 2 * len(listed) or not vocab.issuperset(sides) \
                or not vocab.issuperset(m.replace(" ", "", 1) for m in listed):
            for i, merge in enumerate(listed):  # name the first bad one
                a, _, b = merge.partition(" ")
                if not {a, b, a + b} <= vocab or " " in b:
                    raise ModelError(f"{source}: merge {i} {merge[:40]!r} does not join two tokens of the "
                                     "vocabulary into a third; re-convert it with loopcli convert")
    for key in ("bos", "eos", "unknown", "padding", "eot"):
        tid = _typed(r, f"tokenizer.ggml.{key}_token_id", int, source, None)
        if tid is not None and not 0 <= tid < n_vocab:
            raise ModelError(f"{source}: tokenizer.ggml.{key}_token_id is {tid}, outside the "
                             f"vocabulary of {n_vocab}; re-convert it with loopcli convert")


def nonfinite(t: gguf.ReaderTensor) -> str | None:
    """'NaN' or 'Inf' when tensor `t` dequantizes to such values, else None; reads only the
    blocks' float fields (scales, or every value of a float tensor), a million blocks a pass."""
    layout = FLOAT_FIELDS.get(t.tensor_type)
    if layout is None:  # integer types, or a block layout not in the table
        return None
    offsets, width = layout
    uint, exp, mant = (np.uint16, 0x7F80, 0x007F) if t.tensor_type == Q.BF16 else _BITS[width]
    type_size = gguf.GGML_QUANT_SIZES[t.tensor_type][1]
    raw = np.asarray(t.data).reshape(-1).view(np.uint8)
    step = type_size << 20
    for start in range(0, raw.size, step):
        blocks = raw[start:start + step].reshape(-1, type_size)
        for off in offsets:
            bits = blocks[:, off:off + width].view(uint)
            special = bits[(bits & exp) == exp]  # exponent all ones
            if special.size:
                return "NaN" if (special & mant).any() else "Inf"
    return None


def check_finite(r: GGUFFile, source: str) -> None:
    for t in r.tensors:
        bad = nonfinite(t)
        if bad:
            raise ModelError(f"{source}: tensor {t.name} contains {bad} values; the file is corrupt, "
                             "re-convert it")


_checked: set[tuple] = set()


def check_gguf(path: str | Path) -> GGUFFile:
    """Everything we can check before another program (llama.cpp) loads the file: structure,
    and for the architectures we know, metadata, tensors, vocabulary and NaN/Inf weights.
    A file already checked unchanged in this process is not read again."""
    r = open_gguf(path)
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _checked:
        if architecture(r, str(path)) in HF_ARCH:
            config_from_gguf(r, str(path))
        check_finite(r, str(path))
        _checked.add(key)
    return r


def gguf_tensors(r: GGUFFile, cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, dequantized f32 tensor), one at a time; llama-layout q/k rows un-permuted.
    A NaN/Inf weight is named before anything is built from it."""
    arch = _field(r, "general.architecture")
    for t in r.tensors:
        if t.name == ROPE_FREQS:
            continue
        bad = nonfinite(t)
        if bad:
            raise ModelError(f"tensor {t.name} contains {bad} values; the file is corrupt, re-convert it")
        name = hf_name(t.name)
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = tuple(int(d) for d in reversed(t.shape))
        data = np.array(data, dtype=np.float32).reshape(shape)  # a copy: the file map is read-only
        which = needs_permute(arch, name)
        if which:
            data = unpermute_from_llama(data, cfg.num_heads if which == "q" else cfg.num_kv_heads)
        yield name, torch.from_numpy(np.ascontiguousarray(data))
