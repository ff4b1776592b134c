"""Resident memory of the engine: growth from loading a GGUF, and the peak while prefilling a
long prompt, against the GGUF size plus the KV cache.

A synthetic `llama` checkpoint (`--preset`, default bench: about 250M parameters) is
converted to `--type`, then measured in a fresh process (so the converter's memory is not in
the baseline); RSS is sampled every 20 ms by a thread. Prints JSON with
load_growth / (gguf + kv) (target <= 1.2) and the prefill workspace beyond that.
Usage: python benchmarks/engine_memory.py [--type q8_0] [--prompt 8192] [--preset bench]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

from loopcli.convert.export import convert
from loopcli.runtime.synthetic import write_synthetic


class PeakRSS:
    def __init__(self):
        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()

    def __enter__(self):
        self.peak = self.proc.memory_info().rss
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def measure(path: Path, prompt: int, threads: int) -> None:
    """In this (fresh) process: load, then prefill `prompt` tokens; print the JSON."""
    from loopcli.runtime.engine import load  # torch's own pages go into the baseline

    gc.collect()
    before = psutil.Process().memory_info().rss
    with PeakRSS() as loading:
        eng = load(path, threads=threads, max_context=prompt)
        gc.collect()
    after = psutil.Process().memory_info().rss
    gguf_bytes = path.stat().st_size
    cfg = eng.cfg
    kv_bytes = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * prompt * eng.kv_dtype.itemsize
    ids = torch.randint(0, cfg.vocab_size, (prompt,), generator=torch.Generator().manual_seed(0)).tolist()
    t0 = time.perf_counter()
    with PeakRSS() as prefill:
        eng.prefill(ids)
    seconds = time.perf_counter() - t0
    growth = after - before
    print(json.dumps({
        "benchmark": "engine_memory", "gguf_bytes": gguf_bytes, "weight_bytes": eng.weight_bytes,
        "kv_bytes_at_prompt": kv_bytes, "load_growth_bytes": growth,
        "load_peak_growth_bytes": loading.peak - before,
        "load_growth_over_gguf": round(growth / gguf_bytes, 3), "target_load": "<= 1.2 (KV comes later)",
        "prompt_tokens": prompt, "prefill_seconds": round(seconds, 1),
        "prefill_peak_over_load_bytes": prefill.peak - after,
        "prefill_workspace_bytes": prefill.peak - after - kv_bytes,
        "prefill_peak_over_gguf_plus_kv": round((prefill.peak - before) / (gguf_bytes + kv_bytes), 3),
    }, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--type", default="q8_0")
    ap.add_argument("--preset", default="bench")
    ap.add_argument("--prompt", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gguf", type=Path, help="measure this GGUF instead of a synthetic one")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.gguf
        if path is None:
            ckpt = write_synthetic(Path(tmp) / "m", arch="llama", preset=args.preset, dtype="bf16",
                                   max_position_embeddings=max(4096, args.prompt))
            path = convert(ckpt, Path(tmp) / "m.gguf", args.type, show_progress=False)
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import engine_memory; "
                f"engine_memory.measure(engine_memory.Path({str(path)!r}), {args.prompt}, {args.threads})")
        subprocess.run([sys.executable, "-c", code], check=True)


if __name__ == "__main__":
    main()
