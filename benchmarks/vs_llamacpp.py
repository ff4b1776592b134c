"""Our engine against llama.cpp (llama-cpp-python) on the same GGUF, threads and tokens.

A synthetic `llama` checkpoint (preset `bench`: about 250M parameters) is converted on the
fly to each `--types` GGUF; then, in turns within one process, each side prefills the same
random prompt from a cold state and decodes the same fixed tokens one at a time. Prints JSON:
prompt and decode tokens/s for both and ours over llama.cpp's (goal >= 1.0).
Needs the `llama` extra (pip install 'loopcli[llama]').
Usage: python benchmarks/vs_llamacpp.py [--types q8_0 q4_k_m] [--threads 1] [--prompt 256] [--gen 32]
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
from loopcli.runtime.synthetic import write_synthetic


def time_ours(eng, prompt: list[int], steps: list[int]) -> tuple[float, float]:
    eng.reset()
    t0 = time.perf_counter()
    eng.prefill(prompt)
    t1 = time.perf_counter()
    for tok in steps:
        eng.step(tok)
    return t1 - t0, time.perf_counter() - t1


def time_llama(llm, prompt: list[int], steps: list[int]) -> tuple[float, float]:
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    t1 = time.perf_counter()
    for tok in steps:
        llm.eval([tok])
    return t1 - t0, time.perf_counter() - t1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", nargs="+", default=["q8_0", "q4_k_m"])
    ap.add_argument("--preset", default="bench")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, help="keep the checkpoint and GGUFs here and reuse them "
                                                 "(default: a temporary folder)")
    args = ap.parse_args()
    from llama_cpp import Llama

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        ckpt = work / f"llama-{args.preset}"
        if not ckpt.exists():
            write_synthetic(ckpt, arch="llama", preset=args.preset, dtype="bf16")
        for qtype in args.types:
            path = work / f"llama-{args.preset}-{qtype}.gguf"
            if not path.exists():
                convert(ckpt, path, qtype, show_progress=False)
            eng = load(path, threads=args.threads)
            llm = Llama(str(path), n_ctx=args.prompt + args.gen + 16, n_batch=512, n_threads=args.threads,
                        n_threads_batch=args.threads, verbose=False)
            vocab = eng.cfg.vocab_size
            g = torch.Generator().manual_seed(0)
            prompt = torch.randint(0, vocab, (args.prompt,), generator=g).tolist()
            steps = torch.randint(0, vocab, (args.gen,), generator=g).tolist()
            ours, theirs = [], []
            for _ in range(args.rounds):  # alternate, so machine noise hits both alike
                ours.append(time_ours(eng, prompt, steps))
                theirs.append(time_llama(llm, prompt, steps))
            med = lambda xs, i: statistics.median(x[i] for x in xs)
            o_p, o_d = args.prompt / med(ours, 0), args.gen / med(ours, 1)
            l_p, l_d = args.prompt / med(theirs, 0), args.gen / med(theirs, 1)
            results[qtype] = {
                "gguf_bytes": path.stat().st_size, "weight_bytes": eng.weight_bytes,
                "ours": {"prompt_tok_s": round(o_p, 2), "decode_tok_s": round(o_d, 2)},
                "llama_cpp": {"prompt_tok_s": round(l_p, 2), "decode_tok_s": round(l_d, 2)},
                "ratio": {"prompt": round(o_p / l_p, 3), "decode": round(o_d / l_d, 3)},
            }
            del llm, eng
        cfg = load(path).cfg
        n_params = (cfg.vocab_size * cfg.hidden_size * 2 + cfg.num_layers * (
            cfg.hidden_size * (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
            + cfg.num_heads * cfg.head_dim * cfg.hidden_size + 3 * cfg.hidden_size * cfg.intermediate_size))
    print(json.dumps({
        "benchmark": "vs_llamacpp", "model": {"arch": "llama", "preset": args.preset, "params": n_params},
        "threads": args.threads, "prompt_tokens": args.prompt, "gen_tokens": args.gen, "rounds": args.rounds,
        "results": results, "goal": "ratio >= 1.0 for prompt and decode",
    }, indent=2))


if __name__ == "__main__":
    main()
