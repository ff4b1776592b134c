"""Checkpoint reading is lazy: tensors come one at a time from memory-mapped files."""

import gc
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from loopcli.runtime.checkpoint import Checkpoint, expected_tensors
from loopcli.runtime.config import config_from_dict
from loopcli.runtime.synthetic import synthetic_config

MB = 1 << 20


def rss_anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no RssAnon on this platform")


def test_peak_memory_is_a_few_tensors_not_the_model(tmp_path):
    # 8 MLP matrices of 32 MiB each (f32) in two shards: 256 MiB in all
    raw = synthetic_config("llama", "tiny", hidden_size=1024, intermediate_size=8192,
                           num_hidden_layers=1, num_attention_heads=8, num_key_value_heads=8, vocab_size=512)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    shapes = expected_tensors(config_from_dict(raw))
    names = list(shapes)
    for s, part in enumerate([names[: len(names) // 2], names[len(names) // 2:]]):
        save_file({n: torch.ones(shapes[n]) for n in part}, tmp_path / f"m{s}.safetensors")
    total = sum(torch.Size(s).numel() * 4 for s in shapes.values())
    assert total > 80 * MB
    gc.collect()
    base, peak, seen = rss_anon(), 0, 0
    for name, t in Checkpoint(tmp_path).tensors():
        seen += t.numel() * 4
        peak = max(peak, rss_anon() - base)
        del t
    assert seen == total
    largest = max(torch.Size(s).numel() * 4 for s in shapes.values())
    assert peak < 3 * largest < total
