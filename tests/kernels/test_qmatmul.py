"""The quantized matmul on the blocks the converter writes, against gguf-py's floats: quantized
weights meet int8-quantized activations (the CPU kernel's scheme), float weights x as it is."""

import gguf
import numpy as np
import pytest
import torch
from kernel_env import DEVICE, SLOW

from loopcli.convert.quants import quantize
from loopcli.kernels import qmatmul as Q
from loopcli.kernels import qmatmul_int8 as Q8

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


def reference(x, floats, t):
    """float64 product of x as the matmul sees it (int8 and back, for quantized weights)."""
    group = Q.act_group(t)
    xs = Q8.dequantize_rows_torch(x.reshape(-1, x.shape[-1]).float(), group).reshape(x.shape) if group else x
    return xs.double() @ floats.double().T


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
    """x = rows of the identity: each output is one weight value (times the 1 that int8
    quantization makes of 1), so the kernel's dequantization is compared value by value:
    bit-exact in the interpreter where floats are multiplied, to float rounding where dp4a
    sums integers (a misread quant is off by a whole step, 1/15 of its block's range)."""
    K = cols_for(t)
    data, floats = weight(t, 40, K, seed=1)
    group = Q.act_group(t)
    one = Q8.dequantize_rows_torch(torch.eye(1, group), group)[0, 0].item() if group else 1.0
    spread = torch.tensor([0, 17, 33, 70, 130, 201, 263, K - 1], device=DEVICE)  # every sub-block kind
    # the GEMM (all K values), the decode kernel at every row count (its rows sit in registers)
    for cols in (torch.arange(K, device=DEVICE), *(spread[:m] for m in range(1, 9))):
        eye = torch.eye(K, device=DEVICE)[cols]
        got = Q.qmatmul(eye, data, t)
        want = floats[:, cols].T * one
        if EXACT and Q.launch_config(len(cols), 40, K, t, 4, interpret=True)["kernel"] != "qmv8":
            assert torch.equal(got, want)
        else:
            assert (got - want).abs().max() <= 1e-6 * want.abs().max(), (t, len(cols))


SHAPES = [(3, 100, None), (4, 40, 3), (24, 72, None)]  # (M, N, split_k): decode, split-K, GEMM
if SLOW:
    SHAPES += [(1, 40, None), (2, 257, 2), (8, 33, 4), (67, 130, None), (130, 64, None)]


@pytest.mark.parametrize("t", Q.TYPES, ids=NAMES.get)
@pytest.mark.parametrize("m, n, split", SHAPES, ids=str)
def test_matmul_equals_dequantize_then_matmul(t, m, n, split):
    K = cols_for(t)
    data, floats = weight(t, n, K, seed=n)
    x = torch.randn(m, K, generator=torch.Generator().manual_seed(m)).to(DEVICE)
    ref = reference(x, floats, t)
    got = Q.qmatmul(x, data, t, split_k=split)
    assert got.shape == (m, n) and got.dtype == x.dtype
    assert (got.double() - ref).abs().max() <= 1e-5 * ref.abs().max()
    twin = Q.qmatmul_torch(x, data, t, split_k=split)
    assert (twin.double() - ref).abs().max() <= 1e-5 * ref.abs().max()
    # int8 activations stay within their rounding of the unquantized product
    exact = x.double() @ floats.double().T
    assert (got.double() - exact).abs().max() <= (2e-2 if Q.act_group(t) else 1e-5) * exact.abs().max()


