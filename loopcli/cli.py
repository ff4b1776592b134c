"""The `loopcli` command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from loopcli import __version__
from loopcli.backends.factory import KINDS as BACKEND_KINDS
from loopcli.config import ConfigError
from loopcli.fix import FixError
from loopcli.runtime.errors import ModelError
from loopcli.tools.environment import POLICIES as SANDBOX_POLICIES
from loopcli.tools.errors import ToolError

# Errors in the user's input: one line on stderr, exit code 2, no traceback.
USER_ERRORS = (ModelError, ToolError, FixError, ConfigError)


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
@click.option("--tokenizer", type=click.Choice(["spm", "spm-no-prefix", "gpt-2", "starcoder", "llama-bpe", "qwen2",
                                                "deepseek-coder"]),
              help="Tokenizer kind: SentencePiece (LoopCoder's; default for loopcoder) or a byte-level "
                   "BPE pre-tokenizer (default qwen2 for llama/qwen2).")
def synth(out, arch, preset, loops, window, seed, dtype, shards, force, tokenizer):
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
                           shards=shards, force=force, tokenizer=tokenizer, **overrides)
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
@click.argument("out", type=click.Path(path_type=Path), required=False)
@click.option("--type", "type_name", default="q4_k_m", show_default=True,
              help="f32, f16, bf16, q8_0, q4_0, q4_k, q5_k, q6_k, q4_k_m or q5_k_m.")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="Worker processes quantizing in parallel; each adds about 300 MB of memory.")
@click.option("--dry-run", is_flag=True, help="Check every header and print the plan (tensors, "
                                              "types, output size, peak memory); read no data, write nothing.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print the plan as JSON.")
def convert(src, out, type_name, force, threads, dry_run, as_json):
    """Convert an HF checkpoint directory SRC into a (quantized) GGUF file OUT.

    R = 1 models become llama.cpp's `llama` / `qwen2` architecture; LoopCoder-V2 (PLT) models
    the `loopcoder` architecture (docs/gguf-loopcoder.md).
    """
    if dry_run:
        from loopcli.convert.export import dry_run as plan_of, render_plan

        plan = plan_of(src, type_name.lower(), threads)
        click.echo(json.dumps(plan, indent=2) if as_json else render_plan(plan))
        return
    if out is None:
        raise click.UsageError("missing argument OUT (the .gguf file to write); or pass --dry-run")
    from loopcli.convert.export import convert as run

    path = run(src, out, type_name.lower(), force=force, show_progress=True, threads=threads)
    click.echo(f"wrote {path} ({path.stat().st_size:,} bytes)", err=True)


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--ctx", type=click.IntRange(1), default=4096, show_default=True,
              help="Context length for the KV-cache estimate.")
@click.option("--gpu-mem", help="GPU memory to check against, e.g. 8GB or 12GiB.")
@click.option("--type", "type_name", default="q4_k_m", show_default=True,
              help="For a checkpoint directory: the --type to plan the conversion for.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect(file, ctx, gpu_mem, type_name, as_json):
    """Show what FILE holds: a GGUF's header, keys, tensor table and (for architectures loopcli
    runs) the memory it needs at a context length; a checkpoint directory's conversion plan."""
    if file.is_dir():
        from loopcli.convert.export import dry_run, render_plan

        plan = dry_run(file, type_name.lower())
        click.echo(json.dumps(plan, indent=2) if as_json else render_plan(plan))
        return
    from loopcli.convert.inspect import inspect_gguf, render

    info = inspect_gguf(file, ctx, gpu_mem)
    click.echo(json.dumps(info, indent=2) if as_json else render(info))


MODEL_HELP = ("local / llama.cpp: a GGUF file or HF directory; openai: the served model name; "
              "scripted: a JSONL file of model turns (a replay for tests, not a model).")


