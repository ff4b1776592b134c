"""Per-token decode time of fused R = 2, naive R = 2 and R = 1 on one random model (CPU).

Two sections, both run the same weights in the same process, interleaved step by step so that
machine noise hits them alike; the figures that matter are the ratios to R = 1:
- `reference`: the fp32 reference model (runtime/decode.py): fused, naive and R = 1;
- `compact`: the engine on a GGUF of the same preset (`--type`, q8_0 by default), its weights
  kept quantized: fused R = 2 against an R = 1 engine over the same file.
Prints JSON. Usage: python benchmarks/decode_loops.py [--preset bench] [--tokens 32]
[--section compact|reference|both] [--type q8_0] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from loopcli.runtime.config import config_from_dict
from loopcli.runtime.decode import DecodeState, fused_step, prefill
from loopcli.runtime.model import PLTModel, assign_parameter
from loopcli.runtime.synthetic import random_tensors, synthetic_config


def build(preset: str, seed: int) -> tuple[PLTModel, PLTModel]:
    """The R = 2 model and an R = 1 view of the same parameter tensors (no copy)."""
    cfg = config_from_dict(synthetic_config("loopcoder", preset))
    with torch.device("meta"):
        r2, r1 = PLTModel(cfg), PLTModel(cfg.with_loops(1))
    for name, t in random_tensors(cfg, seed):
        assign_parameter(r2, name, t)
    for name, p in r2.named_parameters():
        if ".plt_gate." not in name:
            assign_parameter(r1, name, p.data)
    return r2.eval(), r1.eval()


def compact(preset: str, qtype: str, prompt: list[int], steps: list[int], rounds: int, seed: int) -> dict:
    """Fused R = 2 against R = 1 on the engine, weights kept compact (one GGUF, two engines)."""
    import tempfile
    from pathlib import Path

    from loopcli.convert.export import convert
    from loopcli.runtime.engine import Engine, _gguf_raw
    from loopcli.runtime.synthetic import write_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_synthetic(Path(tmp) / "m", arch="loopcoder", preset=preset, seed=seed)
        gguf_path = convert(ckpt, Path(tmp) / "m.gguf", qtype, show_progress=False)
        cfg, raw = _gguf_raw(gguf_path)
        engines = {"fused_r2": Engine(cfg, raw)}
        cfg, raw = _gguf_raw(gguf_path)
        engines["r1"] = Engine(cfg.with_loops(1), raw)
    times = {name: [] for name in engines}
    for _ in range(rounds):
        for eng in engines.values():
            eng.reset()
            eng.prefill(prompt)
        for tok in steps:
            for name, eng in engines.items():
                t0 = time.perf_counter()
                eng.step(tok)
                times[name].append(time.perf_counter() - t0)
    ms = {name: 1000 * statistics.median(v) for name, v in times.items()}
    return {"type": qtype, "weight_bytes": engines["r1"].weight_bytes,
            "ms_per_token": {k: round(v, 3) for k, v in ms.items()},
            "ratio_to_r1": {"fused_r2": round(ms["fused_r2"] / ms["r1"], 3)}, "target": "fused_r2 <= 1.15 x r1"}


def naive_step(model, state, token):
    return prefill(model, state, torch.tensor([token]))[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="bench")
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens prefilled first")
    ap.add_argument("--tokens", type=int, default=32, help="decode steps timed per path")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--section", choices=["compact", "reference", "both"], default="both")
    ap.add_argument("--type", default="q8_0", help="GGUF type of the compact section")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine more threads wait on each other)")
    args = ap.parse_args()
    if args.threads < 1:
        ap.error("--threads must be at least 1")
    torch.set_num_threads(args.threads)

    vocab = config_from_dict(synthetic_config("loopcoder", args.preset)).vocab_size
    prompt = torch.randint(0, vocab, (args.prompt,), generator=torch.Generator().manual_seed(1))
    steps = torch.randint(0, vocab, (args.tokens,), generator=torch.Generator().manual_seed(2)).tolist()
    out = {"benchmark": "decode_loops", "torch": torch.__version__, "threads": torch.get_num_threads(),
           "context": {"prompt_tokens": args.prompt, "decode_tokens": args.tokens, "rounds": args.rounds}}
    if args.section in ("compact", "both"):
        out["compact"] = compact(args.preset, args.type, prompt.tolist(), steps, args.rounds, args.seed)
    if args.section in ("reference", "both"):
        out["reference"] = reference(args, prompt, steps)
    print(json.dumps(out, indent=2))


def reference(args, prompt: torch.Tensor, steps: list[int]) -> dict:
    r2, r1 = build(args.preset, args.seed)
    paths = {"fused_r2": (r2, fused_step), "naive_r2": (r2, naive_step), "r1": (r1, fused_step)}
    times = {name: [] for name in paths}
    logits = {name: [] for name in paths}
    for _ in range(args.rounds):
        states = {}
        for name, (model, _) in paths.items():
            states[name] = DecodeState.new(model, args.prompt + args.tokens)
            prefill(model, states[name], prompt)
        # step by step, the three paths in turn: noise on a shared machine hits them alike
        for tok in steps:
            for name, (model, step) in paths.items():
                t0 = time.perf_counter()
                out = step(model, states[name], tok)
                times[name].append(time.perf_counter() - t0)
                logits[name].append(out)
    logits = {name: torch.stack(v) for name, v in logits.items()}
    ms = {name: 1000 * statistics.median(v) for name, v in times.items()}
    n_params = sum(p.numel() for p in r2.parameters())
    return {
        "model": {"preset": args.preset, "params": n_params, "layers": r2.cfg.num_layers,
                  "hidden": r2.cfg.hidden_size, "dtype": "float32"},
        "ms_per_token": {k: round(v, 3) for k, v in ms.items()},
        "ratio_to_r1": {"fused_r2": round(ms["fused_r2"] / ms["r1"], 3),
                        "naive_r2": round(ms["naive_r2"] / ms["r1"], 3)},
        "target": "fused_r2 <= 1.15 x r1; naive_r2 about 2 x",
        "fused_vs_naive_max_abs_logit_diff": float((logits["fused_r2"] - logits["naive_r2"]).abs().max()),
    }


if __name__ == "__main__":
    main()
