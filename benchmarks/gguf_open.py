"""Opening a GGUF with a 262,144-token vocabulary: our reader (runtime/gguf_read.py) vs
gguf-py's GGUFReader, in the same run.

The file holds tokens, scores, token types and ~262,000 merges (the metadata of a large modern
vocabulary) and a few small tensors. Each open runs in a fresh interpreter (so each peak RSS is
its own), `--runs` times per reader; the medians are reported with their ratio. "open" is the
constructor (wall and CPU seconds: the CPU time moves less with the machine's load); "open +
tokens" also decodes the whole token list, which a tokenizer needs.
Prints JSON. Usage: python benchmarks/gguf_open.py [--runs 3] [--vocab 262144]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np

CHILD = r"""
import json, resource, sys, time
import gguf
from loopcli.runtime.gguf_read import GGUFFile
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0, c0 = time.perf_counter(), time.process_time()
r = GGUFFile(sys.argv[2]) if sys.argv[1] == "ours" else gguf.GGUFReader(sys.argv[2])
opened, opened_cpu = time.perf_counter() - t0, time.process_time() - c0
tokens = r.get_field("tokenizer.ggml.tokens").contents()
total = time.perf_counter() - t0
assert len(tokens) == int(sys.argv[3]) and len(r.tensors) == 4
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"open_s": opened, "open_cpu_s": opened_cpu, "open_tokens_s": total, "peak_rss_mb": peak / 1024,
                  "rss_after_imports_mb": base / 1024}))
"""


def build(path: Path, n_vocab: int) -> None:
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    # a BPE-shaped vocabulary: 256 byte tokens, then each token an earlier one plus a byte
    tokens = [chr(0x100 + i) for i in range(256)]
    merges, seen = [], set(tokens)
    while len(tokens) < n_vocab:
        a, b = tokens[int(rng.integers(0, len(tokens)))], tokens[int(rng.integers(0, 256))]
        if len(a) < 12 and a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
            merges.append(f"{a} {b}")
    w.add_token_list(tokens)
    w.add_token_scores(rng.standard_normal(n_vocab).astype(np.float32).tolist())
    w.add_token_types([1] * n_vocab)
    w.add_token_merges(merges)
    for i in range(4):
        w.add_tensor(f"blk.{i}.attn_norm.weight", rng.standard_normal(64).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def measure(which: str, path: Path, n_vocab: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, which, str(path), str(n_vocab)],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode:
        raise SystemExit(f"{which} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=262144)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.gguf"
        build(path, args.vocab)
        runs = {which: [measure(which, path, args.vocab) for _ in range(args.runs)]
                for which in ("ours", "gguf_py")}
        size = path.stat().st_size
    med = {which: {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0]}
           for which, rs in runs.items()}
    print(json.dumps({
        "vocab": args.vocab, "file_bytes": size, "runs": args.runs,
        "ours": med["ours"], "gguf_py": med["gguf_py"],
        "open_speedup": round(med["gguf_py"]["open_s"] / med["ours"]["open_s"], 1),
        "open_tokens_speedup": round(med["gguf_py"]["open_tokens_s"] / med["ours"]["open_tokens_s"], 1),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
