import pytest
import torch

from loopcli.runtime.config import config_from_dict
from loopcli.runtime.errors import ModelError
from loopcli.runtime.synthetic import synthetic_config

BASE = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4)


def test_every_plt_key_is_read():
    cfg = config_from_dict(synthetic_config(
        "loopcoder", plt_num_loops=3, plt_window_size=[7, 0], plt_normalize_per_loop=False,
        plt_emb_scale=0.5, plt_hidden_scale=0.25, plt_gate_use_hidden_states=False))
    assert (cfg.num_loops, cfg.window, cfg.normalize_per_loop) == (3, 7, False)
    assert (cfg.emb_scale, cfg.hidden_scale, cfg.gate_use_hidden_states) == (0.5, 0.25, False)
    assert cfg.eos_token_ids == (2, 454, 459) and cfg.bos_token_id == 1  # </s>, <|im_end|>, <|endoftext|>


def test_vendor_defaults_when_plt_keys_are_absent():
    cfg = config_from_dict({"architectures": ["IQuestPLTCoderForCausalLM"], **BASE})
    assert (cfg.num_loops, cfg.window, cfg.normalize_per_loop) == (2, 64, True)
    # vLLM fork: None/absent scales -> 1.0; gate mode defaults to the query gate
    assert (cfg.emb_scale, cfg.hidden_scale, cfg.gate_use_hidden_states) == (1.0, 1.0, False)
    assert cfg.num_kv_heads == 4 and cfg.head_dim == 8


@pytest.mark.parametrize("arch,bias", [("LlamaForCausalLM", False), ("IQuestCoderForCausalLM", False),
                                       ("Qwen2ForCausalLM", True)])
def test_r1_architectures(arch, bias):
    cfg = config_from_dict({"architectures": [arch], **BASE, "plt_num_loops": 4})
    assert cfg.num_loops == 1 and cfg.attention_bias is bias


def test_rope_parameters_form_of_transformers_5():
    cfg = config_from_dict({"architectures": ["LlamaForCausalLM"], **BASE, "rope_parameters": {
        "rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0}})
    assert cfg.rope_theta == 1000.0
    plain = config_from_dict({"architectures": ["LlamaForCausalLM"], **BASE, "rope_theta": 1000.0})
    assert torch.allclose(cfg.rope_inv_freq(), plain.rope_inv_freq() / 2)


def test_llama3_scaling_keeps_high_and_divides_low_frequencies():
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    plain = config_from_dict({"architectures": ["LlamaForCausalLM"], **BASE}).rope_inv_freq()
    scaled = config_from_dict({"architectures": ["LlamaForCausalLM"], **BASE,
                               "rope_scaling": scaling}).rope_inv_freq()
    assert scaled[0] == plain[0]  # shortest wavelength untouched
    assert torch.isclose(scaled[-1], plain[-1] / 8)  # longest wavelength divided by factor


@pytest.mark.parametrize("change,needle", [
    ({"architectures": ["GPT2LMHeadModel"]}, "GPT2LMHeadModel"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
    ({"plt_window_size": [64, 3]}, "plt_window_size"),
    ({"num_key_value_heads": 3}, "multiple"),
])
def test_bad_configs_are_named(change, needle):
    raw = {"architectures": ["IQuestPLTCoderForCausalLM"], **BASE, **change}
    with pytest.raises(ModelError, match=needle):
        config_from_dict(raw)


def test_missing_required_key_is_named():
    raw = {"architectures": ["LlamaForCausalLM"], **BASE}
    del raw["hidden_size"]
    with pytest.raises(ModelError, match="hidden_size"):
        config_from_dict(raw)
