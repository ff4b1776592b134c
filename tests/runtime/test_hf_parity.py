"""R = 1 checkpoints give the logits of transformers' own Llama / Qwen2 on the same files."""

import pytest
import torch

from loopcli.runtime.model import load_model
from loopcli.runtime.synthetic import write_synthetic

transformers = pytest.importorskip("transformers")

SCALINGS = {
    "none": None,
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    "linear": {"rope_type": "linear", "factor": 4.0},
}


def hf_logits(path, ids, cls):
    model = cls.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids[None]).logits[0]


@pytest.mark.parametrize("scaling", list(SCALINGS))
def test_llama_matches_transformers(tmp_path, scaling):
    path = write_synthetic(tmp_path / "m", arch="llama", dtype="f32", seed=3,
                           rope_scaling=SCALINGS[scaling], rope_theta=10000.0)
    ids = torch.randint(0, 512, (40,), generator=torch.Generator().manual_seed(0))
    ours = load_model(path)(ids[None])[0]
    theirs = hf_logits(path, ids, transformers.LlamaForCausalLM)
    assert (ours - theirs).abs().max() <= 1e-4


def test_qwen2_with_biases_matches_transformers(tmp_path):
    path = write_synthetic(tmp_path / "m", arch="qwen2", dtype="f32", seed=4)
    ids = torch.randint(0, 512, (40,), generator=torch.Generator().manual_seed(0))
    ours = load_model(path)(ids[None])[0]
    theirs = hf_logits(path, ids, transformers.Qwen2ForCausalLM)
    assert (ours - theirs).abs().max() <= 1e-4


def test_scaling_is_not_a_no_op(tmp_path):
    """The scaled-RoPE parity tests would be blind if scaling changed nothing."""
    ids = torch.randint(0, 512, (40,), generator=torch.Generator().manual_seed(0))
    plain = load_model(write_synthetic(tmp_path / "a", arch="llama", dtype="f32", seed=3, rope_theta=10000.0))
    scaled = load_model(write_synthetic(tmp_path / "b", arch="llama", dtype="f32", seed=3, rope_theta=10000.0,
                                        rope_scaling=SCALINGS["linear"]))
    assert (plain(ids[None]) - scaled(ids[None])).abs().max() > 1e-3
