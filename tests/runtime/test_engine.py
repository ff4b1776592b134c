"""The engine against the reference: block decoding, quantized matmul, logits of whole models."""

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from loopcli.convert.export import convert
from loopcli.convert.quants import quantize
from loopcli.runtime import blocks, qmatmul
from loopcli.runtime.engine import load
from loopcli.runtime.model import load_model
from loopcli.runtime.synthetic import write_synthetic

BLOCK_TYPES = [blocks.Q4_0, blocks.Q4_1, blocks.Q5_0, blocks.Q5_1, blocks.Q8_0, blocks.Q4_K, blocks.Q5_K,
               blocks.Q6_K]
ALL_TYPES = [blocks.F32, blocks.F16, blocks.BF16, *BLOCK_TYPES]


def raw_blocks(x: np.ndarray, t: int) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(quantize(x, t)).view(np.uint8).reshape(x.shape[0], -1))


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: blocks.NAMES[t])
def test_blocks_decode_like_gguf_py(t):
    x = np.random.default_rng(t).standard_normal((6, 512)).astype(np.float32)
    b = quantize(x, t)
    ref = gguf.quants.dequantize(b, t).reshape(6, 512)
    ours = blocks.dequantize(t, raw_blocks(x, t), 512).numpy()
    assert np.array_equal(ours, ref)


@pytest.mark.parametrize("t", ALL_TYPES, ids=lambda t: blocks.NAMES[t])
@pytest.mark.parametrize("rows", [40, 64])
@pytest.mark.parametrize("m", [3, 24])  # decode-sized (packed kernel) and prefill-sized (tiles)
def test_quantized_matmul_equals_dequantize_then_matmul(t, rows, m, monkeypatch):
    monkeypatch.setattr(qmatmul, "PACK_ROWS", 32)  # packed in slices, as large tensors are
    x = (0.05 * np.random.default_rng(rows).standard_normal((rows, 256))).astype(np.float32)
    raw = raw_blocks(x, t)
    w = blocks.dequantize(t, raw, 256)
    a = torch.randn(m, 256, generator=torch.Generator().manual_seed(0))
    ref = a @ w.T
    exact = qmatmul.linear(a, qmatmul.pack(t, raw, 256, packed=False))
    assert (exact - ref).abs().max() <= 1e-5 * ref.abs().max()
    fast = qmatmul.linear(a, qmatmul.pack(t, raw, 256))
    assert fast.shape == ref.shape
    # the packed int4 path rounds activations and group scales to bf16 (2^-9 relative)
    assert (fast - ref).abs().max() <= 1e-2 * ref.abs().max()


INT4_CHECK = """
import numpy as np, torch
from loopcli.convert.quants import quantize
from loopcli.runtime import blocks, qmatmul
qmatmul.PACK_ROWS = 32  # slices narrower than AVX-512's blocks of 64 rows
x = (0.05 * np.random.default_rng(0).standard_normal((100, 256))).astype(np.float32)
raw = torch.from_numpy(np.ascontiguousarray(quantize(x, blocks.Q5_1)).view(np.uint8).reshape(100, -1).copy())
w = blocks.dequantize(blocks.Q5_1, raw, 256)
packed = qmatmul.pack(blocks.Q5_1, raw, 256)
for m in (3, 24):  # the int4 kernel, then tiles unpacked from its layout
    a = torch.randn(m, 256, generator=torch.Generator().manual_seed(m))
    ref = a @ w.T
    print(type(packed).__name__, qmatmul.int4_block(), float((qmatmul.linear(a, packed) - ref).abs().max() / ref.abs().max()))
"""


@pytest.mark.parametrize("level", ["default", "avx2", "avx512"])
def test_the_int4_layout_is_read_at_every_simd_level(level):
    """torch's CPU int4 layout follows the SIMD level it picks (blocks of 32 rows with AVX2, 64
    with AVX-512, another layout without SIMD). A level this CPU lacks runs as a lower one."""
    import os
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", INT4_CHECK], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "ATEN_CPU_CAPABILITY": level})
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line.split() for line in run.stdout.splitlines()]
    assert len(lines) == 2 and all(float(err) <= 1e-2 for *_, err in lines), run.stdout
    if lines[0][0] == "Int4Weight":  # the int4 path is taken only where its layout is known
        assert lines[0][1] in ("32", "64")


