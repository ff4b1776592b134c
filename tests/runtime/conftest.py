import pytest
import torch

from loopcli.runtime.config import config_from_dict
from loopcli.runtime.model import PLTModel, assign_parameter
from loopcli.runtime.synthetic import random_tensors, synthetic_config


def build_model(arch="loopcoder", seed=0, **overrides) -> PLTModel:
    """A random fp32 model in memory, with the same tensors a synthetic checkpoint holds."""
    cfg = config_from_dict(synthetic_config(arch, "tiny", **overrides))
    with torch.device("meta"):
        model = PLTModel(cfg)
    for name, t in random_tensors(cfg, seed):
        assign_parameter(model, name, t)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


@pytest.fixture
def make_model():
    return build_model
