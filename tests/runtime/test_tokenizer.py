"""The runtime tokenizer gives the source tokenizer's ids: SentencePiece checkpoints against
transformers' slow-tokenizer machinery (what LoopCoder's custom class runs), byte-level ones
against tokenizer.json; GGUF exports against both. Decoding gives the text back."""

import json
import os

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb
from tokenizers import Tokenizer as HFTokenizer
from transformers import PreTrainedTokenizer

from loopcli.convert.export import convert
from loopcli.runtime.errors import ModelError
from loopcli.runtime.synthetic import write_synthetic
from loopcli.runtime.tokenizer import Tokenizer

# code, tabs, runs of spaces and newlines, CRLF, Cyrillic, CJK, emoji, characters the tiny
# vocabularies lack (byte fallback), leading/trailing spaces and added tokens inside the text
HARD = (
    "  def f(x):\n\treturn  x**2  # sq\n\n\n    if a<=b:\t\tpass\r\n"
    "Привет, мир! 你好，世界。 😀👍🏽 ꙮ𝔘 ÿ\u200b 3.14159 it's\n"
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<tool_call>\n<function=view>\n"
    "</function>\n</tool_call><|im_end|>   "
)


class SlowSentencePiece(PreTrainedTokenizer):
    """LoopCoder's IQuestCoderTokenizer in brief: SentencePiece on the text between added tokens."""

    vocab_files_names = {"vocab_file": "tokenizer.model"}

    def __init__(self, vocab_file, **kw):
        self.sp = spm.SentencePieceProcessor(model_file=str(vocab_file))
        super().__init__(**kw)

    @property
    def vocab_size(self):
        return self.sp.get_piece_size()

    def get_vocab(self):
        return {**{self.sp.id_to_piece(i): i for i in range(self.vocab_size)}, **self.added_tokens_encoder}

    def _tokenize(self, text):
        return self.sp.encode(text, out_type=str)

    def _convert_token_to_id(self, token):
        return self.sp.piece_to_id(token)

    def _convert_id_to_token(self, index):
        return self.sp.id_to_piece(index)


def sentencepiece_json(src, scheme=None):
    """tokenizer.json of the SentencePiece kind, as transformers' LlamaConverter makes it from
    tokenizer.model (merges in piece-score order). Legacy (scheme None): the dummy prefix in the
    normalizer, on every text between added tokens; else a Metaspace pre-tokenizer with that
    prepend_scheme ("first" is what the converter writes for legacy=False)."""
    m = pb.ModelProto()
    m.ParseFromString((src / "tokenizer.model").read_bytes())
    vocab = {p.piece: i for i, p in enumerate(m.pieces)}
    normal = [p.piece for p in m.pieces if p.type == pb.ModelProto.SentencePiece.NORMAL]
    merges = sorted(((a[:k], a[k:]) for a in normal for k in range(1, len(a)) if a[:k] in vocab and a[k:] in vocab),
                    key=lambda ab: (vocab[ab[0] + ab[1]], vocab[ab[0]], vocab[ab[1]]))
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    added = [{"id": int(i), "content": t["content"], "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": t["special"]} for i, t in cfg["added_tokens_decoder"].items()]
    if scheme:
        metaspace = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme, "split": False}
        return {"version": "1.0", "added_tokens": added, "normalizer": None, "pre_tokenizer": metaspace,
                "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": True, "byte_fallback": True,
                          "vocab": vocab, "merges": [list(ab) for ab in merges]},
                "decoder": {"type": "Sequence", "decoders": [
                    metaspace, {"type": "ByteFallback"}, {"type": "Fuse"}]}}
    return {"version": "1.0", "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "\u2581"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
            "pre_tokenizer": None,
            "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": True, "byte_fallback": True,
                      "vocab": vocab, "merges": [list(ab) for ab in merges]},
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}}


def make_source(kind, path, arch="loopcoder"):
    """A synthetic checkpoint with tokenizer `kind`; "spm-json" ships only a SentencePiece-kind
    tokenizer.json (made from the SentencePiece model, which is then removed), "spm-json-first" and
    "spm-json-always" one with a Metaspace pre-tokenizer of that prepend_scheme."""
    json_kind = kind.startswith("spm-json")
    src = write_synthetic(path, arch=arch, dtype="f32", tokenizer="spm" if json_kind else kind)
    if json_kind:
        (src / "tokenizer.json").write_text(json.dumps(sentencepiece_json(src, kind[len("spm-json-"):] or None)))
        (src / "tokenizer.model").unlink()
        cfg = json.loads((src / "tokenizer_config.json").read_text())
        cfg.pop("auto_map")
        cfg["tokenizer_class"] = "LlamaTokenizerFast"
        (src / "tokenizer_config.json").write_text(json.dumps(cfg))
    return src


