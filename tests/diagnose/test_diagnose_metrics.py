"""Every diagnostic against a second, plainly written implementation (numpy, float64, loops over
positions and heads) from the reference forward's hidden states, on tiny models: R = 1, 2, 3, 4,
both gate modes, with and without the per-loop norm."""

import math

import numpy as np
import pytest
import torch

from diagkit import Recorder, tiny_model
from loopcli.runtime import diagnostics
from loopcli.runtime.diagnostics import LOOP_METRICS, Diagnostics, chunk_ids
from loopcli.runtime.model import PLTModel, assign_parameter

W = 3  # local window of the test models: a window smaller than the chunks


def log_softmax(z):
    z = z - z.max()
    return z - math.log(np.exp(z).sum())


def rms_norm(x, w, eps):
    return w * x / np.sqrt((x * x).mean() + eps)


def attention_row(q, keys, positions):
    """Softmax of q . k / sqrt(hd) over the given key positions: {position: probability}."""
    scores = np.array([q @ keys[s] / math.sqrt(len(q)) for s in positions])
    p = np.exp(scores - scores.max())
    return dict(zip(positions, p / p.sum()))


def plain(model, chunks, other_loops=None):
    """The metrics of `chunks`, computed the slow and obvious way."""
    cfg = model.cfg
    R, L, nh, nkv = cfg.num_loops, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads
    group = nh // nkv
    params = {n: p.detach().double().numpy() for n, p in model.named_parameters()}
    norm_w, eps = params["model.norm.weight"], cfg.rms_norm_eps
    lm = params["lm_head.weight"]
    vals = {m: [[] for _ in range(R)] for m in LOOP_METRICS}
    erank_w = [[] for _ in range(R)]
    gate = np.zeros((R, L, nh))
    gate_n = [0] * R
    peaks = np.zeros(R)
    cmp = {"nll_native": [], "nll": [], "kl": [], "same": []}
    for ids in chunks:
        rec = Recorder()
        logits = model(ids[None], capture=rec)[0].double().numpy()
        T = len(ids)
        E = params["model.embed_tokens.weight"][ids.numpy()]
        h = [E] + rec.states  # h[r + 1] = output of loop r
        normed = [False] + [r == R - 1 or cfg.normalize_per_loop for r in range(R)]
        heads = [hs if nd else np.stack([rms_norm(row, norm_w, eps) for row in hs]) for hs, nd in zip(h, normed)]
        # the recorder saw the forward: its last loop gives the forward's logits
        np.testing.assert_allclose(heads[-1] @ lm.T, logits, atol=1e-4)
        lens = [np.stack([log_softmax(heads[j][t] @ lm.T) for t in range(T)]) for j in range(R + 1)]
        for r in range(R):
            for t in range(T):
                d1 = h[r + 1][t] - h[r][t]
                vals["step_size"][r].append(np.linalg.norm(d1))
                if r >= 1:
                    d0 = h[r][t] - h[r - 1][t]
                    n = np.linalg.norm(d1) * np.linalg.norm(d0)
                    vals["update_coherence"][r].append(d1 @ d0 / n if n > 1e-12 else 0.0)
                    if t >= 1:
                        vals["clp_offset_cost"][r].append(np.linalg.norm(h[r][t] - h[r][t - 1]))
                p, q = np.exp(lens[r + 1][t]), np.exp(lens[r][t])
                vals["output_kl"][r].append(sum(p[v] * math.log(p[v] / q[v]) for v in range(len(p)) if p[v] > 0))
                vals["output_entropy"][r].append(-sum(pv * math.log(pv) for pv in p if pv > 0))
                if t < T - 1:
                    y = int(ids[t + 1])
                    vals["true_rank_mean"][r].append(1 + sum(1 for v in lens[r + 1][t] if v > lens[r + 1][t][y]))
            s = np.linalg.svd(heads[r + 1], compute_uv=False)
            pr = s / s.sum()
            vals["effective_rank"][r].append(math.exp(-sum(x * math.log(x) for x in pr if x > 0)))
            erank_w[r].append(T)
        for t in range(T - 1):
            y = int(ids[t + 1])
            gains = [lens[r + 1][t][y] - lens[r][t][y] for r in range(R)]
            peaks[int(np.argmax(gains))] += 1
        # attention: per layer, head and position, the distribution over key positions
        for r in range(1, R):
            gate_n[r] += T
            for i in range(L):
                cur, old = rec.layers[r, i], rec.layers[r - 1, i]
                pre = f"model.layers.{i}.self_attn.plt_gate."
                for hd_ in range(nh):
                    kvh = hd_ // group
                    for t in range(T):
                        def dist(rc, loop):
                            causal = list(range(t + 1))
                            a_glob = attention_row(rc["q"][hd_, t], rc["k_glob"][kvh], causal)
                            if loop == 0:
                                return a_glob, a_glob, None, 1.0
                            window = [s for s in causal if t - s <= W]
                            a_loc = attention_row(rc["q"][hd_, t], rc["k_loc"][kvh], window)
                            if cfg.gate_use_hidden_states:
                                gn = rms_norm(rc["x"][t], params[pre + "gate_norm.weight"], eps)
                                logit = params[pre + "weight"][hd_] @ gn + params[pre + "bias"][hd_]
                            else:
                                logit = rc["q"][hd_, t] @ params[pre + "weight"][hd_] + params[pre + "bias"][hd_]
                            g = 1 / (1 + math.exp(-logit))
                            mix = {s: g * a_glob[s] + (1 - g) * a_loc.get(s, 0.0) for s in causal}
                            return mix, a_glob, a_loc, g
                        a_cur, a_glob, a_loc, g = dist(cur, r)
                        a_old = dist(old, r - 1)[0]
                        gate[r, i, hd_] += g
                        # the distributions reproduce the forward's attention output
                        y = g * sum(a_glob[s] * cur["v_glob"][kvh, s] for s in a_glob) + \
                            (1 - g) * sum(a_loc[s] * cur["v_loc"][kvh, s] for s in a_loc)
                        np.testing.assert_allclose(y, cur["y"][hd_, t], atol=1e-5)
                        vals["attention_kl"][r].append(
                            sum(a_cur[s] * math.log(a_cur[s] / a_old[s]) for s in a_cur if a_cur[s] > 0))
        if other_loops is not None:
            alt = rebuilt(model, other_loops)(ids[None])[0].double().numpy()
            for t in range(T - 1):
                y = int(ids[t + 1])
                a, b = log_softmax(logits[t]), log_softmax(alt[t])
                cmp["nll_native"].append(-a[y])
                cmp["nll"].append(-b[y])
                cmp["kl"].append(float(np.exp(a) @ (a - b)))
                cmp["same"].append(float(a.argmax() == b.argmax()))
    out = []
    for r in range(R):
        e = {m: (float(np.mean(vals[m][r])) if vals[m][r] else None) for m in LOOP_METRICS}
        if vals["effective_rank"][r]:
            e["effective_rank"] = float(np.average(vals["effective_rank"][r], weights=erank_w[r]))
        ranks = sorted(vals["true_rank_mean"][r])
        e["true_rank_median"] = float(ranks[(len(ranks) + 1) // 2 - 1])  # the lower median
        e["peak_share"] = peaks[r] / len(ranks)
        if gate_n[r]:
            m = gate[r] / gate_n[r]
            e["gate_mean"], e["gate_head_std"], e["gate_layer_std"] = m.mean(), m.std(axis=1).mean(), m.mean(1).std()
        else:
            e["gate_mean"] = e["gate_head_std"] = e["gate_layer_std"] = None
        out.append(e)
    return out, {k: float(np.mean(v)) for k, v in cmp.items()} if other_loops is not None else None


def rebuilt(model, loops):
    """A new model of the same weights at another loop count (no gate at one loop)."""
    with torch.device("meta"):
        other = PLTModel(model.cfg.with_loops(loops))
    for name, p in model.named_parameters():
        if loops > 1 or "plt_gate" not in name:
            assign_parameter(other, name, p.detach().clone())
    return other.eval()


def test_chunks_cover_the_tokens_with_bos_in_front():
    tokens = torch.arange(10, 43, dtype=torch.int32)
    chunks = list(chunk_ids(tokens, 20, bos=1))
    assert [len(c) for c in chunks] == [20, 15]
    assert all(int(c[0]) == 1 and c.dtype == torch.int64 for c in chunks)
    assert torch.equal(torch.cat([c[1:] for c in chunks]), tokens.long())
    assert [len(c) for c in chunk_ids(tokens, 16)] == [16, 16]  # a last chunk of 1 id is dropped


CASES = [
    dict(plt_num_loops=1),
    dict(plt_num_loops=2, plt_gate_use_hidden_states=True),
    dict(plt_num_loops=2, plt_gate_use_hidden_states=False),
    dict(plt_num_loops=3, plt_gate_use_hidden_states=True, plt_normalize_per_loop=False),
    dict(plt_num_loops=4, plt_gate_use_hidden_states=True),
    dict(plt_num_loops=4, plt_gate_use_hidden_states=False),
]


@pytest.mark.parametrize("overrides", CASES, ids=lambda o: "-".join(f"{k[4:]}={v}" for k, v in o.items()))
def test_every_metric_equals_a_plain_computation(overrides):
    model = tiny_model(plt_window_size=[W, 0], seed=1, **overrides)
    R = model.cfg.num_loops
    tokens = torch.randint(3, model.cfg.vocab_size, (33,), generator=torch.Generator().manual_seed(2))
    chunks = list(chunk_ids(tokens, 20, bos=1))  # two chunks of different lengths
    other = 1 if R > 1 else None
    diag = Diagnostics(model, other_loops=other)
    for ids in chunks:
        diag.add(ids)
    got = diag.result()
    want, want_cmp = plain(model, chunks, other)
    assert got["loops"] == R and got["chunks"] == 2 and got["tokens"] == 35 and got["scored_tokens"] == 33
    for r in range(R):
        entry = got["per_loop"][r]
        assert entry["loop"] == r
        for m in LOOP_METRICS:
            if want[r][m] is None:
                assert entry[m] is None, (r, m)
            else:
                assert entry[m] == pytest.approx(want[r][m], rel=1e-4, abs=1e-5), (r, m, entry[m], want[r][m])
    inapplicable = {"update_coherence", "clp_offset_cost", "gate_mean", "gate_head_std", "gate_layer_std",
                    "attention_kl"}
    assert {m for m in LOOP_METRICS if got["per_loop"][0][m] is None} == inapplicable  # loop 0: no previous loop
    if R > 1:
        assert all(got["per_loop"][-1][m] is not None for m in LOOP_METRICS)
        assert len(got["per_loop"][1]["gate_by_layer_head"]) == model.cfg.num_layers
        cmp = got["other_loops"]
        assert (cmp["loops"], cmp["native_loops"]) == (1, R)
        for key, plain_key in [("nll_native", "nll_native"), ("nll", "nll"), ("kl", "kl"), ("same_top1", "same")]:
            assert cmp[key] == pytest.approx(want_cmp[plain_key], rel=1e-4, abs=1e-6), key
        assert cmp["ppl"] == pytest.approx(math.exp(want_cmp["nll"]), rel=1e-4)
        assert cmp["kl"] > 0


def test_the_capture_hook_leaves_the_forward_unchanged():
    model = tiny_model(plt_num_loops=3, plt_window_size=[W, 0])
    ids = torch.randint(0, model.cfg.vocab_size, (1, 17), generator=torch.Generator().manual_seed(0))
    rec = Recorder()
    assert torch.equal(model(ids), model(ids, capture=rec))
    assert len(rec.states) == 3 and len(rec.layers) == 3 * model.cfg.num_layers


def test_blocks_do_not_change_the_numbers(monkeypatch):
    """Attention and the logit lens go in blocks of at most BLOCK elements; tiny blocks (one
    position a block) give the same result as one block for the whole chunk."""
    model = tiny_model(plt_num_loops=2, plt_window_size=[W, 0])
    ids = torch.randint(0, model.cfg.vocab_size, (24,), generator=torch.Generator().manual_seed(3))
    whole = Diagnostics(model)
    whole.add(ids)
    monkeypatch.setattr(diagnostics, "BLOCK", 1)
    sizes = []
    real = diagnostics.log_attention
    monkeypatch.setattr(diagnostics, "log_attention", lambda *a: sizes.append(real(*a).numel()) or real(*a))
    tiny = Diagnostics(model)
    tiny.add(ids)
    assert max(sizes) == model.cfg.num_heads * 24  # one query row per block: heads x keys
    for a, b in zip(whole.result()["per_loop"], tiny.result()["per_loop"]):
        for m in LOOP_METRICS:
            assert (a[m] is None and b[m] is None) or a[m] == pytest.approx(b[m], rel=1e-5, abs=1e-7), m


def test_identical_loops_make_the_update_terms_vanish():
    """beta = 0, alpha = 1 and a window covering the chunk: every loop computes exactly what
    loop 0 does, so nothing changes after loop 0."""
    model = tiny_model(plt_num_loops=4, plt_hidden_scale=0.0, plt_emb_scale=1.0, plt_window_size=[64, 0])
    diag = Diagnostics(model)
    diag.add(torch.randint(0, model.cfg.vocab_size, (30,), generator=torch.Generator().manual_seed(4)))
    loops = diag.result()["per_loop"]
    assert loops[0]["step_size"] > 1  # the embedding -> loop 0 step is real
    for e in loops[1:]:
        for m in ("step_size", "update_coherence", "output_kl", "attention_kl"):
            assert abs(e[m]) < 1e-5, (e["loop"], m, e[m])
        assert e["effective_rank"] == pytest.approx(loops[0]["effective_rank"], rel=1e-5)
        assert e["clp_offset_cost"] > 1  # not an update term: neighbouring tokens still differ


def test_beta_zero_makes_the_later_loops_repeat_loop_1():
    """beta = 0: every loop r >= 1 reads alpha * E only, so loops 2.. repeat loop 1 exactly."""
    model = tiny_model(plt_num_loops=4, plt_hidden_scale=0.0, plt_window_size=[W, 0])
    diag = Diagnostics(model)
    diag.add(torch.randint(0, model.cfg.vocab_size, (30,), generator=torch.Generator().manual_seed(5)))
    loops = diag.result()["per_loop"]
    assert loops[1]["step_size"] > 0.1 and loops[1]["attention_kl"] > 1e-3 and loops[1]["output_kl"] > 0
    for e in loops[2:]:
        for m in ("step_size", "update_coherence", "output_kl", "attention_kl"):
            assert abs(e[m]) < 1e-5, (e["loop"], m, e[m])
        assert e["gate_mean"] == pytest.approx(loops[1]["gate_mean"], abs=1e-6)


@pytest.mark.parametrize("hidden", [True, False])
def test_a_gate_bias_of_plus_20_gives_a_gate_mean_of_one(hidden):
    for bias, want in ((20.0, 1.0), (-20.0, 0.0)):
        model = tiny_model(plt_num_loops=3, plt_gate_use_hidden_states=hidden, gate_bias=bias,
                           plt_window_size=[W, 0])
        diag = Diagnostics(model)
        diag.add(torch.randint(0, model.cfg.vocab_size, (20,), generator=torch.Generator().manual_seed(6)))
        for e in diag.result()["per_loop"][1:]:
            assert e["gate_mean"] == pytest.approx(want, abs=1e-4)
            assert e["gate_head_std"] < 1e-4 and e["gate_layer_std"] < 1e-4
            assert all(abs(g - want) < 1e-4 for row in e["gate_by_layer_head"] for g in row)


def retained(diag: Diagnostics) -> int:
    """Elements of everything the accumulator keeps between chunks (not the model)."""
    n = 0
    for key, value in vars(diag).items():
        if key in ("model", "other", "cfg"):
            continue
        if isinstance(value, torch.Tensor):
            n += value.numel()
        elif isinstance(value, dict):
            n += sum(len(s.total) + len(s.count) if hasattr(s, "total") else 1 for s in value.values())
        elif isinstance(value, list):
            n += len(value)
        else:
            n += 1
    return n


def test_work_per_chunk_is_bounded_on_a_long_text():
    """A text 6x longer runs 6x as many forwards of at most --ctx tokens each, and the
    accumulator keeps the same number of values: memory does not grow with the text."""
    model = tiny_model(plt_num_loops=2, plt_window_size=[W, 0])
    seen = []
    forward = model.forward
    model.forward = lambda ids, capture=None: seen.append(ids.shape[-1]) or forward(ids, capture)
    sizes = {}
    for n_tokens in (64, 384):
        seen.clear()
        diag = Diagnostics(model, other_loops=1)
        tokens = torch.randint(0, model.cfg.vocab_size, (n_tokens,), generator=torch.Generator().manual_seed(7))
        for ids in chunk_ids(tokens, 32):
            diag.add(ids)
        assert diag.chunks == n_tokens // 32 and max(seen) <= 32
        assert len(seen) == 2 * diag.chunks  # native run + the --loops run, one chunk each
        sizes[n_tokens] = retained(diag)
    assert sizes[64] == sizes[384]