def _backend_options(command):
    """--backend, --model, --base-url and --max-steps, shared by fix and eval."""
    for option in reversed([
        click.option("--backend", type=click.Choice(BACKEND_KINDS), default="local",
                     show_default=True, help="Where the model runs."),
        click.option("--model", help=MODEL_HELP),
        click.option("--base-url", help="URL of an OpenAI-compatible server (vLLM, llama-server, "
                                        "...) for the openai backend."),
        click.option("--max-steps", type=click.IntRange(1), default=50, show_default=True,
                     help="Model calls per run."),
        click.option("--ctx", type=click.IntRange(1), help="Context length in tokens (default: "
                     "local and llama.cpp: the model's training context, llama.cpp capped to fit "
                     "memory; openai: what the server reports)."),
    ]):
        command = option(command)
    return command


def _sandbox_options(command):
    """--sandbox and --network, shared by fix and eval."""
    command = click.option(
        "--network/--no-network", default=None,
        help="Let the model's commands reach the network (default: no; config "
             "sandbox.network).")(command)
    return click.option(
        "--sandbox", "sandbox_policy", type=click.Choice(SANDBOX_POLICIES),
        help="What the model's commands may touch: read-only, workspace-write (the project "
             "only, .git read-only; the default) or danger-full-access (no sandbox; config "
             "sandbox.policy).")(command)


def _sandbox(repo: Path | None, policy: str | None, network: bool | None, console):
    """The sandbox settings from flags and config files; refuses (exit 2) where the sandbox
    cannot be made; says loudly when there is none."""
    from loopcli.config import sandbox_settings
    from loopcli.tools.environment import sandbox_problem

    settings = sandbox_settings(repo, policy, network)
    for warning in settings.warnings:
        console.print(f"warning: {warning}", markup=False)
    if settings.policy == "danger-full-access":
        console.print("[bold red]WARNING: --sandbox danger-full-access: the model's commands run "
                      "unconfined, with all your permissions, files, credentials and network.[/]")
        return settings
    problem = sandbox_problem()
    if problem:
        raise FixError(f"cannot confine the model's commands: {problem}. Fix that, or opt out "
                       "with --sandbox danger-full-access (commands then run with all your "
                       "permissions, files, credentials and network)")
    return settings


@cli.command()
@click.argument("issue")
@click.option("--repo", type=click.Path(path_type=Path), default=".", show_default=True,
              help="The repository to fix.")
@_backend_options
@click.option("--test-cmd", help="Command whose success means resolved (default: detected for "
                                 "pytest, npm, go and cargo projects).")
@click.option("--max-tokens", type=click.IntRange(1), help="Prompt + completion tokens per run.")
@click.option("--max-time", type=click.FloatRange(min=1), help="Wall time per run, in seconds.")
@click.option("--json", "as_json", is_flag=True, help="JSONL events on stdout (README).")
@click.option("--commit", is_flag=True, help="Commit the change onto a new branch; the work "
                                             "tree, index and current branch stay as they were.")
@click.option("--branch", help="Branch name for --commit (implies it); default loopcli/fix-<time>.")
@click.option("--trajectory", type=click.Path(dir_okay=False, path_type=Path),
              help="Trajectory JSONL file (default under ~/.cache/loopcli/trajectories/).")
