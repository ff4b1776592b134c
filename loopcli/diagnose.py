"""`loopcli diagnose`: the per-loop diagnostics of runtime/diagnostics.py on the user's files,
as a table, JSON, and one PNG with a panel per metric (docs/diagnose.md)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from loopcli.inputs import read_text_file
from loopcli.runtime.errors import ModelError

# (JSON key, table label) of each per-loop metric, in table order
ROWS = [
    ("step_size", "step size ‖h(r) − h(r−1)‖"),
    ("update_coherence", "update coherence cos"),
    ("effective_rank", "effective rank"),
    ("clp_offset_cost", "CLP offset cost Ω"),
    ("gate_mean", "G-SWA gate mean"),
    ("gate_head_std", "  spread over heads (std)"),
    ("gate_layer_std", "  spread over layers (std)"),
    ("output_kl", "output shift KL(p(r) ‖ p(r−1))"),
    ("output_entropy", "output entropy (nats)"),
    ("true_rank_mean", "true next token rank, mean"),
    ("true_rank_median", "true next token rank, median"),
    ("peak_share", "peak-contribution share"),
    ("attention_kl", "attention KL(A(r) ‖ A(r−1))"),
]
# (panel title, metric keys drawn in it) of the PNG, one panel per metric
PANELS = [
    ("step size $\\|h^{(r)} - h^{(r-1)}\\|$", ["step_size"]),
    ("update coherence $\\cos(\\Delta^{(r)}, \\Delta^{(r-1)})$", ["update_coherence"]),
    ("effective rank of the head input", ["effective_rank"]),
    ("CLP offset cost $\\Omega^{(r)}$", ["clp_offset_cost"]),
    ("G-SWA gate mean (bars: spread)", ["gate_mean", "gate_head_std", "gate_layer_std"]),
    ("output shift KL$(p^{(r)} \\| p^{(r-1)})$", ["output_kl"]),
    ("output entropy (nats)", ["output_entropy"]),
    ("rank of the true next token", ["true_rank_mean", "true_rank_median"]),
    ("peak-contribution loop (share of tokens)", ["peak_share"]),
    ("attention KL$(A^{(r)} \\| A^{(r-1)})$", ["attention_kl"]),
]
PLOT_SIZE = (20, 8)  # inches, at PLOT_DPI: a 2000 x 800 PNG
PLOT_DPI = 100


def model_config(path: Path):
    """The config of MODEL, which must be a LoopCoder (PLT) checkpoint directory or GGUF."""
    from loopcli.runtime.config import PLT_ARCH, load_config
    from loopcli.runtime.gguf_format import PLT
    from loopcli.runtime.gguf_load import architecture, config_from_gguf, open_gguf

    if not path.exists():
        raise ModelError(f"model {path} does not exist; give a loopcoder .gguf file or a LoopCoder "
                         "checkpoint directory")
    if path.is_dir():
        cfg = load_config(path)
        if cfg.arch != PLT_ARCH:
            raise ModelError(f"{path} is a {cfg.arch} checkpoint; diagnose needs a LoopCoder one ({PLT_ARCH})")
        return cfg
    if path.suffix != ".gguf":
        raise ModelError(f"model {path} is neither a .gguf file nor a checkpoint directory")
    reader = open_gguf(path)
    arch = architecture(reader, str(path))
    if arch != PLT:
        raise ModelError(f"{path} is a GGUF of architecture {arch!r}; diagnose needs a {PLT!r} one "
                         "(convert a LoopCoder checkpoint with loopcli convert)")
    return config_from_gguf(reader, str(path))


def check_options(cfg, ctx: int, loops: int | None, plot: Path | None) -> None:
    if ctx < 2:
        raise ModelError(f"--ctx must be at least 2 tokens, got {ctx}")
    if ctx > cfg.max_position_embeddings:
        raise ModelError(f"--ctx {ctx} exceeds the model's context of {cfg.max_position_embeddings} tokens")
    if loops is not None and loops < 1:
        raise ModelError(f"--loops must be at least 1, got {loops}")
    if loops is not None and loops > 1 and not cfg.is_plt:
        raise ModelError("the model has one loop and so no G-SWA gate weights; it can only run with --loops 1")
    if plot is not None:
        if plot.is_dir():
            raise ModelError(f"--plot {plot} is a folder; give the PNG file to write")
        if not plot.parent.is_dir():
            raise ModelError(f"--plot {plot}: folder {plot.parent} does not exist; create it or write elsewhere")
        if not os.access(plot.parent, os.W_OK):
            raise ModelError(f"--plot {plot}: folder {plot.parent} is not writable; write elsewhere")


def diagnose(model: Path, files: list[Path], ctx: int = 512, loops: int | None = None,
             plot: Path | None = None, on_chunk=None) -> dict:
    """Check everything, load MODEL, run every file through it in chunks of `ctx` tokens; the
    result dict (runtime Diagnostics.result, plus model, files and ctx)."""
    import torch

    from loopcli.runtime.diagnostics import Diagnostics, chunk_ids
    from loopcli.runtime.model import load_model
    from loopcli.runtime.tokenizer import Tokenizer

    texts = [read_text_file(f) for f in files]
    cfg = model_config(model)
    check_options(cfg, ctx, loops, plot)
    tok = Tokenizer.load(model)
    bos = tok.bos_id if tok.add_bos else None
    token_lists = []
    for path, text in zip(files, texts):
        ids = tok.encode(text, add_bos=False)
        if len(ids) + (bos is not None) < 2:
            raise ModelError(f"{path} holds {len(ids)} token(s); diagnose needs at least 2 per file")
        token_lists.append(torch.tensor(ids, dtype=torch.int32))  # 4 bytes a token, not a list of ints
    del texts
    net = load_model(model)
    diag = Diagnostics(net, other_loops=loops)
    total = sum(sum(1 for _ in chunk_ids(t, ctx, bos)) for t in token_lists)
    for tokens in token_lists:
        for ids in chunk_ids(tokens, ctx, bos):
            diag.add(ids)
            if on_chunk:
                on_chunk(diag.chunks, total)
    return {"model": str(model), "files": [str(f) for f in files], "ctx": ctx, **diag.result()}


def to_json(result: dict) -> str:
    """JSON with NaN and infinities as null (strict JSON has neither)."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(result))


