"""`loopcli convert` and `loopcli inspect`: types, recipe, round trips, rebuilds, bad input."""

import json
import os
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from loopcli.cli import main
from loopcli.convert.export import convert
from loopcli.convert.inspect import inspect_gguf, parse_size
from loopcli.convert.recipe import TYPES, use_more_bits
from loopcli.runtime.checkpoint import Checkpoint
from loopcli.runtime.gguf_format import gguf_name
from loopcli.runtime.model import load_model
from loopcli.runtime.synthetic import write_synthetic

Q = gguf.GGMLQuantizationType
# relative RMSE bound per --type on N(0, std) weights (measured: about 1/3 of each bound)
REL_RMSE = {"f32": 1e-7, "f16": 1e-3, "bf16": 5e-3, "q8_0": 1e-2, "q4_0": 0.15, "q4_k": 0.12,
            "q5_k": 0.06, "q6_k": 0.03, "q4_k_m": 0.12, "q5_k_m": 0.06}


@pytest.fixture(scope="module")
def plt_ckpt(tmp_path_factory, sizes):
    return write_synthetic(tmp_path_factory.mktemp("src") / "plt", dtype="f32", **sizes)


def tensors_of(path):
    r = gguf.GGUFReader(path)
    return {t.name: t for t in r.tensors}, r


@pytest.mark.parametrize("type_name", list(TYPES))
def test_round_trip_within_type_error(plt_ckpt, tmp_path, type_name):
    out = convert(plt_ckpt, tmp_path / "m.gguf", type_name, show_progress=False)
    got, _ = tensors_of(out)
    src = dict(Checkpoint(plt_ckpt).tensors())
    assert len(got) == len(src)
    for hf, ref in src.items():
        t = got[gguf_name(hf)]
        deq = gguf.quants.dequantize(t.data, t.tensor_type).reshape(ref.shape)
        ref = ref.numpy()
        rel = np.sqrt(np.mean((deq - ref) ** 2)) / np.sqrt(np.mean(ref ** 2))
        bound = 1e-7 if t.tensor_type == Q.F32 else REL_RMSE[type_name]
        assert rel <= bound, (hf, t.tensor_type.name, rel)


def test_q4_k_m_follows_llama_cpp_recipe(plt_ckpt, tmp_path, sizes):
    got, r = tensors_of(convert(plt_ckpt, tmp_path / "m.gguf", "q4_k_m", show_progress=False))
    n = sizes["num_hidden_layers"]
    assert got["output.weight"].tensor_type == Q.Q6_K
    assert got["token_embd.weight"].tensor_type == Q.Q4_K
    for i in range(n):
        more = Q.Q6_K if use_more_bits(i, n) else Q.Q4_K
        assert got[f"blk.{i}.attn_v.weight"].tensor_type == more
        assert got[f"blk.{i}.ffn_down.weight"].tensor_type == more
        assert got[f"blk.{i}.attn_q.weight"].tensor_type == Q.Q4_K
        assert got[f"blk.{i}.attn_norm.weight"].tensor_type == Q.F32
        assert got[f"blk.{i}.plt_gate.weight"].tensor_type == Q.F32
    assert [use_more_bits(i, 8) for i in range(8)] == [True, False, False, True, False, False, True, True]
    assert r.get_field("general.file_type").contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M


def test_rows_that_do_not_fit_fall_back_like_llama_cpp(tmp_path):
    ckpt = write_synthetic(tmp_path / "tiny", dtype="f32")  # hidden 64: no 256-element blocks
    got, _ = tensors_of(convert(ckpt, tmp_path / "m.gguf", "q4_k_m", show_progress=False))
    assert got["blk.0.attn_q.weight"].tensor_type == Q.Q5_0  # Q4_K -> Q5_0
    assert got["output.weight"].tensor_type == Q.Q8_0  # Q6_K -> Q8_0


