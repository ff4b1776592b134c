"""llama.cpp (llama-cpp-python) reads our R = 1 exports of every tokenizer kind as the source does:
the same ids for a hard text, the same stop ids, and logits equal to our reference forward."""

import numpy as np
import pytest
import torch
from test_tokenizer import HARD, make_source, source_ids

from loopcli.convert.export import convert
from loopcli.runtime.model import load_model
from loopcli.runtime.tokenizer import Tokenizer

llama_cpp = pytest.importorskip("llama_cpp")

KINDS = ["spm", "spm-no-prefix", "spm-json", "gpt-2", "deepseek-coder", "starcoder", "qwen2", "llama-bpe"]


@pytest.fixture(scope="module", params=KINDS)
def export(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    src = make_source(request.param, d / "hf", arch="llama")
    return request.param, src, convert(src, d / "m.gguf", "f32", show_progress=False)


def test_llama_cpp_ids_equal_the_source(export):
    kind, src, out = export
    want = source_ids(kind, src, HARD)
    llm = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
    try:
        # special=True: added tokens written in the text are single ids, as in transformers
        assert llm.tokenize(HARD.encode(), add_bos=False, special=True) == want
    finally:
        llm.close()
    assert Tokenizer.load(out).encode(HARD, add_bos=False) == want


def test_llama_cpp_stops_on_every_eos_id(export):
    kind, src, out = export
    eos = sorted(Tokenizer.load(src).eos_ids)
    assert len(eos) == 3
    llm = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
    try:
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        assert [bool(llama_cpp.llama_vocab_is_eog(vocab, i)) for i in eos] == [True] * 3
        assert not llama_cpp.llama_vocab_is_eog(vocab, 1)  # bos is no stop
    finally:
        llm.close()
    assert Tokenizer.load(out).eos_ids == set(eos)


def test_llama_cpp_logits_equal_the_reference(export):
    kind, src, out = export
    ids = source_ids(kind, src, HARD)
    ref = load_model(src)(torch.tensor([ids]))[0].double()
    llm = llama_cpp.Llama(str(out), n_ctx=512, n_batch=512, logits_all=True, n_threads=1, verbose=False)
    try:
        llm.eval(ids)
        got = torch.as_tensor(np.array(llm.scores[: len(ids)], dtype=np.float64))
    finally:
        llm.close()
    p, q = torch.log_softmax(ref, -1), torch.log_softmax(got, -1)
    assert float((p.exp() * (p - q)).sum(-1).mean()) <= 1e-4
