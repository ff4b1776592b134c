"""R = 1 `llama` and `qwen2` exports: our engine's perplexity against llama.cpp's (via
llama-cpp-python) over the same chunks of the same tokens: within 0.5 % (1 % for q4_k_m)."""

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from loopcli.convert.export import convert
from loopcli.runtime.engine import load
from loopcli.runtime.perplexity import perplexity
from loopcli.runtime.synthetic import CORPUS, write_synthetic
from loopcli.runtime.tokenizer import Tokenizer

llama_cpp = pytest.importorskip("llama_cpp")
CTX = 64


def confident(path, arch):
    """Small layer weights, larger embeddings used as the head: peaked, stable predictions."""
    ckpt = write_synthetic(path, arch=arch, dtype="f32", std=0.01, hidden_size=256, intermediate_size=512,
                           num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2)
    t = load_file(ckpt / "model.safetensors")
    t["model.embed_tokens.weight"] *= 4
    t["lm_head.weight"] = t["model.embed_tokens.weight"].clone()
    save_file(t, ckpt / "model.safetensors")
    return ckpt


def llama_cpp_ppl(path, tokenizer, text):
    """llama-perplexity's scoring, run by llama.cpp on the chunks our perplexity() uses."""
    tokens = tokenizer.encode(text, add_bos=False)
    llm = llama_cpp.Llama(str(path), n_ctx=CTX, n_batch=CTX, logits_all=True, n_threads=1, verbose=False)
    nll = []
    for c in range(len(tokens) // CTX):
        chunk = tokens[c * CTX:(c + 1) * CTX]
        if tokenizer.add_bos:
            chunk[0] = tokenizer.bos_id
        llm.reset()
        llm.eval(chunk)
        logp = torch.log_softmax(torch.tensor(np.array(llm.scores[:CTX]), dtype=torch.float64), -1)
        nll += [-float(logp[j, chunk[j + 1]]) for j in range(CTX // 2, CTX - 1)]
    llm.close()
    return math.exp(sum(nll) / len(nll)), len(nll)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_perplexity_matches_llama_cpp(tmp_path, arch):
    ckpt = confident(tmp_path / "hf", arch)
    tok = Tokenizer.load(ckpt)
    text = CORPUS * 2
    for type_name, tolerance in [("f32", 0.005), ("q8_0", 0.005), ("q4_k_m", 0.01)]:
        gguf = convert(ckpt, tmp_path / f"{type_name}.gguf", type_name, show_progress=False)
        ours = perplexity(load(gguf, threads=1), tok, text, CTX)
        theirs, n = llama_cpp_ppl(gguf, tok, text)
        assert ours.n_tokens == n > 100
        assert abs(ours.ppl / theirs - 1) <= tolerance, (type_name, ours.ppl, theirs)
