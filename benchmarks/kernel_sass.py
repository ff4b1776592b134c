"""What the Triton kernels compile to on NVIDIA GPUs, without a GPU: registers, spills and
the instructions of each kernel's hot loop, per weight (matmul) or per cached key (decode
attention), for the configurations the engine launches on LoopCoder-V2's shapes.

Triton compiles ahead of time for any CUDA architecture with the ptxas it ships; nothing here
needs a driver. The issue-bound model: an SM issues 4 warp instructions a cycle, so a decode
matmul can stream weights at no more than 4 x 32 x SMs x clock / (instructions per weight)
weights a second; `issue_ceiling` is that rate over the rate the memory system would feed at
the GPU's peak bandwidth (1.0 or more: the loop's instructions do not limit the bandwidth).
It ignores latency, stalls and dual issue: a ceiling, not a prediction; `benchmarks/gpu.py`
measures the real thing on a GPU.

Exits 1 when a kernel does not compile (after the report, which names it), 2 on bad arguments.

Usage: python benchmarks/kernel_sass.py [--arch 90] [--gpu H200] [--rows 1,2,4] [--only NAME] [--out sass.json]
[--dump DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

if os.environ.get("TRITON_INTERPRET") == "1":  # the kernels must be real JIT functions here
    del os.environ["TRITON_INTERPRET"]

# GPU -> (SMs, boost clock GHz, peak memory GB/s, peak dense f16 tensor TFLOPs with f32 sums)
GPUS = {"H200": (132, 1.98, 4800, 989), "H100": (132, 1.98, 3350, 989), "A100": (108, 1.41, 2039, 312),
        "RTX 4090": (128, 2.52, 1008, 165), "RTX 3090": (82, 1.70, 936, 71), "L40S": (142, 2.52, 864, 362)}
# LoopCoder-V2's decode matmuls: (name, N, K)
SHAPES = [("qkv", 5120 + 2 * 1024, 5120), ("wo", 5120, 5120), ("gate_up", 2 * 27648, 5120),
          ("down", 5120, 27648), ("head", 76800, 5120)]
# shared memory one block may take, by compute capability (CUDA's per-block opt-in maximum)
SHARED = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
TYPE_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 8: "Q8_0", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 30: "BF16"}
TYPE_NAMES.update({t | 0x100: TYPE_NAMES[t] + "-planar" for t in (2, 8, 14)})


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def nvidia_tool(name: str) -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.exists(path):
        fail(f"{path} is missing: this Triton wheel has no CUDA backend tools (pip install triton)")
    return path


def compile_kernel(fn, signature: dict, values: dict, constexprs: dict, arch: int, options: dict):
    """`fn` (a triton.jit function) compiled for sm_<arch>; signature: {arg: '*fp16' | 'i32' | ...};
    `values`: the int arguments of the launch. As a launch does, pointers (torch allocations)
    and ints that are multiples of 16 are marked so: the alignment that vector loads need."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = dict(signature)
    sig.update({k: "constexpr" for k in constexprs})
    aligned = [k for k, t in signature.items() if t.startswith("*") or values.get(k, 1) % 16 == 0]
    attrs = {(fn.arg_names.index(k),): [["tt.divisibility", 16]] for k in aligned}
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)(.*?);")
LABEL = re.compile(r"^\.(L_x_\d+):")


