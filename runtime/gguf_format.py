"""GGUF naming: the one table of architecture names, metadata keys and tensor names.

R = 1 models are written as llama.cpp's own `llama` or `qwen2` architecture (so llama.cpp
runs them unchanged); PLT models as `loopcoder`: llama.cpp's names for the shared parts, our
own for the gate tensors and the `loopcoder.*` loop keys. docs/gguf-loopcoder.md documents it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # kept out at run time: converter workers import this without torch
    from .config import ModelConfig

PLT = "loopcoder"
# GGUF architecture -> HF architecture rebuilt when reading
HF_ARCH = {PLT: "IQuestPLTCoderForCausalLM", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}

GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.plt_gate.weight": "plt_gate.weight",
    "self_attn.plt_gate.bias": "plt_gate.bias",
    "self_attn.plt_gate.gate_norm.weight": "plt_gate_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
# llama3-style RoPE scaling as llama.cpp stores it: per-frequency divisors
ROPE_FREQS = "rope_freqs.weight"

# loopcoder.* keys for the plt_* hyper-parameters (ModelConfig field -> key suffix)
PLT_KEYS = {
    "num_loops": "loop_count",
    "window": "loop_window",
    "normalize_per_loop": "normalize_per_loop",
    "emb_scale": "loop_embedding_scale",
    "hidden_scale": "loop_hidden_scale",
    "gate_use_hidden_states": "gate_uses_hidden_states",
}

_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_BLK = re.compile(r"blk\.(\d+)\.(.+)")
_REVERSE_LAYER = {v: k for k, v in LAYER_TENSORS.items()}
_REVERSE_GLOBAL = {v: k for k, v in GLOBAL_TENSORS.items()}


def gguf_arch(cfg: ModelConfig) -> str:
    if cfg.is_plt:
        return PLT
    return "qwen2" if cfg.arch == "Qwen2ForCausalLM" else "llama"


def gguf_name(hf_name: str) -> str:
    if hf_name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[hf_name]
    m = _LAYER.fullmatch(hf_name)
    if not m or m.group(2) not in LAYER_TENSORS:
        raise KeyError(f"no GGUF name for tensor {hf_name}")
    return f"blk.{m.group(1)}.{LAYER_TENSORS[m.group(2)]}"


def hf_name(gguf_tensor: str) -> str:
    if gguf_tensor in _REVERSE_GLOBAL:
        return _REVERSE_GLOBAL[gguf_tensor]
    m = _BLK.fullmatch(gguf_tensor)
    if not m or m.group(2) not in _REVERSE_LAYER:
        raise KeyError(f"unknown GGUF tensor {gguf_tensor}")
    return f"model.layers.{m.group(1)}.{_REVERSE_LAYER[m.group(2)]}"


def permute_for_llama(w, n_head: int):
    """HF q/k rows (rotate-half RoPE) -> llama.cpp's `llama` layout (adjacent-pair RoPE).

    Works on numpy arrays and torch tensors, weights [rows, H] and biases [rows]."""
    shape = w.shape
    return w.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def unpermute_from_llama(w, n_head: int):
    shape = w.shape
    return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def needs_permute(arch: str, hf: str) -> str | None:
    """'q' or 'k' when this tensor is permuted in a `llama` file, else None."""
    if arch != "llama":
        return None
    if ".self_attn.q_proj." in hf:
        return "q"
    if ".self_attn.k_proj." in hf:
        return "k"
    return None
