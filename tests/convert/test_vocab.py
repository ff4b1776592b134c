"""Vocabularies in the GGUF: the SentencePiece layout llama.cpp writes, byte-level pre-tokenizers
identified by what they do, stop ids, and clear refusals of what llama.cpp would tokenize wrong."""

import json
import math
import sys

import gguf
import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

from loopcli.cli import main
from loopcli.convert.export import convert
from loopcli.runtime.errors import ModelError
from loopcli.runtime.pretokenizers import KNOWN, identify
from loopcli.runtime.synthetic import CORPUS, write_synthetic
from loopcli.runtime.tokenizer import EOS_IDS_KEY

T = gguf.TokenType


def fields(path):
    r = gguf.GGUFReader(path)
    return lambda key, default=None: default if r.get_field(key) is None else r.get_field(key).contents()


@pytest.fixture(scope="module")
def spm_gguf(tmp_path_factory):
    d = tmp_path_factory.mktemp("spm")
    src = write_synthetic(d / "hf", dtype="f32")
    return src, fields(convert(src, d / "m.gguf", "f32", show_progress=False))


def test_sentencepiece_layout_as_llama_cpp_writes_it(spm_gguf):
    src, f = spm_gguf
    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    n = sp.get_piece_size()
    tokens, scores, types = f("tokenizer.ggml.tokens"), f("tokenizer.ggml.scores"), f("tokenizer.ggml.token_type")
    assert (f("tokenizer.ggml.model"), f("tokenizer.ggml.pre")) == ("llama", "default")
    assert len(tokens) == len(scores) == len(types) == 512  # the embedding's rows
    assert tokens[:n] == [sp.id_to_piece(i) for i in range(n)]
    assert scores[:n] == pytest.approx([sp.get_score(i) for i in range(n)])
    assert types[:4] == [T.UNKNOWN, T.CONTROL, T.CONTROL, T.BYTE] and tokens[3] == "<0x00>"
    assert types[n - 1] == T.NORMAL
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    for tid, tok in cfg["added_tokens_decoder"].items():
        if int(tid) >= n:
            assert tokens[int(tid)] == tok["content"] and scores[int(tid)] == -1000.0
            assert types[int(tid)] == (T.CONTROL if tok["special"] else T.USER_DEFINED)
    last = max(map(int, cfg["added_tokens_decoder"]))
    assert tokens[last + 1:] == [f"[PAD{i}]" for i in range(last + 1, 512)]
    assert set(types[last + 1:]) == {T.UNUSED}
    assert f("tokenizer.ggml.add_space_prefix") is True
    assert (f("tokenizer.ggml.bos_token_id"), f("tokenizer.ggml.unknown_token_id"),
            f("tokenizer.ggml.padding_token_id")) == (1, 0, tokens.index("<PAD>"))
    assert (f("tokenizer.ggml.add_bos_token"), f("tokenizer.ggml.add_eos_token")) == (False, False)


def test_every_eos_id_is_stored(spm_gguf):
    src, f = spm_gguf
    eos = json.loads((src / "generation_config.json").read_text())["eos_token_id"]
    assert eos == [2, 454, 459]
    # tokenizer_config's eos </s> is the eos; <|im_end|> ends a turn (eot); the third is eom
    assert (f("tokenizer.ggml.eos_token_id"), f("tokenizer.ggml.eot_token_id"), f("tokenizer.ggml.eom_token_id")) == (2, 454, 459)
    assert f(EOS_IDS_KEY) == [2, 454, 459]


def test_sentencepiece_without_dummy_prefix(tmp_path):
    src = write_synthetic(tmp_path / "hf", dtype="f32", tokenizer="spm-no-prefix")
    f = fields(convert(src, tmp_path / "m.gguf", "f32", show_progress=False))
    assert f("tokenizer.ggml.add_space_prefix") is False


