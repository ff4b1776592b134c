"""The model's tokenizer: `tokenizer.json` (HF tokenizers) plus `tokenizer_config.json`."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from .errors import ModelError


class Tokenizer:
    def __init__(self, model_dir: str | Path):
        d = Path(model_dir)
        path = d / "tokenizer.json"
        if not path.is_file():
            raise ModelError(f"{d} has no tokenizer.json; only fast (tokenizers) tokenizers are read")
        try:
            self.hf = HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad files
            raise ModelError(f"{path} cannot be read ({exc}); re-download it") from None
        cfg_path = d / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        self.bos_token = _token_text(cfg.get("bos_token"))
        self.eos_token = _token_text(cfg.get("eos_token"))
        self.add_bos = bool(cfg.get("add_bos_token", False)) and self.bos_token is not None
        template_file = d / "chat_template.jinja"
        self.chat_template = (
            template_file.read_text() if template_file.is_file() else cfg.get("chat_template")
        )

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