def test_plt_keys_and_tokenizer_metadata(plt_ckpt, tmp_path):
    _, r = tensors_of(convert(plt_ckpt, tmp_path / "m.gguf", "q8_0", show_progress=False))
    f = lambda k: r.get_field(k).contents()
    cfg = json.loads((plt_ckpt / "config.json").read_text())
    assert f("general.architecture") == "loopcoder"
    assert f("loopcoder.loop_count") == cfg["plt_num_loops"]
    assert f("loopcoder.loop_window") == cfg["plt_window_size"][0]
    assert f("loopcoder.normalize_per_loop") is True
    assert f("loopcoder.loop_embedding_scale") == pytest.approx(cfg["plt_emb_scale"])
    assert f("loopcoder.loop_hidden_scale") == pytest.approx(cfg["plt_hidden_scale"])
    assert f("loopcoder.gate_uses_hidden_states") is True
    # SentencePiece vocabulary laid out as llama.cpp lays it out (tests/convert/test_vocab.py has more)
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(plt_ckpt / "tokenizer.model"))
    tokens, types = f("tokenizer.ggml.tokens"), f("tokenizer.ggml.token_type")
    assert len(tokens) == cfg["vocab_size"] and f("tokenizer.ggml.model") == "llama"
    assert tokens[:sp.get_piece_size()] == [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    assert f("tokenizer.ggml.bos_token_id") == 1 and f("tokenizer.ggml.add_bos_token") is False
    assert tokens[454] == "<|im_end|>" and types[454] == gguf.TokenType.CONTROL
    assert "<tool_call>" in f("tokenizer.chat_template")


def test_r2_export_rebuilds_the_model(tmp_path, confident, sizes):
    ckpt = confident(tmp_path / "plt", **sizes)
    ids = torch.randint(0, 512, (200,), generator=torch.Generator().manual_seed(0))[None]
    ref = load_model(ckpt)(ids)[0]
    f32 = load_model(convert(ckpt, tmp_path / "f32.gguf", "f32", show_progress=False))
    assert f32.cfg.num_loops == 2 and f32.cfg.window == 64
    assert (f32(ids)[0] - ref).abs().max() <= 1e-6
    q8 = load_model(convert(ckpt, tmp_path / "q8.gguf", "q8_0", show_progress=False))(ids)[0]
    assert (ref.argmax(-1) == ids[0]).float().mean() < 0.2  # the layers decide, not a copy
    assert 0 < (q8 - ref).abs().max() < 0.1
    assert (q8.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.99


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_r1_export_round_trips_through_our_reader(tmp_path, arch):
    """llama files hold q/k permuted for llama.cpp's RoPE; reading them back undoes it."""
    ckpt = write_synthetic(tmp_path / arch, arch=arch, dtype="f32",
                           rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    out = convert(ckpt, tmp_path / "m.gguf", "f32", show_progress=False)
    got, r = tensors_of(out)
    assert r.get_field("general.architecture").contents() == arch
    assert "rope_freqs.weight" in got
    q_file = got["blk.0.attn_q.weight"].data
    q_src = load_file(ckpt / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"].numpy()
    assert np.array_equal(q_file, q_src) == (arch == "qwen2")
    ids = torch.arange(1, 50)[None]
    assert (load_model(out)(ids) - load_model(ckpt)(ids)).abs().max() <= 1e-5


def test_inspect_reports_memory_and_fit(plt_ckpt, tmp_path):
    out = convert(plt_ckpt, tmp_path / "m.gguf", "q4_k_m", show_progress=False)
    info = inspect_gguf(out, ctx=1000, gpu_mem="1MB")
    per_token = 8 * 2 * 2 * 64 * 2  # layers * (K, V) * kv heads * head dim * 2 bytes
    assert info["architecture"] == "loopcoder" and info["loops"] == 2
    assert info["memory"]["kv_global_bytes"] == 1000 * per_token
    assert info["memory"]["kv_window_bytes"] == 65 * per_token
    assert info["parameters"] == sum(t.numel() for _, t in Checkpoint(plt_ckpt).tensors())
    assert info["tensors"]["Q6_K"] == 1 + 2 * sum(use_more_bits(i, 8) for i in range(8))
    assert info["fits"] is False
    assert inspect_gguf(out, ctx=1000, gpu_mem="1GiB")["fits"] is True
    assert parse_size("12GiB") == 12 * 1024 ** 3 and parse_size("8GB") == 8 * 10 ** 9


# ---- bad input: one message, exit 2, no traceback, nothing left behind


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["loopcli", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def assert_clean_failure(monkeypatch, capsys, args, out_dir, *needles):
    code, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2, err
    assert "Traceback" not in err and err.startswith(("error: ", "Error: ")), err
    for needle in needles:
        assert needle in err, err
    leftovers = [p.name for p in out_dir.iterdir() if p.suffix in (".gguf", ".part")]
    return leftovers


@pytest.fixture
def tiny(tmp_path):
    return write_synthetic(tmp_path / "src", dtype="f32")


def test_missing_config(monkeypatch, capsys, tiny, tmp_path):
    (tiny / "config.json").unlink()
    left = assert_clean_failure(monkeypatch, capsys, ["convert", str(tiny), str(tmp_path / "o.gguf")],
                                tmp_path, "config.json")
    assert left == []


def test_truncated_weights(monkeypatch, capsys, tiny, tmp_path):
    data = (tiny / "model.safetensors").read_bytes()
    (tiny / "model.safetensors").write_bytes(data[:1000])
    left = assert_clean_failure(monkeypatch, capsys, ["convert", str(tiny), str(tmp_path / "o.gguf")],
                                tmp_path, "truncated")
    assert left == []


def test_missing_tokenizer(monkeypatch, capsys, tiny, tmp_path):
    (tiny / "tokenizer.model").unlink()
    left = assert_clean_failure(monkeypatch, capsys, ["convert", str(tiny), str(tmp_path / "o.gguf")],
                                tmp_path, "tokenizer.json")
    assert left == []


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_tensor_is_named(monkeypatch, capsys, tiny, tmp_path, bad):
    t = load_file(tiny / "model.safetensors")
    t["model.layers.1.mlp.up_proj.weight"][3, 5] = bad
    save_file(t, tiny / "model.safetensors")
    left = assert_clean_failure(monkeypatch, capsys, ["convert", str(tiny), str(tmp_path / "o.gguf")],
                                tmp_path, "model.layers.1.mlp.up_proj.weight", "NaN" if bad != bad else "Inf")
    assert left == []


def test_unknown_type(monkeypatch, capsys, tiny, tmp_path):
    left = assert_clean_failure(monkeypatch, capsys,
                                ["convert", str(tiny), str(tmp_path / "o.gguf"), "--type", "q3_xs"],
                                tmp_path, "q3_xs", "q4_k_m")
    assert left == []


@pytest.mark.parametrize("where", ["missing-dir", "proc"])
def test_unwritable_output(monkeypatch, capsys, tiny, tmp_path, where):
    # /proc refuses new files even to root (CI runs as root, so chmod would prove nothing)
    out = tmp_path / "missing" / "o.gguf" if where == "missing-dir" else Path("/proc/o.gguf")
    assert_clean_failure(monkeypatch, capsys, ["convert", str(tiny), str(out)], tmp_path, "cannot write")
    assert not out.exists()


def test_existing_output_needs_force(monkeypatch, capsys, tiny, tmp_path):
    out = tmp_path / "o.gguf"
    out.write_bytes(b"precious")
    code, err = run_cli(monkeypatch, capsys, "convert", str(tiny), str(out))
    assert code == 2 and "--force" in err and out.read_bytes() == b"precious"
    code, _ = run_cli(monkeypatch, capsys, "convert", str(tiny), str(out), "--force", "--type", "f16")
    assert code == 0 and out.read_bytes()[:4] == b"GGUF"


def test_interrupt_leaves_no_partial_output(monkeypatch, tiny, tmp_path):
    import loopcli.convert.encode as encode

    calls = {"n": 0}
    real = encode.quantize

    def interrupted(data, qtype):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(data, qtype)

    monkeypatch.setattr(encode, "quantize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(tiny, tmp_path / "o.gguf", "q8_0", show_progress=False)
    assert [p.name for p in tmp_path.iterdir() if p.name != "src"] == []


def test_gguf_tokenizer_equals_tokenizer_json(plt_ckpt, tmp_path):
    from pathlib import Path as P

    from loopcli.runtime.tokenizer import Tokenizer

    out = convert(plt_ckpt, tmp_path / "m.gguf", "q8_0", show_progress=False)
    hf, gg = Tokenizer.load(plt_ckpt), Tokenizer.load(out)
    assert (gg.bos_id, gg.add_bos, gg.eos_token) == (hf.bos_id, hf.add_bos, hf.eos_token)
    assert gg.chat_template == hf.chat_template
    root = P(__file__).resolve().parents[2]
    for f in sorted(root.glob("*/*.py")):
        text = f.read_text()
        assert gg.encode(text) == hf.encode(text), f.name
        assert gg.decode(gg.encode(text, add_bos=False)) == text


def test_readme_pipeline_convert_inspect_perplexity(monkeypatch, capsys, plt_ckpt, tmp_path):
    out = tmp_path / "m.gguf"
    assert run_cli(monkeypatch, capsys, "convert", str(plt_ckpt), str(out))[0] == 0
    monkeypatch.setattr(sys, "argv", ["loopcli", "inspect", str(out), "--json", "--gpu-mem", "8GB"])
    main()
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "loopcoder" and info["fits"] is True
    text = tmp_path / "t.txt"
    text.write_text(open(__file__).read())
    for model in (plt_ckpt, out):
        monkeypatch.setattr(sys, "argv", ["loopcli", "perplexity", str(model), "--file", str(text), "--ctx", "64", "--json"])
        main()
        ppl = json.loads(capsys.readouterr().out)["ppl"]
        assert 100 < ppl < 2000  # a random model over 512 tokens: near uniform


def test_full_disk_leaves_no_partial_output(monkeypatch, capsys, tiny, tmp_path):
    import errno

    import loopcli.convert.export as export

    real = gguf.GGUFWriter.write_tensor_data
    calls = {"n": 0}

    def disk_full(self, tensor, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, tensor, *a, **kw)

    monkeypatch.setattr(export.gguf.GGUFWriter, "write_tensor_data", disk_full)
    code, err = run_cli(monkeypatch, capsys, "convert", str(tiny), str(tmp_path / "o.gguf"))
    assert code == 2 and "No space left on device" in err
    assert [p.name for p in tmp_path.iterdir() if p.name != "src"] == []


def test_worker_processes_write_the_same_file(plt_ckpt, tmp_path):
    one = convert(plt_ckpt, tmp_path / "one.gguf", "q4_k_m", show_progress=False)
    two = convert(plt_ckpt, tmp_path / "two.gguf", "q4_k_m", show_progress=False, threads=2)
    assert one.read_bytes() == two.read_bytes()


def test_worker_errors_reach_the_user(monkeypatch, capsys, tiny, tmp_path):
    t = load_file(tiny / "model.safetensors")
    t["model.layers.0.self_attn.q_proj.weight"][0, 0] = float("nan")
    save_file(t, tiny / "model.safetensors")
    code, err = run_cli(monkeypatch, capsys, "convert", str(tiny), str(tmp_path / "o.gguf"), "--threads", "2")
    assert code == 2 and "model.layers.0.self_attn.q_proj.weight contains NaN" in err
    assert [p.name for p in tmp_path.iterdir() if p.name != "src"] == []


def test_output_is_an_ordinary_file(tiny, tmp_path):
    out = convert(tiny, tmp_path / "o.gguf", "q8_0", show_progress=False)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