@pytest.mark.parametrize("kind", ["spm-unigram", "spm-unigram-nfkc"])
def test_unigram_layout_as_llama_cpp_writes_it(kind, tmp_path):
    """A unigram tokenizer.model is llama.cpp's UGM vocabulary ("t5") with its normalizer."""
    src = write_synthetic(tmp_path / "hf", dtype="f32", tokenizer=kind)
    f = fields(convert(src, tmp_path / "m.gguf", "f32", show_progress=False))
    m = pb.ModelProto()
    m.ParseFromString((src / "tokenizer.model").read_bytes())
    n = len(m.pieces)
    assert m.trainer_spec.model_type == pb.TrainerSpec.UNIGRAM
    assert (f("tokenizer.ggml.model"), f("tokenizer.ggml.pre")) == ("t5", "default")
    tokens, scores, types = f("tokenizer.ggml.tokens"), f("tokenizer.ggml.scores"), f("tokenizer.ggml.token_type")
    assert tokens[:n] == [p.piece for p in m.pieces] and types[:n] == [int(p.type) for p in m.pieces]
    assert scores[:n] == pytest.approx([p.score for p in m.pieces])
    assert len(tokens) == 512 and tokens[n + 5] == "<|im_start|>" and types[n + 5] == T.CONTROL
    nfkc = kind == "spm-unigram-nfkc"
    assert f("tokenizer.ggml.add_space_prefix") is True
    assert f("tokenizer.ggml.remove_extra_whitespaces") is nfkc
    charsmap = f("tokenizer.ggml.precompiled_charsmap")
    assert (bytes(charsmap) if charsmap else b"") == m.normalizer_spec.precompiled_charsmap
    assert bool(charsmap) is nfkc  # identity has none
    assert (f("tokenizer.ggml.unknown_token_id"), f("tokenizer.ggml.bos_token_id"), f("tokenizer.ggml.eos_token_id")) == (0, 1, 2)


@pytest.mark.parametrize("kind", list(KNOWN))
def test_byte_level_pre_tokenizer_is_identified(kind, tmp_path):
    src = write_synthetic(tmp_path / "hf", arch="llama", dtype="f32", tokenizer=kind)
    f = fields(convert(src, tmp_path / "m.gguf", "f32", show_progress=False))
    tok = json.loads((src / "tokenizer.json").read_text())
    tokens = f("tokenizer.ggml.tokens")
    assert (f("tokenizer.ggml.model"), f("tokenizer.ggml.pre")) == ("gpt2", kind)
    assert all(tokens[i] == t for t, i in tok["model"]["vocab"].items())
    assert f("tokenizer.ggml.merges")[:3] == [" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"][:3]]
    assert (f("tokenizer.ggml.bos_token_id"), f("tokenizer.ggml.eos_token_id"), f(EOS_IDS_KEY)) == (1, 4, [4, 2, 5])
    assert f("tokenizer.ggml.add_bos_token") is True
    assert f("tokenizer.ggml.token_type")[3] == T.CONTROL


def test_identification_reads_behaviour_not_spelling():
    qwen2 = json.loads(json.dumps(KNOWN["qwen2"]))
    split = qwen2["pretokenizers"][0]["pattern"]
    split["Regex"] = split["Regex"].replace("(?i:'s|'t|'re|'ve|'m|'ll|'d)", "'(?i:[sdmt]|ll|ve|re)")
    assert identify(qwen2) == ("qwen2", "qwen2")
    # GPT-2's ByteLevel regex spelled out as a Split
    gpt2 = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"},
         "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    assert identify(gpt2) == ("gpt-2", "gpt-2")
    # llama-bpe with single digits is no known pre-tokenizer; the nearest is named
    near = json.loads(json.dumps(KNOWN["llama-bpe"]).replace("{1,3}", "{1,2}"))
    assert identify(near) == (None, "llama-bpe")


