"""Which GGML type each tensor gets, for each `--type`.

Single-type names (q8_0, q4_0, q4_k, q5_k, q6_k) are "pure", like llama-quantize --pure: every
2-D weight gets that type. The `_m` mixes follow llama.cpp's recipe without an importance
matrix (src/llama-quant.cpp): output.weight Q6_K; attn_v and ffn_down Q6_K on the
"more bits" layers. Everywhere, 1-D tensors stay F32, and a row length that does not fit the
block size falls back as llama.cpp does (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, then F16).
The PLT gate matrices are small and steer every head's mix, so they stay F32.
"""

from __future__ import annotations

import re

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q, LlamaFileType as FT

# --type -> (base GGML type, general.file_type)
TYPES = {
    "f32": (Q.F32, FT.ALL_F32),
    "f16": (Q.F16, FT.MOSTLY_F16),
    "bf16": (Q.BF16, FT.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, FT.MOSTLY_Q8_0),
    "q4_0": (Q.Q4_0, FT.MOSTLY_Q4_0),
    "q4_k": (Q.Q4_K, FT.MOSTLY_Q4_K_S),
    "q5_k": (Q.Q5_K, FT.MOSTLY_Q5_K_S),
    "q6_k": (Q.Q6_K, FT.MOSTLY_Q6_K),
    "q4_k_m": (Q.Q4_K, FT.MOSTLY_Q4_K_M),
    "q5_k_m": (Q.Q5_K, FT.MOSTLY_Q5_K_M),
}
FALLBACK = {Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}
_BLOCK = re.compile(r"blk\.(\d+)\.")


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's choice of layers that get more bits: first and last eighth, every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_type(type_name: str, name: str, shape: tuple[int, ...], n_layers: int) -> Q:
    """The GGML type of tensor `name` (GGUF name, numpy shape [rows, cols])."""
    base, _ = TYPES[type_name]
    if len(shape) == 1 or ".plt_gate" in name or base == Q.F32:
        return Q.F32
    chosen = base
    if type_name.endswith("_m"):
        m = _BLOCK.match(name)
        if name == "output.weight":
            chosen = Q.Q6_K
        elif m and name.endswith(("attn_v.weight", "ffn_down.weight")):
            if use_more_bits(int(m.group(1)), n_layers):
                chosen = Q.Q6_K
    return fit_block(chosen, shape[-1])


def fit_block(qtype: Q, row: int) -> Q:
    while row % GGML_QUANT_SIZES[qtype][0]:
        qtype = FALLBACK.get(qtype, Q.F16)
    return qtype
