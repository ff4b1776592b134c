"""The quantized matmul on the blocks the converter writes, against gguf-py's floats."""

import gguf
import numpy as np
import pytest
import torch
from kernel_env import DEVICE, SLOW

from loopcli.convert.quants import quantize
from loopcli.kernels import qmatmul as Q

NAMES = {Q.F32: "F32", Q.F16: "F16", Q.BF16: "BF16", Q.Q8_0: "Q8_0", Q.Q4_0: "Q4_0", Q.Q4_K: "Q4_K",
         Q.Q5_K: "Q5_K", Q.Q6_K: "Q6_K"}
NAMES.update({t | Q.PLANAR: NAMES[t] + "-planar" for t in Q.PLANES})
PLANAR = [t | Q.PLANAR for t in Q.PLANES]
EXACT = DEVICE == "cpu"  # the interpreter keeps gguf-py's operation order; a GPU may fuse a multiply-add


def weight(t, rows, cols, seed=0):
    """Bytes from the converter's quantizer (rearranged if t is planar) and gguf-py's
    dequantized floats of them."""
    base = t & ~Q.PLANAR
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    raw = np.ascontiguousarray(quantize(w, base)).view(np.uint8).reshape(rows, -1)
    floats = gguf.quants.dequantize(raw, base).reshape(rows, cols)
    data = torch.from_numpy(raw.copy()).to(DEVICE)
    return Q.to_planar(data, base) if t & Q.PLANAR else data, torch.from_numpy(np.array(floats)).to(DEVICE)


def cols_for(t):
    return 300 if Q.BLOCKS[t][0] == 1 else 512  # float types: K not a multiple of any block


@pytest.mark.parametrize("t", list(Q.PLANES), ids=NAMES.get)
def test_the_planar_layout_is_the_same_bytes(t):
    for blocks in (1, 3, 8):  # rows whose planes need padding to 16 bytes, and not
        K = blocks * Q.BLOCKS[t][0]
        data, _ = weight(t, 5, K)
        planar = Q.to_planar(data, t)
        assert planar.shape[1] % 16 == 0 and planar.shape[1] - data.shape[1] < 16
        assert planar.shape[1] == Q.bytes_per_row(t | Q.PLANAR, K)  # what launches are compiled for
        assert Q.columns(planar, t | Q.PLANAR) == K
        assert torch.equal(Q.from_planar(planar, t), data)
        assert sorted(planar[:, :data.shape[1]].flatten().tolist()) == sorted(data.flatten().tolist())


@pytest.mark.parametrize("t", [*Q.TYPES, *PLANAR], ids=NAMES.get)
def test_torch_twin_dequantizes_like_gguf_py(t):
    data, floats = weight(t, 9, cols_for(t))
    assert torch.equal(Q.dequantize_torch(data, t), floats)


@pytest.mark.parametrize("t", [*Q.TYPES, *PLANAR], ids=NAMES.get)
def test_kernel_reads_every_weight_byte_for_byte(t):
    """x = rows of the identity: each output is one weight value, so the kernel's
    dequantization is compared value by value (bit-exact in the interpreter)."""
    K = cols_for(t)
    data, floats = weight(t, 40, K, seed=1)
    spread = torch.tensor([0, 17, 33, 70, 130, 201, 263, K - 1], device=DEVICE)  # every sub-block kind
    # the GEMM (all K values), the decode kernel at every row count (its rows sit in registers)
    for cols in (torch.arange(K, device=DEVICE), *(spread[:m] for m in range(1, 9))):
        eye = torch.eye(K, device=DEVICE)[cols]
        got = Q.qmatmul(eye, data, t)
        want = floats[:, cols].T
        if EXACT:
            assert torch.equal(got, want)
        else:
            torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


SHAPES = [(3, 100, None), (4, 40, 3), (24, 72, None)]  # (M, N, split_k): decode, split-K, GEMM
if SLOW:
    SHAPES += [(1, 40, None), (2, 257, 2), (8, 33, 4), (67, 130, None), (130, 64, None)]


