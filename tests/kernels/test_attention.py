"""Prefill flash attention and G-SWA decode attention against their torch twins."""

import itertools

import pytest
import torch
from kernel_env import DEVICE, SLOW

from loopcli.kernels.flash_attention import flash_attention, flash_attention_torch
from loopcli.kernels.gswa_decode import (gswa_decode, gswa_decode_torch, ring_positions, step_gate, step_gate_torch,
                                         write_step_kv, write_step_kv_torch)

HD = 16


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


def close(a, b, tol=2e-5):
    assert not a.isnan().any()
    assert (a.float() - b.float()).abs().max() <= tol


# every GQA ratio 1..8 once by default (with windows of 1, a few, and beyond the context)
FLASH = [(1, None), (2, 1), (3, 7), (4, 10_000), (5, None), (6, 1), (7, 7), (8, 10_000)]
if SLOW:
    FLASH = list(itertools.product(range(1, 9), [None, 1, 7, 10_000]))


@pytest.mark.parametrize("g, window", FLASH, ids=str)
def test_flash_causal_window_gqa(g, window):
    nkv, T, past = 2, 37, 29  # T and the cached length are not multiples of the tiles
    q = randn(g * nkv, T, HD, seed=g)
    k, v = randn(nkv, past + T, HD, seed=10 + g), randn(nkv, past + T, HD, seed=20 + g)
    q_pos = torch.arange(past, past + T, device=DEVICE)
    close(flash_attention(q, q_pos, k, v, window=window), flash_attention_torch(q, q_pos, k, v, window=window))


@pytest.mark.parametrize("window, ring, past", [(1, 2, 0), (3, 4, 2), (3, 4, 50), (40, 41, 9)])
def test_flash_two_sources_ring_then_chunk(window, ring, past):
    """PLT's local branch at prefill: the ring of the previous positions (slots in ring
    order, empty ones at -1) and the chunk's own keys, one softmax over both."""
    nkv, g, T = 2, 5, 21
    q = randn(g * nkv, T, HD, seed=1)
    rk, rv = randn(nkv, ring, HD, seed=2), randn(nkv, ring, HD, seed=3)
    k, v = randn(nkv, T, HD, seed=4), randn(nkv, T, HD, seed=5)
    q_pos = torch.arange(past, past + T, device=DEVICE)
    r_pos = ring_positions(past - 1, ring, DEVICE)
    rk[:, r_pos < 0] = float("nan")  # empty slots are never read
    rv[:, r_pos < 0] = float("nan")
    args = (q, q_pos, rk, rv, r_pos, k, v, q_pos)
    close(flash_attention(*args, window=window), flash_attention_torch(*args, window=window))


def test_flash_fully_masked_tiles_and_rows_give_no_nan():
    """Keys in explicit positions are not skipped by tiles: with a window of 2 the first
    tiles are masked for every row; queries before every key see nothing and get zeros."""
    nkv, g = 1, 2
    k, v = randn(nkv, 200, HD, seed=1), randn(nkv, 200, HD, seed=2)
    k_pos = torch.arange(200, device=DEVICE) + 10  # keys at positions 10..209
    q = randn(g, 70, HD, seed=3)
    q_pos = torch.arange(150, 220, device=DEVICE) - 145  # queries at 5..74: the first five see no key
    out = flash_attention(q, q_pos, k, v, k_pos, window=2)
    close(out, flash_attention_torch(q, q_pos, k, v, k_pos, window=2))
    assert torch.equal(out[:, :5], torch.zeros_like(out[:, :5]))


def test_flash_half_precision():
    q, k, v = randn(8, 40, HD, seed=1, dtype=torch.float16), randn(2, 40, HD, seed=2, dtype=torch.float16), \
        randn(2, 40, HD, seed=3, dtype=torch.float16)
    pos = torch.arange(40, device=DEVICE)
    close(flash_attention(q, pos, k, v, window=5), flash_attention_torch(q, pos, k, v, window=5), tol=4e-3)


# R = 1..4, GQA 1..8 and each (position, ring) case at least once by default (ring 2 = window 1;
# ring 65 at t = 5: a window beyond the context); the full cross product when slow
CASES = [(0, 2), (9, 2), (5, 65), (70, 4)]
GSWA = [(r, g, *CASES[i % 4]) for i, (r, g) in enumerate([(1, 1), (2, 2), (3, 3), (4, 4), (1, 5), (2, 6), (3, 7), (4, 8)])]
if SLOW:
    GSWA = [(r, g, t, ring) for r in range(1, 5) for g in range(1, 9) for t, ring in CASES]


