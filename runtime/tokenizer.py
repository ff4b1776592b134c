"""The model's tokenizer, from an HF checkpoint directory or rebuilt from a GGUF file.

Two kinds, as llama.cpp knows them:
- byte-level BPE (`tokenizer.json`; GGUF `tokenizer.ggml.model = "gpt2"`), run by the
  `tokenizers` library with the pre-tokenizer of `pretokenizers.KNOWN`;
- SentencePiece (`tokenizer.model`; GGUF `"llama"` for BPE, `"t5"` for unigram), run by the
  `sentencepiece` library. From a GGUF the SentencePiece model is rebuilt from the token list,
  scores and types with llama.cpp's reading of them (BPE merges by score, no normalization but
  spaces as U+2581, byte fallback; unigram with the precompiled charsmap, dummy prefix and
  whitespace folding of the GGUF).
  Added tokens (ChatML markers...) are cut out of the text first and every piece between them is
  encoded alone, as transformers' slow tokenizers do (and llama.cpp: a dummy-prefix space after
  each special token).
Both directions give the same ids for the same files; tests check them against transformers and
llama.cpp.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

from .errors import ModelError
from .pretokenizers import KNOWN

# gguf TokenType values
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# every stop id (generation_config's eos list), beside the single tokenizer.ggml.eos_token_id
EOS_IDS_KEY = "tokenizer.loopcli.eos_token_ids"
# a tokenizer.json's Metaspace prepend_scheme ("always" or "first"): its dummy prefix is not
# SentencePiece's (none before a space; with "first" only at the start of the text)
PREPEND_SCHEME_KEY = "tokenizer.loopcli.prepend_scheme"


def uses_sentencepiece(model_dir: Path) -> bool:
    """Whether transformers would load `tokenizer.model` (slow) rather than `tokenizer.json`.

    A repo with both files is read the way its tokenizer_config names: a `...Fast` class means
    tokenizer.json; a slow class (LoopCoder's `IQuestCoderTokenizer`) means tokenizer.model."""
    if not (model_dir / "tokenizer.model").is_file():
        return False
    if not (model_dir / "tokenizer.json").is_file():
        return True
    cls = str(read_json(model_dir / "tokenizer_config.json").get("tokenizer_class") or "")
    return not cls.endswith("Fast")


class Tokenizer:
    def __init__(self, backend, bos_token: str | None, eos_token: str | None, add_bos: bool,
                 chat_template: str | None, eos_ids: set[int]):
        self._backend = backend
        self.bos_token, self.eos_token = bos_token, eos_token
        self.add_bos = add_bos and bos_token is not None
        self.chat_template = chat_template
        eos = self.token_to_id(eos_token) if eos_token is not None else None
        self.eos_ids: frozenset[int] = frozenset(eos_ids | ({eos} if eos is not None else set()))

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        return cls.from_gguf(path) if Path(path).suffix == ".gguf" else cls.from_dir(path)

    # ------------------------------------------------------------------ HF directory

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "Tokenizer":
        d = Path(model_dir)
        cfg = read_json(d / "tokenizer_config.json")
        if uses_sentencepiece(d):
            backend = _SentencePiece.from_file(d / "tokenizer.model", {t: i for t, (i, _) in added_tokens(cfg).items()})
        elif (d / "tokenizer.json").is_file():
            backend = _HF(_hf_from_file(d / "tokenizer.json"))
        else:
            raise ModelError(f"{d} has neither tokenizer.json nor tokenizer.model; copy the tokenizer "
                             "files from the model's repository")
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):  # transformers splits these out too
            backend.add(token_text(cfg.get(key)))
        return cls(backend, token_text(cfg.get("bos_token")), token_text(cfg.get("eos_token")),
                   bool(cfg.get("add_bos_token", False)), chat_template_of(d, cfg), set(stop_ids(d)))

    # ------------------------------------------------------------------ GGUF

    @classmethod
    def from_gguf(cls, path: str | Path) -> "Tokenizer":
        from .gguf_load import open_gguf

        r = open_gguf(path)

        def field(key, default=None):
            f = r.get_field(key)
            return default if f is None else f.contents()

        model, tokens, types = field("tokenizer.ggml.model"), field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
        if not tokens or not types or len(tokens) != len(types):
            raise ModelError(f"{path} has no usable tokenizer.ggml.tokens/token_type; re-convert it with loopcli convert")
        if model == "gpt2":
            backend = _HF.from_gguf(path, field, tokens, types)
        elif model in ("llama", "t5"):
            backend = _SentencePiece.from_gguf(path, field, tokens, types, unigram=model == "t5")
        else:
            raise ModelError(f"{path}: tokenizer model {model!r} is not supported (only 'gpt2' byte-level BPE, "
                             "'llama' SentencePiece BPE and 't5' SentencePiece unigram)")
        bos_id = field("tokenizer.ggml.bos_token_id")
        eos_id = field("tokenizer.ggml.eos_token_id")
        eos = {field(k) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                  "tokenizer.ggml.eom_token_id")} | set(field(EOS_IDS_KEY, []))
        eos = {int(i) for i in eos if i is not None and 0 <= int(i) < len(tokens)}
        text = lambda i: tokens[i] if i is not None and 0 <= i < len(tokens) else None
        return cls(backend, text(bos_id), text(eos_id), bool(field("tokenizer.ggml.add_bos_token", False)),
                   field("tokenizer.chat_template"), eos)

    # ------------------------------------------------------------------ use

    @property
    def bos_id(self) -> int | None:
        return None if self.bos_token is None else self.token_to_id(self.bos_token)

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        ids = self._backend.encode(text)
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: list[int]) -> str:
        return self._backend.decode(list(ids))


