"""Per-loop diagnostics of a PLT model: the LoopCoder-v2 paper's analysis, on the user's text.

`Diagnostics` runs the reference forward (`PLTModel.forward` with a capture hook) over chunks
of token ids, one chunk at a time, and keeps only running sums: its state has the same size
after two chunks as after two thousand. Every metric is a mean over positions (and over
layers and heads where it has them) for each loop r = 0..R-1, numbered from 0 as in
docs/plt-model.md. Definitions, and the choices made where the paper is vague:
docs/diagnose.md.

Notation: E the token embeddings, h(r) the output of loop r as the next loop reads it
(`PLTModel.loop_output`), h(-1) := E; lens(r) = log_softmax(lm_head(model.norm(h(r)))), the
norm skipped where h(r) is already normed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from .model import PLTModel

# Metrics reported for every loop (None where a metric does not apply to that loop).
LOOP_METRICS = (
    "step_size",  # mean_t ||h(r)_t - h(r-1)_t||
    "update_coherence",  # mean_t cos(h(r)_t - h(r-1)_t, h(r-1)_t - h(r-2)_t), r >= 1
    "effective_rank",  # exp(entropy of normalized singular values) of the head input, per chunk
    "clp_offset_cost",  # mean_t ||h(r-1)_t - h(r-1)_{t-1}||, r >= 1 (loops that read the shift)
    "gate_mean",  # mean G-SWA gate g, r >= 1
    "gate_head_std",  # spread of the per-head gate means over heads (mean over layers)
    "gate_layer_std",  # spread of the per-layer gate means over layers
    "output_kl",  # mean_t KL(lens(r) || lens(r-1))
    "output_entropy",  # mean_t entropy of lens(r)
    "true_rank_mean",  # mean rank of the true next token under lens(r) (1 = top)
    "true_rank_median",
    "peak_share",  # share of tokens whose log p(true next) rises most in loop r
    "attention_kl",  # mean KL(A(r) || A(r-1)) of attention over key positions, r >= 1
)
# the metrics kept as a running sum and count per loop (the others come from histograms)
SUMMED = ("step_size", "update_coherence", "effective_rank", "clp_offset_cost", "output_kl",
          "output_entropy", "true_rank_mean", "attention_kl")
BLOCK = 1 << 22  # elements of one attention or logit block: bounds the workspace at any --ctx


def with_loops(model: PLTModel, num_loops: int) -> PLTModel:
    """The same weights run at another loop count (a shallow copy: parameters are shared)."""
    other = copy.copy(model)
    other.cfg = model.cfg.with_loops(num_loops)
    return other


def chunk_ids(tokens: torch.Tensor, ctx: int, bos: int | None = None) -> Iterator[torch.Tensor]:
    """Chunks (int64) of at most `ctx` ids of the 1-D `tokens`, each to be scored from a cold
    state, with `bos` in front of each when given; a final chunk of fewer than 2 ids (nothing
    to predict) is dropped."""
    body = ctx - 1 if bos is not None else ctx
    if body < 1:
        raise ValueError(f"ctx {ctx} leaves no room for tokens")
    for a in range(0, len(tokens), body):
        ids = tokens[a:a + body].long()
        if bos is not None:
            ids = torch.cat([torch.tensor([bos]), ids])
        if len(ids) >= 2:
            yield ids


def effective_rank(m: torch.Tensor) -> float:
    """exp(-sum p_i log p_i), p_i = sigma_i / sum_j sigma_j over the singular values of m."""
    s = torch.linalg.svdvals(m.double())
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def log_attention(q, k_glob, mask_glob, k_loc=None, mask_loc=None, g=None) -> torch.Tensor:
    """log A over key positions, per head: q [nh, rows, hd], k [nkv, T, hd], masks [rows, T],
    g [nh, rows, 1] -> [nh, rows, T]. Loop 0: the causal softmax. Loops >= 1: the gate's
    mixture g A_glob + (1 - g) A_loc of the two softmaxes, over the same key positions."""
    def branch(k, mask):
        k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)  # GQA: head h reads kv head h // group
        scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
        return torch.log_softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)

    log_glob = branch(k_glob, mask_glob)
    if g is None:
        return log_glob
    g = g.float()
    return torch.logaddexp(g.log() + log_glob, torch.log1p(-g) + branch(k_loc, mask_loc))


def kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) along the last dim, from log-probabilities; 0 log 0 counts as 0."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


class _Sums:
    """Running sum and count per loop, for one metric."""

    def __init__(self, loops: int):
        self.total = [0.0] * loops
        self.count = [0] * loops

    def add(self, r: int, total: float, count: int) -> None:
        self.total[r] += float(total)
        self.count[r] += count

    def mean(self, r: int) -> float | None:
        return self.total[r] / self.count[r] if self.count[r] else None


class _Capture:
    """Receives the forward's per-layer attention inputs and per-loop outputs for one chunk;
    gate sums and attention KL are reduced layer by layer, so no T x T matrix of every layer
    is ever held: only the previous loop's queries, keys and gates of each layer."""

    def __init__(self, diag: "Diagnostics", T: int):
        self.diag = diag
        pos = torch.arange(T)
        self.causal = pos[None, :] <= pos[:, None]
        self.local = self.causal & (pos[:, None] - pos[None, :] <= diag.cfg.window)
        self.prev: dict[int, tuple] = {}  # layer -> (q, k_loc, g) of the previous loop
        self.states: list[torch.Tensor] = []  # h(r) of each loop, [T, H]

    def attention(self, r, i, layer, x, q, kv_glob, kv_loc, y) -> None:
        x, q, k_glob, k_loc = x[0], q[0], kv_glob[0][0], kv_loc[0][0]
        g = layer.self_attn.plt_gate(x, q) if r > 0 else None  # [nh, T, 1]
        d = self.diag
        if g is not None:
            d.gate_sum[r, i] += g[..., 0].double().sum(-1)
            if i == 0:
                d.gate_count[r] += q.shape[1]
            qp, kp, gp = self.prev[i]
            nh, T = q.shape[0], q.shape[1]
            rows = max(1, BLOCK // (nh * T))
            total = 0.0
            for a in range(0, T, rows):
                b = min(T, a + rows)
                cm, lm = self.causal[a:b], self.local[a:b]
                cur = log_attention(q[:, a:b], k_glob, cm, k_loc, lm, g[:, a:b])
                old = log_attention(qp[:, a:b], k_glob, cm, kp, lm, None if gp is None else gp[:, a:b])
                total += float(kl_rows(cur, old).sum())
            d.sums["attention_kl"].add(r, total, nh * T)
        self.prev[i] = (q, k_loc, g)

    def loop(self, r, h_hat) -> None:
        self.states.append(h_hat[0])


class Diagnostics:
    """Per-loop metrics of `model` over chunks of token ids given to `add`; `other_loops` also
    runs every chunk at that loop count and compares its next-token predictions with the
    native count's."""

    def __init__(self, model: PLTModel, other_loops: int | None = None):
        self.model, self.cfg = model, model.cfg
        R, L, nh = self.cfg.num_loops, self.cfg.num_layers, self.cfg.num_heads
        self.sums = {name: _Sums(R) for name in SUMMED}
        self.gate_sum = torch.zeros(R, L, nh, dtype=torch.float64)
        self.gate_count = [0] * R
        self.rank_hist = torch.zeros(R, self.cfg.vocab_size + 1, dtype=torch.int64)  # exact medians
        self.peak = torch.zeros(R, dtype=torch.int64)
        self.chunks = self.tokens = self.scored = 0
        self.other = None
        if other_loops is not None:
            self.other = with_loops(model, other_loops)
            self.cmp = {"nll_native": 0.0, "nll": 0.0, "kl": 0.0, "same_top1": 0}

    def _lens_input(self, r: int, h: torch.Tensor) -> torch.Tensor:
        """What the head reads for state r (-1: the embedding): normed once."""
        normed = r >= 0 and (r == self.cfg.num_loops - 1 or self.cfg.normalize_per_loop)
        return h if normed else self.model.model.norm(h)

    @torch.no_grad()
    def add(self, ids: torch.Tensor) -> None:
        """One chunk of ids [T], T >= 2, from a cold state."""
        model, R = self.model, self.cfg.num_loops
        T = ids.shape[0]
        cap = _Capture(self, T)
        logits = model(ids[None], capture=cap)[0]
        states = [model.model.embed_tokens(ids)] + cap.states  # states[r + 1] = h(r)
        heads = [self._lens_input(r - 1, h) for r, h in enumerate(states)]
        s = self.sums
        steps = [(states[r + 1] - states[r]).float() for r in range(R)]
        for r in range(R):
            s["step_size"].add(r, steps[r].norm(dim=-1).sum(), T)
            s["effective_rank"].add(r, effective_rank(heads[r + 1]) * T, T)
            if r >= 1:
                s["update_coherence"].add(r, F.cosine_similarity(steps[r], steps[r - 1], dim=-1).sum(), T)
                prev = states[r].float()  # h(r - 1), the state loop r reads shifted
                s["clp_offset_cost"].add(r, (prev[1:] - prev[:-1]).norm(dim=-1).sum(), T - 1)
        self._lens(ids, heads)
        if self.other is not None:
            self._compare(ids, logits)
        self.chunks += 1
        self.tokens += T
        self.scored += T - 1

    def _lens(self, ids: torch.Tensor, heads: list[torch.Tensor]) -> None:
        """Logit-lens metrics, a block of positions at a time (a [rows, V] block per state)."""
        R, T, V = self.cfg.num_loops, ids.shape[0], self.cfg.vocab_size
        rows = max(1, BLOCK // V)
        head = self.model.lm_head
        for a in range(0, T, rows):
            b = min(T, a + rows)
            target = ids[a + 1:b + 1]  # the true next token of positions a..b-1 that have one
            n = target.shape[0]
            prev = torch.log_softmax(head(heads[0][a:b]).float(), dim=-1)
            gains = []
            for r in range(R):
                cur = torch.log_softmax(head(heads[r + 1][a:b]).float(), dim=-1)
                self.sums["output_kl"].add(r, kl_rows(cur, prev).sum(), b - a)
                self.sums["output_entropy"].add(r, torch.special.entr(cur.exp()).sum(), b - a)
                if n:
                    lp = cur[:n].gather(1, target[:, None])
                    rank = (cur[:n] > lp).sum(-1) + 1
                    self.sums["true_rank_mean"].add(r, rank.sum(), n)
                    self.rank_hist[r] += torch.bincount(rank, minlength=V + 1)
                    gains.append(lp[:, 0] - prev[:n].gather(1, target[:, None])[:, 0])
                prev = cur
            if n:  # the first loop with the largest gain (argmax takes the first on ties)
                self.peak += torch.bincount(torch.stack(gains).argmax(0), minlength=R)

    def _compare(self, ids: torch.Tensor, logits: torch.Tensor) -> None:
        other = self.other(ids[None])[0]
        target = ids[1:, None]
        native = torch.log_softmax(logits[:-1].float(), dim=-1)
        alt = torch.log_softmax(other[:-1].float(), dim=-1)
        self.cmp["nll_native"] -= float(native.gather(1, target).sum())
        self.cmp["nll"] -= float(alt.gather(1, target).sum())
        self.cmp["kl"] += float(kl_rows(native, alt).sum())
        self.cmp["same_top1"] += int((native.argmax(-1) == alt.argmax(-1)).sum())

    def _median_rank(self, r: int) -> float | None:
        hist = self.rank_hist[r]
        n = int(hist.sum())
        if not n:
            return None
        return float(torch.searchsorted(hist.cumsum(0), (n + 1) // 2))

    def result(self) -> dict:
        """Every metric for every loop (None where it does not apply), plus the comparison."""
        R = self.cfg.num_loops
        per_loop = []
        for r in range(R):
            entry = {"loop": r, **{name: self.sums[name].mean(r) for name in SUMMED}}
            entry["true_rank_median"] = self._median_rank(r)
            entry["peak_share"] = float(self.peak[r]) / self.scored if self.scored else None
            gate = self.gate_sum[r] / self.gate_count[r] if self.gate_count[r] else None  # [L, nh] means
            entry["gate_mean"] = None if gate is None else float(gate.mean())
            entry["gate_head_std"] = None if gate is None else float(gate.std(dim=1, correction=0).mean())
            entry["gate_layer_std"] = None if gate is None else float(gate.mean(1).std(correction=0))
            entry["gate_by_layer_head"] = None if gate is None else gate.tolist()
            per_loop.append(entry)
        out = {"loops": R, "chunks": self.chunks, "tokens": self.tokens, "scored_tokens": self.scored,
               "per_loop": per_loop}
        if self.other is not None and self.scored:
            n = self.scored
            out["other_loops"] = {
                "loops": self.other.cfg.num_loops, "native_loops": R,
                "nll_native": self.cmp["nll_native"] / n, "nll": self.cmp["nll"] / n,
                "ppl_native": math.exp(self.cmp["nll_native"] / n), "ppl": math.exp(self.cmp["nll"] / n),
                "kl": self.cmp["kl"] / n, "same_top1": self.cmp["same_top1"] / n,
            }
        return out