@pytest.mark.parametrize("R, g, t, ring", GSWA, ids=str)
def test_gswa_decode_all_rows(R, g, t, ring):
    nkv, cap = 2, 96
    q = randn(R, g * nkv, HD, seed=R * 10 + g)
    k0 = randn(nkv, cap, HD, seed=1, dtype=torch.float16)
    v0 = randn(nkv, cap, HD, seed=2, dtype=torch.float16)
    k0[:, t + 1:] = float("nan")  # past the length: never read
    v0[:, t + 1:] = float("nan")
    rk, rv = randn(R - 1, nkv, ring, HD, seed=3), randn(R - 1, nkv, ring, HD, seed=4)
    empty = ring_positions(t, ring, DEVICE) < 0
    rk[:, :, empty] = float("nan")
    rv[:, :, empty] = float("nan")
    gate = torch.rand(R - 1, g * nkv, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    want = gswa_decode_torch(q, k0, v0, t + 1, rk, rv, gate)
    # 3 splits: a short cache leaves some empty, which must merge without NaN
    for splits in ((1, 3) if SLOW else (3,)):
        close(gswa_decode(q, k0, v0, t + 1, rk, rv, gate, splits=splits), want)


def test_gswa_length_from_a_device_tensor():
    """What a CUDA graph replays: the same call, the length read from memory."""
    R, nkv, g = 2, 2, 4
    q = randn(R, g * nkv, HD, seed=1)
    k0, v0 = randn(nkv, 64, HD, seed=2), randn(nkv, 64, HD, seed=3)
    rk, rv = randn(1, nkv, 4, HD, seed=4), randn(1, nkv, 4, HD, seed=5)
    gate = torch.full((1, g * nkv), 0.25, device=DEVICE)
    length = torch.tensor([40], dtype=torch.int32, device=DEVICE)
    close(gswa_decode(q, k0, v0, length, rk, rv, gate), gswa_decode_torch(q, k0, v0, 40, rk, rv, gate))
    length.fill_(7)
    close(gswa_decode(q, k0, v0, length, rk, rv, gate), gswa_decode_torch(q, k0, v0, 7, rk, rv, gate))


@pytest.mark.parametrize("R", [1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_the_step_kv_write_equals_its_twin(R, dtype):
    """One launch writes loop 0's K/V at position t and each loop r's into its ring slot t % ring
    (strided views of the projection, f32 rounded into an f16 cache too), nothing else."""
    nkv, cap, ring = 3, 40, 5
    qkv = randn(R, 8, HD, seed=1)  # [R, heads, hd]: k and v are strided views, as the engine's
    k, v = qkv[:, 2:5].transpose(0, 1), qkv[:, 5:8].transpose(0, 1)
    caches = [randn(nkv, cap, HD, seed=2, dtype=dtype), randn(nkv, cap, HD, seed=3, dtype=dtype),
              randn(max(R - 1, 1), nkv, ring, HD, seed=4, dtype=dtype), randn(max(R - 1, 1), nkv, ring, HD, seed=5, dtype=dtype)]
    for t in (0, 7, 39):
        pos = torch.tensor([t], device=DEVICE)
        mine, twin = [c.clone() for c in caches], [c.clone() for c in caches]
        rings = (lambda cs: (cs[2], cs[3]) if R > 1 else (None, None))
        write_step_kv(k, v, mine[0], mine[1], pos, *rings(mine))
        write_step_kv_torch(k, v, twin[0], twin[1], pos, *rings(twin))
        assert all(torch.equal(a, b) for a, b in zip(mine, twin))
        assert torch.equal(mine[0][:, t], k[:, 0].to(dtype))
        assert sum((a != b).any(-1).sum().item() for a, b in zip(mine, caches)) <= 2 * nkv * R  # only those rows


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float16, 1e-3)], ids=str)
def test_the_hidden_state_gate_equals_its_twin(dtype, tol):
    """RMSNorm, the [nh, H] projection with bias and the sigmoid in one launch; H not a
    multiple of the kernel's chunk, heads not of its block."""
    S, H, nh = 3, 1100, 10
    x, nw = randn(S, H, seed=1, dtype=dtype), randn(H, seed=2, dtype=dtype)
    w, b = randn(nh, H, seed=3, dtype=dtype) * 0.05, randn(nh, seed=4, dtype=dtype)
    got, want = step_gate(x, nw, w, b, 1e-6), step_gate_torch(x, nw, w, b, 1e-6)
    assert got.shape == (S, nh) and got.dtype == dtype
    assert (got.float() - want.float()).abs().max() <= tol
    assert 0.05 < got.float().std()  # a gate that varies: the test would see a wrong row or head