class _HF:
    """A `tokenizers` tokenizer: tokenizer.json as is, or byte-level BPE rebuilt from a GGUF."""

    def __init__(self, hf: HFTokenizer):
        self.hf = hf

    @classmethod
    def from_gguf(cls, path, field, tokens, types) -> "_HF":
        pre = field("tokenizer.ggml.pre")
        if pre not in KNOWN:
            raise ModelError(f"{path}: byte-level pre-tokenizer {pre!r} is not supported (known: {', '.join(KNOWN)})")
        vocab = {t: i for i, t in enumerate(tokens) if types[i] != UNUSED}  # no [PAD] fillers
        merges = [m.split(" ", 1) for m in field("tokenizer.ggml.merges", [])]
        hf = HFTokenizer.from_str(json.dumps({
            "version": "1.0",
            # llama.cpp takes a word found whole in the vocabulary as one token for llama-bpe only
            "model": {"type": "BPE", "vocab": vocab, "merges": merges, "ignore_merges": pre == "llama-bpe"},
            "pre_tokenizer": KNOWN[pre],
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        }))
        # the vocab holds the added tokens, so marking them (special or not) keeps their ids
        for i, t in enumerate(types):
            if t in (CONTROL, USER_DEFINED):
                hf.add_tokens([AddedToken(tokens[i], special=t == CONTROL, normalized=False)])
                if hf.token_to_id(tokens[i]) != i:
                    raise ModelError(f"{path}: added token {tokens[i]!r} cannot keep id {i}")
        return cls(hf)

    def add(self, token: str | None) -> None:
        if token is not None and self.hf.token_to_id(token) is not None:
            self.hf.add_special_tokens([AddedToken(token, special=True, normalized=False)])

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=False)


class _SentencePiece:
    """A SentencePiece model plus the added tokens cut out of the text before it runs."""

    def __init__(self, sp, added: dict[str, int], metaspace: str | None = None):
        self.sp = sp
        self.added = dict(added)
        # a Metaspace prepend_scheme: `sp` adds no dummy prefix, _encode_segment adds it as
        # `tokenizers` does (a space before identity-normalized text is what the dummy prefix is)
        self.metaspace = metaspace
        self._compile()

    def _compile(self) -> None:
        self.by_id = {i: t for t, i in self.added.items()}
        # longest first: at one position the longest added token wins, as in transformers' trie
        alts = sorted(self.added, key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, alts))) if alts else None

    @classmethod
    def from_file(cls, path: Path, added: dict[str, int]) -> "_SentencePiece":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor()
        try:
            sp.load(str(path))
        except (OSError, RuntimeError) as exc:
            raise ModelError(f"{path} cannot be read ({exc}); re-download it") from None
        return cls(sp, added)

    @classmethod
    def from_gguf(cls, path, field, tokens, types, unigram: bool = False) -> "_SentencePiece":
        import sentencepiece as spm

        scores = field("tokenizer.ggml.scores")
        if scores is None or len(scores) != len(tokens):
            raise ModelError(f"{path} has no tokenizer.ggml.scores for its SentencePiece vocabulary; re-convert it")
        charsmap = field("tokenizer.ggml.precompiled_charsmap") if unigram else None
        metaspace = field(PREPEND_SCHEME_KEY) if not unigram else None
        metaspace = metaspace if metaspace in ("always", "first") else None
        proto = sentencepiece_proto(
            tokens, scores, types, bool(field("tokenizer.ggml.add_space_prefix", True)) and not metaspace,
            unigram=unigram,
            remove_extra_whitespaces=unigram and bool(field("tokenizer.ggml.remove_extra_whitespaces", False)),
            precompiled_charsmap=bytes(bytearray(int(b) & 0xFF for b in charsmap)) if charsmap is not None else b"")
        sp = spm.SentencePieceProcessor()
        try:
            sp.load_from_serialized_proto(proto)
        except RuntimeError as exc:
            raise ModelError(f"{path}: its SentencePiece vocabulary is invalid ({exc}); re-convert it") from None
        added = {tokens[i]: i for i, t in enumerate(types) if t in (CONTROL, USER_DEFINED, UNKNOWN)}
        return cls(sp, added, metaspace=metaspace)

    def add(self, token: str | None) -> None:
        tid = None if token is None else self.token_to_id(token)
        if tid is not None and token not in self.added:
            self.added[token] = tid
            self._compile()

    def token_to_id(self, token: str) -> int | None:
        if token in self.added:
            return self.added[token]
        tid = self.sp.piece_to_id(token)
        return None if tid == self.sp.unk_id() and token != self.sp.id_to_piece(tid) else tid

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        pos = 0
        for m in self.pattern.finditer(text) if self.pattern else ():
            if m.start() > pos:
                ids += self._encode_segment(text[pos:m.start()], pos == 0)
            ids.append(self.added[m.group()])
            pos = m.end()
        if pos < len(text):
            ids += self._encode_segment(text[pos:], pos == 0)
        return ids

    def _encode_segment(self, text: str, at_start: bool) -> list[int]:
        prefix = self.metaspace == "always" or (self.metaspace == "first" and at_start)
        return self.sp.encode(" " + text if prefix and not text.startswith(" ") else text)

    def decode(self, ids: list[int]) -> str:
        out: list[str] = []
        run: list[int] = []
        n = self.sp.get_piece_size()
        for i in ids:
            if i in self.by_id:
                out += [self.sp.decode(run), self.by_id[i]]
                run = []
            elif 0 <= i < n:
                run.append(i)
        out.append(self.sp.decode(run))
        if self.metaspace and ids and out[0]:
            # Metaspace's decoder drops every U+2581 of the first piece (pieces have them in front)
            n = self.sp.id_to_piece(ids[0]).count("\u2581")
            out[0] = out[0][n:] if out[0][:n] == " " * n else out[0]
        return "".join(out)