@pytest.mark.parametrize("t", [Q.Q4_K, Q.Q8_0, Q.BF16], ids=NAMES.get)
@pytest.mark.parametrize("m", [2, 20])
def test_half_activations(t, m):
    """f16 activations (the GPU's): the GEMM multiplies in f16 with f32 sums."""
    data, floats = weight(t, 48, cols_for(t), seed=2)
    x = torch.randn(m, cols_for(t), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    ref = reference(x.half(), floats, t)
    got = Q.qmatmul(x.half(), data, t)
    assert got.dtype == torch.float16
    assert (got.double() - ref).abs().max() <= 3e-3 * ref.abs().max()


def test_batched_leading_dims_and_bad_input():
    data, floats = weight(Q.Q8_0, 16, 64)
    x = torch.randn(2, 3, 64, device=DEVICE)
    assert torch.allclose(Q.qmatmul(x, data, Q.Q8_0).double(), reference(x, floats, Q.Q8_0), atol=1e-4)
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
        ref = reference(x, floats, t)
        got = Q.qmatmul(x, data, t)
        assert (got.double() - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_split_k_sums_in_a_fixed_order():
    """Split-K's partial sums are added by the last program of each column tile in a fixed
    order, not by atomics in arrival order: the same inputs give the same bits, call after call
    (the interpreter runs programs in order anyway; on a GPU this is what the test is for), and
    the arrival counters are back at 0 for the next launch."""
    data, floats = weight(Q.Q4_K, 24, 2048, seed=5)
    x = torch.randn(2, 2048, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    first = Q.qmatmul(x, data, Q.Q4_K, split_k=4)
    assert all(torch.equal(Q.qmatmul(x, data, Q.Q4_K, split_k=4), first) for _ in range(3))
    float_decode = Q.launch_config(2, 24, 2048, Q.Q4_K, 4, split_k=4, interpret=True, int8=False)
    assert float_decode["split_k"] == 4
    assert (Q.launch(x, data, Q.Q4_K, float_decode) - first).abs().max() <= 1e-6 * first.abs().max()
    assert not Q._LOCKS[x.device].any()
    ref = reference(x, floats, Q.Q4_K)
    assert (first.double() - ref).abs().max() <= 1e-5 * ref.abs().max()


@pytest.mark.parametrize("group", [32, 256])
def test_activation_quantizer_equals_its_twin_bit_for_bit(group):
    """Scales, int8 values (ties rounded to even), sums of 16 and the dequantized form, on
    rows that end inside a quantizer program's block, an all-zero group and exact ties."""
    K = 1280 if group == 256 else 1376  # not a multiple of the program's 1024 values
    x = torch.randn(3, K, generator=torch.Generator().manual_seed(group)).to(DEVICE) * 3
    x[1, :group] = 0  # amax 0: scale 0, values 0
    x[2, :group] = torch.arange(group, device=DEVICE) % 6 - 2.5  # amax 127 below: scale 1, exact ties
    x[2, 0] = 127.0
    got, want = Q8.quantize_rows(x, group), Q8.quantize_rows_torch(x, group)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and torch.equal(g, w)
    assert got[1][1, 0] == 0 and (got[0][1, :group] == 0).all() and got[0].abs().max() == 127
    assert got[1][2, 0] == 1.0 and got[0][2, 1:6].tolist() == [-2, 0, 0, 2, 2]  # -1.5 -0.5 0.5 1.5 2.5: to even
    assert torch.equal(Q8.quantize_rows(x, group, dequant=True), Q8.dequantize_rows_torch(x, group))
    h = x.half()
    assert torch.equal(Q8.quantize_rows(h, group, dequant=True), Q8.dequantize_rows_torch(h, group))


@pytest.mark.parametrize("t", [Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q8_0, Q.Q4_0], ids=NAMES.get)
def test_activations_are_quantized_as_the_cpu_kernel_does(t):
    """The twin (int8 activations, float64 sums) against the CPU kernel's decode path on the same
    blocks: any activation quantized differently would move a result by ~1e-3 of its scale,
    float rounding by ~1e-7."""
    from loopcli.runtime import cpu_kernels

    kernel = cpu_kernels.get()
    if kernel is None:
        pytest.skip("no C++ compiler here: the CPU kernel is not built")
    data, floats = weight(t, 24, 1024, seed=7)
    x = torch.randn(3, 1024, generator=torch.Generator().manual_seed(7))
    cpu = kernel.qgemm(x, data.cpu().contiguous(), t, scalar=True).double()
    ref = reference(x, floats.cpu(), t)
    assert (cpu - ref).abs().max() <= 2e-6 * ref.abs().max()


def test_dp4a_stand_in_sums_signed_bytes():
    """The interpreter's dp4a: c + the 4 signed byte products of a and b, every byte value."""
    from loopcli.kernels._triton import jit, tl

    @jit
    def k(a_ptr, b_ptr, c_ptr, out_ptr, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        tl.store(out_ptr + i, Q8._dp4a(tl.load(a_ptr + i), tl.load(b_ptr + i), tl.load(c_ptr + i), False))

    if DEVICE == "cuda":
        pytest.skip("the stand-in runs in the interpreter; on a GPU dp4a itself is tested by the matmuls")
    g = torch.Generator().manual_seed(3)
    a, b = (torch.randint(-2**31, 2**31 - 1, (1024,), dtype=torch.int32, generator=g) for _ in range(2))
    a[:256] = torch.arange(256, dtype=torch.int32) * 0x01010101  # every byte value, in every lane
    c = torch.randint(-2**20, 2**20, (1024,), dtype=torch.int32, generator=g)
    out = torch.empty_like(c)
    k[(1,)](a, b, c, out, BLOCK=1024)
    bytes_ = lambda w: w.view(torch.int8).reshape(-1, 4).long()
    assert torch.equal(out.long(), c.long() + (bytes_(a) * bytes_(b)).sum(1))


@pytest.mark.parametrize("t", list(Q.INT8), ids=NAMES.get)
def test_a_row_gives_the_same_result_at_every_row_count(t):
    """Alone (dp4a decode), with 3 others (dp4a), with 19 others (the GEMM on its dequantized
    values) and through the float decode kernel: the same numbers up to float rounding."""
    K = 512
    data, floats = weight(t, 48, K, seed=4)
    x = torch.randn(20, K, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    alone = Q.qmatmul(x[:1], data, t)
    scale = alone.abs().max()
    for rows in (4, 20):
        assert (Q.qmatmul(x[:rows], data, t)[:1] - alone).abs().max() <= 1e-6 * scale
    cfg = Q.launch_config(1, 48, K, t, Q._sm_count(x.device), interpret=True, int8=False)
    assert cfg["kernel"] == "qmv"
    assert (Q.launch(x[:1], data, t, cfg) - alone).abs().max() <= 1e-6 * scale


@pytest.mark.parametrize("t", Q.TYPES, ids=NAMES.get)
def test_row_lookup_dequantizes_like_gguf_py(t):
    """The embedding lookup: any rows, in any order, repeated, in one launch; bit for bit in
    the interpreter (a GPU may fuse the scale's multiply-add)."""
    data, floats = weight(t, 12, cols_for(t), seed=8)
    ids = torch.tensor([11, 0, 5, 5, 3], device=DEVICE)
    got = Q.lookup_rows(data, t, ids)
    if EXACT:
        assert torch.equal(got, floats[ids])
    else:
        torch.testing.assert_close(got, floats[ids], rtol=1e-6, atol=0)
    assert torch.equal(Q.lookup_rows(data, t, ids[:1], torch.float16), floats[ids[:1]].half())
    # an id out of range reads nothing past the weight: zeros (callers check ids; a kernel cannot raise)
    got = Q.lookup_rows(data, t, torch.tensor([3, 12, -1, 1 << 40], device=DEVICE))
    assert torch.equal(got[0], floats[3]) and not got[1:].any()


@pytest.mark.parametrize("t", [Q.Q4_K, Q.Q6_K | Q.PLANAR, Q.Q6_K, Q.F16], ids=NAMES.get)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_a_residual_added_as_the_kernel_stores_equals_adding_it_after(t, dtype):
    """dp4a and float decode, with and without split-K, and the GEMM: `residual=` gives
    `residual + y` bit for bit (y rounded to x's dtype first, as torch adds)."""
    K = cols_for(t)
    data, _ = weight(t, 40, K, seed=9)
    for m, split in ((1, None), (2, 3), (7, None)):
        x = torch.randn(m, K, generator=torch.Generator().manual_seed(m)).to(DEVICE, dtype)
        r = torch.randn(m, 40, generator=torch.Generator().manual_seed(m + 1)).to(DEVICE, dtype)
        assert torch.equal(Q.qmatmul(x, data, t, split_k=split, residual=r), r + Q.qmatmul(x, data, t, split_k=split))
    with pytest.raises(ValueError, match="residual has shape"):
        Q.qmatmul(x, data, t, residual=r[:, :39])
