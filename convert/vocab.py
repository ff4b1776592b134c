"""Tokenizer metadata as llama.cpp's converter writes it (`tokenizer.ggml.*`, chat template).

Three sources: a SentencePiece `tokenizer.model` (BPE or unigram, convert/vocab_spm.py), a byte-level BPE
`tokenizer.json` (GGUF model "gpt2" with the pre-tokenizer identified by runtime/pretokenizers.py)
and a SentencePiece-kind `tokenizer.json` (BPE with byte fallback over U+2581 words).
"""

from __future__ import annotations

from pathlib import Path

import gguf

from loopcli.runtime.errors import ModelError
from loopcli.runtime.pretokenizers import identify
from loopcli.runtime.tokenizer import (
    BYTE, CONTROL, EOS_IDS_KEY, NORMAL, PREPEND_SCHEME_KEY, UNKNOWN, UNUSED, USER_DEFINED, chat_template_of, read_json, stop_ids,
    token_text, uses_sentencepiece,
)

from .vocab_spm import pad, sentencepiece_vocab


def add_vocab(writer: gguf.GGUFWriter, src: Path, vocab_size: int) -> None:
    """Write the vocabulary, special ids, stop ids and chat template of checkpoint `src`."""
    cfg = read_json(src / "tokenizer_config.json")
    if uses_sentencepiece(src) or (_json_model_type(src) == "Unigram" and (src / "tokenizer.model").is_file()):
        # a Unigram tokenizer.json is transformers' rewrite of tokenizer.model: convert the original
        tokens, scores, types, normalizer = sentencepiece_vocab(src / "tokenizer.model", cfg, vocab_size)
        _write_sentencepiece(writer, tokens, scores, types, **normalizer)
    elif (src / "tokenizer.json").is_file():
        path = src / "tokenizer.json"
        tok = read_json(path)
        model = tok.get("model") if isinstance(tok.get("model"), dict) else {}
        if model.get("type") == "Unigram":
            raise ModelError(f"{path} is a Unigram tokenizer.json; loopcli converts unigram vocabularies from the "
                             "SentencePiece tokenizer.model it was made from: copy that file from the model's "
                             "repository next to tokenizer.json")
        if model.get("type") != "BPE":
            raise ModelError(f"{path}: tokenizer model {model.get('type')!r} is not supported "
                             "(byte-level BPE, SentencePiece BPE, or a tokenizer.model)")
        try:
            if model.get("byte_fallback"):
                tokens, scores, types, scheme = _metaspace_vocab(path, tok, vocab_size)
                # llama.cpp's dummy prefix is SentencePiece's: before every text between added
                # tokens, even one that begins with a space. A Metaspace adds none before a space,
                # and with "first" (non-legacy) only at the start of the text. For "first" llama.cpp
                # gets no prefix: exact on prompts that begin with an added token (chat turns), one
                # space short on a text that does not. Our runtime reads the scheme from our key.
                _write_sentencepiece(writer, tokens, scores, types, "llama", scheme in ("always", "metaspace-always"))
                if scheme.startswith("metaspace-"):
                    writer.add_string(PREPEND_SCHEME_KEY, scheme.removeprefix("metaspace-"))
            else:
                tokens, types = _byte_level_vocab(path, tok, vocab_size, writer)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise ModelError(f"{path} is malformed ({type(exc).__name__}: {exc}); re-download it") from None
    else:
        raise ModelError(f"{src} has neither tokenizer.json nor tokenizer.model; a GGUF needs the tokenizer "
                         "(copy it from the model's repository)")
    _add_special(writer, src, cfg, tokens, types)


def _json_model_type(src: Path):
    model = read_json(src / "tokenizer.json").get("model")
    return model.get("type") if isinstance(model, dict) else None


def _write_sentencepiece(writer, tokens, scores, types, model: str, add_space_prefix: bool,
                         remove_extra_whitespaces: bool = False, precompiled_charsmap: bytes = b"") -> None:
    """GGUF "llama" (SentencePiece BPE) or "t5" (unigram, with its normalizer) vocabulary keys."""
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_space_prefix(add_space_prefix)
    if model == "t5":
        writer.add_remove_extra_whitespaces(remove_extra_whitespaces)
        if precompiled_charsmap:
            writer.add_precompiled_charsmap(precompiled_charsmap)


def _byte_level_vocab(path: Path, tok: dict, vocab_size: int, writer) -> tuple[list[str], list[int]]:
    pre, closest = identify(tok.get("pre_tokenizer"))
    if pre is None:
        raise ModelError(f"{path}: its pre-tokenizer splits text like none llama.cpp knows (closest: {closest}), "
                         "so llama.cpp would tokenize it differently; if llama.cpp has it, add its pre_tokenizer "
                         "section to KNOWN in loopcli's runtime/pretokenizers.py")
    model = tok["model"]
    vocab = dict(model.get("vocab") or {})
    specials = {}
    for added in tok.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        specials[added["id"]] = added.get("special", False)
    tokens, _, types = pad(vocab_size, max(vocab.values(), default=-1) + 1, path)
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = (CONTROL if specials[i] else USER_DEFINED) if i in specials else NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    return tokens, types


