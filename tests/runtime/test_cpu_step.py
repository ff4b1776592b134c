"""The decode step's layers in C++ (runtime/cpu_kernels/step.cpp) against the same step in torch
ops (the engine's fallback, forced with `cpu_step = False`): same weights, same matmul kernel,
only the summation order of norms and attention differs. Decoding runs past a ring wrap (window 5)
and a cache growth (`_reserve` at 256 positions)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from loopcli.convert.quants import quantize
from loopcli.runtime import batch, blocks, cpu_kernels
from loopcli.runtime.config import config_from_dict
from loopcli.runtime.engine import Engine, Raw, State
from loopcli.runtime.synthetic import random_tensors, synthetic_config

TOLERANCE = 1e-4  # max |logit difference| / max |logit|, per decoded token
FLIP = 3e-2  # bound for the few tokens where an int8 activation rounding flips (see `check`)
PROMPT, DECODED = 230, 40  # 230 + 40 crosses the cache's first capacity (256): _reserve grows it


@pytest.fixture(scope="module")
def kernel():
    if os.environ.get("LOOPCLI_CPU_KERNEL") == "0":
        pytest.skip("LOOPCLI_CPU_KERNEL=0 turns the kernel off")
    k = cpu_kernels.get()
    if k is None and not (shutil.which("g++") and shutil.which("ninja")):
        pytest.skip("no g++/ninja here: the kernel cannot be built")
    assert k is not None, "g++ and ninja are here, so the kernel must build"
    return k


def weight_type(name: str, quant: str, layer0: bool) -> int:
    """q8_0, or a q4_k_m-like mix: v and down rows in Q6_K in layer 0 only, so layer 0's qkv
    is three row blocks of two formats (Stacked) and layer 1's a single Q4_K matrix."""
    if quant == "f32":
        return blocks.F32
    if quant == "q8_0" or name.endswith("lm_head.weight"):
        return blocks.Q8_0
    if quant == "q5_0":
        return blocks.Q5_0
    if layer0 and (name.endswith("v_proj.weight") or name.endswith("down_proj.weight")):
        return blocks.Q6_K
    return blocks.Q4_K


def make_raw(cfg, quant: str, seed: int = 0) -> dict[str, Raw]:
    raw = {}
    for name, t in random_tensors(cfg, seed, std=0.1):
        if t.dim() == 1 or ".plt_gate." in name or name == "model.embed_tokens.weight":
            t = t.reshape(-1, t.shape[-1]) if t.dim() > 1 else t[None]
            raw[name] = Raw(blocks.F32, t.contiguous().view(torch.uint8), t.shape[-1])
            continue
        ggml_type = weight_type(name, quant, ".layers.0." in name)
        if ggml_type == blocks.F32:
            raw[name] = Raw(blocks.F32, t.contiguous().view(torch.uint8), t.shape[-1])
        else:
            data = quantize(t.numpy().astype(np.float32), ggml_type)
            raw[name] = Raw(ggml_type, torch.from_numpy(np.ascontiguousarray(data)), t.shape[-1])
    return raw


def engines(arch: str, quant: str, **overrides) -> tuple[Engine, Engine]:
    """(C++ step, torch step) engines on the very same weights."""
    cfg = config_from_dict(synthetic_config(arch, "tiny", **overrides))
    raw = make_raw(cfg, quant)
    fast, ref = Engine(cfg, dict(raw)), Engine(cfg, dict(raw))
    ref.cpu_step = False
    return fast, ref


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@torch.inference_mode()
def sync(fast: Engine, ref: Engine) -> None:
    """Start the next step of both from the same state: each token then compares one step, and a
    flipped rounding (see `check`) does not carry into the caches and carries of the next ones."""
    for name in ("k0", "v0", "ring_k", "ring_v", "carries"):
        getattr(fast.state, name).copy_(getattr(ref.state, name))


def decode_both(fast: Engine, ref: Engine, seed: int = 0) -> list[float]:
    """Relative logit differences of every decoded token (each step from the same state): a short
    prompt decoded through the ring's filling and wrap, then a long one through the cache's growth."""
    gen = torch.Generator().manual_seed(seed)
    vocab = fast.cfg.vocab_size
    errors = []
    for prompt_len, decoded in ((2, 12), (PROMPT, DECODED)):
        prompt = torch.randint(0, vocab, (prompt_len,), generator=gen).tolist()
        feed = torch.randint(0, vocab, (decoded,), generator=gen).tolist()
        fast.reset(), ref.reset()
        assert torch.equal(fast.prefill(prompt), ref.prefill(prompt))  # prefill: the same code
        for token in feed:
            errors.append(relative(fast.step(token), ref.step(token)))
            sync(fast, ref)
    assert fast._step_args and ref._step_args is None, "the C++ step must have run in `fast` only"
    assert fast.state.k0.shape[2] > 256, "the cache must have grown while decoding"
    return errors


