"""Our CPU kernel (runtime/cpu_kernels): exact against dequantize-then-matmul of the same
blocks with the activations rounded the way it rounds them, AVX2 and scalar code alike, odd
shapes, rows independent of how many are multiplied, and the torch fallback."""

import os
import shutil
import warnings

import numpy as np
import pytest
import torch

from loopcli.convert.quants import quantize
from loopcli.runtime import blocks, cpu_kernels, qmatmul

KERNEL_TYPES = [blocks.Q8_0, blocks.Q4_0, blocks.Q4_K, blocks.Q5_K, blocks.Q6_K]
CAN_BUILD = shutil.which("g++") is not None and shutil.which("ninja") is not None


@pytest.fixture(scope="module")
def kernel():
    if os.environ.get("LOOPCLI_CPU_KERNEL") == "0":
        pytest.skip("LOOPCLI_CPU_KERNEL=0 turns the kernel off")
    k = cpu_kernels.get()
    if k is None and not CAN_BUILD:
        pytest.skip("no g++/ninja here: the kernel cannot be built (the fallback test covers this)")
    assert k is not None, "g++ and ninja are here, so the kernel must build"
    return k


def raw_blocks(w: np.ndarray, t: int) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(quantize(w, t)).view(np.uint8).reshape(w.shape[0], -1))


def int8_activations(x: torch.Tensor, t: int) -> torch.Tensor:
    """The kernel's activation rounding, in torch: per 32 values for Q8_0 / Q4_0 and per 256 for
    the K formats (llama.cpp's q8_0 and q8_K), scale amax / 127, round half even."""
    g = x.reshape(x.shape[0], -1, blocks.BLOCK[t][0])
    d = g.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    return (torch.round(g * inv) * d).reshape(x.shape)


def case(t: int, n: int, k: int, m: int, seed: int):
    rng = np.random.default_rng(seed)
    w = (0.05 * rng.standard_normal((n, k))).astype(np.float32)
    raw = raw_blocks(w, t)
    x = torch.from_numpy(rng.standard_normal((m, k)).astype(np.float32))
    ref = int8_activations(x, t).double() @ blocks.dequantize(t, raw, k).double().T
    return x, raw, ref


# K: a multiple of 32 but not of 256 for the 32-value formats; N odd; M = 1..4 (decode) and 9
SHAPES = {blocks.Q8_0: [(37, 96), (5, 800), (24, 320)], blocks.Q4_0: [(37, 96), (5, 800)],
          blocks.Q4_K: [(37, 256), (5, 768), (24, 512)], blocks.Q5_K: [(37, 256), (5, 768)],
          blocks.Q6_K: [(37, 256), (5, 768), (24, 512)]}
X8 = [blocks.Q8_0, blocks.Q4_K, blocks.Q6_K]  # the types the kernel repacks into its x8 layout (with AVX2)


def as_kernel_reads(kernel, raw, t, k, layout):
    """The weight and type id to pass: the GGUF rows, or the x8 repack of them."""
    if layout == "gguf":
        return raw, t
    packed, kt = kernel.repack(raw, t, k)
    assert kt == t | cpu_kernels.X8 and packed.numel() == kernel._x8_bytes(t, raw.shape[0], k)
    return packed, kt


LAYOUTS = [(t, layout, scalar) for t in KERNEL_TYPES for layout in ("gguf", "x8") for scalar in (False, True)
           if layout == "gguf" or (t in X8 and not scalar)]


@pytest.mark.parametrize("t,layout,scalar", LAYOUTS,
                         ids=lambda v: blocks.NAMES[v] if isinstance(v, int) and not isinstance(v, bool) else
                         str(v) if isinstance(v, str) else ("scalar" if v else "simd"))
def test_kernel_equals_dequantize_then_matmul(kernel, t, layout, scalar):
    if layout == "x8" and not kernel.avx2:
        pytest.skip("the x8 layout is read by the AVX2 code only (this CPU has none)")
    for n, k in SHAPES[t]:
        for m in (1, 2, 3, 4, 9):
            x, raw, ref = case(t, n, k, m, seed=n + k + m)
            w, kt = as_kernel_reads(kernel, raw, t, k, layout)
            for tiles in (False, True):
                y = kernel.qgemm(x, w, kt, tiles=tiles, scalar=scalar, rows=n)
                assert y.shape == (m, n) and y.dtype == torch.float32
                err = (y.double() - ref).abs().max().item()
                assert err <= 2e-6 * ref.abs().max().item() + 1e-7, (n, k, m, tiles, err)


@pytest.mark.parametrize("t", KERNEL_TYPES, ids=lambda t: blocks.NAMES[t])
def test_rows_do_not_depend_on_how_many_are_multiplied(kernel, t):
    x, raw, _ = case(t, 21, SHAPES[t][1][1], 7, seed=3)
    whole = kernel.qgemm(x, raw, t, tiles=True)
    for a, b in [(0, 1), (1, 4), (4, 7)]:  # chunks of a prefill: 1, 3 and 3 rows
        assert torch.equal(kernel.qgemm(x[a:b], raw, t, tiles=True), whole[a:b])
    if t in X8 and kernel.avx2:  # the x8 layout: one path, so decode rows equal prefill rows too
        w, kt = as_kernel_reads(kernel, raw, t, x.shape[1], "x8")
        whole = kernel.qgemm(x, w, kt, tiles=True, rows=21)
        for a, b in [(0, 1), (1, 4), (4, 7)]:
            assert torch.equal(kernel.qgemm(x[a:b], w, kt, rows=21), whole[a:b])


