"""What a GGUF file holds and what it needs: architecture, loops, parameters, tensor types,
and the memory for weights plus KV cache at a given context (PLT: loop-0 cache + windows)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from loopcli.runtime.errors import ModelError
from loopcli.runtime.gguf_load import config_from_gguf, open_gguf

KV_BYTES = 2  # K/V cached in 16-bit
_SIZE = re.compile(r"^\s*([\d.]+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'8GB', '12GiB', '8000M', '1.5T' -> bytes (SI for kB/MB/GB, binary for KiB/MiB/GiB)."""
    m = _SIZE.match(text)
    if not m:
        raise ModelError(f"cannot read size {text!r}; write it like 8GB, 12GiB or 24000MB")
    value, unit, binary = float(m.group(1)), m.group(2).lower(), m.group(3).lower().startswith("i")
    power = "kmgt".index(unit) + 1 if unit else 0
    return int(value * (1024 if binary else 1000) ** power)


def inspect_gguf(path: str | Path, ctx: int = 4096, gpu_mem: str | None = None) -> dict:
    reader = open_gguf(path)
    cfg = config_from_gguf(reader, str(path))
    by_type: Counter = Counter()
    bytes_by_type: Counter = Counter()
    params = 0
    for t in reader.tensors:
        by_type[t.tensor_type.name] += 1
        bytes_by_type[t.tensor_type.name] += int(t.n_bytes)
        params += int(t.n_elements)
    weights = sum(bytes_by_type.values())
    per_token = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * KV_BYTES
    window_tokens = min(cfg.window + 1, ctx) if cfg.is_plt else 0
    kv_global = per_token * ctx
    kv_windows = (cfg.num_loops - 1) * window_tokens * per_token
    carries = (cfg.num_loops - 1) * cfg.hidden_size * 4
    info = {
        "file": str(path),
        "file_bytes": Path(path).stat().st_size,
        "architecture": reader.get_field("general.architecture").contents(),
        "loops": cfg.num_loops,
        "layers": cfg.num_layers,
        "hidden_size": cfg.hidden_size,
        "parameters": params,
        "tensors": dict(by_type),
        "tensor_bytes": dict(bytes_by_type),
        "memory": {
            "context": ctx,
            "weights_bytes": weights,
            "kv_global_bytes": kv_global,
            "kv_window_bytes": kv_windows,
            "carry_bytes": carries,
            "total_bytes": weights + kv_global + kv_windows + carries,
        },
    }
    if gpu_mem is not None:
        limit = parse_size(gpu_mem)
        info["gpu_mem_bytes"] = limit
        info["fits"] = info["memory"]["total_bytes"] <= limit
    return info


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n:.1f} TiB"


def render(info: dict) -> str:
    mem = info["memory"]
    lines = [
        f"{info['file']}: {info['architecture']}, {info['loops']} loop(s), {info['layers']} layers, "
        f"hidden {info['hidden_size']}",
        f"parameters {info['parameters']:,}; file {_human(info['file_bytes'])}",
        "tensors: " + ", ".join(f"{n} {t} ({_human(info['tensor_bytes'][t])})"
                                for t, n in sorted(info["tensors"].items())),
        f"memory at context {mem['context']}: weights {_human(mem['weights_bytes'])} + "
        f"KV {_human(mem['kv_global_bytes'])}"
        + (f" + loop windows {_human(mem['kv_window_bytes'])}" if info["loops"] > 1 else "")
        + f" = {_human(mem['total_bytes'])}",
    ]
    if "fits" in info:
        verdict = "fits" if info["fits"] else "does NOT fit"
        lines.append(f"{verdict} in {_human(info['gpu_mem_bytes'])} of GPU memory")
    return "\n".join(lines)
