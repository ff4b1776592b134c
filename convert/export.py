"""HF checkpoint directory -> GGUF, streamed tensor by tensor with bounded memory.

The header and all tensor infos are planned from the safetensors headers alone; the data is
then read in row chunks (memory-mapped), checked for NaN/Inf, quantized and appended. The
file is written under a temporary name beside OUT and renamed only when complete, so an error,
a full disk, Ctrl-C or SIGTERM leave no partial OUT (nor the temporary file).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path

import gguf
import numpy as np
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)

from loopcli.runtime.checkpoint import Checkpoint
from loopcli.runtime.config import ModelConfig
from loopcli.runtime.errors import ModelError
from loopcli.runtime.gguf_format import PLT, PLT_KEYS, ROPE_FREQS, gguf_arch, gguf_name, needs_permute

from .encode import TensorJob, encode
from .recipe import TYPES, tensor_type
from .vocab import add_vocab



@dataclass
class Planned:
    hf: str
    name: str
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType
    nbytes: int


def _sigterm_exits(function):
    """SIGTERM (kill, a job scheduler's timeout) unwinds `function` like Ctrl-C, so its
    cleanup runs (the .part file is removed), and the process exits 143 (128 + SIGTERM)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            return function(*args, **kwargs)  # only the main thread can take signals

        def handler(signum, frame):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one unwinding is enough
            raise SystemExit(128 + signal.SIGTERM)

        previous = signal.signal(signal.SIGTERM, handler)
        try:
            return function(*args, **kwargs)
        finally:
            signal.signal(signal.SIGTERM, previous)
    return wrapper


@_sigterm_exits
def convert(src: str | Path, out: str | Path, type_name: str = "q4_k_m", force: bool = False,
            show_progress: bool = True, threads: int = 1) -> Path:
    """Write the GGUF of checkpoint `src` to `out`; `threads` worker processes quantize."""
    src, out = Path(src), Path(out)
    if type_name not in TYPES:
        raise ModelError(f"unknown --type {type_name!r}; choose one of {', '.join(TYPES)}")
    if out.is_dir():
        raise ModelError(f"{out} is a directory; give a file name such as model.gguf")
    if out.exists() and not force:
        raise ModelError(f"{out} already exists; pass --force to overwrite it")
    ckpt = Checkpoint(src)
    cfg = ckpt.config
    arch = gguf_arch(cfg)
    plan = _plan(ckpt, cfg, type_name)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent or ".")
    except OSError as exc:
        raise ModelError(f"cannot write to {out.parent or '.'} ({exc.strerror}); choose a writable output path") from None
    os.close(fd)
    tmp = Path(tmp_name)
    writer = gguf.GGUFWriter(tmp, arch)
    try:
        _add_metadata(writer, cfg, type_name, src)
        add_vocab(writer, src, cfg.vocab_size)
        for p in plan:
            writer.add_tensor_info(p.name, gguf.quant_shape_to_byte_shape(p.shape, p.qtype), np.dtype(np.uint8),
                                   p.nbytes, raw_dtype=p.qtype)
        if cfg.rope_kind == "llama3":
            writer.add_tensor_info(ROPE_FREQS, (cfg.head_dim // 2,), np.dtype(np.float32), cfg.head_dim * 2)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        _write_tensors(writer, ckpt, cfg, arch, plan, show_progress, threads)
        writer.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it private; the output is an ordinary file
        os.replace(tmp, out)
    except OSError as exc:
        raise ModelError(f"writing {out} failed ({exc.strerror or exc}); nothing was written") from None
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    return out


def _plan(ckpt: Checkpoint, cfg: ModelConfig, type_name: str) -> list[Planned]:
    plan = []
    for hf in ckpt.names():
        name, shape = gguf_name(hf), ckpt.shape(hf)
        qtype = tensor_type(type_name, name, shape, cfg.num_layers)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        nbytes = int(np.prod(shape[:-1], dtype=np.int64)) * (shape[-1] // block) * size
        plan.append(Planned(hf, name, shape, qtype, nbytes))
    return plan


def _add_metadata(w: gguf.GGUFWriter, cfg: ModelConfig, type_name: str, src: Path) -> None:
    w.add_name(src.resolve().name)
    w.add_file_type(TYPES[type_name][1])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_heads)
    w.add_head_count_kv(cfg.num_kv_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    if cfg.rope_kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(cfg.rope_scaling["factor"]))
    if w.arch == PLT:
        for field, key in PLT_KEYS.items():
            value = getattr(cfg, field)
            key = f"{PLT}.{key}"
            if isinstance(value, bool):
                w.add_bool(key, value)
            elif isinstance(value, int):
                w.add_uint32(key, value)
            else:
                w.add_float32(key, value)


def _job(ckpt: Checkpoint, cfg: ModelConfig, arch: str, p: Planned) -> TensorJob:
    file, key = ckpt.location(p.hf)
    which = needs_permute(arch, p.hf)
    heads = {"q": cfg.num_heads, "k": cfg.num_kv_heads}.get(which, 0)
    return TensorJob(p.hf, file, key, p.shape, p.qtype, heads)


def _write_tensors(w: gguf.GGUFWriter, ckpt: Checkpoint, cfg: ModelConfig, arch: str,
                   plan: list[Planned], show_progress: bool, threads: int) -> None:
    total = sum(int(np.prod(p.shape)) * 4 for p in plan)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())
    console = Console(stderr=True)  # stdout stays clean for scripts; no bar in logs
    live = show_progress and console.is_terminal
    jobs = [_job(ckpt, cfg, arch, p) for p in plan]
    with Progress(*columns, console=console, disable=not live, transient=True) as progress:
        task = progress.add_task("converting", total=total)
        for n, (p, data) in enumerate(zip(plan, _encoded(jobs, threads)), 1):
            w.write_tensor_data(data)
            progress.update(task, advance=int(np.prod(p.shape)) * 4,
                            description=f"tensor {n}/{len(plan)} {p.name:<28}")
        if cfg.rope_kind == "llama3":  # llama.cpp's divisors of the plain frequencies
            plain = replace(cfg, rope_scaling=None).rope_inv_freq()
            w.write_tensor_data((plain / cfg.rope_inv_freq()).numpy().astype(np.float32))


def _encoded(jobs: list[TensorJob], threads: int) -> Iterator[np.ndarray]:
    """Encoded tensors in plan order; with threads > 1 from worker processes (the GIL makes
    threads useless here), at most two per worker in flight to bound memory."""
    if threads <= 1:
        yield from map(encode, jobs)
        return
    methods = multiprocessing.get_all_start_methods()
    # not fork: the caller may run threads (BLAS, rich), which fork would copy mid-flight
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    pool = ProcessPoolExecutor(threads, mp_context=context)
    try:
        pending: deque = deque()
        for job in jobs:
            pending.append(pool.submit(encode, job))
            if len(pending) > 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool as exc:
        raise ModelError(f"a quantizing worker process died ({exc}); retry with --threads 1") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---- the plan without the data (convert --dry-run, inspect DIR)

# Memory model of `convert` (measured with tracemalloc and RSS on this converter): quantizing
# one row chunk holds at most ~4 copies of the chunk's f32 rows (bf16 widening, the finiteness
# check, the quantizer's temporaries); a whole encoded tensor is held twice (its chunks and
# their concatenation); a worker process starts at ~31 MB (python, numpy, gguf-py); the main
# process keeps up to 2 * threads + 1 finished tensors waiting to be written in order.
CHUNK_COPIES = 4
WORKER_BASE = 40 * 2**20


def dry_run(src: str | Path, type_name: str = "q4_k_m", threads: int = 1) -> dict:
    """What `convert` would write, from the headers alone (no tensor data is read): every
    tensor's GGUF name, shape and type, the exact output size, and an estimate of peak memory."""
    import resource
    import sys

    src = Path(src)
    if type_name not in TYPES:
        raise ModelError(f"unknown --type {type_name!r}; choose one of {', '.join(TYPES)}")
    ckpt = Checkpoint(src)
    cfg = ckpt.config
    arch = gguf_arch(cfg)
    plan = _plan(ckpt, cfg, type_name)
    with tempfile.TemporaryDirectory(prefix="loopcli-plan-") as tmp:
        header = Path(tmp) / "header.gguf"
        writer = gguf.GGUFWriter(header, arch)
        try:  # the real header (metadata, vocabulary, tensor table): its size is exact
            _add_metadata(writer, cfg, type_name, src)
            add_vocab(writer, src, cfg.vocab_size)
            for p in plan:
                writer.add_tensor_info(p.name, gguf.quant_shape_to_byte_shape(p.shape, p.qtype),
                                       np.dtype(np.uint8), p.nbytes, raw_dtype=p.qtype)
            if cfg.rope_kind == "llama3":
                writer.add_tensor_info(ROPE_FREQS, (cfg.head_dim // 2,), np.dtype(np.float32), cfg.head_dim * 2)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
        finally:
            writer.close()
        header_bytes = header.stat().st_size
    align = lambda n: -(-n // writer.data_alignment) * writer.data_alignment  # noqa: E731
    data_bytes = sum(align(p.nbytes) for p in plan)
    if cfg.rope_kind == "llama3":
        data_bytes += align(cfg.head_dim * 2)
    # peak: this process now (interpreter, torch, the checkpoint's headers) + the largest tensor
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    largest = max(p.nbytes for p in plan)
    chunk = max(_chunk_bytes(cfg, arch, p) for p in plan) * CHUNK_COPIES
    if threads <= 1:
        peak = base + chunk + 2 * largest
    else:
        peak = base + (2 * threads + 1) * largest + threads * (WORKER_BASE + chunk + 2 * largest)
    return {
        "source": str(src),
        "architecture": arch,
        "type": type_name,
        "threads": threads,
        "tensors": [{"name": p.name, "hf_name": p.hf, "shape": list(p.shape), "type": p.qtype.name,
                     "bytes": p.nbytes} for p in plan],
        "parameters": sum(int(np.prod(p.shape, dtype=np.int64)) for p in plan),
        "header_bytes": header_bytes,
        "tensor_bytes": sum(p.nbytes for p in plan),
        "output_bytes": align(header_bytes) + data_bytes,
        "peak_memory_bytes": int(peak),
    }


def _chunk_bytes(cfg: ModelConfig, arch: str, p: Planned) -> int:
    """f32 bytes of the rows encode() reads at once (a permuted q/k tensor: all of it)."""
    from .encode import CHUNK_ELEMENTS

    cols = p.shape[-1]
    rows = int(np.prod(p.shape[:-1], dtype=np.int64)) if len(p.shape) > 1 else 1
    if needs_permute(arch, p.hf):
        return rows * cols * 4
    return min(rows, max(1, CHUNK_ELEMENTS // cols)) * cols * 4


def render_plan(plan: dict) -> str:
    from .inspect import human

    width = max(len(t["name"]) for t in plan["tensors"])
    lines = [f"{plan['source']}: {plan['architecture']}, {len(plan['tensors'])} tensors, "
             f"{plan['parameters']:,} parameters -> --type {plan['type']}"]
    for t in plan["tensors"]:
        lines.append(f"  {t['name']:<{width}}  {str(t['shape']):<14} {t['type']:<5} {human(t['bytes']):>10}")
    lines.append(f"output: {plan['output_bytes']:,} bytes ({human(plan['output_bytes'])}; header "
                 f"{human(plan['header_bytes'])}); peak memory about {human(plan['peak_memory_bytes'])} "
                 f"with --threads {plan['threads']}")
    return "\n".join(lines)