def test_kernel_is_behind_qmatmul_for_its_types(kernel):
    x, raw, ref = case(blocks.Q6_K, 9, 256, 2, seed=5)
    w = qmatmul.pack(blocks.Q6_K, raw, 256)
    assert isinstance(w, qmatmul.BlockWeight) and w.nbytes == raw.numel()  # the file's bytes, no copy beyond
    y = qmatmul.linear(x.view(1, 2, 256), w)
    assert y.shape == (1, 2, 9) and (y[0].double() - ref).abs().max() <= 2e-6 * ref.abs().max()
    assert not isinstance(qmatmul.pack(blocks.Q4_1, raw_blocks(np.ones((2, 32), np.float32), blocks.Q4_1), 32),
                          qmatmul.BlockWeight)  # other formats keep the torch path


def test_bad_shapes_are_refused(kernel):
    x, raw, _ = case(blocks.Q4_K, 3, 256, 1, seed=0)
    with pytest.raises(ValueError, match="not a kernel format"):
        kernel.qgemm(x[:, :96], raw, blocks.Q4_K)  # K not a multiple of 256
    with pytest.raises(ValueError, match="not a kernel format"):
        kernel.qgemm(x, raw, blocks.Q4_1)
    with pytest.raises(ValueError, match="rows of 143 bytes"):  # never read past a row
        kernel.qgemm(x, raw[:, :-1].contiguous(), blocks.Q4_K)
    short = raw[:, :-1].contiguous()  # nor repack rows shorter than their width says
    assert kernel.repack(short, blocks.Q4_K, 256) == (short, blocks.Q4_K)


def test_a_failed_build_falls_back_to_torch_with_one_warning(monkeypatch):
    from torch.utils import cpp_extension

    def broken(*a, **kw):
        raise RuntimeError("Error building extension 'loopcli_qgemm'\nqgemm.cpp:1: error: no compiler here")

    monkeypatch.setattr(cpu_kernels, "_state", {})
    monkeypatch.delenv("LOOPCLI_CPU_KERNEL", raising=False)
    monkeypatch.setattr(cpp_extension, "load", broken)
    x, raw, _ = case(blocks.Q8_0, 6, 64, 2, seed=1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        w = qmatmul.pack(blocks.Q8_0, raw, 64)
        qmatmul.pack(blocks.Q8_0, raw, 64)  # tried once: no second build, no second warning
    assert [str(s.message) for s in seen if "CPU kernel" in str(s.message)] == [
        "loopcli: the CPU kernel could not be built (qgemm.cpp:1: error: no compiler here); "
        "quantized matmuls use the slower torch path"]
    assert isinstance(w, qmatmul.Int4Weight)
    ref = x @ blocks.dequantize(blocks.Q8_0, raw, 64).T
    assert (qmatmul.linear(x, w) - ref).abs().max() <= 1e-2 * ref.abs().max()


def test_the_kernel_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_state", {})
    monkeypatch.setenv("LOOPCLI_CPU_KERNEL", "0")
    assert cpu_kernels.get() is None
    x, raw, _ = case(blocks.Q4_K, 4, 256, 1, seed=2)
    assert isinstance(qmatmul.pack(blocks.Q4_K, raw, 256), qmatmul.Int4Weight)


def test_engine_decodes_through_the_kernel_and_keeps_top1(kernel, tmp_path):
    """Prefill (tiles) and fused decode (blocks in registers) on q8_0 and q4_k_m weights agree
    with the f32 reference's top-1 on a model with confident predictions (R = 2)."""
    from safetensors.torch import load_file, save_file

    from loopcli.convert.export import convert
    from loopcli.runtime.engine import load
    from loopcli.runtime.model import load_model
    from loopcli.runtime.synthetic import write_synthetic

    d = write_synthetic(tmp_path / "m", arch="loopcoder", dtype="f32", plt_num_loops=2, plt_window_size=[3, 0])
    t = load_file(d / "model.safetensors")
    E = t["model.embed_tokens.weight"]
    perm = torch.randperm(E.shape[0], generator=torch.Generator().manual_seed(3))
    t["lm_head.weight"] = 8.0 * E[perm] / E[perm].norm(dim=-1, keepdim=True)
    save_file(t, d / "model.safetensors", metadata={"format": "pt"})
    ref = load_model(d)
    ids = torch.randint(0, ref.cfg.vocab_size, (120,), generator=torch.Generator().manual_seed(1))
    want = ref(ids[None])[0].argmax(-1)
    for qtype in ("q8_0", "q4_k_m"):
        eng = load(convert(d, tmp_path / f"{qtype}.gguf", qtype, show_progress=False))
        weights = [w for layer in eng.layers for w in (layer.qkv, layer.wo, layer.gate_up, layer.down)]
        kernel_ones = sum(isinstance(w, qmatmul.BlockWeight) for w in weights)
        # q4_k_m on this tiny model: K-quants where the widths allow, 32-value fallbacks elsewhere
        assert kernel_ones == len(weights) if qtype == "q8_0" else kernel_ones > 0
        steps = [eng.prefill(ids[:20].tolist())] + [eng.step(int(i)) for i in ids[20:]]
        decoded = torch.stack(steps).argmax(-1)
        assert (decoded == want[19:]).float().mean() >= (0.99 if qtype == "q8_0" else 0.95), qtype
