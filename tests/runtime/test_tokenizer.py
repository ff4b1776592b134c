"""The runtime tokenizer gives the source tokenizer's ids: SentencePiece checkpoints against
transformers' slow-tokenizer machinery (what LoopCoder's custom class runs), byte-level ones
against tokenizer.json; GGUF exports against both. Decoding gives the text back."""

import json

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


def sentencepiece_json(src):
    """tokenizer.json of the SentencePiece kind, as transformers' LlamaConverter makes it from
    tokenizer.model (legacy: dummy prefix in the normalizer, merges in piece-score order)."""
    m = pb.ModelProto()
    m.ParseFromString((src / "tokenizer.model").read_bytes())
    vocab = {p.piece: i for i, p in enumerate(m.pieces)}
    normal = [p.piece for p in m.pieces if p.type == pb.ModelProto.SentencePiece.NORMAL]
    merges = sorted(((a[:k], a[k:]) for a in normal for k in range(1, len(a)) if a[:k] in vocab and a[k:] in vocab),
                    key=lambda ab: (vocab[ab[0] + ab[1]], vocab[ab[0]], vocab[ab[1]]))
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    added = [{"id": int(i), "content": t["content"], "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": t["special"]} for i, t in cfg["added_tokens_decoder"].items()]
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
    tokenizer.json (made from the SentencePiece model, which is then removed)."""
    src = write_synthetic(path, arch=arch, dtype="f32", tokenizer="spm" if kind == "spm-json" else kind)
    if kind == "spm-json":
        (src / "tokenizer.json").write_text(json.dumps(sentencepiece_json(src)))
        (src / "tokenizer.model").unlink()
        cfg = json.loads((src / "tokenizer_config.json").read_text())
        cfg.pop("auto_map")
        cfg["tokenizer_class"] = "LlamaTokenizerFast"
        (src / "tokenizer_config.json").write_text(json.dumps(cfg))
    return src


def source_ids(kind, src, text):
    """The ids the checkpoint's own tokenizer gives, as transformers loads it."""
    if kind.startswith("spm") and kind != "spm-json":
        return SlowSentencePiece.from_pretrained(str(src)).encode(text, add_special_tokens=False)
    return HFTokenizer.from_file(str(src / "tokenizer.json")).encode(text, add_special_tokens=False).ids


@pytest.fixture(scope="module", params=["spm", "spm-no-prefix"])
def spm_pair(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    src = write_synthetic(d / "hf", dtype="f32", tokenizer=request.param)
    return src, convert(src, d / "m.gguf", "f32", show_progress=False), request.param == "spm"


def test_sentencepiece_ids_equal_transformers(spm_pair):
    src, gguf_path, dummy_prefix = spm_pair
    reference = SlowSentencePiece.from_pretrained(str(src))
    want = reference.encode(HARD, add_special_tokens=False)
    for tok in (Tokenizer.load(src), Tokenizer.load(gguf_path)):
        assert tok.encode(HARD, add_bos=False) == want
        assert tok.decode(want) == HARD
    assert reference.sp.encode("x", out_type=str)[0].startswith("\u2581") == dummy_prefix


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


def test_sentencepiece_kind_tokenizer_json(tmp_path):
    src = make_source("spm-json", tmp_path / "hf")
    want = source_ids("spm-json", src, HARD)
    out = convert(src, tmp_path / "m.gguf", "f32", show_progress=False)
    gg = Tokenizer.load(out)
    assert Tokenizer.load(src).encode(HARD, add_bos=False) == want
    assert gg.encode(HARD, add_bos=False) == want and gg.decode(want) == HARD
    slow_src = make_source("spm", tmp_path / "slow")
    assert source_ids("spm", slow_src, HARD) == want  # same model, same ids as the slow tokenizer


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
