"""A SentencePiece `tokenizer.model` as a GGUF "llama" vocabulary, laid out as llama.cpp's
converter lays it out: the model's pieces with their scores and types, the added tokens of
tokenizer_config.json (`added_tokens_decoder`) and added_tokens.json at their ids, and
`[PAD{id}]` rows up to the embedding's row count."""

from __future__ import annotations

from pathlib import Path

from loopcli.runtime.errors import ModelError
from loopcli.runtime.tokenizer import CONTROL, NORMAL, UNUSED, USER_DEFINED, added_tokens, read_json


def pad(vocab_size: int, n: int, path: Path) -> tuple[list[str], list[float], list[int]]:
    """Token, score and type rows for `vocab_size` ids, all `[PAD{id}]` fillers to start with."""
    if n > vocab_size:
        raise ModelError(f"{path} has token ids up to {n - 1} but the model's vocab_size is {vocab_size}; "
                         "the tokenizer does not belong to this model")
    return [f"[PAD{i}]" for i in range(vocab_size)], [-10000.0] * vocab_size, [UNUSED] * vocab_size


def sentencepiece_vocab(path: Path, cfg: dict, vocab_size: int):
    """(tokens, scores, types, add_space_prefix) of `path` plus the checkpoint's added tokens."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf's DecodeError, OSError
        raise ModelError(f"{path} is not a SentencePiece model ({exc}); re-download it") from None
    if not proto.pieces:
        raise ModelError(f"{path} is not a SentencePiece model (it has no pieces); re-download it")
    if proto.trainer_spec.model_type != pb.TrainerSpec.BPE:
        kind = pb.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)
        raise ModelError(f"{path} is a SentencePiece {kind} model; only BPE models convert, because llama.cpp's "
                         "'llama' vocabulary merges pieces by score and would tokenize it differently")
    norm = proto.normalizer_spec
    if norm.name not in ("", "identity") or norm.precompiled_charsmap or norm.remove_extra_whitespaces:
        raise ModelError(f"{path} normalizes text ({norm.name or 'custom rules'}"
                         f"{', removes extra whitespace' if norm.remove_extra_whitespaces else ''}); llama.cpp "
                         "does not, so its token ids would differ from the model's")
    tokens, scores, types = pad(vocab_size, len(proto.pieces), path)
    for i, p in enumerate(proto.pieces):
        # SentencePiece's piece types have gguf's TokenType numbers (normal 1 ... byte 6)
        tokens[i], scores[i], types[i] = p.piece, p.score, int(p.type)
    added = {text: (tid, False) for text, tid in read_json(path.parent / "added_tokens.json").items()
             if isinstance(tid, int) and tid >= 0}
    added.update(added_tokens(cfg))
    if added:
        pad(vocab_size, max(tid for tid, _ in added.values()) + 1, path.parent / "tokenizer_config.json")
    for text, (tid, special) in added.items():
        if tid < len(proto.pieces) and tokens[tid] == text:  # <unk>, <s>, </s>: keep the model's type
            if special and types[tid] == NORMAL:
                types[tid] = CONTROL
            continue
        tokens[tid], scores[tid], types[tid] = text, -1000.0, CONTROL if special else USER_DEFINED
    return tokens, scores, types, bool(norm.add_dummy_prefix)