def _cell(value) -> str:
    return "–" if value is None else f"{value:.4g}"


def render_table(result: dict):
    """A rich table: one row per metric, one column per loop."""
    from rich.table import Table

    table = Table(title="per-loop diagnostics",
                  caption=f"{result['tokens']} tokens in {result['chunks']} chunk(s) of <= {result['ctx']}; "
                          "loops numbered from 0 (the paper's loop r is loop r - 1 here)")
    table.add_column("metric")
    for entry in result["per_loop"]:
        table.add_column(f"loop {entry['loop']}", justify="right")
    for key, label in ROWS:
        table.add_row(label, *[_cell(entry[key]) for entry in result["per_loop"]])
    return table


def comparison_line(result: dict) -> str | None:
    cmp = result.get("other_loops")
    if not cmp:
        return None
    return (f"at {cmp['loops']} loop(s) instead of {cmp['native_loops']}: next-token NLL {cmp['nll']:.4f} vs "
            f"{cmp['nll_native']:.4f} nats (perplexity {cmp['ppl']:.4g} vs {cmp['ppl_native']:.4g}), "
            f"KL(native ‖ {cmp['loops']} loops) {cmp['kl']:.4g} nats, same top-1 {100 * cmp['same_top1']:.1f} %")


def write_plot(result: dict, out: Path) -> list[str]:
    """One PNG, a panel per metric across loops, written atomically; returns the panel titles.
    The PNG's `Panels` text field lists each panel's metric keys (one panel a line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.ticker
    from matplotlib import pyplot as plt

    loops = [e["loop"] for e in result["per_loop"]]

    def series(key):
        return [float("nan") if e[key] is None else e[key] for e in result["per_loop"]]

    fig, axes = plt.subplots(2, 5, figsize=PLOT_SIZE, dpi=PLOT_DPI)
    for ax, (title, keys) in zip(axes.flat, PANELS):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("loop")
        ax.set_xticks(loops)
        ax.set_xlim(loops[0] - 0.5, loops[-1] + 0.5)
        ax.grid(alpha=0.3)
        values = series(keys[0])
        if all(math.isnan(v) for v in values):
            ax.text(0.5, 0.5, f"not defined at {len(loops)} loop(s)", ha="center", va="center",
                    transform=ax.transAxes, color="gray")
            continue
        if keys[0] == "peak_share":
            ax.bar(loops, values, color="tab:purple")
            ax.set_ylim(0, 1)
        elif keys[0] == "gate_mean":
            ax.errorbar([x - 0.06 for x in loops], values, yerr=series("gate_head_std"), fmt="o-", capsize=4,
                        label="mean ± std over heads")
            ax.errorbar([x + 0.06 for x in loops], values, yerr=series("gate_layer_std"), fmt="none", capsize=4,
                        color="tab:orange", label="± std over layers")
            ax.axhline(0.5, color="gray", lw=0.8, ls="--")
            ax.set_ylim(0, 1)
            ax.legend(fontsize=8)
        elif keys[0] == "true_rank_mean":
            ax.plot(loops, values, "o-", label="mean")
            ax.plot(loops, series("true_rank_median"), "s--", label="median")
            ranks = [v for v in values + series("true_rank_median") if not math.isnan(v)]
            if ranks and max(ranks) > 10 * min(ranks):  # a log axis only where it spans a decade
                ax.set_yscale("log")  # (a narrower span would get no labelled tick)
                ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
                ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.legend(fontsize=8)
        else:
            ax.plot(loops, values, "o-")
            if keys[0] == "update_coherence":
                ax.axhline(0, color="gray", lw=0.8, ls="--")
    title = (f"{Path(result['model']).name}: {result['tokens']} tokens, {result['chunks']} chunk(s) of "
             f"<= {result['ctx']}; loops numbered from 0")
    cmp = result.get("other_loops")
    if cmp:
        title += (f"; at {cmp['loops']} loop(s) instead of {cmp['native_loops']}: next-token NLL "
                  f"{cmp['nll']:.4g} vs {cmp['nll_native']:.4g}, KL {cmp['kl']:.3g}")
    fig.suptitle(title)
    fig.tight_layout()
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".png", dir=out.parent)
        os.close(fd)
        fig.savefig(tmp, format="png", dpi=PLOT_DPI,
                    metadata={"Panels": "\n".join(",".join(keys) for _, keys in PANELS)})
        os.replace(tmp, out)
    except OSError as exc:
        raise ModelError(f"writing {out} failed ({exc.strerror or exc}); nothing was written") from None
    finally:
        plt.close(fig)
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
    return [title for title, _ in PANELS]