def source_ids(kind, src, text):
    """The ids the checkpoint's own tokenizer gives, as transformers loads it."""
    if kind.startswith("spm") and not kind.startswith("spm-json"):
        return SlowSentencePiece.from_pretrained(str(src)).encode(text, add_special_tokens=False)
    return HFTokenizer.from_file(str(src / "tokenizer.json")).encode(text, add_special_tokens=False).ids


SPM_KINDS = ["spm", "spm-no-prefix", "spm-unigram", "spm-unigram-nfkc"]


@pytest.fixture(scope="module", params=SPM_KINDS)
def spm_pair(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    src = write_synthetic(d / "hf", dtype="f32", tokenizer=request.param)
    return src, convert(src, d / "m.gguf", "f32", show_progress=False), request.param


def test_sentencepiece_ids_equal_transformers(spm_pair):
    src, gguf_path, kind = spm_pair
    reference = SlowSentencePiece.from_pretrained(str(src))
    want = reference.encode(HARD, add_special_tokens=False)
    # the T5-style unigram model folds whitespace and applies NFKC: decoding gives the normalized text
    text = HARD if kind != "spm-unigram-nfkc" else None
    for tok in (Tokenizer.load(src), Tokenizer.load(gguf_path)):
        assert tok.encode(HARD, add_bos=False) == want
        decoded = tok.decode(want)
        if text is None:
            text = decoded
            assert "\t" not in text and "  " not in text and "Привет, мир!" in text
        assert decoded == text
    assert reference.sp.encode("x", out_type=str)[0].startswith("\u2581") == (kind != "spm-no-prefix")
    assert reference.sp.get_piece_size() == 448 and reference.sp.is_byte(3) == (kind != "spm-unigram-nfkc")


def unigram_texts(n, seed=0):
    """Random short texts from pieces that stress a unigram tokenizer: runs of whitespace, NFKC
    folds (ﬁ, Ａ, ①, é as e + combining accent), characters no vocabulary has, added tokens."""
    import random

    pool = list(" \t\n\r  abcXYZ_(){}:;.,'\"019é\u0301ÅﬁＡ①Привет你好😀👍🏽\u200b\u3000\u00a0ꙮ")
    pool += ["<|im_start|>", "<|im_end|>", "<tool_call>", "def ", "return ", "    "]
    rng = random.Random(seed)
    return ["".join(rng.choice(pool) for _ in range(rng.randint(0, 24))) for _ in range(n)]


# CI: 60 texts; LOOPCLI_SLOW=1 (or -m slow elsewhere): 1000
UNIGRAM_SAMPLE = 1000 if os.environ.get("LOOPCLI_SLOW") else 60


@pytest.mark.parametrize("kind", ["spm-unigram", "spm-unigram-nfkc"])
def test_unigram_gguf_gives_the_source_ids_on_random_text(kind, tmp_path):
    src = write_synthetic(tmp_path / "hf", dtype="f32", tokenizer=kind)
    gg = Tokenizer.load(convert(src, tmp_path / "m.gguf", "f32", show_progress=False))
    reference = SlowSentencePiece.from_pretrained(str(src))
    for text in unigram_texts(UNIGRAM_SAMPLE):
        want = reference.encode(text, add_special_tokens=False)
        assert gg.encode(text, add_bos=False) == want, repr(text)
        if kind == "spm-unigram":
            assert gg.decode(want) == text, repr(text)


def test_unigram_tokenizer_json_converts_from_tokenizer_model(tmp_path):
    """A Unigram tokenizer.json is refused alone and, next to tokenizer.model, the model is converted."""
    src = write_synthetic(tmp_path / "hf", dtype="f32", tokenizer="spm-unigram-nfkc")
    plain = Tokenizer.load(convert(src, tmp_path / "a.gguf", "f32", show_progress=False))
    m = pb.ModelProto()
    m.ParseFromString((src / "tokenizer.model").read_bytes())
    (src / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {
        "type": "Unigram", "unk_id": 0, "vocab": [[p.piece, p.score] for p in m.pieces]}}))
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    cfg["tokenizer_class"] = "T5TokenizerFast"
    (src / "tokenizer_config.json").write_text(json.dumps(cfg))
    both = Tokenizer.load(convert(src, tmp_path / "b.gguf", "f32", show_progress=False))
    assert both.encode(HARD) == plain.encode(HARD)
    (src / "tokenizer.model").unlink()
    with pytest.raises(ModelError, match="Unigram tokenizer.json; .* copy that file"):
        convert(src, tmp_path / "c.gguf", "f32", show_progress=False)


