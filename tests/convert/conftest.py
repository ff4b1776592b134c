"""Model builders shared by the converter tests."""

import pytest
from safetensors.torch import load_file, save_file

from loopcli.runtime.synthetic import write_synthetic

# K-quant-sized synthetic model: row lengths 256 and 512 fit the 256-element super-blocks
SIZES = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
             num_hidden_layers=8)


def confident_model(path, **kw):
    """A random model with a trained model's confident, stable predictions.

    Plain random weights give near-flat logits (an argmax any rounding flips) or, with larger
    weights, a chaotic network: either would measure luck, not quantization. Small layer
    weights, larger embeddings and the embeddings as the head give peaked logits (mean top
    probability about 0.4) that still depend on the layers (the model rarely copies its input).
    """
    ckpt = write_synthetic(path, dtype="f32", std=0.01, **kw)
    t = load_file(ckpt / "model.safetensors")
    t["model.embed_tokens.weight"] *= 4
    t["lm_head.weight"] = t["model.embed_tokens.weight"].clone()
    save_file(t, ckpt / "model.safetensors")
    return ckpt


@pytest.fixture(scope="session")
def confident():
    return confident_model


@pytest.fixture(scope="session")
def sizes():
    return dict(SIZES)
