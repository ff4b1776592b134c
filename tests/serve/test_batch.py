"""runtime.batch: several sequences decoded in one pass give each sequence's solo logits."""

from __future__ import annotations

import pytest
import torch

from loopcli.runtime import batch
from loopcli.runtime.engine import ContextLimitError, load


def _solo(engine, prompt, feed):
    engine.reset()
    engine.prefill(prompt)
    return [engine.step(t) for t in feed]


@pytest.mark.parametrize("which", ["confident", "tool"])
def test_batched_decode_equals_solo_decode(models, which):
    """Stepped in groups as the scheduler steps them. Quantized weights: bit for bit. F32 weights go
    through a dense GEMM whose rounding depends on the number of rows: equal within float rounding."""
    engine = load(models[which], threads=1)
    vocab = engine.cfg.vocab_size
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in (5, 17, 9)]
    feeds = [torch.randint(0, vocab, (70,), generator=gen).tolist() for _ in prompts]  # past a snapshot (64)
    solo = [_solo(engine, p, f) for p, f in zip(prompts, feeds)]
    states = []
    for p in prompts:
        engine.reset()
        engine.prefill(p)
        states.append(engine.state)
    group = batch.group_size(engine)
    assert 1 < group and group * engine.cfg.num_loops <= 8
    for step in range(70):
        for a in range(0, len(states), group):
            logits = batch.decode_step(engine, states[a:a + group], [f[step] for f in feeds[a:a + group]])
            for b in range(logits.shape[0]):
                if which == "confident":  # q8_0
                    assert torch.equal(logits[b], solo[a + b][step]), (a + b, step)
                else:  # f32
                    assert torch.allclose(logits[b], solo[a + b][step], rtol=1e-5, atol=1e-4), (a + b, step)
    for b, st in enumerate(states):
        assert st.tokens == prompts[b] + feeds[b] and 64 in st.snapshots


def test_q4_0_batches_equal_solo_decode(tmp_path):
    """The CPU kernel's decode and prefill paths round apart (for Q4_0 even the offsets are
    summed in another order): groups stay on the decode path, so every sequence still gets its
    solo logits bit for bit."""
    from loopcli.convert.export import convert
    from loopcli.runtime.synthetic import write_synthetic

    src = write_synthetic(tmp_path / "m", arch="loopcoder", dtype="f32", plt_window_size=[3, 0])
    engine = load(convert(src, tmp_path / "m-q4_0.gguf", "q4_0", show_progress=False), threads=1)
    gen = torch.Generator().manual_seed(1)
    vocab = engine.cfg.vocab_size
    prompts = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in (4, 9, 6, 11)]
    feeds = [torch.randint(0, vocab, (12,), generator=gen).tolist() for _ in prompts]
    solo = [_solo(engine, p, f) for p, f in zip(prompts, feeds)]
    group = batch.group_size(engine)
    states = []
    for p in prompts:
        engine.reset()
        engine.prefill(p)
        states.append(engine.state)
    for step in range(12):
        for a in range(0, len(states), group):  # as the scheduler steps them
            logits = batch.decode_step(engine, states[a:a + group], [f[step] for f in feeds[a:a + group]])
            for b in range(logits.shape[0]):
                assert torch.equal(logits[b], solo[a + b][step]), (a + b, step)


def test_batched_decode_refuses_past_the_context(models):
    engine = load(models["confident"], threads=1, max_context=8)
    engine.prefill(list(range(8)))
    full = engine.state
    engine.reset()
    engine.prefill([1, 2])
    with pytest.raises(ContextLimitError):
        batch.decode_step(engine, [engine.state, full], [3, 4])
