"""Throughput of `loopcli serve` with --parallel N against --parallel 1, in one run.

A synthetic LoopCoder GGUF is served on loopback (uvicorn in this process, the engine in its
worker thread); the same set of concurrent streaming completions (random token prompts of mixed
lengths, greedy, fixed max_tokens, EOS ignored by giving no stop) is sent to a server with
--parallel 1 and one with --parallel N. Prints JSON: completion tokens per second for each,
their ratio (the figure), whether every request's text was the same under both, and this
process's resident memory after each round (flat when memory is bounded).
Usage: python benchmarks/serve_load.py [--preset small] [--type q8_0] [--parallel 4] [--requests 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import torch

from loopcli.convert.export import convert
from loopcli.runtime.synthetic import write_synthetic
from loopcli.serve import bound_socket, load_server, uvicorn_server


def serve(model, parallel, threads):
    server = load_server(model, ctx=2048, parallel=parallel, queue=1024, name="m", threads=threads)
    sock = bound_socket("127.0.0.1", 0)
    uv = uvicorn_server(server, "127.0.0.1", sock.getsockname()[1])
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not uv.started:
        if not thread.is_alive():
            sys.exit("error: the server did not start")
        time.sleep(0.02)
    return server, uv, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


def one(url, body):
    text, tokens = "", 0
    with httpx.Client(timeout=600) as http, http.stream("POST", url + "/v1/completions", json=body) as reply:
        for line in reply.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                for c in chunk["choices"]:
                    text += c["text"]
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    return text, tokens


def measure(url, bodies):
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(bodies)) as pool:
        out = list(pool.map(lambda b: one(url, b), bodies))
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--type", default="q8_0")
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32, help="completion tokens per request")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_synthetic(Path(tmp) / "m", arch="loopcoder", preset=args.preset)
        model = convert(ckpt, Path(tmp) / "m.gguf", args.type, show_progress=False)
        g = torch.Generator().manual_seed(0)
        bodies = [{"prompt": torch.randint(3, 400, (8 + 24 * (i % 5),), generator=g).tolist(),
                   "max_tokens": args.tokens, "temperature": 0, "stream": True,
                   "stream_options": {"include_usage": True}} for i in range(args.requests)]
        result = {"preset": args.preset, "type": args.type, "requests": args.requests,
                  "tokens_per_request": args.tokens, "threads": args.threads}
        texts, rates, rss = {}, {1: [], args.parallel: []}, {1: [], args.parallel: []}
        for parallel in (1, args.parallel):
            server, uv, thread, url = serve(model, parallel, args.threads)
            try:
                measure(url, bodies[:2])  # warm up
                for _ in range(args.rounds):
                    seconds, out = measure(url, bodies)
                    rates[parallel].append(sum(t for _, t in out) / seconds)
                    texts[parallel] = [t for t, _ in out]
                    rss[parallel].append(round(psutil.Process().memory_info().rss / 2**20))
            finally:
                uv.should_exit = True
                thread.join(30)
                server.scheduler.close()
        one_rate, n_rate = statistics.median(rates[1]), statistics.median(rates[args.parallel])
        result.update({
            "parallel": args.parallel,
            "tokens_per_s_parallel_1": round(one_rate, 2),
            f"tokens_per_s_parallel_{args.parallel}": round(n_rate, 2),
            "rounds_tokens_per_s": {str(k): [round(r, 2) for r in v] for k, v in rates.items()},
            "ratio": round(n_rate / one_rate, 3),
            "rss_mb_after_each_round": {str(k): v for k, v in rss.items()},
            "same_text_both_ways": texts[1] == texts[args.parallel],
        })
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