@pytest.mark.parametrize("t", Q.TYPES, ids=NAMES.get)
@pytest.mark.parametrize("m, n, split", SHAPES, ids=str)
def test_matmul_equals_dequantize_then_matmul(t, m, n, split):
    K = cols_for(t)
    data, floats = weight(t, n, K, seed=n)
    x = torch.randn(m, K, generator=torch.Generator().manual_seed(m)).to(DEVICE)
    ref = x.double() @ floats.double().T
    got = Q.qmatmul(x, data, t, split_k=split)
    assert got.shape == (m, n) and got.dtype == x.dtype
    assert (got.double() - ref).abs().max() <= 1e-5 * ref.abs().max()
    twin = Q.qmatmul_torch(x, data, t, split_k=split)
    assert (twin.double() - ref).abs().max() <= 1e-5 * ref.abs().max()


@pytest.mark.parametrize("t", [Q.Q4_K, Q.Q8_0, Q.BF16], ids=NAMES.get)
@pytest.mark.parametrize("m", [2, 20])
def test_half_activations(t, m):
    """f16 activations (the GPU's): the GEMM multiplies in f16 with f32 sums."""
    data, floats = weight(t, 48, cols_for(t), seed=2)
    x = torch.randn(m, cols_for(t), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    ref = x.double() @ floats.double().T
    got = Q.qmatmul(x.half(), data, t)
    assert got.dtype == torch.float16
    assert (got.double() - ref).abs().max() <= 3e-3 * ref.abs().max()


def test_batched_leading_dims_and_bad_input():
    data, floats = weight(Q.Q8_0, 16, 64)
    x = torch.randn(2, 3, 64, device=DEVICE)
    assert torch.allclose(Q.qmatmul(x, data, Q.Q8_0), x @ floats.T, atol=1e-4)
    with pytest.raises(ValueError, match="columns"):
        Q.qmatmul(torch.randn(2, 65, device=DEVICE), data, Q.Q8_0)
    with pytest.raises(ValueError, match="not supported"):
        Q.qmatmul(x, data, 3)


@pytest.mark.parametrize("arch", [90, 86])
@pytest.mark.parametrize("t", [Q.Q4_K, Q.Q6_K, Q.Q8_0, Q.Q4_0, Q.F16, *PLANAR], ids=NAMES.get)
def test_the_gpu_tile_sizes(t, arch, monkeypatch):
    """The interpreter runs the tile sizes a GPU launch takes (several weight-row programs,
    rows past N clamped, split K, the GEMM's row tiles for Hopper and before), not only its
    own larger ones."""
    monkeypatch.setattr(Q, "interpreting", lambda: False)
    monkeypatch.setattr(Q, "_arch", lambda device: arch)
    K = cols_for(t)
    data, floats = weight(t, 100, K, seed=3)
    for m in (1, 2, 3, 20):
        x = torch.randn(m, K, generator=torch.Generator().manual_seed(m)).to(DEVICE)
        cfg = Q.launch_config(m, 100, K, t, Q._sm_count(x.device), arch=arch)
        assert cfg["grid"][0] > 1 or cfg["grid"][1] > 1
        ref = x.double() @ floats.double().T
        got = Q.qmatmul(x, data, t)
        assert (got.double() - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_split_k_sums_in_a_fixed_order():
    """Split-K's partial sums are added after the kernel, not by atomics in arrival order:
    the same inputs give the same bits, call after call (the interpreter runs programs in
    order anyway; on a GPU this is what the test is for)."""
    data, floats = weight(Q.Q4_K, 24, 2048, seed=5)
    x = torch.randn(2, 2048, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    first = Q.qmatmul(x, data, Q.Q4_K, split_k=4)
    assert all(torch.equal(Q.qmatmul(x, data, Q.Q4_K, split_k=4), first) for _ in range(3))
    ref = x.double() @ floats.double().T
    assert (first.double() - ref).abs().max() <= 1e-5 * ref.abs().max()