def test_sentencepiece_gguf_keeps_special_ids(spm_pair):
    src, gguf_path, _ = spm_pair
    hf, gg = Tokenizer.load(src), Tokenizer.load(gguf_path)
    assert (gg.bos_id, gg.add_bos, gg.eos_token, gg.eos_ids) == (hf.bos_id, hf.add_bos, hf.eos_token, hf.eos_ids)
    assert gg.eos_ids == {2, 454, 459} and gg.chat_template == hf.chat_template
    assert [gg.token_to_id(t) for t in ("<unk>", "<s>", "</s>", "<|im_start|>", "<tool_call>")] == [0, 1, 2, 453, 460]


@pytest.mark.parametrize("kind", ["gpt-2", "llama-bpe", "qwen2", "deepseek-coder", "starcoder"])
def test_byte_level_ids_equal_tokenizer_json(kind, tmp_path):
    src = write_synthetic(tmp_path / "hf", arch="llama", dtype="f32", tokenizer=kind)
    source = HFTokenizer.from_file(str(src / "tokenizer.json"))
    want = source.encode(HARD, add_special_tokens=False).ids
    gg = Tokenizer.load(convert(src, tmp_path / "m.gguf", "f32", show_progress=False))
    assert gg.encode(HARD, add_bos=False) == want
    assert gg.decode(want) == HARD == source.decode(want, skip_special_tokens=False)


@pytest.mark.parametrize("kind", ["spm-json", "spm-json-first", "spm-json-always"])
def test_sentencepiece_kind_tokenizer_json(kind, tmp_path):
    src = make_source(kind, tmp_path / "hf")
    out = convert(src, tmp_path / "m.gguf", "f32", show_progress=False)
    gg, hf = Tokenizer.load(out), HFTokenizer.from_file(str(src / "tokenizer.json"))
    # texts that begin with an added token and texts that do not (where "first" puts its prefix)
    for text in (HARD, "<|im_start|>" + HARD, " x<|im_end|>y  <tool_call>z", "<s>a", "a", "a<s> b"):
        want = source_ids(kind, src, text)
        assert Tokenizer.load(src).encode(text, add_bos=False) == want
        assert gg.encode(text, add_bos=False) == want, text
        if kind != "spm-json":  # (the legacy decoder puts a space after each added token)
            assert gg.decode(want) == hf.decode(want, skip_special_tokens=False)
        # Metaspace's decoder drops a leading space; with "always" it keeps the U+2581 it put after
        # each added token (tokenizers decodes so too)
        assert gg.decode(want) == text or text.startswith(" ") or kind == "spm-json-always"
    slow_src = make_source("spm", tmp_path / "slow")
    # the same model as the slow tokenizer: legacy gives its ids; a Metaspace adds no dummy prefix
    # before a leading space, and with "first" none after an added token
    assert (source_ids(kind, src, HARD) == source_ids("spm", slow_src, HARD)) == (kind == "spm-json")
    plain = "def f(x):\n\treturn  x**2 Привет 😀"
    assert source_ids(kind, src, plain) == source_ids("spm", slow_src, plain)


def test_unreadable_tokenizer_model_is_one_clear_error(tmp_path):
    src = write_synthetic(tmp_path / "hf")
    (src / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="tokenizer.model cannot be read"):
        Tokenizer.load(src)


def test_fast_class_prefers_tokenizer_json(tmp_path):
    import json

    src = write_synthetic(tmp_path / "hf", arch="llama")
    (src / "tokenizer.model").write_bytes(b"garbage")  # a stray file the fast class never reads
    Tokenizer.load(src)
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    cfg["tokenizer_class"] = "LlamaTokenizer"
    (src / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="tokenizer.model"):
        Tokenizer.load(src)


def test_a_corrupt_charsmap_is_one_clear_error():
    from loopcli.runtime.tokenizer import _SentencePiece

    tokens, types = ["<unk>", "<s>", "</s>", "\u2581a", "b"], [2, 3, 3, 1, 1]
    keys = {"tokenizer.ggml.scores": [0.0, 0.0, 0.0, -1.0, -2.0],
            "tokenizer.ggml.precompiled_charsmap": list(b"\xff\x00\x00\x00not a charsmap")}
    with pytest.raises(ModelError, match="m.gguf: its SentencePiece vocabulary is invalid"):
        _SentencePiece.from_gguf("m.gguf", lambda k, d=None: keys.get(k, d), tokens, types, unigram=True)
