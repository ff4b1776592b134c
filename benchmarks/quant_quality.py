"""Our quantizers (loopcli.convert.quants) against llama.cpp's, through llama-cpp-python.

Two references, both llama.cpp's own code without an importance matrix:
- ggml_quantize_chunk (the routine llama-quantize runs per tensor), called through ctypes on
  the libggml that llama-cpp-python ships, single-threaded: per type and data kind, the
  fraction of byte-identical blocks, relative RMSE of ours and of llama.cpp's, and MB/s of
  float32 input for both on the same matrix;
- llama_model_quantize on a small F32 llama-arch GGUF (Q4_K, Q5_K, Q6_K pure and the Q4_K_M
  mix), each tensor compared with ours at the type llama.cpp chose for it, plus the time of
  the whole nthread=1 run against ours over the same tensors.
Prints JSON. Needs llama-cpp-python (pip install llama-cpp-python==0.3.36).
Usage: python benchmarks/quant_quality.py [--rows 512] [--cols 4096] [--speed-size 4096]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import tempfile
import time
from pathlib import Path

import gguf
import llama_cpp
import llama_cpp._ggml
import llama_cpp._logger
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from loopcli.convert.quants import quantize

TYPES = ("Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_0")
DATA_KINDS = ("normal", "student_t3", "laplace_outliers", "bf16_weights")
# llama_ftype values from llama.h, and whether every 2-D tensor gets the base type (pure)
MODEL_FTYPES = {
    "Q4_K": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_S, True),
    "Q5_K": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_S, True),
    "Q6_K": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K, True),
    "Q4_K_M": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, False),
}

_ggml = llama_cpp._ggml.libggml
_ggml.ggml_quantize_chunk.restype = ctypes.c_size_t
_ggml.ggml_quantize_chunk.argtypes = [
    ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
]
_silent_log = llama_cpp.llama_log_callback(lambda level, text, user_data: None)  # kept alive: C holds it


def make_data(kind: str, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        x = rng.standard_normal((rows, cols))
    elif kind == "student_t3":
        x = rng.standard_t(3, (rows, cols))
    elif kind == "laplace_outliers":
        x = rng.laplace(size=(rows, cols))
        x[rng.random((rows, cols)) < 1e-3] *= 50
    elif kind == "bf16_weights":
        # what a bf16 checkpoint looks like after the float32 cast: a coarse value grid
        bits = (0.02 * rng.standard_normal((rows, cols))).astype(np.float32).view(np.uint32)
        return ((bits + 0x8000) & 0xFFFF0000).view(np.float32)
    else:
        raise ValueError(f"unknown data kind {kind!r}")
    return x.astype(np.float32)


def ggml_quantize(x: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """llama.cpp's ggml_quantize_chunk on float32 [rows, cols], one thread, no imatrix."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    out = np.empty((x.shape[0], x.shape[1] // block_size * type_size), dtype=np.uint8)
    _ggml.ggml_quantize_chunk(int(qtype), x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1], None)
    return out


def compare(x: np.ndarray, ours: np.ndarray, ref: np.ndarray, qtype: GGMLQuantizationType) -> dict:
    """Byte-identical block fraction and relative RMSEs of two encodings of x."""
    type_size = GGML_QUANT_SIZES[qtype][1]
    same = (ours.reshape(-1, type_size) == ref.reshape(-1, type_size)).all(axis=1).mean()
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))

    def rel_rmse(q):
        return float(np.sqrt(np.mean(np.square(gguf.quants.dequantize(q, qtype) - x, dtype=np.float64)))) / rms

    ours_err, ref_err = rel_rmse(ours), rel_rmse(ref)
    return {
        "identical_blocks": float(same),
        "rel_rmse_ours": ours_err,
        "rel_rmse_llama": ref_err,
        "ratio": ours_err / ref_err if ref_err else 1.0,
    }


def accuracy(rows: int, cols: int) -> list[dict]:
    results = []
    for kind in DATA_KINDS:
        x = make_data(kind, rows, cols)
        for name in TYPES:
            qtype = GGMLQuantizationType[name]
            results.append({"type": name, "data": kind, **compare(x, quantize(x, qtype), ggml_quantize(x, qtype), qtype)})
    return results


def _best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def throughput(size: int, repeats: int) -> list[dict]:
    """MB/s of float32 input, best of `repeats`, ours and llama.cpp alternating on one matrix."""
    x = make_data("normal", size, size)
    mb = x.nbytes / 1e6
    results = []
    for name in TYPES:
        qtype = GGMLQuantizationType[name]
        ours = _best_seconds(lambda: quantize(x, qtype), repeats)
        ref = _best_seconds(lambda: ggml_quantize(x, qtype), repeats)
        results.append({
            "type": name, "shape": [size, size], "ours_mb_s": mb / ours, "llama_mb_s": mb / ref,
            "time_ratio_ours_over_llama": ours / ref,
        })
    return results


