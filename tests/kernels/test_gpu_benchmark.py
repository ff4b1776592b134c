"""benchmarks/gpu.py: refuses cleanly without CUDA; its pieces run at a tiny shape on the CPU."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loopcli.runtime.engine import Engine

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.py"
TINY = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512)


@pytest.fixture
def gpu(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "DEVICE", "cpu")
    monkeypatch.setattr(mod, "SHAPE", TINY)
    monkeypatch.setattr(mod, "CONTEXTS", (1024, 2048))
    monkeypatch.setattr(mod, "PROMPT", 40)
    return mod


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU refusal needs a machine without CUDA")
def test_without_cuda_it_exits_2_with_one_error_line():
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.startswith("error:") and "CUDA" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("qtype", ["q4_k_m", "q8_0"])
def test_measure_on_the_torch_engine_at_a_tiny_shape(gpu, qtype):
    cfg, raw = gpu.random_model(qtype)
    assert raw["lm_head.weight"].ggml_type == (14 if qtype == "q4_k_m" else 8)  # Q6_K head in the mix
    eng = Engine(cfg, raw, device="cpu", kv_dtype=torch.float16, max_context=32768)
    out = gpu.measure(eng, cfg, 2, 40, 1e-3, 1e-6, 1e-3)  # tiny peaks: fractions that round above 0
    for key in ("decode_tok_s_1k", "decode_tok_s_2k", "bandwidth_frac_peak_1k", "prompt_tok_s",
                "prompt_frac_peak_tflops", "r2_over_r1_decode_time"):
        assert out[key] > 0, key
    # bytes of a step: weights read once (not the embedding table) plus the 2k loop-0 cache
    kv = cfg.num_layers * 2 * cfg.num_kv_heads * 2048 * cfg.head_dim * 2
    assert gpu.step_bytes(eng, 2048) - gpu.step_bytes(eng, 0) == kv


def test_llama_cpp_reads_the_r1_gguf_it_writes(gpu, monkeypatch):
    llama_cpp = pytest.importorskip("llama_cpp")
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: True)  # run it on the CPU here
    monkeypatch.setattr(gpu, "CONTEXTS", (64, 128))
    out = gpu.llama_cpp_section("q4_k_m", 2, 100.0)
    assert out["decode_tok_s_0k"] > 0 and out["prompt_tok_s"] > 0


def test_the_matmul_sweep_runs_every_tile_choice_and_checks_it(gpu, monkeypatch):
    monkeypatch.setattr(gpu, "SWEEP_SHAPES", [("tiny", 24, 2048), ("other", 16, 2048)])
    # planar, as the engine keeps it; one decode row count and one warp count (the same code in
    # the interpreter) keep it short
    monkeypatch.setattr(gpu, "SWEEP_WARPS", (4,))
    out = gpu.matmul_sweep("q8_0", 100.0, lambda: 1e9, reps=1, peak_tf=1.0, prefill_rows=24, decode_rows=(2,))
    for key in ("tiny_M2", "other_M2"):
        res = out[key]
        assert len(res["configs"]) == 18 and res["default"]["us"] > 0
        assert {c["kernel"] for c in res["configs"]} == {"qmv8", "qmv"} and res["default"]["kernel"] == "qmv8"
        assert {c["split_k"] for c in res["configs"]} == {1, 2}  # with and without split-K
        # the same int8 activations, summed as integers or as floats in any order, rounded to
        # f16: at most a rounding step apart (2^-11), not a quantization step (~1e-2)
        assert max(c["max_rel_diff"] for c in res["configs"]) < 1e-3
        assert res["quantize_us"] > 0
    for key in ("tiny_prefill", "other_prefill"):
        res = out[key]
        assert set(res) >= {"default", *gpu.GEMM_TILES} and res["M"] == 24
        for label in ("default", *gpu.GEMM_TILES):  # every tile launches in the interpreter
            assert res[label]["us"] > 0 and res[label]["max_rel_diff"] < 1e-3, (label, res[label])
    assert gpu.matmul_sweep("q4_k_m", 100.0, lambda: 0.0, reps=1) == {"skipped": "time budget"}


def test_the_gpu_script_counts_the_triton_engines_launches(gpu):
    from loopcli.runtime.triton_engine import TritonEngine

    cfg, raw = gpu.random_model("q4_k_m")
    eng = TritonEngine(cfg, raw, device="cpu", kv_dtype=torch.float16, max_context=256)
    eng.prefill([1, 2, 3])
    got = gpu.step_launches(eng)
    assert 0 < got["triton"] <= 14 * cfg.num_layers + 8 and got["torch"] <= 2 * cfg.num_layers + 16, got


def test_a_decode_step_launches_few_kernels_a_layer(tmp_path):
    """benchmarks/decode_launches.py on 1- and 2-layer q4_k_m models: a layer costs at most 14
    Triton launches (norms, matmuls, RoPE, the gate, the K/V write, attention, SwiGLU, one
    quantizer) and 1 torch op (the concat of a layer whose qkv mixes Q4_K and Q6_K). Before
    the session that wrote this test it was 10 and 19."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "decode_launches.py"
    spec = importlib.util.spec_from_file_location("decode_launches", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    runs = []
    for layers in (1, 2):
        out = tmp_path / f"{layers}.json"
        assert mod.main(["--layers", str(layers), "--out", str(out)]) == 0
        runs.append(json.loads(out.read_text()))
    triton = runs[1]["triton_total"] - runs[0]["triton_total"]
    torch_ops = runs[1]["torch_total"] - runs[0]["torch_total"]
    assert 0 < triton <= 14 and torch_ops <= 1, (runs[0], runs[1])
    assert runs[1]["triton"]["_qmv8_kernel"] > 0 and "index_copy_" not in runs[1]["torch"]
    assert mod.main(["--layers", "0"]) == 2
    missing = tmp_path / "no" / "such.json"
    assert mod.main(["--layers", "1", "--out", str(missing)]) == 2 and not missing.parent.exists()