def test_unknown_pre_tokenizer_is_refused_naming_the_closest(tmp_path, monkeypatch, capsys):
    src = write_synthetic(tmp_path / "hf", arch="llama", dtype="f32")
    tok = json.loads((src / "tokenizer.json").read_text())
    tok["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = tok["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"].replace(r"|\s+(?!\S)", "")
    (src / "tokenizer.json").write_text(json.dumps(tok))
    monkeypatch.setattr(sys, "argv", ["loopcli", "convert", str(src), str(tmp_path / "o.gguf")])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert "splits text like none llama.cpp knows (closest: qwen2)" in err
    assert not list(tmp_path.glob("o.gguf*"))


def _edit_model(path, edit):
    m = pb.ModelProto()
    m.ParseFromString(path.read_bytes())
    edit(m)
    path.write_bytes(m.SerializeToString())


def _unigram(m):
    m.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM


@pytest.mark.parametrize("edit,needle", [
    (lambda m: setattr(m.trainer_spec, "model_type", pb.TrainerSpec.CHAR), "SentencePiece CHAR model"),
    (lambda m: setattr(m.normalizer_spec, "name", "nmt_nfkc"), r"normalizes text \(nmt_nfkc"),
    (lambda m: setattr(m.normalizer_spec, "remove_extra_whitespaces", True), "removes extra whitespace"),
    # unigram: what llama.cpp's UGM cannot do
    (lambda m: (_unigram(m), setattr(m.trainer_spec, "treat_whitespace_as_suffix", True)), "spaces after words"),
    (lambda m: (_unigram(m), setattr(m.normalizer_spec, "escape_whitespaces", False)), "unescaped"),
    (lambda m: (_unigram(m), setattr(m.normalizer_spec, "remove_extra_whitespaces", True),
                setattr(m.normalizer_spec, "add_dummy_prefix", False)), "folds whitespace without a dummy prefix"),
])
def test_sentencepiece_models_llama_cpp_would_misread_are_refused(tmp_path, edit, needle):
    src = write_synthetic(tmp_path / "hf", dtype="f32")
    _edit_model(src / "tokenizer.model", edit)
    with pytest.raises(ModelError, match=needle):
        convert(src, tmp_path / "o.gguf", "f32", show_progress=False)


def test_added_token_beyond_the_embedding_is_refused(tmp_path):
    src = write_synthetic(tmp_path / "hf", dtype="f32")
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"]["600"] = {"content": "<extra>", "special": True}
    (src / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="token ids up to 600 but the model's vocab_size is 512"):
        convert(src, tmp_path / "o.gguf", "f32", show_progress=False)


@pytest.mark.parametrize("kind", ["spm", "spm-unigram-nfkc"])
def test_perplexity_of_the_gguf_equals_the_source(kind, tmp_path, monkeypatch, capsys):
    """A LoopCoder-layout PLT checkpoint with its SentencePiece tokenizer, end to end."""
    src = write_synthetic(tmp_path / "hf", dtype="f32", tokenizer=kind)
    out = convert(src, tmp_path / "m.gguf", "f32", show_progress=False)
    text = tmp_path / "t.txt"
    text.write_text(CORPUS + "Привет, мир! 你好 😀\t\n")
    results = []
    for model in (src, out):
        monkeypatch.setattr(sys, "argv", ["loopcli", "perplexity", str(model), "--file", str(text),
                                          "--ctx", "64", "--json"])
        main()
        results.append(json.loads(capsys.readouterr().out))
    hf, gg = results
    assert hf["n_tokens"] == gg["n_tokens"] > 100
    assert math.isclose(hf["ppl"], gg["ppl"], rel_tol=1e-5)
    assert max(abs(a - b) for a, b in zip(hf["nll"], gg["nll"])) < 1e-4


def test_chat_template_file_wins_and_named_templates_are_kept(tmp_path):
    src = write_synthetic(tmp_path / "hf", dtype="f32")
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    cfg["chat_template"] = [{"name": "default", "template": "D"}, {"name": "tool_use", "template": "T"}]
    (src / "tokenizer_config.json").write_text(json.dumps(cfg))
    f = fields(convert(src, tmp_path / "a.gguf", "f32", show_progress=False))
    assert f("tokenizer.chat_template") == (src / "chat_template.jinja").read_text()  # as transformers
    (src / "chat_template.jinja").unlink()
    f = fields(convert(src, tmp_path / "b.gguf", "f32", show_progress=False))
    assert (f("tokenizer.chat_template"), f("tokenizer.chat_template.tool_use")) == ("D", "T")


def test_synth_cli_writes_the_tokenizer_kind(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["loopcli", "synth", str(tmp_path / "m"), "--arch", "llama",
                                      "--tokenizer", "starcoder"])
    main()
    f = fields(convert(tmp_path / "m", tmp_path / "m.gguf", "f32", show_progress=False))
    assert f("tokenizer.ggml.pre") == "starcoder"


def test_malformed_tokenizer_json_is_one_clear_error(tmp_path):
    src = write_synthetic(tmp_path / "hf", arch="llama", dtype="f32")
    tok = json.loads((src / "tokenizer.json").read_text())
    tok["added_tokens"] = [{"content": "<x>"}]  # no id
    (src / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ModelError, match="tokenizer.json is malformed"):
        convert(src, tmp_path / "o.gguf", "f32", show_progress=False)
