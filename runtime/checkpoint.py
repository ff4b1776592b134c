"""Reading Hugging Face checkpoint directories: one or sharded safetensors, memory-mapped, lazy.

`Checkpoint` validates names, shapes and dtypes from the safetensors headers alone (no tensor
data read) and then hands out tensors one at a time, so a 15 GB checkpoint never sits in
memory at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .config import ModelConfig, load_config
from .errors import ModelError

DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
# Names that checkpoints may carry and the model does not use.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# The vendor loader's alias for the gate module (plt-model.md §2.1).
GATE_ALIAS = (".self_attn.loop_gate_proj.", ".self_attn.plt_gate.")


def expected_tensors(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name of the HF layout with its shape: the one table of them."""
    H, hd = cfg.hidden_size, cfg.head_dim
    q, kv = cfg.num_heads * hd, cfg.num_kv_heads * hd
    names: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, H)}
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        names[p + "input_layernorm.weight"] = (H,)
        names[p + "self_attn.q_proj.weight"] = (q, H)
        names[p + "self_attn.k_proj.weight"] = (kv, H)
        names[p + "self_attn.v_proj.weight"] = (kv, H)
        if cfg.attention_bias:
            names[p + "self_attn.q_proj.bias"] = (q,)
            names[p + "self_attn.k_proj.bias"] = (kv,)
            names[p + "self_attn.v_proj.bias"] = (kv,)
        names[p + "self_attn.o_proj.weight"] = (H, q)
        if cfg.is_plt:
            gate_in = H if cfg.gate_use_hidden_states else hd
            names[p + "self_attn.plt_gate.weight"] = (cfg.num_heads, gate_in)
            names[p + "self_attn.plt_gate.bias"] = (cfg.num_heads,)
            if cfg.gate_use_hidden_states:
                names[p + "self_attn.plt_gate.gate_norm.weight"] = (H,)
        names[p + "post_attention_layernorm.weight"] = (H,)
        names[p + "mlp.gate_proj.weight"] = (cfg.intermediate_size, H)
        names[p + "mlp.up_proj.weight"] = (cfg.intermediate_size, H)
        names[p + "mlp.down_proj.weight"] = (H, cfg.intermediate_size)
    names["model.norm.weight"] = (H,)
    if not cfg.tie_word_embeddings:
        names["lm_head.weight"] = (cfg.vocab_size, H)
    return names


def canonical_name(name: str) -> str:
    return name.replace(*GATE_ALIAS)


class Checkpoint:
    """A validated HF checkpoint directory: `.config`, `.tensors()` (lazy, one at a time)."""

    def __init__(self, model_dir: str | Path):
        self.dir = Path(model_dir)
        self.config = load_config(self.dir)
        # canonical tensor name -> (file, name inside the file)
        self._where: dict[str, tuple[Path, str]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for file in self._files():
            for name, dtype, shape in _header(file):
                if name.endswith(IGNORED_SUFFIXES):
                    continue
                self._check_dtype(file, name, dtype)
                self._where[canonical_name(name)] = (file, name)
                self._shapes[canonical_name(name)] = tuple(shape)
        self._validate()

    def _files(self) -> list[Path]:
        index = self.dir / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ModelError(f"{index} is not a valid safetensors index ({exc})") from None
            files = sorted({self.dir / f for f in weight_map.values()})
            for f in files:
                if not f.is_file():
                    raise ModelError(f"{index} names shard {f.name}, which is missing; re-download it")
            return files
        files = sorted(self.dir.glob("*.safetensors"))
        if not files:
            raise ModelError(f"{self.dir} has no *.safetensors files; only safetensors checkpoints are read")
        return files

    @staticmethod
    def _check_dtype(file: Path, name: str, dtype: str) -> None:
        if dtype not in DTYPES:
            raise ModelError(
                f"tensor {name} in {file.name} has dtype {dtype}; supported: bf16, f16, f32 "
                "(convert the checkpoint to one of them)"
            )

    def _validate(self) -> None:
        expected = expected_tensors(self.config)
        missing = [n for n in expected if n not in self._where]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise ModelError(f"checkpoint {self.dir} is missing tensor {missing[0]}{more}")
        extra = [n for n in self._where if n not in expected]
        if extra:
            more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
            raise ModelError(
                f"checkpoint {self.dir} has unexpected tensor {extra[0]}{more}; "
                "does config.json match the weights?"
            )
        for name, shape in expected.items():
            got = self._shapes[name]
            if got != shape:
                raise ModelError(
                    f"tensor {name} has shape {list(got)}, expected {list(shape)} from config.json"
                )

    def names(self) -> list[str]:
        return list(expected_tensors(self.config))

    def location(self, name: str) -> tuple[Path, str]:
        """(file, name inside the file) of a tensor, for readers that slice rows themselves."""
        return self._where[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) in the table's order, each read from its memory-mapped file on demand."""
        by_file: dict[Path, list[str]] = {}
        for name in self.names():
            by_file.setdefault(self._where[name][0], []).append(name)
        for file, names in by_file.items():
            try:
                with safe_open(file, framework="pt") as f:
                    for name in names:
                        yield name, f.get_tensor(self._where[name][1])
            except SafetensorError as exc:
                raise ModelError(f"{file} cannot be read ({exc}); re-download it") from None


def _header(file: Path) -> Iterator[tuple[str, str, list[int]]]:
    """(name, dtype, shape) of every tensor, from the header only."""
    try:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                yield name, sl.get_dtype(), sl.get_shape()
    except SafetensorError as exc:
        raise ModelError(
            f"{file} is truncated or not a safetensors file ({exc}); re-download or re-create it"
        ) from None
