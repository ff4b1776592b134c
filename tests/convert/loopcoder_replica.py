"""A header-only replica of the real LoopCoder-V2 repository (plt-model.md §2.1), for planning
tests at the real size without the real weights.

`loopcoder_v2/` holds the repository's small files as committed text: `config.json`,
`generation_config.json`, `tokenizer_config.json` and `model.safetensors.index.json` (the
three shard names and which tensor lives where). `build_replica(dst)` adds the three shards:
real safetensors headers (bf16, the real shapes) followed by their 15.2 GB of data as holes
(`truncate`: sparse files, no disk used; git could not keep them sparse). Reading any tensor
data from them gives zeros.

The tokenizer is a stand-in of the real file's shape: the real repository ships a SentencePiece
BPE `tokenizer.model` (75858 pieces, read through tokenizer_config.json's IQuestCoderTokenizer)
that is not public here, so one with 75858 made-up pieces (<unk> <s> </s>, the 256 byte pieces,
then "▁t{id}") is written; with the added tokens and [PAD] rows the GGUF has the real 76800-row
layout, and the metadata size of a plan differs from the real file's by the piece strings only.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path


REPLICA = Path(__file__).parent / "loopcoder_v2"
H, I, V, HEADS, KV = 5120, 27648, 76800, 40, 1024
# the tensor shapes of plt-model.md §2.1, by name suffix
SHAPES = {
    "embed_tokens.weight": [V, H], "lm_head.weight": [V, H], "norm.weight": [H],
    "input_layernorm.weight": [H], "post_attention_layernorm.weight": [H],
    "self_attn.q_proj.weight": [H, H], "self_attn.k_proj.weight": [KV, H],
    "self_attn.v_proj.weight": [KV, H], "self_attn.o_proj.weight": [H, H],
    "self_attn.plt_gate.weight": [HEADS, H], "self_attn.plt_gate.bias": [HEADS],
    "self_attn.plt_gate.gate_norm.weight": [H],
    "mlp.gate_proj.weight": [I, H], "mlp.up_proj.weight": [I, H], "mlp.down_proj.weight": [H, I],
}


def shape_of(name: str) -> list[int]:
    suffix = max((s for s in SHAPES if name.endswith(s)), key=len)
    return SHAPES[suffix]


def build_replica(dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in REPLICA.iterdir():
        shutil.copy(f, dst / f.name)
    weight_map = json.loads((REPLICA / "model.safetensors.index.json").read_text())["weight_map"]
    shards: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        shards.setdefault(shard, []).append(name)
    for shard, names in shards.items():
        write_sparse_shard(dst / shard, {n: shape_of(n) for n in names})
    write_tokenizer(dst / "tokenizer.model")
    return dst


def write_sparse_shard(path: Path, shapes: dict[str, list[int]]) -> None:
    """A bf16 safetensors file: the real header, then the data as a hole."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)


def write_tokenizer(path: Path, pieces: int = 75858) -> None:
    """A SentencePiece BPE model of the real size; tokenizer_config.json's added tokens follow it."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.byte_fallback = True
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = True
    m.normalizer_spec.remove_extra_whitespaces = False
    kind = pb.ModelProto.SentencePiece
    for i, (text, t) in enumerate([("<unk>", kind.UNKNOWN), ("<s>", kind.CONTROL), ("</s>", kind.CONTROL)]
                                  + [(f"<0x{b:02X}>", kind.BYTE) for b in range(256)]):
        m.pieces.add(piece=text, score=0.0, type=t)
    for i in range(len(m.pieces), pieces):
        m.pieces.add(piece=f"\u2581t{i}", score=-float(i), type=kind.NORMAL)
    path.write_bytes(m.SerializeToString())