def sass_stats(cubin: bytes) -> dict:
    """Registers, stack, spill instructions, and the hot loop: the innermost backward branch
    whose body holds the most global loads."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        usage = subprocess.run([nvidia_tool("cuobjdump"), "-res-usage", path], capture_output=True, text=True).stdout
        sass = subprocess.run([nvidia_tool("nvdisasm"), "-c", path], capture_output=True, text=True).stdout
    regs = re.search(r"REG:(\d+)", usage)
    stack = re.search(r"STACK:(\d+)", usage)
    instrs, labels = [], {}
    pending = []
    for line in sass.splitlines():
        m = LABEL.match(line.strip())
        if m:
            pending.append(m.group(1))
            continue
        m = LINE.match(line)
        if m:
            for lab in pending:
                labels[lab] = len(instrs)
            pending = []
            instrs.append((m.group(3), m.group(4)))
    loops = []
    for i, (op, rest) in enumerate(instrs):
        t = re.search(r"`\(\.(L_x_\d+)\)", rest)
        if op.startswith("BRA") and t and labels.get(t.group(1), i + 1) <= i:
            loops.append((labels[t.group(1)], i + 1))
    body = max(loops, key=lambda lo: sum(op.startswith("LDG") for op, _ in instrs[lo[0]:lo[1]]), default=None)
    ops = [op for op, _ in instrs[body[0]:body[1]]] if body else []
    kinds: dict[str, int] = {}
    for op in ops:
        k = op.split(".")[0]
        kinds[k] = kinds.get(k, 0) + 1
    return {"regs": int(regs.group(1)) if regs else None, "stack_bytes": int(stack.group(1)) if stack else None,
            "spill_instrs": sum(op.split(".")[0] in ("STL", "LDL") for op, _ in instrs),
            "instrs": len(instrs), "loop_instrs": len(ops),
            "loop_kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1])), "_sass": sass}


def launches(types, rows_list, shapes, sms: int, arch: int):
    """Every kernel the Triton engine launches on LoopCoder-V2's shapes (f16 activations and
    KV cache, R = 2): dicts of name, fn, argument types, int values, constexprs, launch options and,
    for the matmuls, the weights one loop pass reads."""
    from loopcli.kernels import flash_attention as fa
    from loopcli.kernels import gswa_decode as gd
    from loopcli.kernels import qmatmul as kq
    from loopcli.kernels.qmatmul_int8 import QUANT_BLOCK, _quantize_kernel
    from loopcli.kernels.rms_norm import _rms_kernel
    from loopcli.kernels.rope import _rope_kernel
    from loopcli.kernels.swiglu import _swiglu_kernel

    for t in types:
        for M in [*rows_list, 4096]:  # decode rows, then a 2k-token prompt at R = 2 (the GEMM)
            for shape, N, K in shapes:
                cfg = kq.launch_config(M, N, K, t, sms, arch=arch)
                # the down projection adds the residual as it stores (decode)
                fn, sig, values, consts, options = kq.kernel_signature(t, M, N, K, cfg, "fp16", residual=shape == "down")
                yield dict(name=f"qmatmul {TYPE_NAMES[t]} M={M} {shape}", kernel="qmatmul", type=TYPE_NAMES[t],
                           M=M, N=N, K=K, shape=shape, config=cfg, fn=fn, sig=sig, values=values, consts=consts,
                           options=options, weights_per_iter=cfg["weights_per_iter"])
    quant = {"x_ptr": "*fp16", "q_ptr": "*i8", "d_ptr": "*fp32", "s_ptr": "*i32", "K": "i32", "stride_x": "i32",
             "stride_q": "i32"}
    for group in (32, 256):  # the activations' int8 quantizer (decode), and its dequantized form (prefill)
        for dequant in (False, True):
            sig = {**quant, "q_ptr": "*fp16"} if dequant else quant
            yield dict(name=f"quantize group={group} dequant={dequant}", kernel="quantize", fn=_quantize_kernel,
                       sig=sig, values=dict(K=5120, stride_x=5120, stride_q=5120),
                       consts=dict(G=group, BLOCK=QUANT_BLOCK, DEQUANT=dequant),
                       options=dict(num_warps=4, enable_fp_fusion=False))
    hd, nh, nkv, R, ring = 128, 40, 8, 2, 65
    G = nh // nkv
    i32 = lambda *names: {n: "i32" for n in names}
    split = {"q_ptr": "*fp16", "k_ptr": "*fp16", "v_ptr": "*fp16", "len_ptr": "*i32", "pacc_ptr": "*fp32",
             "pml_ptr": "*fp32", **i32("R", "G", "NKV", "SPLITS"), "scale": "fp32",
             **i32("stride_qr", "stride_qh", "stride_kh", "stride_ks", "stride_vh", "stride_vs")}
    cap = 16384
    for r in (1, R):
        values = dict(R=r, G=G, NKV=nkv, SPLITS=16, stride_qr=nh * hd, stride_qh=hd, stride_kh=cap * hd,
                      stride_ks=hd, stride_vh=cap * hd, stride_vs=hd)
        BQ = max(16, 1 << (r * G - 1).bit_length())
        yield dict(name=f"gswa_decode split R={r}", kernel="gswa_split", fn=gd._split_kernel, sig=split,
                   values=values, consts=dict(HD=hd, BLOCK_Q=BQ, BLOCK_S=64), options=dict(num_warps=4))
        merge = {"q_ptr": "*fp16", "rk_ptr": "*fp16", "rv_ptr": "*fp16", "gate_ptr": "*fp16", "len_ptr": "*i32",
                 "pacc_ptr": "*fp32", "pml_ptr": "*fp32", "y_ptr": "*fp16", **i32("G", "SPLITS", "RING"),
                 "scale": "fp32", **i32("stride_qr", "stride_qh", "stride_yr", "stride_yh", "stride_rr", "stride_rh",
                                        "stride_rs", "stride_vr", "stride_vh", "stride_vs", "stride_gr")}
        values = dict(G=G, SPLITS=16, RING=ring, stride_qr=nh * hd, stride_qh=hd, stride_yr=nh * hd, stride_yh=hd,
                      stride_rr=nkv * ring * hd, stride_rh=ring * hd, stride_rs=hd, stride_vr=nkv * ring * hd,
                      stride_vh=ring * hd, stride_vs=hd, stride_gr=nh)
        yield dict(name=f"gswa_decode merge R={r}", kernel="gswa_merge", fn=gd._merge_kernel, sig=merge,
                   values=values, consts=dict(HD=hd, BLOCK_Q=BQ, BLOCK_G=max(16, 1 << (G - 1).bit_length()),
                                              BLOCK_RING=128), options=dict(num_warps=4))
    kv = {"k_ptr": "*fp16", "v_ptr": "*fp16", "k0_ptr": "*fp16", "v0_ptr": "*fp16", "rk_ptr": "*fp16", "rv_ptr": "*fp16",
          "t_ptr": "*i64", **i32("RING", "stride_kh", "stride_kr", "stride_vh", "stride_vr", "stride_0h", "stride_0s",
                                 "stride_1h", "stride_1s", "stride_rr", "stride_rh", "stride_rs", "stride_wr",
                                 "stride_wh", "stride_ws")}
    yield dict(name="gswa_decode kv write", kernel="kv_write", fn=gd._kv_kernel, sig=kv, options=dict(num_warps=1),
               values=dict(RING=ring, stride_kh=hd, stride_kr=(nh + 2 * nkv) * hd, stride_vh=hd,
                           stride_vr=(nh + 2 * nkv) * hd, stride_0h=cap * hd, stride_0s=hd, stride_1h=cap * hd,
                           stride_1s=hd, stride_rr=nkv * ring * hd, stride_rh=ring * hd, stride_rs=hd,
                           stride_wr=nkv * ring * hd, stride_wh=ring * hd, stride_ws=hd), consts=dict(HD=hd))
    gate = {"x_ptr": "*fp16", "nw_ptr": "*fp16", "w_ptr": "*fp16", "b_ptr": "*fp16", "g_ptr": "*fp16",
            **i32("H", "NH", "stride_x", "stride_w", "stride_g"), "eps": "fp32"}
    yield dict(name="gswa_decode gate", kernel="gate", fn=gd._gate_kernel, sig=gate, options=dict(num_warps=4),
               values=dict(H=5120, NH=nh, stride_x=5120, stride_w=5120, stride_g=nh), consts=dict(BLOCK_H=4, CHUNK=512))
    for t in types:  # the embedding lookup
        U, V = kq.PARTS.get(t, (4, 32))
        yield dict(name=f"embedding rows {TYPE_NAMES[t]}", kernel="rows", fn=kq._rows_kernel,
                   sig={"ids_ptr": "*i64", "w_ptr": "*u8", "y_ptr": "*fp16", **i32("N", "K", "row_bytes", "stride_y")},
                   values=dict(N=76800, K=5120, row_bytes=kq.bytes_per_row(t, 5120), stride_y=5120),
                   options=dict(num_warps=4),
                   consts=dict(TYPE=t, U=U, V=V))
    flash = {"q_ptr": "*fp16", "qpos_ptr": "*i32", "o_ptr": "*fp16", "k_ptr": "*fp16", "v_ptr": "*fp16",
             "kpos_ptr": "*i32", "S": "i32", "k2_ptr": "*fp16", "v2_ptr": "*fp16", "k2pos_ptr": "*i32", "S2": "i32",
             **i32("T", "G", "window"), "scale": "fp32",
             **i32("stride_qh", "stride_qt", "stride_oh", "stride_ot", "stride_kh", "stride_ks", "stride_vh",
                   "stride_vs", "stride_k2h", "stride_k2s", "stride_v2h", "stride_v2s")}
    T = 512
    values = dict(S=2048, S2=T, T=T, G=G, window=64, stride_qh=T * hd, stride_qt=hd, stride_oh=T * hd, stride_ot=hd,
                  stride_kh=cap * hd, stride_ks=hd, stride_vh=cap * hd, stride_vs=hd, stride_k2h=T * hd,
                  stride_k2s=hd, stride_v2h=T * hd, stride_v2s=hd)
    for two, window in ((False, False), (True, True)):  # the global branch; the local one (ring + chunk)
        yield dict(name=f"flash_attention {'local' if two else 'global'}", kernel="flash", fn=fa._flash_kernel,
                   sig=flash, values=values, options=dict(num_warps=4),
                   consts=dict(HD=hd, BLOCK_T=64, BLOCK_S=64, INDEX_POS=not two, INDEX_POS2=True, TWO=two,
                               HAS_WINDOW=window))
    H = 5120
    rms = {"x_ptr": "*fp16", "r_ptr": "*fp16", "w_ptr": "*fp16", "y_ptr": "*fp16", "h_ptr": "*fp16", "q_ptr": "*i8",
           "d_ptr": "*fp32", "s_ptr": "*i32", **i32("H", "stride_x", "stride_r", "stride_y", "stride_h"), "eps": "fp32"}
    for residual, group in ((False, 0), (True, 0), (False, 256), (True, 32)):  # group: y's int8 form too
        yield dict(name=f"rms_norm residual={residual} int8={group}", kernel="rms_norm", fn=_rms_kernel, sig=rms,
                   values=dict(H=H, stride_x=H, stride_r=H, stride_y=H, stride_h=H),
                   options=dict(num_warps=8, enable_fp_fusion=not group),
                   consts=dict(BLOCK=8192, RESIDUAL=residual, GROUP=group))
    rope = {"x_ptr": "*fp16", "c_ptr": "*fp16", "s_ptr": "*fp16", "y_ptr": "*fp16",
            **i32("NH", "stride_xs", "stride_xh", "stride_ys", "stride_yh", "stride_c")}
    for inter in (False, True):
        yield dict(name=f"rope interleaved={inter}", kernel="rope", fn=_rope_kernel, sig=rope, options=dict(num_warps=4),
                   values=dict(NH=nh + nkv, stride_xs=(nh + 2 * nkv) * hd, stride_xh=hd, stride_ys=(nh + nkv) * hd,
                               stride_yh=hd, stride_c=hd // 2),
                   consts=dict(HALF=hd // 2, BLOCK_H=16, INTERLEAVED=inter))
    FF = 27648
    for group in (0, 256):
        yield dict(name=f"swiglu int8={group}", kernel="swiglu", fn=_swiglu_kernel,
                   options=dict(num_warps=4, enable_fp_fusion=not group),
                   sig={"gu_ptr": "*fp16", "y_ptr": "*fp16", "q_ptr": "*i8", "d_ptr": "*fp32", "s_ptr": "*i32",
                        **i32("FF", "stride_gu", "stride_y")},
                   values=dict(FF=FF, stride_gu=2 * FF, stride_y=FF), consts=dict(BLOCK=1024, GROUP=group))


def measure(launch: dict, arch: int, gpu: tuple) -> dict:
    """Compile one launch for sm_<arch>: its resource use and hot loop, and for the decode
    matmuls the issue-bound ceiling."""
    from loopcli.kernels import qmatmul as kq

    compiled = compile_kernel(launch["fn"], launch["sig"], launch["values"], launch["consts"], arch,
                              launch["options"])
    st = sass_stats(compiled.asm["cubin"])
    out = {k: v for k, v in launch.items() if k not in ("fn", "sig", "values", "consts", "weights_per_iter")}
    out.update({k: v for k, v in st.items() if not k.startswith("_")})
    out["shared_bytes"] = compiled.metadata.shared  # a launch asking more than the SM has fails
    if launch.get("weights_per_iter") and st["loop_instrs"]:
        sms, ghz, bw, tflops = gpu
        per_thread = launch["weights_per_iter"] / (launch["options"]["num_warps"] * 32)
        ipw = st["loop_instrs"] / per_thread
        issue_rate = 4 * 32 * sms * ghz * 1e9 / ipw  # weight values a second the SMs can issue for
        out["instrs_per_weight"] = round(ipw, 2)
        if launch["config"]["kernel"] in ("qmv", "qmv8"):  # against the bandwidth that feeds that many weights
            n, size = next((v for k, v in kq.BLOCKS.items() if TYPE_NAMES[k] == launch["type"]))
            out["issue_ceiling"] = round(issue_rate * size / n / (bw * 1e9), 2)
        else:  # the GEMM: each weight value dequantized once per BLOCK_M rows, 2 flops a row
            out["issue_ceiling"] = round(issue_rate * 2 * launch["config"]["BLOCK_M"] / (tflops * 1e12), 2)
    out["_sass"] = st["_sass"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, choices=(80, 86, 89, 90),
                    help="CUDA compute capability x 10 (Ampere, Ampere consumer, Ada, Hopper)")
    ap.add_argument("--gpu", choices=sorted(GPUS),
                    help="the GPU figures for the model (default: H200 for sm_90, RTX 4090 for 89, RTX 3090 for 86, "
                         "A100 for 80)")
    ap.add_argument("--types", default="q4_k,q6_k-planar,q8_0-planar,q4_0-planar,q5_k,f16,bf16",
                    help="the engine keeps Q8_0, Q4_0 and Q6_K planar; their GGUF layouts are known too")
    ap.add_argument("--rows", default="1,2,4", help="decode activation rows M (batch x R, 1 to 4)")
    ap.add_argument("--shapes", default="wo,down")
    ap.add_argument("--only", help="only the kernels whose name starts so (e.g. 'qmatmul Q4_K M=1', 'gswa')")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--dump", help="write each kernel's SASS into this folder")
    args = ap.parse_args(argv)
    try:
        import triton  # noqa: F401
    except ImportError:
        fail("triton is not installed (pip install triton, or the test extra)")
    names = {v.lower(): k for k, v in TYPE_NAMES.items()}
    bad = [t for t in args.types.split(",") if t not in names]
    if bad:
        fail(f"unknown type {bad[0]!r} (known: {', '.join(sorted(names))})")
    try:
        rows = [int(r) for r in args.rows.split(",")]
    except ValueError:
        fail(f"--rows takes integers, not {args.rows!r}")
    from loopcli.kernels.qmatmul import DECODE_ROWS

    if any(not 1 <= r <= DECODE_ROWS for r in rows):
        fail(f"--rows: decode launches have 1 to {DECODE_ROWS} rows (more take the GEMM, compiled at 4096)")
    keep = args.shapes.split(",")
    shapes = [s for s in SHAPES if s[0] in keep]
    unknown = [k for k in keep if k not in {s[0] for s in SHAPES}]
    if unknown:
        fail(f"--shapes: {unknown[0]!r} is not one of {', '.join(s[0] for s in SHAPES)}")
    args.gpu = args.gpu or {89: "RTX 4090", 86: "RTX 3090", 80: "A100"}.get(args.arch, "H200")
    gpu = GPUS[args.gpu]
    out = {"arch": args.arch, "gpu": args.gpu, "sms": gpu[0], "clock_ghz": gpu[1], "peak_gbs": gpu[2],
           "peak_tflops": gpu[3], "kernels": []}
    if args.dump:
        try:
            os.makedirs(args.dump, exist_ok=True)
        except OSError as e:
            fail(f"--dump {args.dump}: cannot make that folder ({e.strerror})")
    chosen = [launch for launch in launches([names[t] for t in args.types.split(",")], rows, shapes, gpu[0], args.arch)
              if not args.only or launch["name"].startswith(args.only)]
    if not chosen:
        fail(f"--only {args.only!r}: no kernel's name starts so (names look like 'qmatmul Q4_K M=1 wo', 'gswa_decode')")
    for launch in chosen:
        try:
            e = measure(launch, args.arch, gpu)
        except Exception as exc:  # a kernel that does not compile is a result, not a crash
            e = {"name": launch["name"], "kernel": launch["kernel"], "error": f"{type(exc).__name__}: {exc}"[:2000]}
            print(f"{launch['name']}: does not compile for sm_{args.arch}: {e['error'][:300]}", file=sys.stderr)
            out["kernels"].append(e)
            continue
        sass = e.pop("_sass")
        if args.dump:
            with open(os.path.join(args.dump, e["name"].replace(" ", "_").replace("=", "") + ".sass"), "w") as f:
                f.write(sass)
        out["kernels"].append(e)
        extra = f" instr/weight={e['instrs_per_weight']} ceiling={e['issue_ceiling']}" if "issue_ceiling" in e else ""
        print(f"{e['name']:34} regs={e['regs']} stack={e['stack_bytes']} spills={e['spill_instrs']} "
              f"shared={e['shared_bytes']} "
              f"loop={e['loop_instrs']}{extra}", file=sys.stderr)
    out["failed"] = [e["name"] for e in out["kernels"] if "error" in e]
    out["spilling"] = [e["name"] for e in out["kernels"] if e.get("spill_instrs")]
    out["shared_limit"] = SHARED[args.arch]
    out["over_shared"] = [e["name"] for e in out["kernels"] if e.get("shared_bytes", 0) > SHARED[args.arch]]
    text = json.dumps(out, indent=1)
    if args.out:  # written whole or not at all
        try:
            with open(args.out + ".tmp", "w") as f:
                f.write(text + "\n")
            os.replace(args.out + ".tmp", args.out)
        except OSError as e:
            fail(f"--out {args.out}: cannot write it ({e.strerror})")
    print(text)
    return 1 if out["failed"] else 0  # a kernel that does not compile fails the run, after the report


if __name__ == "__main__":
    sys.exit(main())
