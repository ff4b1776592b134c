"""Batched decode (runtime/batch.py) of B sequences per step against one sequence per step.

One synthetic LoopCoder GGUF, B sequences prefilled with different prompts, then decode steps
fed to all of them at once; the reference, in the same run, is the same step for one sequence.
Prints JSON: ms per step for each B (median of --rounds), and sequence-tokens per second
relative to B = 1 (the figure: 4.0 would mean a step of 4 costs no more than a step of 1).
Usage: python benchmarks/batch_decode.py [--preset bench] [--type q8_0] [--steps 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from loopcli.convert.export import convert
from loopcli.runtime import batch
from loopcli.runtime.engine import load
from loopcli.runtime.synthetic import write_synthetic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="bench")
    ap.add_argument("--type", default="q8_0")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_synthetic(Path(tmp) / "m", arch="loopcoder", preset=args.preset)
        engine = load(convert(ckpt, Path(tmp) / "m.gguf", args.type, show_progress=False), threads=args.threads)
    sizes = sorted({1, 2, batch.group_size(engine)})
    states = []
    for i in range(max(sizes)):
        engine.reset()
        engine.prefill(list(range(10 + i, 40 + i)))
        states.append(engine.state)
    ms = {b: [] for b in sizes}
    for _ in range(args.rounds):
        for b in sizes:
            t0 = time.perf_counter()
            for s in range(args.steps):
                batch.decode_step(engine, states[:b], [5 + s] * b)
            ms[b].append((time.perf_counter() - t0) / args.steps * 1000)
    med = {b: statistics.median(v) for b, v in ms.items()}
    print(json.dumps({
        "preset": args.preset, "type": args.type, "loops": engine.cfg.num_loops, "threads": args.threads,
        "ms_per_step": {str(b): round(m, 1) for b, m in med.items()},
        "rounds_ms_per_step": {str(b): [round(x, 1) for x in v] for b, v in ms.items()},
        "throughput_vs_one": {str(b): round(b * med[1] / m, 2) for b, m in med.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
