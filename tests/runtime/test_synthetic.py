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
    # the real repo: eos [2, 75864, 75869] = </s>, <|im_end|>, 75858 + 11; here the pieces end at 448
    assert cfg["eos_token_id"] == [2, 448 + 6, 448 + 11] and cfg["bos_token_id"] == 1
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


def test_tokenizer_files_mirror_the_real_repo(tmp_path):
    import sentencepiece as spm

    d = write_synthetic(tmp_path / "m")
    assert not (d / "tokenizer.json").exists()
    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"] and sp.get_piece_size() == 448
    assert sp.is_byte(3) and sp.id_to_piece(3) == "<0x00>"  # byte fallback
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "IQuestCoderTokenizer"
    assert cfg["auto_map"]["AutoTokenizer"][0] == "tokenization_iquestcoder.IQuestCoderTokenizer"
    assert (cfg["add_bos_token"], cfg["add_eos_token"], cfg["add_prefix_space"]) == (False, False, False)
    added = {int(i): (t["content"], t["special"]) for i, t in cfg["added_tokens_decoder"].items()}
    assert added[448 + 5] == ("<|im_start|>", True) and added[448 + 6] == ("<|im_end|>", True)
    assert added[448 + 7] == ("<|fim_prefix|>", True) and added[448 + 8] == ("<|fim_middle|>", True)
    assert added[448 + 12] == ("<tool_call>", False)
    gen = json.loads((d / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [2, 454, 459] and gen["bos_token_id"] == 1


def test_tokenizer_round_trips(tmp_path):
    tok = Tokenizer.load(write_synthetic(tmp_path / "m"))
    text = "def fibonacci(n):\n    return n  # héllo ✓ 你好\n"
    ids = tok.encode(text)
    assert not tok.add_bos and ids[0] != 1 and tok.decode(ids) == text
    assert tok.encode(text, add_bos=True) == [1, *ids]
    assert len(ids) < len(text.encode())  # merges were learned
    assert tok.token_to_id("<|im_end|>") == 454 and tok.eos_ids == {2, 454, 459}


def test_byte_level_tokenizer_round_trips_and_adds_bos(tmp_path):
    tok = Tokenizer.load(write_synthetic(tmp_path / "m", arch="llama"))
    text = "def fibonacci(n):\n    return n  # héllo ✓\n"
    ids = tok.encode(text)
    assert ids[0] == 1 and tok.decode(ids[1:]) == text
    assert tok.token_to_id("<|im_end|>") == 4 and tok.eos_ids == {2, 4, 5}


def test_chat_template_renders_every_role_and_qwen3_coder_tool_calls(tmp_path):
    tok = Tokenizer.load(write_synthetic(tmp_path / "m"))
    tools = [{"type": "function", "function": {"name": "view", "description": "Show a file",
              "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                             "required": ["path"]}}}]
    messages = [
        {"role": "system", "content": "You fix bugs."},
        {"role": "user", "content": "Fix <bug> in a.py"},
        {"role": "assistant", "content": "Looking.", "tool_calls": [
            {"type": "function", "function": {"name": "view", "arguments": '{"path": "a.py"}'}}]},
        {"role": "tool", "content": "1: x = 1"},
        {"role": "assistant", "content": "Done."},
    ]
    out = render_chat(tok.chat_template, messages, tools=tools)
    assert out.startswith("<|im_start|>system\nYou fix bugs.\n\n# Tools")
    assert "<function>\n<name>view</name>\n<description>Show a file</description>" in out
    assert "<|im_start|>user\nFix <bug> in a.py<|im_end|>" in out
    assert ("Looking.\n<tool_call>\n<function=view>\n<parameter=path>\na.py\n</parameter>\n"
            "</function>\n</tool_call><|im_end|>") in out
    assert "<|im_start|>user\n<tool_response>\n1: x = 1\n</tool_response>\n<|im_end|>" in out
    assert out.endswith("<|im_start|>assistant\nDone.<|im_end|>\n<|im_start|>assistant\n")
    # special tokens are single ids
    assert tok.encode("<|im_start|>user", add_bos=False)[0] == 448 + 5


def test_chat_template_rejects_unknown_roles():
    from loopcli.runtime.errors import ModelError
    from loopcli.runtime.synthetic import chat_template
    with pytest.raises(ModelError, match="unknown message role: robot"):
        render_chat(chat_template(), [{"role": "robot", "content": "hi"}])
