"""`loopcli generate`, `bench` and `perplexity` on GGUFs through the engine."""

import json
import sys

import pytest

from loopcli.cli import main
from loopcli.convert.export import convert
from loopcli.runtime.engine import load
from loopcli.runtime.generate import Sampler, stop_ids
from loopcli.runtime.synthetic import CORPUS, write_synthetic
from loopcli.runtime.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    ckpt = write_synthetic(root / "m", dtype="f32")
    return {t: convert(ckpt, root / f"m-{t}.gguf", t, show_progress=False) for t in ("f32", "q8_0")}


def run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["loopcli", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_json(models, monkeypatch, capsys):
    code, out, err = run(monkeypatch, capsys, "generate", models["q8_0"], "--prompt", "def add(a, b):",
                         "--max-tokens", "12", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert set(res) == {"text", "tokens", "prompt_tokens", "prefill_tok_s", "decode_tok_s"}
    tok = Tokenizer.load(models["q8_0"])
    ids = tok.encode("def add(a, b):")
    assert res["prompt_tokens"] == len(ids) and 1 <= res["tokens"] <= 12
    eng = load(models["q8_0"])
    greedy = list(eng.generate(ids, Sampler(), res["tokens"]))
    eos = stop_ids(eng.cfg, tok)
    if greedy[-1] in eos:  # generation ends at the first EOS, which is not text
        greedy = greedy[:-1]
    assert not eos & set(greedy) and res["text"] == tok.decode(greedy)
    assert res["prefill_tok_s"] > 0


def test_generate_streams_text_and_seeds_sampling(models, monkeypatch, capsys):
    args = ["generate", models["q8_0"], "--prompt", "hello", "--chat", "--max-tokens", "8",
            "--temperature", "1.0", "--seed", "3"]
    first = run(monkeypatch, capsys, *args)
    assert first[0] == 0 and "generated at" in first[2]
    assert run(monkeypatch, capsys, *args)[1] == first[1]


def test_bench_json(models, monkeypatch, capsys):
    code, out, err = run(monkeypatch, capsys, "bench", models["q8_0"], "--prompt-tokens", "32",
                         "--gen-tokens", "4", "--threads", "1", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert {"prompt_tokens", "gen_tokens", "threads", "prompt_tok_s", "decode_tok_s", "peak_rss_bytes",
            "model_bytes"} <= set(res)
    assert (res["prompt_tokens"], res["gen_tokens"], res["threads"]) == (32, 4, 1)
    assert res["model_bytes"] == models["q8_0"].stat().st_size and res["peak_rss_bytes"] > res["model_bytes"]


def test_perplexity_on_gguf_with_kl_base(models, tmp_path, monkeypatch, capsys):
    text = tmp_path / "t.txt"
    text.write_text(CORPUS)
    common = ["--file", text, "--ctx", "32", "--json"]
    code, out, err = run(monkeypatch, capsys, "perplexity", models["f32"], *common, "--kl-base", models["f32"])
    assert code == 0, err
    same = json.loads(out)
    assert same["mean_kld"] == pytest.approx(0, abs=1e-6) and same["same_top1"] == 1.0
    code, out, err = run(monkeypatch, capsys, "perplexity", models["q8_0"], *common, "--kl-base", models["f32"])
    q8 = json.loads(out)
    assert 0 < q8["mean_kld"] < 0.01 and q8["same_top1"] > 0.9
    assert abs(q8["ppl"] / same["ppl"] - 1) < 0.01


@pytest.mark.parametrize("args, message", [
    (["generate", "nope.gguf", "--prompt", "x"], "does not exist"),
    (["bench", "nope.gguf"], "does not exist"),
])
def test_bad_input_exits_2(args, message, monkeypatch, capsys):
    code, out, err = run(monkeypatch, capsys, *args)
    assert code == 2 and message in err and "Traceback" not in err
