"""RMSNorm (with the fused residual add), RoPE in both pair layouts, SwiGLU."""

import pytest
import torch
from kernel_env import DEVICE

from loopcli.kernels.rms_norm import rms_norm, rms_norm_torch
from loopcli.kernels.rope import rope, rope_torch
from loopcli.kernels.swiglu import swiglu, swiglu_torch


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 2e-3)], ids=str)
@pytest.mark.parametrize("shape", [(5, 100), (2, 3, 640)], ids=str)  # H not a power of two
def test_rms_norm_and_fused_residual(dtype, tol, shape):
    x, r, w = randn(*shape, seed=1, dtype=dtype), randn(*shape, seed=2, dtype=dtype), randn(shape[-1], seed=3, dtype=dtype)
    torch.testing.assert_close(rms_norm(x, w, 1e-5), rms_norm_torch(x, w, 1e-5), rtol=tol, atol=tol)
    y, h = rms_norm(x, w, 1e-5, residual=r)
    y_ref, h_ref = rms_norm_torch(x, w, 1e-5, residual=r)
    assert torch.equal(h, h_ref) and h.dtype == dtype
    torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "interleaved"])
@pytest.mark.parametrize("heads, hd", [(5, 16), (20, 64)], ids=str)  # head blocks of 16: 20 leaves a partial one
def test_rope_both_layouts(interleaved, heads, hd):
    S = 7
    x = randn(S, heads, hd, seed=1)
    ang = torch.arange(S, device=DEVICE)[:, None] * randn(hd // 2, seed=2).abs()[None, :]
    got = rope(x, ang.cos(), ang.sin(), interleaved)
    torch.testing.assert_close(got, rope_torch(x, ang.cos(), ang.sin(), interleaved), rtol=0, atol=1e-6)
    torch.testing.assert_close(got.norm(dim=-1), x.norm(dim=-1))  # a rotation keeps each pair's length
    # one row of cos / sin for every position (a decode step's loops share their position)
    one = rope(x, ang[:1].cos(), ang[:1].sin(), interleaved)
    torch.testing.assert_close(one, rope_torch(x, ang[:1].cos(), ang[:1].sin(), interleaved), rtol=0, atol=1e-6)
    # a strided input (a view of the q/k/v projection) reads right
    qkv = randn(S, heads * 3, hd, seed=3)
    torch.testing.assert_close(rope(qkv[:, :heads], ang.cos(), ang.sin(), interleaved),
                               rope_torch(qkv[:, :heads], ang.cos(), ang.sin(), interleaved), rtol=0, atol=1e-6)


def test_rope_one_position_for_every_row():
    """Decode: the R rows of one step share a position."""
    x = randn(3, 4, 16, seed=6)
    ang = randn(1, 8, seed=7)
    torch.testing.assert_close(rope(x, ang.cos(), ang.sin()), rope_torch(x, ang.cos(), ang.sin()), rtol=0, atol=1e-6)


def test_rope_layouts_differ_by_a_permutation():
    """interleaved(x) == P^-1 neox(P x) with P the even-then-odd reordering of a head."""
    x = randn(3, 2, 16, seed=4)
    ang = randn(3, 8, seed=5)
    perm = torch.cat([torch.arange(0, 16, 2), torch.arange(1, 16, 2)]).to(DEVICE)
    inv = torch.argsort(perm)
    torch.testing.assert_close(rope(x, ang.cos(), ang.sin(), True),
                               rope(x[..., perm], ang.cos(), ang.sin(), False)[..., inv], rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float16, 2e-3)], ids=str)
def test_swiglu(dtype, tol):
    gu = randn(3, 2 * 1500, seed=1, dtype=dtype)  # 1500: not a multiple of the 1024 block
    torch.testing.assert_close(swiglu(gu), swiglu_torch(gu), rtol=tol, atol=tol)
    assert swiglu(gu[None]).shape == (1, 3, 1500)


@pytest.mark.parametrize("group", [32, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_norm_and_swiglu_write_the_int8_form_of_what_they_return(group, dtype):
    """The producers' int8 form equals quantizing what they return, bit for bit (the decode
    matmul that follows reads it instead of quantizing again), and the twins fill it alike."""
    from loopcli.kernels.qmatmul_int8 import Int8Rows, quantize_rows_torch

    H, FF = 768, 1280 + 256  # not powers of two; FF ends inside a SwiGLU program's 1024 values
    x, r, w = randn(3, H, seed=1, dtype=dtype), randn(3, H, seed=2, dtype=dtype), randn(H, seed=3, dtype=dtype)
    gu = randn(3, 2 * FF, seed=4, dtype=dtype)
    for fn, twin, args, K in ((rms_norm, rms_norm_torch, (x, w, 1e-5), H),
                              (lambda *a, int8: rms_norm(*a, residual=r, int8=int8)[0],
                               lambda *a, int8: rms_norm_torch(*a, residual=r, int8=int8)[0], (x, w, 1e-5), H),
                              (swiglu, swiglu_torch, (gu,), FF)):
        rows, rows_twin = Int8Rows.empty(3, K, group, DEVICE), Int8Rows.empty(3, K, group, DEVICE)
        y, y_twin = fn(*args, int8=rows), twin(*args, int8=rows_twin)
        want = quantize_rows_torch(y, group)
        assert all(torch.equal(a, b) for a, b in zip(rows[:3], want))
        assert all(torch.equal(a, b) for a, b in zip(rows_twin[:3], quantize_rows_torch(y_twin, group)))
        assert rows.q.abs().max() == 127
    with pytest.raises(ValueError, match="multiple of the group"):
        Int8Rows.empty(3, 640, 256, DEVICE)
