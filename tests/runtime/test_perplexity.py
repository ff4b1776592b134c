import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from loopcli.cli import main
from loopcli.runtime.model import load_model
from loopcli.runtime.perplexity import perplexity
from loopcli.runtime.synthetic import CORPUS, write_synthetic
from loopcli.runtime.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("ppl") / "m", dtype="f32")


@pytest.fixture(scope="module")
def bos_ckpt(tmp_path_factory):
    """A tokenizer that adds BOS (LoopCoder's does not)."""
    return write_synthetic(tmp_path_factory.mktemp("ppl") / "llama", arch="llama", dtype="f32")


@pytest.mark.parametrize("which", ["ckpt", "bos_ckpt"])
def test_llama_perplexity_method(which, request):
    model, tok = load_model(request.getfixturevalue(which)), Tokenizer.load(request.getfixturevalue(which))
    assert tok.add_bos == (which == "bos_ckpt")
    ctx = 16
    res = perplexity(model, tok, CORPUS, ctx)
    tokens = tok.encode(CORPUS, add_bos=False)
    n_chunks = len(tokens) // ctx
    assert n_chunks >= 3
    assert res.n_tokens == len(res.nll) == n_chunks * (ctx // 2 - 1)
    assert math.isclose(res.ppl, math.exp(sum(res.nll) / len(res.nll)))
    # chunk 1 scored from scratch, BOS (if the tokenizer adds one) in its first slot, second half only
    chunk = torch.tensor([tok.bos_id if tok.add_bos else tokens[ctx], *tokens[ctx + 1:2 * ctx]])
    logp = F.log_softmax(model(chunk[None])[0], -1)
    want = [-logp[j, chunk[j + 1]].item() for j in range(ctx // 2, ctx - 1)]
    got = res.nll[ctx // 2 - 1: 2 * (ctx // 2 - 1)]
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-5


def test_cli_json(ckpt, tmp_path, monkeypatch, capsys):
    text = tmp_path / "t.py"
    text.write_text(CORPUS)
    monkeypatch.setattr(sys, "argv", ["loopcli", "perplexity", str(ckpt), "--file", str(text),
                                      "--ctx", "32", "--json"])
    main()
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"ppl", "n_tokens", "nll"}
    assert out["n_tokens"] == len(out["nll"]) > 0
    assert math.isclose(out["ppl"], math.exp(sum(out["nll"]) / len(out["nll"])), rel_tol=1e-9)
    # a random model over a 512-token vocabulary is near uniform
    assert 50 < out["ppl"] < 5000