MODELS = [("loopcoder", 2), ("loopcoder", 3), ("loopcoder", 1), ("llama", 1), ("qwen2", 1)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    out = {}
    for arch, loops in MODELS:
        kw = dict(plt_num_loops=loops, plt_window_size=[3, 0]) if arch == "loopcoder" else {}
        d = write_synthetic(root / f"{arch}{loops}", arch=arch, dtype="f32", **kw)
        out[arch, loops] = (d, convert(d, root / f"{arch}{loops}-f32.gguf", "f32", show_progress=False))
    return out


def prompt(vocab, n=40, seed=1):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch, loops", MODELS)
def test_f32_logits_equal_the_reference_forward(checkpoints, arch, loops):
    ckpt, f32_gguf = checkpoints[arch, loops]
    ref = load_model(ckpt)
    ids = prompt(ref.cfg.vocab_size)
    full = ref(ids[None])[0]
    for source in (ckpt, f32_gguf):
        eng = load(source, kv_dtype=torch.float32)
        assert (eng.logits(ids.tolist()) - full).abs().max() <= 1e-4
        # prefill then fused decode, token by token
        eng.reset()
        steps = [eng.prefill(ids[:9].tolist())] + [eng.step(int(t)) for t in ids[9:-1]]
        assert (torch.stack(steps) - full[8:-1]).abs().max() <= 1e-4


def confident_checkpoint(root, loops, scale=8.0):
    """A random model whose head reads a fixed permutation of the input embedding: its
    predictions are confident, as a trained model's are."""
    d = write_synthetic(root, arch="loopcoder", dtype="f32", plt_num_loops=loops, plt_window_size=[3, 0])
    t = load_file(d / "model.safetensors")
    E = t["model.embed_tokens.weight"]
    perm = torch.randperm(E.shape[0], generator=torch.Generator().manual_seed(3))
    t["lm_head.weight"] = scale * E[perm] / E[perm].norm(dim=-1, keepdim=True)
    save_file(t, d / "model.safetensors", metadata={"format": "pt"})
    return d


@pytest.mark.parametrize("loops", [1, 2, 3])
def test_q8_0_top1_agrees_with_the_reference(tmp_path, loops):
    d = confident_checkpoint(tmp_path / "m", loops)
    ref = load_model(d)
    ids = prompt(ref.cfg.vocab_size, n=200)
    full = ref(ids[None])[0]
    assert full.softmax(-1).max(-1).values.median() > 0.5  # confident indeed
    eng = load(convert(d, tmp_path / "q8.gguf", "q8_0", show_progress=False))
    same = (eng.logits(ids.tolist()).argmax(-1) == full.argmax(-1)).float().mean()
    assert same >= 0.99


# ------------------------------------------------------------------ chunks, streaming, prefix reuse

import threading  # noqa: E402

import loopcli.runtime.engine as engine_mod  # noqa: E402
from loopcli.runtime.engine import Cancelled, ContextLimitError  # noqa: E402
from loopcli.runtime.generate import Sampler  # noqa: E402


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(engine_mod, "PREFILL_CHUNK", 8)
    monkeypatch.setattr(engine_mod, "SNAPSHOT", 4)


@pytest.mark.parametrize("arch, loops", [("loopcoder", 2), ("loopcoder", 3), ("llama", 1)])
def test_chunked_prefill_equals_one_chunk(checkpoints, monkeypatch, arch, loops):
    eng = load(checkpoints[arch, loops][1], kv_dtype=torch.float32)
    ids = prompt(eng.cfg.vocab_size).tolist()
    whole = eng.logits(ids)
    for chunk in (1, 3, 8):
        monkeypatch.setattr(engine_mod, "PREFILL_CHUNK", chunk)
        assert (eng.logits(ids) - whole).abs().max() <= 1e-5


@pytest.mark.parametrize("arch, loops", [("loopcoder", 2), ("loopcoder", 3), ("qwen2", 1)])
@pytest.mark.parametrize("common", [2, 5, 13, 26])  # window W = 3: inside it, and beyond it
def test_prefix_reuse_gives_a_cold_runs_logits(checkpoints, small_chunks, arch, loops, common):
    eng = load(checkpoints[arch, loops][1])  # f16 KV cache, the default
    first = prompt(eng.cfg.vocab_size, n=30, seed=1).tolist()
    second = first[:common] + prompt(eng.cfg.vocab_size, n=12, seed=2).tolist()
    cold = eng.logits(second)[-1]
    eng.reset()
    list(eng.generate(first, Sampler(), 5))  # state: the first prompt and 4 fed-back tokens
    warm = eng.prefill(second)
    assert 0 <= eng.last_reused <= common
    # R = 1 resumes anywhere; PLT at the last prefill chunk end (every 8 here) or snapshot
    assert eng.last_reused == common if loops == 1 else eng.last_reused > common - 8
    assert (warm - cold).abs().max() <= 1e-5
    # the same prompt again computes nothing
    again = eng.prefill(second)
    assert eng.last_reused == len(second) and (again - cold).abs().max() <= 1e-5


def test_streamed_greedy_tokens_follow_the_cold_logits(checkpoints):
    eng = load(checkpoints["loopcoder", 2][1])
    ids = prompt(eng.cfg.vocab_size, n=12).tolist()
    stream = eng.generate(ids, Sampler(), 10)
    first = next(stream)  # a token comes out before the rest are computed
    assert eng.state.length == len(ids)
    out = [first, *stream]
    cold = eng.logits(ids + out[:-1])
    assert out == cold[len(ids) - 1:].argmax(-1).tolist()


def test_context_limit_is_a_clear_error(checkpoints):
    eng = load(checkpoints["loopcoder", 2][1], max_context=16)
    with pytest.raises(ContextLimitError, match="context limit of 16|context limit is 16"):
        eng.prefill(list(range(20)))
    out = list(eng.generate(list(range(10)), Sampler(), 50))
    assert len(out) == 6  # generation stops at the limit instead of failing


def test_cancel_stops_and_leaves_a_usable_state(checkpoints, small_chunks):
    eng = load(checkpoints["loopcoder", 2][1])
    ids = prompt(eng.cfg.vocab_size, n=30).tolist()
    cancel = threading.Event()
    seen = []

    def progress(done, total):
        seen.append(done)
        if done >= 16:
            cancel.set()

    with pytest.raises(Cancelled):
        eng.prefill(ids, cancel=cancel, on_progress=progress)
    assert eng.state.length == 16 and seen == [8, 16]
    cold = load(checkpoints["loopcoder", 2][1]).logits(ids)[-1]
    assert (eng.prefill(ids) - cold).abs().max() <= 1e-5
    assert eng.last_reused == 16


def test_prefix_reuse_is_exact_on_quantized_weights(checkpoints, small_chunks, tmp_path):
    """Prefill always multiplies through f32 tiles, so a resumed chunk of any length gives
    the cold run's logits on packed (bf16-rounding) weights too."""
    eng = load(convert(checkpoints["loopcoder", 2][0], tmp_path / "q8.gguf", "q8_0", show_progress=False))
    first = prompt(eng.cfg.vocab_size, n=30, seed=1).tolist()
    second = first + prompt(eng.cfg.vocab_size, n=3, seed=2).tolist()
    cold = eng.logits(second)[-1]
    eng.reset()
    list(eng.generate(first, Sampler(), 4))
    assert (eng.prefill(second) - cold).abs().max() <= 1e-5 and eng.last_reused == 30


def test_a_cpu_engine_does_not_load_triton(tmp_path):
    """Triton's library alone is ~70 MB resident: a CPU engine never imports it (the memory
    budget of loading is 1.2 x the GGUF), so a fresh process loads and decodes without it."""
    import subprocess
    import sys

    gguf_path = convert(write_synthetic(tmp_path / "m", arch="llama"), tmp_path / "m.gguf", "q8_0", show_progress=False)
    code = ("import sys; from loopcli.runtime.engine import load; e = load(sys.argv[1], threads=1); "
            "e.prefill([1, 2, 3]); e.step(4); print(sorted(m for m in sys.modules if m.split('.')[0] == 'triton'))")
    run = subprocess.run([sys.executable, "-c", code, str(gguf_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"


def test_prefix_reuse_is_bit_exact_on_a_long_quantized_prompt(tmp_path):
    """A 2,000-token agent prompt, a reply, then the prompt plus 50 tokens: the resumed prefill
    gives the cold run's logits bit for bit (before each row attended its own window, this case
    differed by 6e-3: a last-bit difference turned into an int8 rounding step)."""
    from loopcli.runtime.generate import Sampler

    ckpt = write_synthetic(tmp_path / "m", arch="loopcoder", preset="small", max_position_embeddings=8192)
    eng = load(convert(ckpt, tmp_path / "m.gguf", "q8_0", show_progress=False), threads=1)
    g = torch.Generator().manual_seed(1)
    first = torch.randint(0, eng.cfg.vocab_size, (2000,), generator=g).tolist()
    second = first + torch.randint(0, eng.cfg.vocab_size, (50,), generator=g).tolist()
    cold = eng.prefill(second)
    eng.reset()
    list(eng.generate(first, Sampler(), 8))
    warm = eng.prefill(second)
    assert eng.last_reused == 2000 and torch.equal(warm, cold)


def test_a_step_outside_the_vocabulary_is_a_clear_error(checkpoints):
    eng = load(checkpoints["loopcoder", 2][0])
    eng.prefill([1, 2, 3])
    for bad in (-1, eng.cfg.vocab_size):
        with pytest.raises(engine_mod.ModelError, match="outside the vocabulary"):
            eng.step(bad)
    assert eng.step(4).shape == (eng.cfg.vocab_size,)
