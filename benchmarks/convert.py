"""Converting a ~2 GB synthetic checkpoint to q4_k_m: our converter vs llama.cpp's quantizer.

The checkpoint has the R = 1 llama layout (llama.cpp quantizes only architectures it knows);
the tensors and their types are those of a PLT model of the same size minus the tiny gates.

Both sides get the same weights and the same number of threads (our converter: worker
processes; llama.cpp: nthread), each run as its own process tree whose summed RSS is sampled.
Ours goes HF safetensors (bf16) -> q4_k_m GGUF in one pass; llama.cpp's `llama_model_quantize`
goes from a BF16 GGUF of the same weights (made by our converter, not timed) to Q4_K_M.
Prints JSON.
Usage: python benchmarks/convert.py [--layers 20] [--threads 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

OURS = """
import sys
from loopcli.convert.export import convert
if __name__ == "__main__":
    convert(sys.argv[1], sys.argv[2], "q4_k_m", force=True, show_progress=False, threads=int(sys.argv[3]))
"""
LLAMA = """
import sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
params.nthread = int(sys.argv[3])
sys.exit(1 if llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), params) else 0)
"""


def run(code: str, *args: str, threads: int) -> dict:
    """Run `code` in a fresh interpreter: wall time, and the peaks of the summed RSS and PSS of
    it and its worker processes, sampled every 20 ms (RSS counts shared library pages once per
    process; PSS splits them among the processes sharing them)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    with tempfile.NamedTemporaryFile("w", suffix=".py") as script:  # workers import __main__
        script.write(code)
        script.flush()
        t0 = time.perf_counter()
        proc = psutil.Popen([sys.executable, script.name, *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peak_rss = peak_pss = 0
        while proc.poll() is None:
            try:
                tree = [proc, *proc.children(recursive=True)]
                mem = [p.memory_full_info() for p in tree]
                peak_rss = max(peak_rss, sum(m.rss for m in mem))
                peak_pss = max(peak_pss, sum(m.pss for m in mem))
            except psutil.Error:  # a worker ended between listing and reading
                pass
            time.sleep(0.02)
        seconds = time.perf_counter() - t0
        err = proc.stderr.read().decode(errors="replace")
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {err.strip()[-2000:]}"}
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(peak_rss / 2**20, 1),
            "peak_pss_mb": round(peak_pss / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=20, help="20 layers of hidden 2048 = about 2 GB in bf16")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep", type=Path, help="work directory to keep (default: a temporary one)")
    args = ap.parse_args()

    from loopcli.convert.export import convert
    from loopcli.runtime.checkpoint import Checkpoint
    from loopcli.runtime.synthetic import write_synthetic

    work = args.keep or Path(tempfile.mkdtemp(prefix="loopcli-bench-convert-"))
    src = work / "hf"
    sizes = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=args.layers,
                 num_attention_heads=16, num_key_value_heads=4, vocab_size=32000)
    if not src.exists():
        # llama layout: llama.cpp's quantizer refuses architectures it does not know
        write_synthetic(src, arch="llama", preset="bench", dtype="bf16", **sizes)
    src_bytes = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    ckpt = Checkpoint(src)
    params = sum(math.prod(ckpt.shape(n)) for n in ckpt.names())
    bf16 = work / "bf16.gguf"
    if not bf16.exists():
        convert(src, bf16, "bf16", show_progress=False)

    ours = run(OURS, str(src), str(work / "ours-q4_k_m.gguf"), str(args.threads), threads=args.threads)
    try:
        import llama_cpp  # noqa: F401
        ref = run(LLAMA, str(bf16), str(work / "llama-q4_k_m.gguf"), str(args.threads), threads=args.threads)
    except ImportError:
        ref = {"error": "llama-cpp-python is not installed (pip install -e '.[llama]')"}
    result = {
        "benchmark": "convert",
        "source": {"params": params, "safetensors_bytes": src_bytes, "dtype": "bf16", **sizes},
        "threads": args.threads,
        "ours": ours,
        "llama_cpp_quantize": ref,
        "targets": "ours peak RSS < 1024 MB; ours seconds <= 2 x llama.cpp",
    }
    if "seconds" in ours and "seconds" in ref:
        result["ratio_seconds_ours_to_llama_cpp"] = round(ours["seconds"] / ref["seconds"], 2)
        sizes_out = {k: (work / f"{k}-q4_k_m.gguf").stat().st_size for k in ("ours", "llama")}
        result["output_bytes"] = sizes_out
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
