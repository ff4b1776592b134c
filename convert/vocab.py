"""Tokenizer metadata as llama.cpp's converter writes it (`tokenizer.ggml.*`, chat template)."""

from __future__ import annotations

import json
from pathlib import Path

import gguf

from loopcli.runtime.errors import ModelError
from loopcli.runtime.gguf_format import PRE_TOKENIZERS

KNOWN_PRE = {regex: name for name, regex in PRE_TOKENIZERS.items()}

def _split_patterns(pre: dict | None) -> list[str]:
    if not pre:
        return []
    if pre.get("type") == "Sequence":
        return [p for sub in pre["pretokenizers"] for p in _split_patterns(sub)]
    if pre.get("type") == "Split":
        return [pre["pattern"].get("Regex") or pre["pattern"].get("String")]
    return []


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} cannot be read ({exc}); re-download or re-create it") from None


def add_vocab(writer: gguf.GGUFWriter, src: Path, vocab_size: int) -> None:
    """Write the BPE vocabulary, merges, special ids and chat template of `src`."""
    tok_path = src / "tokenizer.json"
    if not tok_path.is_file():
        raise ModelError(f"{src} has no tokenizer.json; a GGUF needs the tokenizer (copy it from the model)")
    tok = _read_json(tok_path)
    model = tok.get("model", {})
    if model.get("type") != "BPE":
        raise ModelError(f"{tok_path}: tokenizer model {model.get('type')!r} is not supported (only byte-level BPE)")
    patterns = _split_patterns(tok.get("pre_tokenizer"))
    pre = KNOWN_PRE.get(patterns[0]) if len(patterns) == 1 else None
    if pre is None:
        raise ModelError(
            f"{tok_path}: its pre-tokenizer split is not one llama.cpp knows (known: "
            f"{', '.join(KNOWN_PRE.values())}); add its regex to convert/vocab.py KNOWN_PRE"
        )
    vocab = dict(model["vocab"])
    specials = {}
    for added in tok.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        specials[added["id"]] = added.get("special", False)
    n = max(vocab_size, max(vocab.values()) + 1)
    if n > vocab_size:
        raise ModelError(f"{tok_path} has token ids up to {n - 1} but the model's vocab_size is {vocab_size}")
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [gguf.TokenType.UNUSED] * n
    for text, i in vocab.items():
        tokens[i] = text
        if i in specials:
            types[i] = gguf.TokenType.CONTROL if specials[i] else gguf.TokenType.USER_DEFINED
        else:
            types[i] = gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    _add_special(writer, src, vocab)


def _add_special(writer: gguf.GGUFWriter, src: Path, vocab: dict[str, int]) -> None:
    cfg_path = src / "tokenizer_config.json"
    cfg = _read_json(cfg_path) if cfg_path.is_file() else {}

    def token_id(key: str) -> int | None:
        tok = cfg.get(key)
        tok = tok.get("content") if isinstance(tok, dict) else tok
        return vocab.get(tok) if tok is not None else None

    for key, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                     ("pad_token", writer.add_pad_token_id), ("unk_token", writer.add_unk_token_id)):
        tid = token_id(key)
        if tid is not None:
            add(tid)
    writer.add_add_bos_token(bool(cfg.get("add_bos_token", False)) and token_id("bos_token") is not None)
    writer.add_add_eos_token(bool(cfg.get("add_eos_token", False)))
    template_file = src / "chat_template.jinja"
    template = template_file.read_text() if template_file.is_file() else cfg.get("chat_template")
    if isinstance(template, str) and template:
        writer.add_chat_template(template)
