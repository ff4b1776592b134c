"""The three executions of the PLT model agree: full sequence, naive decode, fused decode
(and chunked prefill), over loops, windows, GQA ratios and both gate modes."""

import pytest
import torch

import loopcli.runtime.model as model_mod
from loopcli.runtime.decode import DecodeState, fused_step, prefill

T = 24
TOL = 1e-4


def ids_for(model, seed=1, n=T):
    return torch.randint(0, model.cfg.vocab_size, (n,), generator=torch.Generator().manual_seed(seed))


def naive(model, ids):
    state = DecodeState.new(model, len(ids))
    return torch.stack([prefill(model, state, ids[t:t + 1])[0] for t in range(len(ids))])


def fused(model, ids):
    state = DecodeState.new(model, len(ids))
    return torch.stack([fused_step(model, state, int(tok)) for tok in ids])


def chunked(model, ids, bounds):
    state = DecodeState.new(model, len(ids))
    edges = [0, *bounds, len(ids)]
    return torch.cat([prefill(model, state, ids[a:b]) for a, b in zip(edges, edges[1:])])


def plt(make_model, loops, window, kv_heads, hidden_gate, seed=0):
    return make_model(
        plt_num_loops=loops, plt_window_size=[window, 0], num_key_value_heads=kv_heads,
        plt_gate_use_hidden_states=hidden_gate, seed=seed,
    )


@pytest.mark.parametrize("loops", [1, 2, 3, 4])
@pytest.mark.parametrize("window", [1, 3, 64])
@pytest.mark.parametrize("kv_heads", [4, 1])  # GQA ratio 1 and 4 (4 query heads)
@pytest.mark.parametrize("hidden_gate", [True, False])
def test_full_naive_fused_agree(make_model, loops, window, kv_heads, hidden_gate):
    model = plt(make_model, loops, window, kv_heads, hidden_gate)
    ids = ids_for(model)
    full = model(ids[None])[0]
    assert full.abs().max() > 0.05  # not a degenerate all-zero output
    assert (naive(model, ids) - full).abs().max() <= TOL
    assert (fused(model, ids) - full).abs().max() <= TOL


@pytest.mark.parametrize("loops", [2, 3])
@pytest.mark.parametrize("window", [1, 3, 64])
@pytest.mark.parametrize("bounds", [[1], [5], [2, 4, 11], [7, 8, 20], [12]])
def test_chunked_prefill_agrees(make_model, loops, window, bounds):
    model = plt(make_model, loops, window, 2, True)
    ids = ids_for(model)
    full = model(ids[None])[0]
    assert (chunked(model, ids, bounds) - full).abs().max() <= TOL


@pytest.mark.parametrize("window", [1, 3, 64])
def test_prefill_then_fused_decode_continues(make_model, window):
    model = plt(make_model, 2, window, 2, True)
    ids = ids_for(model)
    full = model(ids[None])[0]
    state = DecodeState.new(model, T)
    head = prefill(model, state, ids[:10])
    tail = torch.stack([fused_step(model, state, int(tok)) for tok in ids[10:]])
    assert (torch.cat([head, tail]) - full).abs().max() <= TOL


def test_batched_full_forward_matches_rows(make_model):
    model = plt(make_model, 2, 3, 2, True)
    batch = torch.stack([ids_for(model, seed=s) for s in (1, 2)])
    out = model(batch)
    for b in range(2):
        assert (out[b] - model(batch[b:b + 1])[0]).abs().max() <= TOL


def test_window_changes_logits(make_model):
    """The window tests would be blind if the window did nothing."""
    a = plt(make_model, 2, 1, 2, True)(ids_for(plt(make_model, 2, 1, 2, True))[None])
    b = plt(make_model, 2, 64, 2, True)(ids_for(plt(make_model, 2, 64, 2, True))[None])
    assert (a - b).abs().max() > 1e-3


def no_shift(h_hat, first):
    return h_hat


@pytest.mark.parametrize("beta", [0.0, 0.053])
def test_shift_detector(make_model, monkeypatch, beta):
    """With beta = 0 the CLP shift cannot matter; with beta > 0 dropping it changes the
    logits, so parity tests against the shifted reference would catch a missing shift."""
    model = make_model(plt_hidden_scale=beta)
    ids = ids_for(model)
    shifted = model(ids[None])
    monkeypatch.setattr(model_mod, "shift_right", no_shift)
    unshifted = model(ids[None])
    diff = (shifted - unshifted).abs().max()
    if beta == 0.0:
        assert diff == 0
    else:
        assert diff > 1e-3


def test_r1_ignores_gate_and_loops(make_model):
    """R = 1 of a PLT checkpoint equals the same weights without any gate."""
    r1 = make_model(plt_num_loops=1)
    llama = make_model("llama")
    ids = ids_for(r1)
    assert (r1(ids[None]) - llama(ids[None])).abs().max() <= TOL


def test_decode_state_overflow_is_refused(make_model):
    model = make_model()
    state = DecodeState.new(model, 4)
    prefill(model, state, ids_for(model, n=4))
    with pytest.raises(ValueError, match="holds 4 positions"):
        fused_step(model, state, 1)
