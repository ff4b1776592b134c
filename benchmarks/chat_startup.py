"""Start-up time of `loopcli chat` with the scripted backend: launch to the first interactive
screen (the prompt focused and drawn), against a minimal Textual app (one TextArea) measured
in the same run, and launch to tools ready (toolbox, checkpoints, repo map, agent; built in the
background after the first screen).

Each run is a fresh process (interpreter start and imports included) in headless mode, with
its own empty cache and state folders (a cold repo map). Prints JSON with the median of N runs.
Usage: python benchmarks/chat_startup.py [--runs 3] [--repo DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHAT = r"""
import sys, threading, time
from pathlib import Path
from loopcli.chat.app import ChatApp
from loopcli.chat.launch import prepare
from loopcli.config import SandboxSettings

repo, script, until = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
config = prepare(repo, "scripted", script, None, None, 50, None, None,
                 SandboxSettings("danger-full-access"))

class Timed(ChatApp):
    def on_mount(self):
        super().on_mount()
        self.call_after_refresh(self.first_screen)

    def first_screen(self):
        print("screen", time.time(), flush=True)
        if until == "screen":
            self.exit()
        else:
            threading.Thread(target=self.wait_tools, daemon=True).start()

    def wait_tools(self):
        self._tools_ready.wait()
        print("tools", time.time(), flush=True)
        self.call_from_thread(self.exit)

Timed(config).run(headless=True)
"""

MINIMAL = r"""
import time
from textual.app import App
from textual.widgets import TextArea

class Minimal(App):
    def compose(self):
        yield TextArea()

    def on_mount(self):
        self.query_one(TextArea).focus()
        self.call_after_refresh(self.first_screen)

    def first_screen(self):
        print("screen", time.time(), flush=True)
        self.exit()

Minimal().run(headless=True)
"""


def launch(code: str, args: list[str]) -> dict[str, float]:
    """Seconds from the process launch to each mark it prints."""
    with tempfile.TemporaryDirectory(prefix="loopcli-bench-") as tmp:
        env = {**os.environ, "XDG_STATE_HOME": f"{tmp}/state", "XDG_CACHE_HOME": f"{tmp}/cache",
               "XDG_CONFIG_HOME": f"{tmp}/config"}
        started = time.time()
        out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                             text=True, timeout=120)
    if out.returncode:
        sys.exit(f"error: the measured process failed:\n{out.stderr[-2000:]}")
    marks = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("screen", "tools"):
            marks[parts[0]] = float(parts[1]) - started
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="repository the chat opens (default: this one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "script.jsonl"
        script.write_text('{"text": "hello"}\n')
        screen, tools, minimal = [], [], []
        for _ in range(args.runs):
            minimal.append(launch(MINIMAL, [])["screen"])
            screen.append(launch(CHAT, [str(args.repo.resolve()), str(script), "screen"])["screen"])
            tools.append(launch(CHAT, [str(args.repo.resolve()), str(script), "tools"])["tools"])
    median = statistics.median
    print(json.dumps({
        "benchmark": "chat_startup", "runs": args.runs, "repo": str(args.repo),
        "first_screen_s": round(median(screen), 3),
        "minimal_textual_app_s": round(median(minimal), 3),
        "ratio_vs_minimal": round(median(screen) / median(minimal), 2),
        "tools_ready_s": round(median(tools), 3),
        "target_first_screen_s": 1.0,
        "all": {"first_screen_s": [round(x, 3) for x in screen],
                "minimal_textual_app_s": [round(x, 3) for x in minimal],
                "tools_ready_s": [round(x, 3) for x in tools]},
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