def _metaspace_vocab(path: Path, tok: dict, vocab_size: int):
    """A SentencePiece-kind tokenizer.json: scores from the merge order, so that llama.cpp's
    highest-score-first merging replays the merges in rank order."""
    model = tok["model"]
    vocab = dict(model.get("vocab") or {})
    rank = {}
    for r, m in enumerate(model.get("merges", [])):
        rank.setdefault("".join(m.split(" ", 1) if isinstance(m, str) else m), r)
    added = {a["id"]: a for a in tok.get("added_tokens", [])}
    n = max([*vocab.values(), *added], default=-1) + 1
    tokens, scores, types = pad(vocab_size, n, path)
    for text, i in vocab.items():
        tokens[i], scores[i] = text, -float(rank.get(text, 0))
        types[i] = (UNKNOWN if text == model.get("unk_token") else
                    BYTE if len(text) == 6 and text.startswith("<0x") and text.endswith(">") else NORMAL)
    for i, a in added.items():
        tokens[i], scores[i] = a["content"], -1000.0
        if types[i] != UNKNOWN:
            types[i] = CONTROL if a.get("special") else USER_DEFINED
    return tokens, scores, types, _prepend_scheme(tok)


def _prepend_scheme(tok: dict) -> str:
    """When this tokenizer.json adds the dummy-prefix U+2581: "always" (a Prepend normalizer: each
    text between added tokens), "metaspace-always" / "metaspace-first" (a Metaspace pre-tokenizer's
    prepend_scheme), or "never"."""
    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "Prepend" and node.get("prepend") == "\u2581":
                return "always"
            if node.get("type") == "Metaspace":
                scheme = node.get("prepend_scheme", "always" if node.get("add_prefix_space", True) else "never")
                return "never" if scheme == "never" else f"metaspace-{scheme}"
            return next(filter(None, map(walk, node.values())), None)
        if isinstance(node, list):
            return next(filter(None, map(walk, node)), None)
        return None
    return walk(tok.get("normalizer")) or walk(tok.get("pre_tokenizer")) or "never"


def _add_special(writer: gguf.GGUFWriter, src: Path, cfg: dict, tokens: list[str], types: list[int]) -> None:
    ids = {}
    for i, (t, ty) in enumerate(zip(tokens, types)):
        if ty != UNUSED:
            ids.setdefault(t, i)

    def token_id(key: str) -> int | None:
        text = token_text(cfg.get(key))
        return ids.get(text) if text is not None else None

    bos, eos = token_id("bos_token"), token_id("eos_token")
    for tid, add in ((bos, writer.add_bos_token_id), (token_id("pad_token"), writer.add_pad_token_id),
                     (token_id("unk_token"), writer.add_unk_token_id)):
        if tid is not None:
            add(tid)
    writer.add_add_bos_token(bool(cfg.get("add_bos_token", False)) and bos is not None)
    writer.add_add_eos_token(bool(cfg.get("add_eos_token", False)) and eos is not None)
    _add_stop_ids(writer, src, eos, ids, len(tokens))
    template = chat_template_of(src, cfg)
    raw = cfg.get("chat_template")
    if isinstance(raw, list) and not (src / "chat_template.jinja").is_file():
        template = raw  # named templates: gguf writes tokenizer.chat_template.<name> keys
    if template:
        writer.add_chat_template(template)


def _add_stop_ids(writer, src: Path, eos: int | None, ids: dict[str, int], n: int) -> None:
    """Every eos id of generation_config.json (else config.json) so that both runtimes stop on it.

    llama.cpp stops on tokenizer.ggml.eos_token_id, eot_token_id and eom_token_id (and on a few
    token texts it knows, <|im_end|> among them); our runtime reads the full list from EOS_IDS_KEY.
    """
    stop = [i for i in stop_ids(src) if i < n]
    if eos is None and stop:
        eos = stop[0]
    if eos is None:
        return
    writer.add_eos_token_id(eos)
    rest = [i for i in stop if i != eos]
    im_end = ids.get("<|im_end|>")
    rest.sort(key=lambda i: i != im_end)  # <|im_end|> is the end of a turn: eot
    if rest:
        writer.add_eot_token_id(rest[0])
    if len(rest) > 1:
        writer.add_eom_token_id(rest[1])
    writer.add_array(EOS_IDS_KEY, [eos, *rest])
