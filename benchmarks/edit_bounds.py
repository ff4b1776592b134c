"""How the edit tool's cost grows with many matches and big files, in one run. Prints JSON.

* `replace(all=True)` of one word on N lines (N matches, a CRLF text file), for N = 2,500,
  10,000 and 40,000: seconds per size (the median of `--repeat` runs) and the ratio of the
  largest to the smallest size's time against the ratio of their sizes (16: linear growth
  gives a time ratio near 16, quadratic near 256).
* The fuzzy tier on a large Python file where `old` is not there exactly: seconds until it
  answers (a fuzzy match or the "would take too long" refusal), against the time to read and
  parse the file once (the unavoidable part).

Usage: python benchmarks/edit_bounds.py [--repeat N] [--fuzzy-lines N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import string
import tempfile
import time
from pathlib import Path

from loopcli.tools import edit
from loopcli.tools.errors import ToolError
from loopcli.tools.workspace import Workspace

SIZES = (2_500, 10_000, 40_000)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def many_matches(root: Path, n: int) -> float:
    text = "".join(f"total = old_name + {i}\r\n" for i in range(n))
    (root / "big.txt").write_text(text, newline="")
    return timed(lambda: edit.replace(Workspace(root), "big.txt", "old_name", "new_name", all=True))


def fuzzy(root: Path, lines: int) -> tuple[float, float, str]:
    rng = random.Random(0)
    words = ["".join(rng.choices(string.ascii_lowercase, k=12)) for _ in range(lines)]
    text = "".join(f"def {words[i]}(event):\n    return {words[i - 1]}(event, {i})\n\n"
                   for i in range(1, lines))
    (root / "h.py").write_text(text)
    middle = lines // 2
    old = f"def {words[middle]}(event):\n    return {words[middle - 1][:-1]}(event, {middle})"
    outcome = []

    def run():
        try:
            outcome.append(edit.replace(Workspace(root), "h.py", old, "pass").split("\n")[0])
        except ToolError as exc:
            outcome.append(str(exc).split(";")[0][:120])
    seconds = timed(run)
    read = timed(lambda: edit._check_syntax(root / "h.py", "h.py", None, text))
    return seconds, read, outcome[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fuzzy-lines", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        seconds = {n: statistics.median(many_matches(root, n) for _ in range(args.repeat))
                   for n in SIZES}
        fuzzy_s, parse_s, outcome = fuzzy(root, args.fuzzy_lines)
    print(json.dumps({
        "replace_all_seconds": {str(n): round(s, 4) for n, s in seconds.items()},
        "replace_all_time_ratio": round(seconds[SIZES[-1]] / seconds[SIZES[0]], 2),
        "replace_all_size_ratio": SIZES[-1] / SIZES[0],
        "fuzzy_file_lines": args.fuzzy_lines,
        "fuzzy_seconds": round(fuzzy_s, 3),
        "fuzzy_outcome": outcome,
        "syntax_check_seconds": round(parse_s, 3),
        "fuzzy_over_syntax_check": round(fuzzy_s / parse_s, 2),
        "load_average": os.getloadavg()[0],
        "repeat": args.repeat,
    }, indent=2))


if __name__ == "__main__":
    main()
