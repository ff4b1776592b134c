"""Kernel launches in one decode step of the Triton engine, by kernel and by torch op.

A decode step of a 7B model reads its weights in about 2 ms on a data-centre GPU; each kernel
launch costs a few microseconds even inside a CUDA graph, so the count per layer is a budget
that matters as much as the matmul's speed. Counted on any device: in the Triton interpreter
on the CPU (no GPU needed) or on a GPU. Torch ops that only allocate or make views launch
nothing and are not counted.

Usage: python benchmarks/decode_launches.py [--layers 2] [--type q4_k_m] [--out launches.json]
(on the CPU it sets TRITON_INTERPRET=1 itself).
"""

import argparse
import collections
import json
import os
import sys
import tempfile

import torch

NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "promote_types", "detach", "detach_", "view",
             "_unsafe_view", "transpose", "t", "permute", "unsqueeze", "squeeze", "expand", "slice", "select",
             "as_strided", "alias", "reshape", "flatten", "split", "split_with_sizes", "chunk", "unbind", "lift_fresh",
             "unflatten", "lift_fresh_copy"}


def fail(msg: str) -> int:
    print(f"decode_launches: {msg}", file=sys.stderr)
    return 2


def count_step(eng, token: int) -> dict:
    """Launches of one `eng.step(token)`: Triton kernels by name, torch ops by name."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from triton.runtime import interpreter, jit

    kernels, ops, inside = collections.Counter(), collections.Counter(), [0]

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.__name__.split(".")[0]
            out = func(*args, **(kwargs or {}))
            # a no-op cast returns its input: no kernel
            if not inside[0] and name not in NO_KERNEL and not (name == "to" and out is args[0]):
                ops[name] += 1
            return out

    def counting(run, name_of):
        def wrapped(self, *a, **k):
            kernels[name_of(self)] += 1
            inside[0] += 1
            try:
                return run(self, *a, **k)
            finally:
                inside[0] -= 1
        return wrapped

    saved = (jit.JITFunction.run, interpreter.GridExecutor.__call__)
    jit.JITFunction.run = counting(saved[0], lambda f: f.fn.__name__)
    interpreter.GridExecutor.__call__ = counting(saved[1], lambda g: g.fn.__name__)
    try:
        with Ops():
            eng.step(token)
    finally:
        jit.JITFunction.run, interpreter.GridExecutor.__call__ = saved
    return {"triton": dict(kernels), "torch": dict(ops), "triton_total": sum(kernels.values()),
            "torch_total": sum(ops.values())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--type", default="q4_k_m", choices=("q4_k_m", "q8_0", "f16"))
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.layers < 1:
        return fail("--layers takes a positive count")
    if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        return fail(f"--out {args.out}: its folder does not exist; make it or pick another path")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before Triton or any kernel module is imported
    try:
        import triton  # noqa: F401
    except ImportError:
        return fail("triton is not installed (pip install triton, or the test extra)")
    from loopcli.convert.export import convert
    from loopcli.runtime.engine import load
    from loopcli.runtime.synthetic import write_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_synthetic(os.path.join(tmp, "m"), arch="loopcoder", dtype="f32", plt_num_loops=2,
                               plt_window_size=[3, 0], hidden_size=256, intermediate_size=512, num_attention_heads=4,
                               num_key_value_heads=2, num_hidden_layers=args.layers)
        eng = load(convert(ckpt, os.path.join(tmp, "m.gguf"), args.type, show_progress=False), device=device,
                   kernels="triton")
        eng.graphs = False  # count the step the graph records
        eng.prefill([1, 2, 3, 4, 5, 6])
        eng.step(7)  # compiled and warm
        out = {"device": device, "type": args.type, "layers": args.layers, **count_step(eng, 8)}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:  # written whole or not at all
        try:
            with open(args.out + ".tmp", "w") as f:
                f.write(text + "\n")
            os.replace(args.out + ".tmp", args.out)
        except OSError as e:
            if os.path.exists(args.out + ".tmp"):
                os.remove(args.out + ".tmp")
            return fail(f"--out {args.out}: cannot write it ({e.strerror})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
