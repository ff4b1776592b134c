"""Helpers of the diagnose tests: a tiny in-memory LoopCoder and a capture that keeps everything."""

import torch

from loopcli.runtime.config import config_from_dict
from loopcli.runtime.model import PLTModel, assign_parameter
from loopcli.runtime.synthetic import random_tensors, synthetic_config


def tiny_model(seed=0, gate_bias=None, **overrides) -> PLTModel:
    """A random fp32 tiny LoopCoder in memory (the tensors of a synthetic checkpoint);
    `gate_bias` replaces every G-SWA gate bias."""
    cfg = config_from_dict(synthetic_config("loopcoder", "tiny", **overrides))
    with torch.device("meta"):
        model = PLTModel(cfg)
    for name, t in random_tensors(cfg, seed):
        if gate_bias is not None and name.endswith("plt_gate.bias"):
            t = torch.full_like(t, float(gate_bias))
        assign_parameter(model, name, t)
    return model.eval()


class Recorder:
    """A capture that keeps everything the forward shows it (batch of one)."""

    def __init__(self):
        self.layers = {}  # (r, i) -> dict of numpy arrays
        self.states = []

    def attention(self, r, i, layer, x, q, kv_glob, kv_loc, y):
        self.layers[r, i] = {"x": x[0].double().numpy(), "q": q[0].double().numpy(),
                             "k_glob": kv_glob[0][0].double().numpy(), "v_glob": kv_glob[1][0].double().numpy(),
                             "k_loc": kv_loc[0][0].double().numpy(), "v_loc": kv_loc[1][0].double().numpy(),
                             "y": y[0].double().numpy()}

    def loop(self, r, h_hat):
        self.states.append(h_hat[0].double().numpy())
