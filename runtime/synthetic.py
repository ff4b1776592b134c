"""Synthetic checkpoints in the real Hugging Face layouts, deterministic from a seed.

`write_synthetic` makes a complete checkpoint directory: `config.json` with every field of
the real LoopCoder-V2 config at any size, safetensors with exactly the real tensor names
(optionally sharded with an index), the tokenizer, `tokenizer_config.json`,
`generation_config.json` with the eos list and a ChatML chat template with tool calls. The R = 1
Llama and Qwen2 layouts come from the same function.

Tokenizers are trained on the fly. LoopCoder gets what the real repo
ships: a SentencePiece BPE `tokenizer.model` (byte fallback, <unk> <s> </s> = 0 1 2) read by a
custom slow tokenizer class (`auto_map`), the ChatML/FIM tokens as added tokens right after the
SentencePiece pieces, `[PAD]` rows up to the embedding size, three eos ids, and a Qwen3-Coder XML
tool-call template. It is trained on `synthetic_corpus.txt` (a snapshot of this project's agent
prompt, tool schemas, docs and source: English prose and code) plus CORPUS, so that with a vocabulary
of a few thousand rows the agent's prompt takes about as many tokens as a real vocabulary gives it.
Unigram SentencePiece models (T5-style with NFKC and whitespace folding, or code-style) are there
for the converter's tests. Llama and Qwen2 get a byte-level BPE `tokenizer.json` (any pre-tokenizer of
`pretokenizers.KNOWN`, trained on CORPUS) and a Hermes JSON tool-call template. Either kind fits
either layout.
Weights are random: these models run the real pipeline but say nothing meaningful.
"""

from __future__ import annotations

import functools
import io
import json
import shutil
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, pre_tokenizers, trainers

from .checkpoint import expected_tensors
from .config import ModelConfig, config_from_dict
from .errors import ModelError
from .pretokenizers import KNOWN

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
# byte-level tokenizers: ids 0-2 as in LoopCoder-V2 (bos 1); eos </s>, <|im_end|>, <|endoftext|>
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|endoftext|>",
                  "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
                  "<think>", "</think>"]
EOS_TOKENS = ["</s>", "<|im_end|>", "<|endoftext|>"]
# SentencePiece: LoopCoder-V2's added tokens in id order after the model's pieces (75858 of them
# in the real 76800-row vocabulary). The real file names 75858-75866; 75867-75869 are guesses:
# eos id 75869 is taken to be <|endoftext|>. The tool-call tags are plain (non-special) added tokens.
SPM_ADDED = [("<CLS>", True), ("<SEP>", True), ("<EOD>", True), ("<MASK>", True), ("<PAD>", True),
             ("<|im_start|>", True), ("<|im_end|>", True), ("<|fim_prefix|>", True), ("<|fim_middle|>", True),
             ("<|fim_suffix|>", True), ("<|fim_pad|>", True), ("<|endoftext|>", True),
             ("<tool_call>", False), ("</tool_call>", False), ("<tool_response>", False),
             ("</tool_response>", False), ("<think>", False), ("</think>", False)]
SPM_EOS = ["</s>", "<|im_end|>", "<|endoftext|>"]
# SentencePiece pieces: the vocabulary's rows less 64 (the added tokens and >= 46 [PAD] rows, as
# the real 76800-row vocabulary has 942), at most SPM_MAX_PIECES (what the corpus trains quickly)
SPM_ROWS_LEFT, SPM_MAX_PIECES = 64, 4032
# SentencePiece kinds: (model type, dummy prefix, normalization rule, remove extra whitespace, byte fallback)
SPM_KINDS = {
    "spm": ("bpe", True, "identity", False, True),
    "spm-no-prefix": ("bpe", False, "identity", False, True),
    # unigram as code models train it, and as T5 does (NFKC charsmap, whitespace folded, no byte fallback)
    "spm-unigram": ("unigram", True, "identity", False, True),
    "spm-unigram-nfkc": ("unigram", True, "nmt_nfkc", True, False),
}
# tokenizer kinds: SentencePiece (SPM_KINDS) or a byte-level pre-tokenizer
TOKENIZERS = (*SPM_KINDS, *KNOWN)
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
# Проверка: функция возвращает сумму списка.
# 注释：这个函数返回列表的总和。
import os, sys, json
for line in open("data.txt"):
    print(line.strip().split(","))
