"""Time to first token with and without prefix reuse, on one synthetic LoopCoder GGUF.

Cold: a fresh engine state prefills the whole prompt (default 2,000 tokens) and samples.
Warm: the engine holds that prompt plus a few generated tokens (an agent turn), and the next
prompt appends 50 tokens to it: only those are prefilled. Both first-token logits are checked
against a cold run of the same prompt. Prints JSON; the figure is the cold / warm ratio.
Usage: python benchmarks/prefix_reuse.py [--preset small] [--type q8_0] [--prompt 2000] [--append 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from loopcli.convert.export import convert
from loopcli.runtime.engine import load
from loopcli.runtime.generate import Sampler
from loopcli.runtime.synthetic import write_synthetic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--type", default="q8_0")
    ap.add_argument("--prompt", type=int, default=2000)
    ap.add_argument("--append", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_synthetic(Path(tmp) / "m", arch="loopcoder", preset=args.preset,
                               max_position_embeddings=8192)
        eng = load(convert(ckpt, Path(tmp) / "m.gguf", args.type, show_progress=False), threads=args.threads)
    vocab = eng.cfg.vocab_size
    cold_s, warm_s, diffs = [], [], []
    for r in range(args.rounds):
        g = torch.Generator().manual_seed(r)
        first = torch.randint(0, vocab, (args.prompt,), generator=g).tolist()
        second = first + torch.randint(0, vocab, (args.append,), generator=g).tolist()
        eng.reset()
        t0 = time.perf_counter()
        cold = eng.prefill(second)
        Sampler()(cold)
        cold_s.append(time.perf_counter() - t0)
        eng.reset()
        list(eng.generate(first, Sampler(), 8))  # the previous turn: its prompt and reply
        t0 = time.perf_counter()
        warm = eng.prefill(second)
        Sampler()(warm)
        warm_s.append(time.perf_counter() - t0)
        reused = eng.last_reused
        diffs.append(float((warm - cold).abs().max()))
    cold_m, warm_m = statistics.median(cold_s), statistics.median(warm_s)
    print(json.dumps({
        "benchmark": "prefix_reuse",
        "model": {"arch": "loopcoder", "preset": args.preset, "type": args.type, "loops": eng.cfg.num_loops},
        "prompt_tokens": args.prompt, "appended_tokens": args.append, "rounds": args.rounds,
        "threads": torch.get_num_threads(), "reused_tokens": reused,
        "ttft_cold_s": round(cold_m, 4), "ttft_warm_s": round(warm_m, 4),
        "ratio_cold_over_warm": round(cold_m / warm_m, 2), "target": ">= 10",
        "max_abs_logit_diff_warm_vs_cold": max(diffs),
    }, indent=2))


if __name__ == "__main__":
    main()
