"""Synthetic checkpoints in the real Hugging Face layouts, deterministic from a seed.

`write_synthetic` makes a complete checkpoint directory: `config.json` with every field of
the real LoopCoder-V2 config (plt-model.md §2.1) at any size, safetensors with exactly the
real tensor names (optionally sharded with an index), a byte-level BPE `tokenizer.json`
trained on the fly, `tokenizer_config.json`, `generation_config.json` and a ChatML chat
template with tool calls. The R = 1 Llama and Qwen2 layouts come from the same function.
Weights are random: these models run the real pipeline but say nothing meaningful.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from .checkpoint import expected_tensors
from .config import ModelConfig, config_from_dict
from .errors import ModelError
from .gguf_format import PRE_TOKENIZERS

ARCHS = {
    "loopcoder": ("IQuestPLTCoderForCausalLM", "iquestpltcoder"),
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
}
PRESETS = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=512),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=2, vocab_size=2048),
    # about 250M parameters: the decode benchmark's size
    "bench": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16,
                  num_attention_heads=16, num_key_value_heads=4, vocab_size=32000),
}
# ids 0-2 as in LoopCoder-V2 (bos 1); its three eos ids map to </s>, <|im_end|>, <|endoftext|>
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|endoftext|>",
                  "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
                  "<think>", "</think>"]
EOS_TOKENS = ["</s>", "<|im_end|>", "<|endoftext|>"]
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}

CORPUS = '''\
def fibonacci(n: int) -> int:
    """Return the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        if not self.items:
            raise IndexError("pop from empty stack")
        return self.items.pop()


function greet(name) {
  return `Hello, ${name}!`;
}

const numbers = [1, 2, 3, 4, 5].map((x) => x * 2).filter((x) => x > 4);

func Add(a int, b int) int {
    return a + b
}

fn main() {
    let v: Vec<u32> = (0..10).collect();
    println!("{:?}", v);
}

The quick brown fox jumps over the lazy dog. Tests must pass before the fix is done.
Fix the bug in the parser: it crashes when the input file is empty.
import os, sys, json
for line in open("data.txt"):
    print(line.strip().split(","))
'''


def synthetic_config(arch: str = "loopcoder", preset: str = "tiny", **overrides) -> dict:
    """The `config.json` dict of a synthetic checkpoint."""
    if arch not in ARCHS:
        raise ModelError(f"unknown synthetic architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    if preset not in PRESETS:
        raise ModelError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    arch_name, model_type = ARCHS[arch]
    sizes = {**PRESETS[preset], **{k: v for k, v in overrides.items() if k in PRESETS[preset]}}
    cfg = {
        "architectures": [arch_name],
        "model_type": model_type,
        **sizes,
        "head_dim": sizes["hidden_size"] // sizes["num_attention_heads"],
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": None,
        "max_position_embeddings": 4096,
        "initializer_range": 0.02,
        "attention_bias": arch == "qwen2",
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": [2, 4, 5],
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "transformers_version": "4.57.1",
    }
    if arch == "loopcoder":
        cfg.update({
            "plt_num_loops": 2,
            "plt_window_size": [64, 0],
            "plt_normalize_per_loop": True,
            "plt_emb_scale": 0.707,
            "plt_hidden_scale": 0.053,
            "plt_gate_use_hidden_states": True,
            "auto_map": {"AutoConfig": "configuration_iquestpltcoder.IQuestPLTCoderConfig"},
        })
    elif arch == "llama":
        cfg["mlp_bias"] = False
        cfg["pretraining_tp"] = 1
    else:
        cfg.update({"use_sliding_window": False, "sliding_window": None, "max_window_layers": 0})
        cfg["bos_token_id"] = None
    cfg.update({k: v for k, v in overrides.items() if k not in sizes})
    return cfg


def random_tensors(cfg: ModelConfig, seed: int = 0, std: float = 0.02) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the HF layout, random (fp32), in table order, deterministic from `seed`.

    Norm weights are near 1, gate weights and biases are non-zero so that the gate mixes
    unevenly (a zero gate would hide gate bugs).
    """
    gen = torch.Generator().manual_seed(seed)
    for name, shape in expected_tensors(cfg).items():
        if name.endswith("norm.weight"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif ".plt_gate." in name:
            t = torch.randn(shape, generator=gen) * (0.5 if name.endswith("bias") else 0.2)
        elif name.endswith("bias"):
            t = 0.1 * torch.randn(shape, generator=gen)
        else:
            t = std * torch.randn(shape, generator=gen)
        yield name, t


def train_tokenizer(vocab_size: int) -> Tokenizer:
    """A byte-level BPE with the special tokens first, trained on a built-in code corpus."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ModelError(f"vocab_size {vocab_size} is too small for a byte-level BPE (min {256 + len(SPECIAL_TOKENS)})")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        # Qwen2's split, known to llama.cpp as pre-tokenizer "qwen2"
        pre_tokenizers.Split(Regex(PRE_TOKENIZERS["qwen2"]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    return tok


def chat_template() -> str:
    return resources.files(__package__).joinpath("templates/chatml_tools.jinja").read_text()


def write_synthetic(
    out_dir: str | Path,
    arch: str = "loopcoder",
    preset: str = "tiny",
    seed: int = 0,
    dtype: str = "bf16",
    shards: int = 1,
    force: bool = False,
    std: float = 0.02,
    **overrides,
) -> Path:
    """Write a synthetic checkpoint directory; atomic (built beside `out_dir`, then renamed)."""
    out = Path(out_dir)
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if out.exists() and not force:
        raise ModelError(f"{out} already exists; pass --force to replace it")
    raw = synthetic_config(arch, preset, **overrides)
    raw["torch_dtype"] = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dtype]
    cfg = config_from_dict(raw, "synthetic config")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise ModelError(f"cannot write to {out.parent} ({exc.strerror}); choose a writable output path") from None
    try:
        (tmp / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
        _write_weights(tmp, cfg, seed, DTYPES[dtype], shards, std)
        _write_tokenizer(tmp, cfg, raw)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"writing {out} failed ({exc.strerror or exc}); nothing was written") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_weights(d: Path, cfg: ModelConfig, seed: int, dtype: torch.dtype, shards: int, std: float) -> None:
    tensors = {n: t.to(dtype).contiguous() for n, t in random_tensors(cfg, seed, std)}
    names = list(tensors)
    if shards <= 1:
        save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
        return
    per = -(-len(names) // shards)
    weight_map = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s * per:(s + 1) * per]}
        save_file(part, d / file, metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _write_tokenizer(d: Path, cfg: ModelConfig, raw: dict) -> None:
    tok = train_tokenizer(min(cfg.vocab_size, 4096))
    tok.save(str(d / "tokenizer.json"))
    added = {
        str(tok.token_to_id(t)): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                                  "normalized": False, "single_word": False}
        for t in SPECIAL_TOKENS
    }
    has_bos = raw.get("bos_token_id") is not None
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>" if has_bos else None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<unk>",
        "add_bos_token": has_bos,
        "add_eos_token": False,
        "model_max_length": cfg.max_position_embeddings,
        "added_tokens_decoder": added,
    }
    (d / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    (d / "chat_template.jinja").write_text(chat_template())
    gen = {"bos_token_id": raw.get("bos_token_id"), "eos_token_id": raw["eos_token_id"],
           "transformers_version": raw["transformers_version"]}
    (d / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