def llama_tensors(n_embd: int, n_ff: int, n_vocab: int, n_head: int = 4, n_kv_head: int = 2) -> dict[str, np.ndarray]:
    """One-layer llama-arch weights in numpy [out, in] layout; 2-D ones draw on all data kinds."""
    kv = n_embd // n_head * n_kv_head
    shapes = {
        "token_embd.weight": ((n_vocab, n_embd), "normal"),
        "output.weight": ((n_vocab, n_embd), "bf16_weights"),
        "blk.0.attn_q.weight": ((n_embd, n_embd), "student_t3"),
        "blk.0.attn_k.weight": ((kv, n_embd), "laplace_outliers"),
        "blk.0.attn_v.weight": ((kv, n_embd), "bf16_weights"),
        "blk.0.attn_output.weight": ((n_embd, n_embd), "normal"),
        "blk.0.ffn_gate.weight": ((n_ff, n_embd), "student_t3"),
        "blk.0.ffn_up.weight": ((n_ff, n_embd), "bf16_weights"),
        "blk.0.ffn_down.weight": ((n_embd, n_ff), "laplace_outliers"),
    }
    tensors = {name: make_data(kind, *shape, seed=i) for i, (name, (shape, kind)) in enumerate(shapes.items())}
    for norm in ("output_norm.weight", "blk.0.attn_norm.weight", "blk.0.ffn_norm.weight"):
        tensors[norm] = np.ones(n_embd, dtype=np.float32)
    return tensors


def write_llama_gguf(path: Path, tensors: dict[str, np.ndarray], n_head: int = 4, n_kv_head: int = 2) -> None:
    """An F32 llama-arch GGUF that llama_model_quantize accepts (it needs no tokenizer)."""
    n_ff, n_embd = tensors["blk.0.ffn_gate.weight"].shape
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_block_count(1)
    writer.add_context_length(128)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def llama_model_quantize(src: Path, dst: Path, ftype: int, pure: bool, nthread: int = 1) -> float:
    """Run llama.cpp's model quantizer; returns its wall time in seconds."""
    llama_cpp.llama_log_set(_silent_log, None)
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread, params.ftype, params.pure = nthread, ftype, pure
    start = time.perf_counter()
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    finally:
        # C keeps the callback pointer: give it back llama-cpp-python's own, which lives as long
        # as the process, so a later model load never calls ours after this module is gone
        llama_cpp.llama_log_set(llama_cpp._logger.llama_log_callback, ctypes.c_void_p(0))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed with {rc}")
    return time.perf_counter() - start


def model_comparison(tensors: dict[str, np.ndarray], workdir: Path, ftype_name: str) -> dict:
    """Quantize the model with llama.cpp, then each of its quantized tensors with ours at the same type."""
    ftype, pure = MODEL_FTYPES[ftype_name]
    src, dst = workdir / "model-f32.gguf", workdir / f"model-{ftype_name}.gguf"
    if not src.exists():
        write_llama_gguf(src, tensors)
    llama_seconds = llama_model_quantize(src, dst, ftype, pure)
    per_tensor, ours_seconds = [], 0.0
    for t in gguf.GGUFReader(str(dst)).tensors:
        if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            continue
        x = tensors[t.name]
        start = time.perf_counter()
        ours = quantize(x, t.tensor_type)
        ours_seconds += time.perf_counter() - start
        per_tensor.append({"name": t.name, "type": t.tensor_type.name,
                           **compare(x, ours, np.asarray(t.data).reshape(ours.shape), t.tensor_type)})
    return {"ftype": ftype_name, "pure": pure, "llama_seconds_nthread1": llama_seconds,
            "ours_seconds": ours_seconds, "tensors": per_tensor}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512, help="rows of the accuracy matrices")
    parser.add_argument("--cols", type=int, default=4096, help="row length (multiple of 256)")
    parser.add_argument("--speed-size", type=int, default=4096, help="throughput matrix is size x size")
    parser.add_argument("--repeats", type=int, default=2, help="timing repeats (best counts)")
    parser.add_argument("--model-embd", type=int, default=1024, help="n_embd of the llama model (n_ff = 4x)")
    args = parser.parse_args()
    tensors = llama_tensors(args.model_embd, 4 * args.model_embd, 4 * args.model_embd)
    with tempfile.TemporaryDirectory() as tmp:
        models = [model_comparison(tensors, Path(tmp), name) for name in MODEL_FTYPES]
    report = {
        "llama_cpp_python": llama_cpp.__version__,
        "numpy": np.__version__,
        "accuracy": accuracy(args.rows, args.cols),
        "throughput": throughput(args.speed_size, args.repeats),
        "model_quantize": models,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