'''


def default_tokenizer(arch: str) -> str:
    return "spm" if arch == "loopcoder" else "qwen2"


def synthetic_config(arch: str = "loopcoder", preset: str = "tiny", tokenizer: str | None = None,
                     **overrides) -> dict:
    """The `config.json` dict of a synthetic checkpoint."""
    tokenizer = tokenizer or default_tokenizer(arch)
    if tokenizer not in TOKENIZERS:
        raise ModelError(f"unknown tokenizer kind {tokenizer!r}; choose one of {', '.join(TOKENIZERS)}")
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
        "eos_token_id": eos_ids(tokenizer, sizes["vocab_size"]),
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


def spm_pieces(vocab_size: int) -> int:
    """How many SentencePiece pieces a synthetic vocabulary of `vocab_size` rows has (448 in 512)."""
    if vocab_size < 512:
        raise ModelError(f"vocab_size {vocab_size} is too small for the SentencePiece layout (min 512)")
    return min(vocab_size - SPM_ROWS_LEFT, SPM_MAX_PIECES)


def eos_ids(tokenizer: str, vocab_size: int) -> list[int]:
    if tokenizer in SPM_KINDS:
        added = [t for t, _ in SPM_ADDED]
        return [2] + [spm_pieces(vocab_size) + added.index(t) for t in SPM_EOS[1:]]
    return [SPECIAL_TOKENS.index(t) for t in EOS_TOKENS]


def training_corpus() -> list[str]:
    """The SentencePiece training text, one paragraph a sentence."""
    text = resources.files(__package__).joinpath("synthetic_corpus.txt").read_text(encoding="utf-8")
    return [p for p in f"{text}\n\n{CORPUS}".split("\n\n") if p.strip()]


@functools.lru_cache(maxsize=8)
def train_sentencepiece(pieces: int, kind: str = "spm") -> bytes:
    """A serialized SentencePiece model of `kind` (SPM_KINDS). BPE as Llama-family code models
    train it: no normalization, whitespace kept, digits split, byte fallback. Cached: tests make many."""
    import sentencepiece as spm

    model_type, dummy_prefix, rule, fold_spaces, byte_fallback = SPM_KINDS[kind]
    corpus = training_corpus()
    if model_type == "unigram":
        corpus = corpus[::4]  # unigram trains ~20x slower than BPE; a quarter (50 KB) is plenty for tests
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=out, vocab_size=pieces,
        model_type=model_type, byte_fallback=byte_fallback, normalization_rule_name=rule,
        remove_extra_whitespaces=fold_spaces, add_dummy_prefix=dummy_prefix, split_digits=True,
        allow_whitespace_only_pieces=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, hard_vocab_limit=False, max_sentence_length=1 << 16, num_threads=1, minloglevel=2,
    )
    model = out.getvalue()
    got = spm.SentencePieceProcessor(model_proto=model).get_piece_size()
    if got != pieces:
        raise ModelError(f"the built-in corpus trains only {got} SentencePiece pieces, not {pieces}")
    return model


def train_tokenizer(vocab_size: int, pre: str = "qwen2") -> Tokenizer:
    """A byte-level BPE with the special tokens first and the pre-tokenizer `pre`, trained on a
    built-in code corpus."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ModelError(f"vocab_size {vocab_size} is too small for a byte-level BPE (min {256 + len(SPECIAL_TOKENS)})")
    tok = Tokenizer.from_str(json.dumps({
        "version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}, "pre_tokenizer": KNOWN[pre],
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
    }))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    return tok


def chat_template(arch: str = "llama") -> str:
    """LoopCoder's ChatML with Qwen3-Coder XML tool calls; Hermes JSON ones for the R = 1 layouts."""
    name = "chatml_qwen3_coder.jinja" if arch == "loopcoder" else "chatml_tools.jinja"
    return resources.files(__package__).joinpath("templates", name).read_text()


def write_synthetic(
    out_dir: str | Path,
    arch: str = "loopcoder",
    preset: str = "tiny",
    seed: int = 0,
    dtype: str = "bf16",
    shards: int = 1,
    force: bool = False,
    std: float = 0.02,
    tokenizer: str | None = None,
    **overrides,
) -> Path:
    """Write a synthetic checkpoint directory; atomic (built beside `out_dir`, then renamed).

    `tokenizer`: one of TOKENIZERS; by default SentencePiece for loopcoder, qwen2 byte-level else."""
    out = Path(out_dir)
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if out.exists() and not force:
        raise ModelError(f"{out} already exists; pass --force to replace it")
    tokenizer = tokenizer or default_tokenizer(arch)
    raw = synthetic_config(arch, preset, tokenizer, **overrides)
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
        if tokenizer in SPM_KINDS:
            _write_sentencepiece(tmp, cfg, raw, tokenizer)
        else:
            _write_byte_level(tmp, cfg, raw, tokenizer)
        (tmp / "chat_template.jinja").write_text(chat_template(arch))
        gen = {"bos_token_id": raw.get("bos_token_id"), "eos_token_id": raw["eos_token_id"],
               "transformers_version": raw["transformers_version"]}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
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


def _added(content: str, special: bool) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": special}


def _write_sentencepiece(d: Path, cfg: ModelConfig, raw: dict, kind: str) -> None:
    """tokenizer.model and tokenizer_config.json as LoopCoder-V2's repo has them."""
    n = spm_pieces(cfg.vocab_size)
    (d / "tokenizer.model").write_bytes(train_sentencepiece(n, kind))
    added = {str(i): _added(t, True) for i, t in enumerate(["<unk>", "<s>", "</s>"])}
    added.update({str(n + k): _added(t, special) for k, (t, special) in enumerate(SPM_ADDED)})
    tok_cfg = {
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "auto_map": {"AutoTokenizer": ["tokenization_iquestcoder.IQuestCoderTokenizer", None]},
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "extra_special_tokens": {},
        "legacy": True,
        "model_max_length": cfg.max_position_embeddings,
        "pad_token": "<PAD>",
        "sp_model_kwargs": {},
        "tokenizer_class": "IQuestCoderTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }
    (d / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")


def _write_byte_level(d: Path, cfg: ModelConfig, raw: dict, pre: str) -> None:
    tok = train_tokenizer(min(cfg.vocab_size, 4096), pre)
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