def check(errors: list[float]) -> None:
    """Tokens within TOLERANCE (typically 1e-7) but for rare flips: the matmul rounds its input to
    int8 per 32 values, and a last-bit difference (summation order) can move one value to the next
    integer, which shifts that token's logits by up to ~2e-2 (seen on 0-5 of 52 tokens; more in
    q4_k_m's 256-wide models, which round more values; the torch step against itself with only
    rms_norm summed in float64 shows the same: 0-4 of 52, up to 2.2e-2). A wrong step errs on
    most tokens."""
    flips = [e for e in errors if e > TOLERANCE]
    assert np.median(errors) <= TOLERANCE / 10, np.median(errors)
    assert len(flips) <= 0.15 * len(errors) and max(errors) <= FLIP, (len(flips), max(errors))


CASES = {
    "llama-q8_0-gqa1": dict(arch="llama", quant="q8_0", num_key_value_heads=4),
    "qwen2-bias-q8_0-gqa4": dict(arch="qwen2", quant="q8_0", num_key_value_heads=1),
    "loopcoder-r2-hidden-gate-q8_0": dict(arch="loopcoder", quant="q8_0", plt_window_size=[5, 0]),
    "loopcoder-r3-query-gate-q8_0-gqa4": dict(arch="loopcoder", quant="q8_0", plt_num_loops=3,
                                              plt_window_size=[5, 0], plt_gate_use_hidden_states=False,
                                              num_key_value_heads=1),
    "loopcoder-r2-q4_k_m-gqa1": dict(arch="loopcoder", quant="q4_k_m", hidden_size=256, intermediate_size=512,
                                     num_key_value_heads=4, plt_window_size=[5, 0]),
    "llama-q4_k_m-gqa4": dict(arch="llama", quant="q4_k_m", hidden_size=256, intermediate_size=512,
                              num_key_value_heads=1),
}


@pytest.mark.parametrize("case", CASES)
def test_cpp_step_equals_torch_step(kernel, case):
    fast, ref = engines(**CASES[case])
    errors = decode_both(fast, ref)
    print(f"{case}: relative logit differences: median {np.median(errors):.1e}, max {max(errors):.1e}, "
          f"{sum(e > TOLERANCE for e in errors)} of {len(errors)} above {TOLERANCE}")
    check(errors)
    if fast.cfg.num_loops > 1:  # rings and carries the next token reads agree too
        assert relative(fast.state.carries, ref.state.carries) <= TOLERANCE
        assert relative(fast.state.ring_k.float(), ref.state.ring_k.float()) <= 1e-3  # f16 cache


def test_cpp_step_scalar_attention_equals_torch_step(kernel):
    """The portable attention code (CPUs without AVX2/F16C) on the R = 3 case."""
    fast, ref = engines(**CASES["loopcoder-r3-query-gate-q8_0-gqa4"])
    fast.cpu_step = "scalar"
    check(decode_both(fast, ref, seed=1))


@pytest.mark.parametrize("arch,loops", [("llama", 1), ("loopcoder", 2)])
def test_batched_cpp_step_equals_solo_steps(kernel, arch, loops):
    """batch.decode_step of 3 sequences at different lengths: each gets its solo C++ step's logits
    bit for bit when the rows stay on the decode matmul path (R = 1: 3 rows), and at every step
    the torch solo step's from the same state within the tolerance (R = 2: 6 rows, tile path)."""
    fast, ref = engines(arch, "q8_0", plt_num_loops=loops, plt_window_size=[5, 0])
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 512, (n,), generator=gen).tolist() for n in (3, 11, 7)]
    feeds = [torch.randint(0, 512, (12,), generator=gen).tolist() for _ in prompts]
    solo = []
    for p, f in zip(prompts, feeds):
        fast.reset()
        fast.prefill(p)
        solo.append([fast.step(t) for t in f])
    states = []
    for p in prompts:
        fast.reset()
        fast.prefill(p)
        states.append(fast.state)
    errors = []
    for step in range(12):
        expected = []
        for st, f in zip(states, feeds):
            ref.state = copy_state(st)
            expected.append(ref.step(f[step]))
        logits = batch.decode_step(fast, states, [f[step] for f in feeds])
        for b in range(3):
            if loops == 1:
                assert torch.equal(logits[b], solo[b][step]), (b, step)
            errors.append(relative(logits[b], expected[b]))
    check(errors)
    assert [st.tokens for st in states] == [p + f for p, f in zip(prompts, feeds)]


