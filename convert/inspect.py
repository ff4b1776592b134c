"""What a file holds and what it needs.

A GGUF: its header, every metadata key, the tensor table and a check of the weights for
NaN/Inf; for the architectures we run (loopcoder, llama, qwen2) also the loops, parameters and
the memory for weights plus KV cache at a given context (PLT: loop-0 cache + windows), and
whether that fits. An HF checkpoint directory: the conversion plan (convert --dry-run).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from loopcli.runtime.errors import ModelError
from loopcli.runtime.gguf_format import HF_ARCH
from loopcli.runtime.gguf_load import architecture, check_finite, config_from_gguf, open_gguf

KV_BYTES = 2  # K/V cached in 16-bit
SHOWN_ELEMENTS = 4  # of an array, in the key listing
_SIZE = re.compile(r"^\s*([\d.]+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'8GB', '12GiB', '8000M', '1.5T' -> bytes (SI for kB/MB/GB, binary for KiB/MiB/GiB)."""
    m = _SIZE.match(text)
    if not m:
        raise ModelError(f"cannot read size {text!r}; write it like 8GB, 12GiB or 24000MB")
    value, unit, binary = float(m.group(1)), m.group(2).lower(), m.group(3).lower().startswith("i")
    power = "kmgt".index(unit) + 1 if unit else 0
    return int(value * (1024 if binary else 1000) ** power)


def _key_value(field) -> object:
    """A key's value for the listing: arrays as their type, length and first elements."""
    if field.types[0].name != "ARRAY":
        return field.contents()
    n = len(field)
    return {"array": field.types[-1].name.lower() if n else "empty", "length": n,
            "first": field.contents(slice(0, SHOWN_ELEMENTS))}


def inspect_gguf(path: str | Path, ctx: int = 4096, gpu_mem: str | None = None) -> dict:
    reader = open_gguf(path)
    arch = architecture(reader, str(path))
    cfg = config_from_gguf(reader, str(path)) if arch in HF_ARCH else None
    check_finite(reader, str(path))
    by_type: Counter = Counter()
    bytes_by_type: Counter = Counter()
    params = 0
    table = []
    for t in reader.tensors:
        by_type[t.tensor_type.name] += 1
        bytes_by_type[t.tensor_type.name] += int(t.n_bytes)
        params += int(t.n_elements)
        table.append({"name": t.name, "type": t.tensor_type.name, "shape": [int(d) for d in t.shape],
                      "bytes": int(t.n_bytes), "offset": int(t.data_offset)})
    info = {
        "file": str(path),
        "file_bytes": Path(path).stat().st_size,
        "version": reader.get_field("GGUF.version").contents(),
        "alignment": reader.alignment,
        "data_offset": reader.data_offset,
        "architecture": arch,
        "keys": {k: _key_value(f) for k, f in reader.fields.items() if not k.startswith("GGUF.")},
        "parameters": params,
        "tensors": dict(by_type),
        "tensor_bytes": dict(bytes_by_type),
        "tensor_table": table,
    }
    if cfg is None:  # an architecture we do not run: no memory model for it
        return info
    weights = sum(bytes_by_type.values())
    per_token = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * KV_BYTES
    window_tokens = min(cfg.window + 1, ctx) if cfg.is_plt else 0
    kv_global = per_token * ctx
    kv_windows = (cfg.num_loops - 1) * window_tokens * per_token
    carries = (cfg.num_loops - 1) * cfg.hidden_size * 4
    info.update({
        "loops": cfg.num_loops,
        "layers": cfg.num_layers,
        "hidden_size": cfg.hidden_size,
        "memory": {
            "context": ctx,
            "weights_bytes": weights,
            "kv_global_bytes": kv_global,
            "kv_window_bytes": kv_windows,
            "carry_bytes": carries,
            "total_bytes": weights + kv_global + kv_windows + carries,
        },
    })
    if gpu_mem is not None:
        limit = parse_size(gpu_mem)
        info["gpu_mem_bytes"] = limit
        info["fits"] = info["memory"]["total_bytes"] <= limit
    return info


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n:.1f} TiB"


def _short(value, width: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def render(info: dict) -> str:
    lines = [f"{info['file']}: GGUF v{info['version']}, {human(info['file_bytes'])}, "
             f"{len(info['keys'])} keys, {len(info['tensor_table'])} tensors, data at byte "
             f"{info['data_offset']} (alignment {info['alignment']})", "", "keys:"]
    for key, value in info["keys"].items():
        if isinstance(value, dict):
            value = f"[{value['array']} x {value['length']}] {_short(value['first'], 80)}"
        else:
            value = _short(value)
        lines.append(f"  {key} = {value}")
    lines += ["", "tensors:"]
    width = max((len(t["name"]) for t in info["tensor_table"]), default=4)
    for t in info["tensor_table"]:
        lines.append(f"  {t['name']:<{width}}  {t['type']:<6} {str(t['shape']):<18} {human(t['bytes']):>10}")
    lines += ["", f"parameters {info['parameters']:,}; "
              + ", ".join(f"{n} {t} ({human(info['tensor_bytes'][t])})" for t, n in sorted(info["tensors"].items()))]
    if "memory" not in info:
        lines.append(f"architecture {info['architecture']!r}: no memory estimate (loopcli runs "
                     f"{', '.join(HF_ARCH)})")
        return "\n".join(lines)
    mem = info["memory"]
    lines += [
        f"{info['architecture']}, {info['loops']} loop(s), {info['layers']} layers, hidden {info['hidden_size']}",
        f"memory at context {mem['context']}: weights {human(mem['weights_bytes'])} + "
        f"KV {human(mem['kv_global_bytes'])}"
        + (f" + loop windows {human(mem['kv_window_bytes'])}" if info["loops"] > 1 else "")
        + f" = {human(mem['total_bytes'])}",
    ]
    if "fits" in info:
        verdict = "fits" if info["fits"] else "does NOT fit"
        lines.append(f"{verdict} in {human(info['gpu_mem_bytes'])} of GPU memory")
    return "\n".join(lines)
