"""A SentencePiece `tokenizer.model` as a GGUF vocabulary, laid out as llama.cpp's converter lays
it out: the model's pieces with their scores and types, the added tokens of tokenizer_config.json
(`added_tokens_decoder`) and added_tokens.json at their ids, and `[PAD{id}]` rows up to the
embedding's row count.

A BPE model becomes llama.cpp's "llama" vocabulary (merges by score, no normalization); a unigram
model its "t5" one (UGM: Viterbi over the piece scores after the model's precompiled charsmap, with
the dummy prefix and whitespace folding of its normalizer spec).
"""

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
    """(tokens, scores, types, normalizer) of `path` plus the checkpoint's added tokens.

    `normalizer`: the GGUF tokenizer model ("llama" or "t5") and the keys llama.cpp reads for it."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf's DecodeError, OSError
        raise ModelError(f"{path} is not a SentencePiece model ({exc}); re-download it") from None
    if not proto.pieces:
        raise ModelError(f"{path} is not a SentencePiece model (it has no pieces); re-download it")
    norm = proto.normalizer_spec
    kind = proto.trainer_spec.model_type
    if kind == pb.TrainerSpec.UNIGRAM:
        if proto.trainer_spec.treat_whitespace_as_suffix or not norm.escape_whitespaces:
            raise ModelError(f"{path} puts spaces after words or keeps them unescaped; llama.cpp's unigram "
                             "vocabulary supports neither, so its token ids would differ from the model's")
        if norm.remove_extra_whitespaces and not norm.add_dummy_prefix:
            raise ModelError(f"{path} folds whitespace without a dummy prefix; llama.cpp's unigram vocabulary "
                             "then puts a space before the first word too, so its token ids would differ")
        normalizer = {"model": "t5", "add_space_prefix": bool(norm.add_dummy_prefix),
                      "remove_extra_whitespaces": bool(norm.remove_extra_whitespaces),
                      "precompiled_charsmap": bytes(norm.precompiled_charsmap)}
    elif kind == pb.TrainerSpec.BPE:
        if norm.name not in ("", "identity") or norm.precompiled_charsmap or norm.remove_extra_whitespaces:
            raise ModelError(f"{path} normalizes text ({norm.name or 'custom rules'}"
                             f"{', removes extra whitespace' if norm.remove_extra_whitespaces else ''}); llama.cpp's "
                             "BPE vocabulary does not, so its token ids would differ from the model's")
        normalizer = {"model": "llama", "add_space_prefix": bool(norm.add_dummy_prefix)}
    else:
        raise ModelError(f"{path} is a SentencePiece {pb.TrainerSpec.ModelType.Name(kind)} model; only BPE and "
                         "unigram models convert (llama.cpp has no other SentencePiece vocabulary)")
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
    return tokens, scores, types, normalizer
