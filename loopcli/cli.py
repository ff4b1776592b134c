"""The `loopcli` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from loopcli import __version__
from loopcli.runtime.errors import ModelError
from loopcli.tools.errors import ToolError

# Errors in the user's input: one line on stderr, exit code 2, no traceback.
USER_ERRORS = (ModelError, ToolError)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="loopcli")
def cli() -> None:
    """A local coding assistant for LoopCoder-V2 (parallel loop transformer) models."""


@cli.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--arch", type=click.Choice(["loopcoder", "llama", "qwen2"]), default="loopcoder",
              show_default=True, help="Checkpoint layout: LoopCoder-V2 (PLT) or an R = 1 layout.")
@click.option("--preset", type=click.Choice(["tiny", "small", "bench"]), default="tiny",
              show_default=True, help="Model size.")
@click.option("--loops", type=click.IntRange(1), help="plt_num_loops (loopcoder only).")
@click.option("--window", type=click.IntRange(0), help="Left window W of plt_window_size (loopcoder only).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dtype", type=click.Choice(["bf16", "f16", "f32"]), default="bf16", show_default=True)
@click.option("--shards", type=click.IntRange(1), default=1, show_default=True,
              help="Number of safetensors shards (with an index when > 1).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def synth(out, arch, preset, loops, window, seed, dtype, shards, force):
    """Write a synthetic (random-weight) checkpoint in the real Hugging Face layout to OUT.

    The model is random: it runs the whole pipeline but produces no meaningful text.
    """
    from loopcli.runtime.synthetic import write_synthetic

    overrides = {}
    if arch != "loopcoder" and (loops or window is not None):
        raise click.UsageError("--loops and --window apply to --arch loopcoder only")
    if loops:
        overrides["plt_num_loops"] = loops
    if window is not None:
        overrides["plt_window_size"] = [window, 0]
    path = write_synthetic(out, arch=arch, preset=preset, seed=seed, dtype=dtype,
                           shards=shards, force=force, **overrides)
    click.echo(f"wrote synthetic {arch} checkpoint ({preset}, random weights) to {path}", err=True)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--file", "text_file", required=True, type=click.Path(path_type=Path),
              help="Text to score.")
@click.option("--ctx", type=click.IntRange(4), default=512, show_default=True,
              help="Chunk length in tokens; the second half of each chunk is scored.")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"ppl", "n_tokens", "nll": [...]} as JSON.')
def perplexity(model, text_file, ctx, as_json):
    """Perplexity of MODEL (an HF checkpoint directory) on a text, llama-perplexity style."""
    from rich.console import Console
    from rich.progress import Progress

    from loopcli.runtime.model import load_model
    from loopcli.runtime.perplexity import perplexity as score
    from loopcli.runtime.tokenizer import Tokenizer

    if not text_file.is_file():
        raise ModelError(f"text file {text_file} does not exist; give an existing file to --file")
    try:
        text = text_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ModelError(f"{text_file} is not UTF-8 text") from None
    net = load_model(model)
    tok = Tokenizer.load(model)
    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=as_json or not console.is_terminal) as progress:
        task = progress.add_task("scoring chunks", total=None)
        result = score(net, tok, text, ctx,
                       on_chunk=lambda done, total: progress.update(task, completed=done, total=total))
    if as_json:
        click.echo(json.dumps({"ppl": result.ppl, "n_tokens": result.n_tokens, "nll": result.nll}))
    else:
        click.echo(f"perplexity {result.ppl:.4f} over {result.n_tokens} scored tokens")


@cli.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--type", "type_name", default="q4_k_m", show_default=True,
              help="f32, f16, bf16, q8_0, q4_0, q4_k, q5_k, q6_k, q4_k_m or q5_k_m.")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
def convert(src, out, type_name, force):
    """Convert an HF checkpoint directory SRC into a (quantized) GGUF file OUT.

    R = 1 models become llama.cpp's `llama` / `qwen2` architecture; LoopCoder-V2 (PLT) models
    the `loopcoder` architecture (docs/gguf-loopcoder.md).
    """
    from loopcli.convert.export import convert as run

    path = run(src, out, type_name.lower(), force=force, show_progress=True)
    click.echo(f"wrote {path} ({path.stat().st_size:,} bytes)", err=True)


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--ctx", type=click.IntRange(1), default=4096, show_default=True,
              help="Context length for the KV-cache estimate.")
@click.option("--gpu-mem", help="GPU memory to check against, e.g. 8GB or 12GiB.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect(file, ctx, gpu_mem, as_json):
    """Show what a GGUF FILE holds and the memory it needs at a context length."""
    from loopcli.convert.inspect import inspect_gguf, render

    info = inspect_gguf(file, ctx, gpu_mem)
    click.echo(json.dumps(info, indent=2) if as_json else render(info))


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if exc.exit_code in (1, 2) else exc.exit_code)
    except USER_ERRORS as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
