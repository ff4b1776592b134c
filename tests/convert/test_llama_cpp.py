"""R = 1 exports run in llama.cpp itself (via llama-cpp-python) and agree with our reference."""

from pathlib import Path

import numpy as np
import pytest
import torch

from loopcli.convert.export import convert
from loopcli.runtime.model import load_model
from loopcli.runtime.tokenizer import Tokenizer

llama_cpp = pytest.importorskip("llama_cpp")

REPO = Path(__file__).resolve().parents[2]


def llama_logits(path, ids):
    llm = llama_cpp.Llama(str(path), n_ctx=512, n_batch=512, logits_all=True, n_threads=1, verbose=False)
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)], dtype=np.float64)
    llm.close()
    return out


def mean_kl(ref_logits, logits):
    p = torch.log_softmax(torch.as_tensor(ref_logits, dtype=torch.float64), -1)
    q = torch.log_softmax(torch.as_tensor(logits, dtype=torch.float64), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def r1(request, tmp_path_factory, confident, sizes):
    d = tmp_path_factory.mktemp(request.param)
    return confident(d / "hf", arch=request.param, **sizes)


@pytest.mark.parametrize("type_name,check", [("f32", "kl"), ("f16", "kl"), ("q8_0", "top1"), ("q4_k_m", "runs")])
def test_export_runs_in_llama_cpp_and_matches(r1, tmp_path, type_name, check):
    ids = torch.randint(3, 512, (120,), generator=torch.Generator().manual_seed(0)).tolist()
    ref = load_model(r1)(torch.tensor([ids]))[0].double().numpy()
    got = llama_logits(convert(r1, tmp_path / "m.gguf", type_name, show_progress=False), ids)
    assert got.shape == ref.shape and np.isfinite(got).all()
    top1 = float((got.argmax(-1) == ref.argmax(-1)).mean())
    if check == "kl":
        assert mean_kl(ref, got) < 1e-4
    elif check == "top1":
        assert top1 >= 0.99
    else:  # Q4_K_M: loads and runs; its agreement is far above chance (1/512)
        assert top1 >= 0.8


def test_tokenization_matches_tokenizer_json(r1, tmp_path):
    out = convert(r1, tmp_path / "m.gguf", "q8_0", show_progress=False)
    llm = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
    ours = Tokenizer.load(r1)
    files = sorted((REPO / "runtime").glob("*.py")) + sorted((REPO / "tools").glob("*.py"))
    assert len(files) >= 10
    for f in files:
        text = f.read_text()
        expected = ours.encode(text, add_bos=False)
        # tokenizer.json splits out special tokens written in the text (synthetic.py has some)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == expected, f.name
    llm.close()
