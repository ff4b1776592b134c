"""The model's tokenizer, from an HF directory (`tokenizer.json` + `tokenizer_config.json`)
or rebuilt from a GGUF file's `tokenizer.ggml.*` metadata; both give the same ids."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from .errors import ModelError
from .gguf_format import PRE_TOKENIZERS

CONTROL = 3  # gguf TokenType.CONTROL
USER_DEFINED = 4
UNUSED = 5


class Tokenizer:
    def __init__(self, hf: HFTokenizer, bos_token: str | None, eos_token: str | None,
                 add_bos: bool, chat_template: str | None):
        self.hf = hf
        self.bos_token, self.eos_token = bos_token, eos_token
        self.add_bos = add_bos and bos_token is not None
        self.chat_template = chat_template

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        return cls.from_gguf(path) if Path(path).suffix == ".gguf" else cls.from_dir(path)

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "Tokenizer":
        d = Path(model_dir)
        path = d / "tokenizer.json"
        if not path.is_file():
            raise ModelError(f"{d} has no tokenizer.json; only fast (tokenizers) tokenizers are read")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad files
            raise ModelError(f"{path} cannot be read ({exc}); re-download it") from None
        cfg_path = d / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        template_file = d / "chat_template.jinja"
        template = template_file.read_text() if template_file.is_file() else cfg.get("chat_template")
        bos = _token_text(cfg.get("bos_token"))
        return cls(hf, bos, _token_text(cfg.get("eos_token")), bool(cfg.get("add_bos_token", False)), template)

    @classmethod
    def from_gguf(cls, path: str | Path) -> "Tokenizer":
        from .gguf_load import open_gguf

        r = open_gguf(path)
        field = lambda key, default=None: default if r.get_field(key) is None else r.get_field(key).contents()
        if field("tokenizer.ggml.model") != "gpt2" or field("tokenizer.ggml.pre") not in PRE_TOKENIZERS:
            raise ModelError(f"{path}: only byte-level BPE vocabularies with a known pre-tokenizer are read")
        tokens, types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
        merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges", [])]
        added = [i for i, t in enumerate(types) if t in (CONTROL, USER_DEFINED)]
        vocab = {t: i for i, t in enumerate(tokens) if types[i] != UNUSED}  # no [PAD] fillers
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PRE_TOKENIZERS[field("tokenizer.ggml.pre")]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        hf.decoder = decoders.ByteLevel()
        # the vocab holds the added tokens, so marking them (special or not) keeps their ids
        for i in sorted(added):
            hf.add_tokens([AddedToken(tokens[i], special=types[i] == CONTROL, normalized=False)])
            if hf.token_to_id(tokens[i]) != i:
                raise ModelError(f"{path}: added token {tokens[i]!r} cannot keep id {i}")
        bos_id, eos_id = field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id")
        return cls(hf, None if bos_id is None else tokens[bos_id], None if eos_id is None else tokens[eos_id],
                   bool(field("tokenizer.ggml.add_bos_token", False)), field("tokenizer.chat_template"))

    @property
    def bos_id(self) -> int | None:
        return None if self.bos_token is None else self.hf.token_to_id(self.bos_token)

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        ids = self.hf.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=False)


def _token_text(tok) -> str | None:
    # tokenizer_config stores tokens as strings or as {"content": ...} objects
    return tok.get("content") if isinstance(tok, dict) else tok
