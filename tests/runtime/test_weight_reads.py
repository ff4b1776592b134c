"""The fused decode reads every weight matrix once per step, whatever the loop count."""

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from loopcli.runtime.decode import DecodeState, fused_step, prefill

MATMULS = {"mm", "addmm", "bmm", "matmul", "linear", "baddbmm", "addmv", "mv"}


class WeightReads(TorchDispatchMode):
    """Counts matmul ops per weight matrix the op reads (matched by storage)."""

    def __init__(self, model):
        super().__init__()
        self.names = {p.untyped_storage().data_ptr(): n for n, p in model.named_parameters() if p.dim() == 2}
        self.reads = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in MATMULS:
            for a in args:
                if isinstance(a, torch.Tensor):
                    name = self.names.get(a.untyped_storage().data_ptr())
                    if name:
                        self.reads[name] += 1
        return func(*args, **(kwargs or {}))


def reads_per_step(model, step):
    state = DecodeState.new(model, 16)
    prefill(model, state, torch.tensor([3, 4, 5]))
    counter = WeightReads(model)
    with counter:
        step(model, state, 7)
    return counter.reads


def matrices(model):
    return {n for n, p in model.named_parameters() if p.dim() == 2 and "embed_tokens" not in n}


def test_fused_reads_each_weight_once_for_r1_and_r2(make_model):
    r1, r2 = make_model(plt_num_loops=1), make_model(plt_num_loops=2)
    reads1, reads2 = reads_per_step(r1, fused_step), reads_per_step(r2, fused_step)
    assert set(reads1) == matrices(r1) and set(reads2) == matrices(r2)
    assert set(reads1.values()) == {1} and set(reads2.values()) == {1}
    shared = matrices(r1)
    assert sum(reads1[n] for n in shared) == sum(reads2[n] for n in shared)
    # R = 2 adds only the small gate matrices, one read each per layer
    assert set(reads2) - shared == {f"model.layers.{i}.self_attn.plt_gate.weight" for i in range(2)}


def test_naive_reads_each_shared_weight_r_times(make_model):
    """The counter can tell: the naive path reads every backbone weight once per loop."""
    r2 = make_model(plt_num_loops=2)
    reads = reads_per_step(r2, lambda m, s, tok: prefill(m, s, torch.tensor([tok])))
    assert reads["model.layers.0.self_attn.q_proj.weight"] == 2
    assert reads["model.layers.1.mlp.down_proj.weight"] == 2
