"""Synthetic checkpoints: the real LoopCoder-V2 layout, deterministic, loadable, templated."""

import hashlib
import json

import pytest
import torch

from loopcli.runtime.chat import render_chat
from loopcli.runtime.checkpoint import Checkpoint
from loopcli.runtime.decode import DecodeState, fused_step
from loopcli.runtime.model import load_model
from loopcli.runtime.tokenizer import Tokenizer
from loopcli.runtime.synthetic import write_synthetic

PLT_KEYS = {"plt_num_loops": 2, "plt_window_size": [64, 0], "plt_normalize_per_loop": True,
            "plt_emb_scale": 0.707, "plt_hidden_scale": 0.053, "plt_gate_use_hidden_states": True}
LAYER_TENSORS = {
    "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
    "self_attn.v_proj.weight", "self_attn.o_proj.weight", "self_attn.plt_gate.weight",
    "self_attn.plt_gate.bias", "self_attn.plt_gate.gate_norm.weight",
    "post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
    "mlp.down_proj.weight",
}


def digest(d):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.iterdir())}


def test_layout_matches_loopcoder_v2(tmp_path):
    d = write_synthetic(tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["architectures"] == ["IQuestPLTCoderForCausalLM"]
    assert cfg["model_type"] == "iquestpltcoder"
    assert {k: cfg[k] for k in PLT_KEYS} == PLT_KEYS
    assert cfg["eos_token_id"] == [2, 4, 5] and cfg["bos_token_id"] == 1
    names = set(Checkpoint(d).names())
    expected = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    expected |= {f"model.layers.{i}.{t}" for i in range(cfg["num_hidden_layers"]) for t in LAYER_TENSORS}
    assert names == expected
    gate = dict(Checkpoint(d).tensors())["model.layers.0.self_attn.plt_gate.weight"]
    assert gate.shape == (cfg["num_attention_heads"], cfg["hidden_size"]) and gate.dtype == torch.bfloat16


def test_deterministic_from_seed(tmp_path):
    a = write_synthetic(tmp_path / "a", seed=7)
    b = write_synthetic(tmp_path / "b", seed=7)
    c = write_synthetic(tmp_path / "c", seed=8)
    assert digest(a) == digest(b)
    assert digest(a)["model.safetensors"] != digest(c)["model.safetensors"]


def test_sharded_checkpoint_loads_the_same(tmp_path):
    one = load_model(write_synthetic(tmp_path / "one", dtype="f32"))
    three = load_model(write_synthetic(tmp_path / "three", dtype="f32", shards=3))
    assert len(list((tmp_path / "three").glob("*.safetensors"))) == 3
    ids = torch.arange(20)[None]
    assert torch.equal(one(ids), three(ids))


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
def test_half_precision_checkpoints_load(tmp_path, dtype):
    model = load_model(write_synthetic(tmp_path / "m", dtype=dtype))
    assert model.lm_head.weight.dtype == torch.float32
    state = DecodeState.new(model, 8)
    assert torch.isfinite(fused_step(model, state, 3)).all()


def test_gate_alias_is_accepted(tmp_path):
    from safetensors.torch import load_file, save_file
    d = write_synthetic(tmp_path / "m", dtype="f32")
    before = load_model(d)(torch.arange(10)[None])
    t = load_file(d / "model.safetensors")
    t = {k.replace(".plt_gate.", ".loop_gate_proj."): v for k, v in t.items()}
    save_file(t, d / "model.safetensors")
    assert torch.equal(load_model(d)(torch.arange(10)[None]), before)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_r1_layouts(tmp_path, arch):
    d = write_synthetic(tmp_path / arch, arch=arch)
    ckpt = Checkpoint(d)
    assert ckpt.config.num_loops == 1
    assert not any("plt_gate" in n for n in ckpt.names())
    assert any(n.endswith("q_proj.bias") for n in ckpt.names()) == (arch == "qwen2")


def test_tokenizer_round_trips_and_adds_bos(tmp_path):
    tok = Tokenizer.load(write_synthetic(tmp_path / "m"))
    text = "def fibonacci(n):\n    return n  # héllo ✓\n"
    ids = tok.encode(text)
    assert ids[0] == 1 and tok.decode(ids[1:]) == text
    assert len(ids) < len(text.encode())  # merges were learned
    assert tok.hf.token_to_id("<|im_end|>") == 4


def test_chat_template_renders_every_role_and_tool_calls(tmp_path):
    tok = Tokenizer.load(write_synthetic(tmp_path / "m"))
    tools = [{"type": "function", "function": {"name": "view", "description": "Show a file",
              "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}]
    messages = [
        {"role": "system", "content": "You fix bugs."},
        {"role": "user", "content": "Fix <bug> in a.py"},
        {"role": "assistant", "content": "Looking.", "tool_calls": [
            {"type": "function", "function": {"name": "view", "arguments": {"path": "a.py"}}}]},
        {"role": "tool", "content": "1: x = 1"},
        {"role": "assistant", "content": "Done."},
    ]
    out = render_chat(tok.chat_template, messages, tools=tools)
    assert out.startswith("<|im_start|>system\nYou fix bugs.\n\n# Tools")
    assert '"name": "view"' in out and "<tools>" in out
    assert "<|im_start|>user\nFix <bug> in a.py<|im_end|>" in out
    assert '<tool_call>\n{"name": "view", "arguments": {"path": "a.py"}}\n</tool_call><|im_end|>' in out
    assert "<tool_response>\n1: x = 1\n</tool_response><|im_end|>" in out
    assert out.endswith("<|im_start|>assistant\nDone.<|im_end|>\n<|im_start|>assistant\n")
    # special tokens are single ids
    assert tok.encode("<|im_start|>user", add_bos=False)[0] == 3


def test_chat_template_rejects_unknown_roles():
    from loopcli.runtime.errors import ModelError
    from loopcli.runtime.synthetic import chat_template
    with pytest.raises(ModelError, match="unknown message role: robot"):
        render_chat(chat_template(), [{"role": "robot", "content": "hi"}])
