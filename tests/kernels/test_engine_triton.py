"""The engine's exactness tests on the Triton path (interpreter on CPU, compiled on a GPU):
the same logits as the reference forward, whole-prompt prefill and token-by-token decode."""

import pytest
import torch
from kernel_env import DEVICE, SLOW

import loopcli.runtime.engine as engine_mod
from loopcli.convert.export import convert
from loopcli.kernels import qmatmul as kq
from loopcli.runtime import cpu_kernels
from loopcli.runtime.engine import load
from loopcli.runtime.model import load_model
from loopcli.runtime.synthetic import write_synthetic
from loopcli.runtime.triton_engine import GGUFWeight, TritonEngine

# by default the PLT case with both attention branches; R = 3 and the R = 1 layout when slow
MODELS = [("loopcoder", 2), ("loopcoder", 3), ("llama", 1)] if SLOW else [("loopcoder", 2)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("triton-engine")
    out = {}
    for arch, loops in MODELS:
        kw = dict(plt_num_loops=loops, plt_window_size=[3, 0]) if arch == "loopcoder" else {}
        d = write_synthetic(root / f"{arch}{loops}", arch=arch, dtype="f32", **kw)
        out[arch, loops] = (d, convert(d, root / f"{arch}{loops}-f32.gguf", "f32", show_progress=False))
    return out


def prompt(vocab, n, seed=1):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("arch, loops", MODELS)
def test_triton_engine_logits_equal_the_reference_forward(checkpoints, monkeypatch, arch, loops):
    ckpt, gguf_path = checkpoints[arch, loops]
    ref = load_model(ckpt)
    ids = prompt(ref.cfg.vocab_size, 30 if SLOW else 12)
    full = ref(torch.tensor(ids)[None])[0]
    eng = load(gguf_path, device=DEVICE, kv_dtype=torch.float32, kernels="triton")
    assert isinstance(eng, TritonEngine) and isinstance(eng.layers[0].qkv, GGUFWeight)
    eng.graphs = False  # the eager step here; the CUDA graph has its own GPU test
    monkeypatch.setattr(engine_mod, "PREFILL_CHUNK", 8)  # two chunks: the second reads cache and rings
    assert (eng.logits(ids) - full).abs().max() <= 1e-4
    eng.reset()
    steps = [eng.prefill(ids[:9])] + [eng.step(t) for t in ids[9:-1]]  # 9 > ring: wraps
    assert (torch.stack(steps) - full[8:-1]).abs().max() <= 1e-4


def test_triton_engine_on_quantized_weights_matches_the_torch_engine(checkpoints, tmp_path, monkeypatch):
    """q4_k_m (Q4_K, Q6_K, Q8_0 rows) read by the kernels: the engine on the kernels' torch
    twins to float rounding, and the torch engine's exact path (f32 activations) as closely as
    the CPU kernel's engine, which quantizes activations the same way."""
    ckpt = write_synthetic(tmp_path / "m", arch="loopcoder", dtype="f32", plt_num_loops=2, plt_window_size=[3, 0],
                           hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                           num_hidden_layers=1)
    path = convert(ckpt, tmp_path / "q4km.gguf", "q4_k_m", show_progress=False)
    ids = prompt(512, 8)

    def run(eng):
        eng.graphs = False
        return torch.stack([eng.prefill(ids[:6])] + [eng.step(t) for t in ids[6:]]).cpu()

    exact = run(load(path, packed=False))
    got = run(load(path, device=DEVICE, kernels="triton"))
    scale = exact.abs().max()
    with monkeypatch.context() as m:
        m.setattr(kq, "triton_ok", lambda t: False)  # every matmul through qmatmul_torch
        twin = run(load(path, device=DEVICE, kernels="triton"))
    assert (got - twin).abs().max() <= 1e-4 * scale
    err = (got - exact).abs().max()
    if cpu_kernels.get() is None:
        pytest.skip("no C++ compiler here: no CPU kernel engine to compare with")
    cpu = run(load(path))  # BlockWeight: int8 activations per 32 / 256, as the kernels
    assert err <= 1.5 * (cpu - exact).abs().max() + 1e-4 * scale, (err, (cpu - exact).abs().max())


def test_a_token_outside_the_vocabulary_is_a_clear_error(checkpoints):
    """The kernel's embedding lookup cannot raise on the device: the step checks the id first."""
    eng = load(checkpoints["loopcoder", 2][1], device=DEVICE, kernels="triton")
    eng.prefill([1, 2, 3])
    for bad in (-1, eng.cfg.vocab_size):
        with pytest.raises(engine_mod.ModelError, match="outside the vocabulary"):
            eng.step(bad)
    assert eng.step(4).shape == (eng.cfg.vocab_size,)  # the state is untouched: it goes on


def test_forcing_triton_without_a_way_to_run_it_is_a_clear_error(checkpoints, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if DEVICE == "cuda":
        pytest.skip("with CUDA the Triton path is always runnable")
    with pytest.raises(engine_mod.ModelError, match="TRITON_INTERPRET=1"):
        load(checkpoints["loopcoder", 2][1], kernels="triton")
    with pytest.raises(engine_mod.ModelError, match="'triton' or 'torch'"):
        load(checkpoints["loopcoder", 2][1], kernels="cuda")
    assert type(load(checkpoints["loopcoder", 2][1])) is engine_mod.Engine  # CPU default: the torch path


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU")
def test_cuda_graph_decode_equals_eager_decode(checkpoints):
    ckpt, gguf_path = checkpoints["loopcoder", 2]
    ids = prompt(512, 40)
    eager = load(gguf_path, device="cuda", kernels="triton")
    eager.graphs = False
    graphed = load(gguf_path, device="cuda", kernels="triton")
    assert graphed.graphs
    a = [eager.prefill(ids[:5])] + [eager.step(t) for t in ids[5:]]
    b = [graphed.prefill(ids[:5])] + [graphed.step(t) for t in ids[5:]]
    assert graphed.graphs and graphed._graph is not None  # captured, and kept through cache growth
    assert (torch.stack(a) - torch.stack(b)).abs().max() <= 1e-4


@pytest.mark.parametrize("qtype", ["q8_0", "q4_k_m"])  # q4_k_m: a Q4_K / Q6_K stacked qkv reads one int8 form
def test_decode_steps_take_the_int8_activations_their_producers_write(tmp_path, monkeypatch, qtype):
    """One layer: RMSNorm and SwiGLU write their outputs' int8 form for the decode matmuls after
    them, so the quantizer runs only before the attention output and the head: 2 launches a
    step, not 5 or more; and the logits stay those of quantizing in every matmul."""
    from loopcli.kernels import qmatmul_int8

    ckpt = write_synthetic(tmp_path / "m", arch="loopcoder", dtype="f32", plt_num_loops=2, plt_window_size=[3, 0],
                           hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                           num_hidden_layers=1)
    path = convert(ckpt, tmp_path / "m.gguf", qtype, show_progress=False)
    ids = prompt(512, 8)
    eng = load(path, device=DEVICE, kernels="triton")
    eng.graphs = False
    eng.prefill(ids[:6])
    calls = []
    real = qmatmul_int8.quantize_rows
    monkeypatch.setattr(qmatmul_int8, "quantize_rows", lambda x, *a, **k: (calls.append(x.shape), real(x, *a, **k))[1])
    fused = [eng.step(t) for t in ids[6:]]
    assert len(calls) == 2 * len(fused)
    monkeypatch.setattr(GGUFWeight, "int8_group", lambda self, x: None)  # every matmul quantizes for itself
    eng.reset()
    eng.prefill(ids[:6])
    calls.clear()
    alone = [eng.step(t) for t in ids[6:]]
    assert len(calls) >= 5 * len(alone)
    if DEVICE == "cpu":  # the interpreter rounds alike; a GPU may fuse a multiply-add in one launch, not the other
        assert torch.equal(torch.stack(fused), torch.stack(alone))
    else:
        assert (torch.stack(fused) - torch.stack(alone)).abs().max() <= 1e-2 * torch.stack(alone).abs().max()
