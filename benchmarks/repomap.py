"""Our repo map against aider's on the same large tree, in the same run. Prints JSON.

The tree is a copy of the CPython standard library (site-packages left out), so one
file can be changed. Each measurement runs in a fresh process: cold (empty cache),
warm (nothing changed) and changed (one file edited). The time is the build of the
map as each tool does it per request (tags, ranking, fitting 1024 tokens), imports
excluded; ours also reports build() alone, the part a cache makes cheap. Cold runs
alternate between the tools `--repeat` times and the fastest counts, so that load
from other processes on the machine weighs on both alike.

aider-chat is installed once into its own venv (default ~/.cache/loopcli-bench/aider-venv);
if it cannot be installed or run, its entries say why instead of giving a number.

Usage: python benchmarks/repomap.py [--stdlib DIR] [--aider-venv DIR] [--no-aider] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

BUDGET = 1024
CHANGED_FILE = "json/decoder.py"
RUN_TIMEOUT_S = 1800


def run_ours(root: str, cache: str, files: list[str]) -> dict:
    from loopcli.tools.repomap import RepoMap
    from loopcli.tools.workspace import Workspace

    start = time.perf_counter()
    repomap = RepoMap(Workspace(root), cache_dir=cache, files=files)
    repomap.build()
    built = time.perf_counter()
    parsed = repomap.files_parsed  # render() builds again, finding nothing new
    text = repomap.render(token_budget=BUDGET)
    end = time.perf_counter()
    return {"seconds": end - start, "build_seconds": built - start,
            "files_parsed": parsed, "map_chars": len(text)}


def run_aider(root: str, files: list[str]) -> dict:
    from aider.repomap import RepoMap

    class Model:
        def token_count(self, text):
            return len(text) // 4

    class IO:
        def read_text(self, path):
            try:
                return Path(path).read_text(encoding="utf-8", errors="replace")
            except OSError:
                return None

        def tool_output(self, *args, **kwargs):
            pass

        tool_warning = tool_error = tool_output

    start = time.perf_counter()
    repomap = RepoMap(map_tokens=BUDGET, root=root, main_model=Model(), io=IO(), refresh="always")
    text = repomap.get_repo_map([], [os.path.join(root, f) for f in files]) or ""
    end = time.perf_counter()
    return {"seconds": end - start, "map_chars": len(text)}


def driver(args: list[str]) -> None:
    """One measurement, in this (fresh) process: prints its JSON on the last line."""
    tool, root, cache, listing = args
    files = json.loads(Path(listing).read_text())
    result = run_ours(root, cache, files) if tool == "ours" else run_aider(root, files)
    print(json.dumps(result))


def measure(python: str, tool: str, root: Path, cache: Path, listing: Path) -> dict:
    proc = subprocess.run(
        [python, __file__, "--driver", tool, str(root), str(cache), str(listing)],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=root,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout).strip()[-800:]}
    return json.loads(lines[-1])


def copy_tree(stdlib: Path, dest: Path) -> list[str]:
    """Copy the source files we map (site-packages left out); their relative paths."""
    from loopcli.tools.languages import language_for

    files = []
    for folder, dirs, names in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in ("site-packages", "__pycache__"))
        for name in sorted(names):
            src = Path(folder) / name
            rel = src.relative_to(stdlib).as_posix()
            if language_for(rel) is None or src.is_symlink():
                continue
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
            files.append(rel)
    return files


def aider_python(venv: Path) -> tuple[str | None, str | None]:
    """The venv's python with aider importable, installing it if needed; or why not."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import aider.repomap"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return str(python), None
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "aider-chat"],
                       check=True, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    except (subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        return None, f"cannot install aider-chat: {detail.strip()[-800:]}"
    if subprocess.run(check, capture_output=True).returncode != 0:
        return None, "aider-chat installed but aider.repomap does not import"
    return str(python), None


def change_one_file(root: Path) -> None:
    path = root / CHANGED_FILE
    path.write_text(path.read_text() + "\n\ndef benchmark_added_function():\n    pass\n")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def fastest(runs: list[dict]) -> dict:
    timed = [run for run in runs if "seconds" in run]
    best = min(timed, key=lambda run: run["seconds"]) if timed else runs[-1]
    return {**best, "all_seconds": [round(run["seconds"], 3) for run in timed]}


def ratio(ours: dict, theirs: dict) -> float | None:
    if "seconds" in ours and "seconds" in theirs and theirs["seconds"] > 0:
        return round(ours["seconds"] / theirs["seconds"], 3)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stdlib", default=sysconfig.get_paths()["stdlib"])
    parser.add_argument("--aider-venv", default=Path.home() / ".cache/loopcli-bench/aider-venv", type=Path)
    parser.add_argument("--no-aider", action="store_true")
    parser.add_argument("--repeat", type=int, default=2, help="cold runs per tool")
    args = parser.parse_args()

    aider, why_not = (None, "skipped (--no-aider)") if args.no_aider else aider_python(args.aider_venv)
    with tempfile.TemporaryDirectory(prefix="repomap-bench-") as tmp:
        root, ours_cache = Path(tmp) / "tree", Path(tmp) / "ours-cache"
        files = copy_tree(Path(args.stdlib), root)
        listing = Path(tmp) / "files.json"
        listing.write_text(json.dumps(files))
        results: dict[str, dict] = {"ours": {}, "aider": {}}
        cold: dict[str, list] = {"ours": [], "aider": []}
        for _ in range(args.repeat):
            shutil.rmtree(ours_cache, ignore_errors=True)
            cold["ours"].append(measure(sys.executable, "ours", root, ours_cache, listing))
            if aider:
                for old in root.glob(".aider.tags.cache*"):
                    shutil.rmtree(old)
                cold["aider"].append(measure(aider, "aider", root, Path(tmp), listing))
        results["ours"]["cold"] = fastest(cold["ours"])
        results["aider"]["cold"] = fastest(cold["aider"]) if aider else {"error": why_not}
        for phase in ("warm", "changed"):
            if phase == "changed":
                change_one_file(root)
            results["ours"][phase] = measure(sys.executable, "ours", root, ours_cache, listing)
            results["aider"][phase] = (
                measure(aider, "aider", root, Path(tmp), listing) if aider else {"error": why_not}
            )
    report = {
        "tree": f"{args.stdlib} (copy, site-packages excluded)",
        "files": len(files),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "token_budget": BUDGET,
        "cold_repeats": args.repeat,
        **results,
        "ratio_ours_to_aider": {p: ratio(results["ours"][p], results["aider"][p]) for p in results["ours"]},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--driver"]:
        driver(sys.argv[2:])
    else:
        main()
