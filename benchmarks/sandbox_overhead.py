"""What the sandbox costs per command: the same commands through LocalEnvironment and
SandboxEnvironment (bubblewrap), interleaved in one run; prints JSON with medians and ratios.

    .venv/bin/python benchmarks/sandbox_overhead.py [--calls 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from loopcli.tools.environment import LocalEnvironment, SandboxEnvironment, sandbox_problem

COMMANDS = {"true": "true", "python": f"{sys.executable} -c pass",
            "git status": "git status --short"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20, help="calls per command and environment")
    args = parser.parse_args()
    problem = sandbox_problem()
    if problem:
        sys.exit(f"error: no sandbox here: {problem}")
    with tempfile.TemporaryDirectory() as repo:
        os.system(f"cd {repo} && git init -q && echo x > a && git add a")
        environments = {"local": LocalEnvironment(repo), "sandbox": SandboxEnvironment(repo)}
        seconds = {name: {env: [] for env in environments} for name in COMMANDS}
        for _ in range(args.calls):
            for name, command in COMMANDS.items():
                for env, box in environments.items():
                    started = time.perf_counter()
                    result = box.run(command, timeout=60)
                    seconds[name][env].append(time.perf_counter() - started)
                    assert result.exit_code == 0, result.output
    report = {"calls": args.calls, "load": os.getloadavg()[0], "commands": {}}
    for name, by_env in seconds.items():
        local, sandbox = (statistics.median(by_env[e]) for e in ("local", "sandbox"))
        report["commands"][name] = {"local_ms": round(local * 1000, 1),
                                    "sandbox_ms": round(sandbox * 1000, 1),
                                    "added_ms": round((sandbox - local) * 1000, 1),
                                    "ratio": round(sandbox / local, 2)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
