"""The byte-level BPE pre-tokenizers llama.cpp knows, and telling which one a tokenizer.json uses.

Each entry is the `pre_tokenizer` section of that model family's `tokenizer.json`, keyed by
llama.cpp's `tokenizer.ggml.pre` name. The converter identifies a checkpoint's pre-tokenizer by
what it does, not by how its JSON is spelled: it splits a fixed probe text with the checkpoint's
pre-tokenizer and with each known one and takes the one that splits identically. (llama.cpp hashes
the *token ids* of a probe text instead, which only recognises the exact released vocabularies.)
The runtime rebuilds a GGUF's pre-tokenizer from the same table.
"""

from __future__ import annotations

import difflib
import json

from tokenizers import Tokenizer as HFTokenizer

_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
_GPT2_BYTE_LEVEL = {**_BYTE_LEVEL, "use_regex": True}


def _split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")

KNOWN: dict[str, dict] = {
    "gpt-2": _GPT2_BYTE_LEVEL,
    "starcoder": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, _GPT2_BYTE_LEVEL]},
    "llama-bpe": {"type": "Sequence", "pretokenizers": [_split(_LLAMA3), _BYTE_LEVEL]},
    "qwen2": {"type": "Sequence", "pretokenizers": [_split(_QWEN2), _BYTE_LEVEL]},
    "deepseek-coder": {"type": "Sequence", "pretokenizers": [
        _split(r"[\r\n]"), _split(r"\s?\p{L}+"), _split(r"\s?\p{P}+"), _split("[一-龥ࠀ-一가-퟿]+"),
        {"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]},
}

# what the probe exercises: contractions, letters after symbols, digit runs, code punctuation,
# tabs, runs of spaces and newlines, trailing whitespace, non-Latin scripts, emoji
PROBE = (
    "I'm sure they'll say it's 'fine' -- we've tested 1, 12, 123, 1234 and 3.14159e-10.\n"
    "def f(x):\n\tif x>=10 and y!=[1,2]:\n\t\treturn {'a': x**2}  # done\n\n\n   \n"
    "    indented;\r\n\r\nx+=1; y=(a||b)&&!c; s = \"$HOME\" + `cmd` ~ ^ | <=> @dec\n"
    "Привет, мир! Ünïcödé façade — naïve café. 你好，世界。こんにちは 안녕하세요 ١٢٣ ½ ⅷ\n"
    "emoji 🙂👍🏽🇺🇳 and zero\u200bwidth   trailing spaces   \n\n  \t"
)


def splits(pre_tokenizer: dict | None, text: str = PROBE) -> list[str]:
    """How `pre_tokenizer` (a tokenizer.json section) cuts `text` into words (byte-level strings)."""
    tok = HFTokenizer.from_str(json.dumps({
        "version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}, "pre_tokenizer": pre_tokenizer,
    }))
    return [piece for piece, _ in tok.pre_tokenizer.pre_tokenize_str(text)] if tok.pre_tokenizer else [text]


_KNOWN_SPLITS: dict[str, list[str]] = {}


def identify(pre_tokenizer: dict | None) -> tuple[str | None, str]:
    """(the llama.cpp name whose splits equal this pre-tokenizer's, or None; the closest name)."""
    if not _KNOWN_SPLITS:
        _KNOWN_SPLITS.update({name: splits(cfg) for name, cfg in KNOWN.items()})
    try:
        got = splits(pre_tokenizer)
    except Exception:  # tokenizers raises bare Exceptions on configs it cannot build
        got = []
    for name, want in _KNOWN_SPLITS.items():
        if got == want:
            return name, name
    closest = max(_KNOWN_SPLITS, key=lambda n: difflib.SequenceMatcher(None, got, _KNOWN_SPLITS[n]).ratio())
    return None, closest