@_sandbox_options
def fix(issue, repo, backend, model, base_url, max_steps, ctx, test_cmd, max_tokens, max_time,
        as_json, commit, branch, trajectory, sandbox_policy, network):
    """Resolve ISSUE (text, @file, or - for stdin) in a repository, headless.

    Progress goes to stderr, the diff to stdout. Exit codes: 0 resolved, 1 not resolved,
    2 bad usage or input, 3 model or backend failure, 4 limit reached, 5 another run holds the
    repository, 130 Ctrl-C, 143 SIGTERM.
    """
    from rich.console import Console

    from loopcli.agent import Limits, json_line
    from loopcli.backends.base import BackendError
    from loopcli.fix import FixConfig, default_branch, progress_line, read_issue, run_fix
    from loopcli.fix import MeteredBackend, check_repo, detect_test_command, make_backend
    from loopcli.fix import EXIT_BUSY, EXIT_TERMINATED, Terminated
    from loopcli.tools.repolock import RepoBusy

    # Test runs must not leave __pycache__ files in the user's tree (and in the agent's diff).
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    text = read_issue(issue)
    root = check_repo(repo)
    test_cmd = test_cmd or detect_test_command(root)
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    sandbox = _sandbox(root, sandbox_policy, network, console)
    try:
        model_backend = make_backend(backend, model, base_url, ctx)
    except BackendError as exc:
        console.print(f"error: {backend} backend failed: {exc}", markup=False)
        sys.exit(3)
    if console.is_terminal:  # a live token count while the model streams
        model_backend = MeteredBackend(model_backend, console)

    def emit(event: dict) -> None:
        line = progress_line(event)
        if line:
            console.print(line)
        if as_json:
            click.echo(json_line(event))  # one UTF-8 line, whatever names the event holds

    config = FixConfig(text, root, model_backend, model=model, test_cmd=test_cmd,
                       limits=Limits(max_steps, max_tokens, max_time),
                       branch=branch or (default_branch() if commit else None),
                       trajectory=trajectory, sandbox=sandbox.policy, network=sandbox.network)
    try:
        result = run_fix(config, emit)
    except RepoBusy as exc:
        console.print(f"error: {exc}", markup=False)
        sys.exit(EXIT_BUSY)
    except Terminated:
        console.print(f"terminated by SIGTERM; exit code {EXIT_TERMINATED}", markup=False)
        raise
    if not as_json:
        click.echo(result.diff, nl=False)
    steps = result.run.steps
    where = (f"{steps} step{'' if steps == 1 else 's'}, {result.run.seconds:.1f} s; "
             f"trajectory: {result.trajectory}")
    if result.exit_code == 0:
        console.print(f"resolved ({where})", markup=False)
    else:
        console.print(f"not resolved: {result.status}: {result.message} ({where}); exit code "
                      f"{result.exit_code}", markup=False)
        sys.exit(result.exit_code)


@cli.command("eval")
@click.argument("tasks", type=click.Path(path_type=Path))
@_backend_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Keep trajectories and results.json here.")
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True,
              help="Tasks run at the same time (openai or scripted backend).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_sandbox_options
def eval_(tasks, backend, model, base_url, max_steps, ctx, out, jobs, as_json, sandbox_policy,
          network):
    """Run SWE-bench-shaped TASKS (a folder of tasks, or one task) and score them.

    Each task runs in a throwaway copy of its repository (no Docker). With --backend scripted,
    --model is a script used for every task, or a file name looked up in each task's folder
    (default solution.jsonl).
    """
    from rich.console import Console

    from loopcli.agent import Limits
    from loopcli.backends.base import BackendError
    from loopcli.evaluate import evaluate, load_tasks, render_report

    if jobs > 1 and backend in ("local", "llama.cpp"):
        raise FixError("--jobs above 1 needs the openai or scripted backend: an in-process "
                       "model runs one task at a time")
    found = load_tasks(tasks)
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    sandbox = _sandbox(None, sandbox_policy, network, console)
    try:
        backends = _eval_backends(backend, model, base_url, ctx)
    except BackendError as exc:
        console.print(f"error: {backend} backend failed: {exc}", markup=False)
        sys.exit(3)

    def progress(result) -> None:
        console.print(f"{result.name}: {result.outcome} ({result.steps} steps, "
                      f"{result.seconds:.1f} s)", markup=False)

    report = evaluate(found, backends, Limits(max_steps), out_dir=out, on_result=progress,
                      jobs=jobs, sandbox=sandbox.policy, network=sandbox.network)
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else render_report(report))
    if report.exit_code:
        sys.exit(report.exit_code)


def _eval_backends(kind, model, base_url, ctx):
    """evaluate.task_backends, with the context length `ctx` when one is given."""
    from loopcli.evaluate import task_backends
    from loopcli.fix import make_backend

    if ctx is None:
        return task_backends(kind, model, base_url)
    if kind != "scripted":
        shared = make_backend(kind, model, base_url, ctx)
        return lambda task: shared
    per_task = task_backends(kind, model, base_url)

    def with_ctx(task):
        backend = per_task(task)
        backend.context_window = ctx
        return backend
    return with_ctx


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
