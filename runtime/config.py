"""The model config: one object for every hyper-parameter, built from an HF `config.json`.

LoopCoder-V2 (`IQuestPLTCoderForCausalLM`) is a PLT model with R = `plt_num_loops` loops;
Llama, IQuestCoder and Qwen2 layouts are the R = 1 case. Keys absent from a PLT config
take the vendor defaults (plt-model.md §2.1).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .errors import ModelError

PLT_ARCH = "IQuestPLTCoderForCausalLM"
# architecture -> has q/k/v biases regardless of `attention_bias`
R1_ARCHS = {"LlamaForCausalLM": False, "IQuestCoderForCausalLM": False, "Qwen2ForCausalLM": True}
SUPPORTED = [PLT_ARCH, *R1_ARCHS]


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    # PLT: R loops, the local window's left size W (W + 1 keys incl. self), the cross-loop
    # input u = alpha * E + beta * shift(h_hat), the per-loop final norm, and the gate mode.
    num_loops: int = 1
    window: int = 64
    normalize_per_loop: bool = True
    emb_scale: float = 1.0
    hidden_scale: float = 1.0
    gate_use_hidden_states: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    @property
    def is_plt(self) -> bool:
        return self.num_loops > 1

    def with_loops(self, num_loops: int) -> "ModelConfig":
        """The same weights run with another loop count (benchmarks and tests only)."""
        return replace(self, num_loops=num_loops)

    @property
    def rope_kind(self) -> str | None:
        """The RoPE scaling type (llama3, linear, freq_factors) or None."""
        return self.rope_scaling.get("rope_type", self.rope_scaling.get("type")) if self.rope_scaling else None

    def rope_inv_freq(self) -> torch.Tensor:
        """Per-pair inverse frequencies (fp64 -> fp32), with `llama3` or `linear` scaling."""
        idx = torch.arange(0, self.head_dim, 2, dtype=torch.float64)
        inv_freq = 1.0 / (self.rope_theta ** (idx / self.head_dim))
        scaling, kind = self.rope_scaling, self.rope_kind
        if not kind:
            return inv_freq.float()
        if kind == "freq_factors":  # llama.cpp's stored divisors (GGUF rope_freqs)
            return (inv_freq / torch.tensor(scaling["factors"], dtype=torch.float64)).float()
        factor = float(scaling["factor"])
        if kind == "linear":
            return (inv_freq / factor).float()
        # llama3: long wavelengths divided by `factor`, short kept, the band between blended
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv_freq
        smooth = ((old_ctx / wavelen - low) / (high - low)).clamp(0.0, 1.0)
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        return blended.float()


def _require(raw: dict, key: str, source: str):
    if key not in raw:
        raise ModelError(f"{source} has no `{key}`; it is required for {raw.get('architectures')}")
    return raw[key]


def _rope(raw: dict, source: str) -> tuple[float, dict | None]:
    # transformers >= 5 folds theta and scaling into `rope_parameters`
    params = raw.get("rope_parameters") or {}
    theta = float(raw.get("rope_theta", params.get("rope_theta", 10000.0)))
    scaling = raw.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind in (None, "default"):
            scaling = None
        elif kind not in ("llama3", "linear"):
            raise ModelError(
                f"{source}: rope_scaling type `{kind}` is not supported (supported: llama3, linear)"
            )
        elif "factor" not in scaling:
            raise ModelError(f"{source}: rope_scaling of type `{kind}` needs a `factor`")
    return theta, scaling


def config_from_dict(raw: dict, source: str = "config.json") -> ModelConfig:
    archs = raw.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in SUPPORTED:
        raise ModelError(
            f"{source}: architecture {arch!r} is not supported; "
            f"supported: {', '.join(SUPPORTED)}"
        )
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise ModelError(f"{source}: hidden_act {act!r} is not supported (only silu)")
    if raw.get("mlp_bias"):
        raise ModelError(f"{source}: mlp_bias is not supported")
    hidden = int(_require(raw, "hidden_size", source))
    heads = int(_require(raw, "num_attention_heads", source))
    theta, scaling = _rope(raw, source)
    eos = raw.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
    common = dict(
        arch=arch,
        vocab_size=int(_require(raw, "vocab_size", source)),
        hidden_size=hidden,
        intermediate_size=int(_require(raw, "intermediate_size", source)),
        num_layers=int(_require(raw, "num_hidden_layers", source)),
        num_heads=heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or heads),
        head_dim=int(raw.get("head_dim") or hidden // heads),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=eos_ids,
    )
    if common["num_heads"] % common["num_kv_heads"]:
        raise ModelError(f"{source}: num_attention_heads must be a multiple of num_key_value_heads")
    if arch in R1_ARCHS:
        if raw.get("use_sliding_window"):
            raise ModelError(f"{source}: Qwen2 sliding-window attention is not supported")
        bias = R1_ARCHS[arch] or bool(raw.get("attention_bias", False))
        return ModelConfig(**common, attention_bias=bias)
    return ModelConfig(**common, attention_bias=bool(raw.get("attention_bias", False)), **_plt_keys(raw, source))


def _plt_keys(raw: dict, source: str) -> dict:
    """The `plt_*` keys with the vendor runtime's defaults (plt-model.md §1-§2)."""
    loops = int(raw.get("plt_num_loops", 2))
    window = raw.get("plt_window_size", [64, 0])
    if isinstance(window, int):
        window = [window, 0]
    if loops < 1:
        raise ModelError(f"{source}: plt_num_loops must be >= 1, got {loops}")
    if len(window) != 2 or window[1] != 0 or window[0] < 0:
        raise ModelError(f"{source}: plt_window_size must be [left >= 0, 0], got {window}")
    emb, hid = raw.get("plt_emb_scale"), raw.get("plt_hidden_scale")
    return dict(
        num_loops=loops,
        window=int(window[0]),
        normalize_per_loop=bool(raw.get("plt_normalize_per_loop", True)),
        emb_scale=1.0 if emb is None else float(emb),
        hidden_scale=1.0 if hid is None else float(hid),
        gate_use_hidden_states=bool(raw.get("plt_gate_use_hidden_states", False)),
    )


def load_config(model_dir: str | Path) -> ModelConfig:
    path = Path(model_dir) / "config.json"
    if not Path(model_dir).is_dir():
        raise ModelError(f"{model_dir} is not a directory; give a Hugging Face checkpoint directory")
    if not path.is_file():
        raise ModelError(f"{model_dir} has no config.json; is it a Hugging Face checkpoint directory?")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is not valid JSON ({exc}); re-download or re-create it") from None
    return config_from_dict(raw, str(path))