def sentencepiece_proto(tokens: list[str], scores, types, add_space_prefix: bool, unigram: bool = False,
                        remove_extra_whitespaces: bool = False, precompiled_charsmap: bytes = b"") -> bytes:
    """A serialized SentencePiece model with the GGUF's vocabulary: BPE read as llama.cpp reads a
    "llama" vocabulary (no normalization), or unigram with the "t5" vocabulary's normalizer."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM if unigram else pb.TrainerSpec.BPE
    m.trainer_spec.byte_fallback = BYTE in types
    m.normalizer_spec.name = "precompiled" if precompiled_charsmap else "identity"
    m.normalizer_spec.precompiled_charsmap = precompiled_charsmap
    m.normalizer_spec.add_dummy_prefix = add_space_prefix
    m.normalizer_spec.remove_extra_whitespaces = remove_extra_whitespaces
    m.normalizer_spec.escape_whitespaces = True
    sp_type = {NORMAL: pb.ModelProto.SentencePiece.NORMAL, UNKNOWN: pb.ModelProto.SentencePiece.UNKNOWN,
               BYTE: pb.ModelProto.SentencePiece.BYTE}
    seen = set()
    for i, (text, score, t) in enumerate(zip(tokens, scores, types)):
        p = m.pieces.add()
        # added tokens never come out of the SentencePiece model (they are cut out first): CONTROL
        p.type = sp_type.get(int(t), pb.ModelProto.SentencePiece.CONTROL if t in (CONTROL, USER_DEFINED)
                             else pb.ModelProto.SentencePiece.UNUSED)
        p.piece = text if text not in seen else f"\u0000dup{i}"  # SentencePiece wants unique pieces
        p.score = float(score)
        seen.add(p.piece)
        if t == UNKNOWN:
            m.trainer_spec.unk_id = i
    if UNKNOWN not in types:
        raise ModelError("the SentencePiece vocabulary has no unknown token; re-convert the model")
    return m.SerializeToString()


def stop_ids(d: Path) -> list[int]:
    """The eos ids of generation_config.json (what generate() stops on), else of config.json."""
    for name in ("generation_config.json", "config.json"):
        v = read_json(d / name).get("eos_token_id")
        ids = [v] if isinstance(v, int) else [i for i in v if isinstance(i, int)] if isinstance(v, list) else []
        if ids:
            return list(dict.fromkeys(i for i in ids if i >= 0))
    return []


def chat_template_of(d: Path, cfg: dict) -> str | None:
    """`chat_template.jinja` wins over tokenizer_config's key, as in transformers; a list of named
    templates gives its "default" one."""
    f = d / "chat_template.jinja"
    if f.is_file():
        return f.read_text(encoding="utf-8")
    template = cfg.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


def added_tokens(cfg: dict) -> dict[str, tuple[int, bool]]:
    """tokenizer_config.json's `added_tokens_decoder`: text -> (id, special)."""
    out = {}
    table = cfg.get("added_tokens_decoder")
    for tid, tok in (table.items() if isinstance(table, dict) else ()):
        if isinstance(tok, dict) and isinstance(tok.get("content"), str) and str(tid).isdigit():
            out[tok["content"]] = (int(tid), bool(tok.get("special")))
    return out


def _hf_from_file(path: Path) -> HFTokenizer:
    try:
        return HFTokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on bad files
        raise ModelError(f"{path} cannot be read ({exc}); re-download it") from None


def read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} cannot be read ({exc}); re-download or re-create it") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a JSON object; re-download or re-create it")
    return data


def token_text(tok) -> str | None:
    # tokenizer_config stores tokens as strings or as {"content": ...} objects
    return tok.get("content") if isinstance(tok, dict) else tok