@torch.inference_mode()
def copy_state(st: State) -> State:
    return State(st.k0.clone(), st.v0.clone(), st.ring_k.clone(), st.ring_v.clone(), st.carries.clone(),
                 list(st.tokens), dict(st.snapshots))


@pytest.mark.parametrize("quant", ["f32", "q5_0"])
def test_other_weights_decode_through_torch(kernel, quant):
    """F32 or Q5_0 weights (not the kernel's formats): the torch step, the same as forced."""
    fast, ref = engines("loopcoder", quant, plt_window_size=[5, 0])
    for token in (5, 6, 7):
        assert torch.equal(fast.step(token), ref.step(token))
    assert fast._step_args == [] and fast._cpu_step_layers([fast.state]) is None


def test_without_the_kernel_the_step_runs_in_torch(monkeypatch):
    """LOOPCLI_CPU_KERNEL=0 (or a failed build): q8_0 weights take torch's packed path, and so
    does the step."""
    monkeypatch.setattr(cpu_kernels, "_state", {})
    monkeypatch.setenv("LOOPCLI_CPU_KERNEL", "0")
    fast, ref = engines("loopcoder", "q8_0", plt_window_size=[5, 0])
    for token in (5, 6, 7):
        assert torch.equal(fast.step(token), ref.step(token))
    assert fast._step_args == [] and fast._cpu_step_layers([fast.state]) is None


def test_weights_of_unexpected_sizes_keep_the_torch_step(kernel):
    """The C++ step reads weights through pointers: a size it does not expect is never passed."""
    fast, _ = engines("llama", "q8_0")
    fast.layers[1].wo = fast.layers[1].qkv  # 128 rows where the step expects H = 64
    assert fast._build_step_args() is None


def test_the_cpp_step_can_be_turned_off(kernel, monkeypatch):
    monkeypatch.setenv("LOOPCLI_CPU_STEP", "0")
    fast, _ = engines("llama", "q8_0")
    fast.step(3)
    assert fast.cpu_step is False and fast._step_args is None


def test_cpp_step_with_two_threads(kernel):
    """Attention split over (sequence, K/V head) on torch's pool: the same logits as one thread."""
    kept = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, ref = engines(**CASES["loopcoder-r2-hidden-gate-q8_0"])
        two, _ = engines(**CASES["loopcoder-r2-hidden-gate-q8_0"])
        feed = list(range(3, 40))
        one.prefill([1, 2]), two.prefill([1, 2]), ref.prefill([1, 2])
        torch.set_num_threads(2)
        errors = []
        for token in feed:
            logits = two.step(token)
            errors.append(relative(logits, ref.step(token)))
            torch.set_num_threads(1)
            assert torch.equal(logits, one.step(token))
            torch.set_num_threads(2)
            sync(two, ref), sync(one, ref)
        check(errors)
    finally:
        torch.set_num_threads(kept)


def test_a_state_the_step_does_not_expect_is_never_passed(kernel):
    """The C++ step writes the caches through pointers: a config swapped under the engine (as
    benchmarks/gpu.py does to time R = 1 on R = 2 weights) rebuilds the step's arguments, and a
    state of another shape keeps the torch step, so nothing is written out of bounds."""
    fast, ref = engines("loopcoder", "q8_0", plt_window_size=[5, 0])
    fast.step(3)
    assert fast._step_args and fast._step_cfg is fast.cfg
    for eng in (fast, ref):  # R = 1 on the same weights, with a fresh state of that shape
        eng.cfg = eng.cfg.with_loops(1)
        eng.state = eng._empty_state(0)
    for token in (5, 6, 7):
        assert relative(fast.step(token), ref.step(token)) <= TOLERANCE
    assert fast._step_cfg is fast.cfg and fast._cpu_step_layers([fast.state]) is not None
    wrong = fast._empty_state(8)
    wrong.ring_k = torch.zeros(1, *wrong.ring_k.shape[1:], dtype=wrong.ring_k.dtype)  # a ring R = 1 has none of
    assert fast._cpu_step_layers([wrong]) is None
