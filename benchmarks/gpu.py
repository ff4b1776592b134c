"""The Triton kernels on one GPU: a 7B-shaped PLT model with random weights (CUDA only).

LoopCoder-V2's shape (14 layers, hidden 5120, FFN 27648, 40/8 heads, vocab 76800, R = 2,
window 64) with random GGUF blocks made on the GPU (valid f16 scales, random quants: the
speed of a kernel does not depend on the values), at q4_k_m (llama.cpp's mix: Q4_K, Q6_K for
the output and for attn_v / ffn_down on the "more bits" layers) and q8_0. For each:

- `triton`: the engine on the Triton kernels (the decode step replayed as a CUDA graph):
  decode tok/s at contexts 1k and 16k (cache filled, not computed: decode time depends only
  on its length), bytes read per step / step time as a fraction of the GPU's peak bandwidth
  (and of a device-to-device copy measured here), prompt tok/s for a 2k prompt and its
  tensor FLOPs as a fraction of peak, fused R = 2 over R = 1 decode time (same weights), and
  the kernel launches one decode step records in its graph;
- `torch`: the engine's torch path on the same GPU (weights dequantized tile by tile, then
  matmul), fewer steps and a 512-token prompt (it is slow);
- `llama_cpp`: llama.cpp on the same weights written as an R = 1 llama GGUF, when
  llama-cpp-python is installed with GPU offload;
- `sweep` (last, within the time left): the decode matmul alone on the largest shapes at
  1 and 2 rows, the engine's choice against the others (dp4a or float kernel, weight rows
  per program, warps, split-K), in GB/s; the activation quantizer's own time; the prefill
  GEMM at 4096 rows under each tile size, in TFLOPs (for the next tuning).

Targets (issue 11): decode >= 70 % of peak bandwidth, R = 2 <= 1.10 x R = 1, prompt >= 50 % of
peak tensor FLOPs. Runs in under 5 minutes (sections past the time budget are skipped and
say so). Prints JSON; `--out FILE` also writes it. Usage: python benchmarks/gpu.py [--types
q4_k_m,q8_0] [--out gpu.json] [--budget 280] [--sections triton,torch,llama_cpp,sweep]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

SHAPE = dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=14, num_attention_heads=40,
             num_key_value_heads=8, vocab_size=76800)
CONTEXTS = (1024, 16384)
PROMPT = 2048
DEVICE = "cuda"
# GPU name fragment -> (peak memory GB/s, peak dense f16 tensor TFLOPs with f32 accumulation); None: unknown
SPECS = [("H200", 4800, 989), ("H100 SXM", 3350, 989), ("H100 80GB HBM3", 3350, 989), ("H100 PCIe", 2000, 756),
         ("H100", 3350, 989), ("A100-SXM4-80GB", 2039, 312), ("A100 80GB PCIe", 1935, 312), ("A100", 1555, 312),
         ("L40S", 864, 362), ("RTX 4090", 1008, 165), ("RTX 3090 Ti", 1008, None), ("RTX 3090", 936, None)]
F16_FIELDS = {8: (0,), 2: (0,), 12: (0, 2), 13: (0, 2), 14: (208,)}  # byte offsets of f16 scales per block
SCALE = {8: 0.02 / 127, 2: 0.005, 12: 1e-4, 13: 1e-4, 14: 1e-4}


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def spec(name: str):
    for frag, bw, tf in SPECS:
        if frag in name:
            return bw, tf
    return None, None


def random_blocks(ggml_type: int, rows: int, cols: int, gen: torch.Generator):
    """uint8 [rows, row_bytes] of valid random blocks, made on the GPU."""
    from loopcli.kernels.qmatmul import BLOCKS

    n, size = BLOCKS[ggml_type]
    dev = gen.device
    if ggml_type == 0:
        return (0.02 * torch.randn(rows, cols, device=dev, generator=gen)).view(torch.uint8)
    data = torch.randint(0, 256, (rows, cols // n, size), dtype=torch.uint8, device=dev, generator=gen)
    d = torch.full((rows, cols // n), SCALE[ggml_type], dtype=torch.float16, device=dev).view(torch.uint8)
    for off in F16_FIELDS[ggml_type]:
        data[..., off:off + 2] = d.view(rows, cols // n, 2)
    return data.view(rows, -1)


def random_model(qtype: str, seed: int = 0):
    """(config, {HF name: Raw}) of the 7B-shaped PLT model, blocks on the GPU."""
    from loopcli.convert.recipe import use_more_bits
    from loopcli.kernels.qmatmul import Q4_K, Q6_K, Q8_0
    from loopcli.runtime.config import config_from_dict
    from loopcli.runtime.engine import Raw
    from loopcli.runtime.synthetic import synthetic_config

    cfg = config_from_dict(synthetic_config("loopcoder", "tiny", max_position_embeddings=32768, **SHAPE))
    gen = torch.Generator(DEVICE).manual_seed(seed)
    H, FF, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    kv = cfg.num_kv_heads * cfg.head_dim
    base = Q8_0 if qtype == "q8_0" else Q4_K
    raw = {}

    def add(name, rows, cols, t):
        raw[name] = Raw(t, random_blocks(t, rows, cols, gen), cols)

    def ones(name, n):
        raw[name] = Raw(0, torch.ones(n, device=DEVICE).view(torch.uint8)[None], n)

    add("model.embed_tokens.weight", cfg.vocab_size, H, base)
    add("lm_head.weight", cfg.vocab_size, H, Q6_K if qtype == "q4_k_m" else base)
    ones("model.norm.weight", H)
    for i in range(L):
        p, a = f"model.layers.{i}.", f"model.layers.{i}.self_attn."
        more = Q6_K if qtype == "q4_k_m" and use_more_bits(i, L) else base
        add(a + "q_proj.weight", H, H, base)
        add(a + "k_proj.weight", kv, H, base)
        add(a + "v_proj.weight", kv, H, more)
        add(a + "o_proj.weight", H, H, base)
        add(p + "mlp.gate_proj.weight", FF, H, base)
        add(p + "mlp.up_proj.weight", FF, H, base)
        add(p + "mlp.down_proj.weight", H, FF, more)
        ones(p + "input_layernorm.weight", H)
        ones(p + "post_attention_layernorm.weight", H)
        add(a + "plt_gate.weight", cfg.num_heads, H, 0)
        raw[a + "plt_gate.bias"] = Raw(0, torch.zeros(cfg.num_heads, device=DEVICE).view(torch.uint8)[None], cfg.num_heads)
        ones(a + "plt_gate.gate_norm.weight", H)
    return cfg, raw


def sync_time(fn) -> float:
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def set_context(eng, n: int, room: int = 128) -> None:
    """A cache of n positions (zeros) with room to decode into without reallocating."""
    eng.reset()
    st = eng.state
    st.tokens = [1] * (n + room)
    eng._reserve(0)
    del st.tokens[n:]


def decode_tps(eng, ctx: int, steps: int) -> float:
    set_context(eng, ctx)
    for _ in range(3 if steps > 8 else 1):  # compiles, and captures the CUDA graph
        eng.step(7)
    dt = sync_time(lambda: [eng.step(7) for _ in range(steps)])
    return steps / dt


def step_launches(eng) -> dict:
    """Kernel launches of one decode step (what its CUDA graph records): benchmarks/decode_launches.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("decode_launches", os.path.join(os.path.dirname(__file__),
                                                                                  "decode_launches.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    graphs, eng.graphs = eng.graphs, False
    try:
        counted = mod.count_step(eng, 7)
    finally:
        eng.graphs = graphs
    return {"triton": counted["triton_total"], "torch": counted["torch_total"]}


def with_loops(eng, cfg, loops: int) -> None:
    eng.cfg = cfg.with_loops(loops)
    eng.state = eng._empty_state(0)  # a new state: the Triton engine captures its graph again


def step_bytes(eng, ctx: int) -> int:
    """Bytes one decode step reads: every layer weight and the head once, the loop-0 cache."""
    cfg = eng.cfg
    weights = eng.weight_bytes - eng.embed.nbytes + eng.embed.nbytes // cfg.vocab_size
    kv = cfg.num_layers * 2 * cfg.num_kv_heads * ctx * cfg.head_dim * torch.finfo(eng.kv_dtype).bits // 8
    return weights + kv


def prompt_flops(cfg, n: int) -> float:
    """Matmul and attention FLOPs of an n-token prefill through all R loops."""
    H, FF, L, hd = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.head_dim
    per_token = 2 * (H * (cfg.num_heads + 2 * cfg.num_kv_heads) * hd + cfg.num_heads * hd * H + 3 * H * FF)
    attn_global = 2 * 2 * cfg.num_heads * hd * n * (n + 1) / 2
    attn_local = 2 * 2 * cfg.num_heads * hd * n * (cfg.window + 1)
    loops = cfg.num_loops
    return L * (loops * (per_token * n + attn_global) + (loops - 1) * attn_local) + 2 * H * cfg.vocab_size


def measure(eng, cfg, steps: int, prompt: int, peak_bw, peak_tf, copy_bw) -> dict:
    out = {"decode_steps": steps}
    for ctx in CONTEXTS:
        tps = decode_tps(eng, ctx, steps)
        gbs = step_bytes(eng, ctx) * tps / 1e9
        out[f"decode_tok_s_{ctx // 1024}k"] = round(tps, 2)
        out[f"bandwidth_GB_s_{ctx // 1024}k"] = round(gbs, 1)
        out[f"bandwidth_frac_peak_{ctx // 1024}k"] = round(gbs / peak_bw, 3) if peak_bw else None
        out[f"bandwidth_frac_copy_{ctx // 1024}k"] = round(gbs / copy_bw, 3)
    eng.reset()
    eng.prefill(list(range(100, 164)))  # compiles the prefill kernels
    ids = [(17 * i) % cfg.vocab_size for i in range(prompt)]
    eng.reset()
    dt = sync_time(lambda: eng.prefill(ids))
    out["prompt_tokens"] = prompt
    out["prompt_tok_s"] = round(prompt / dt, 1)
    tflops = prompt_flops(cfg, prompt) / dt / 1e12
    out["prompt_tflops"] = round(tflops, 1)
    out["prompt_frac_peak_tflops"] = round(tflops / peak_tf, 3) if peak_tf else None
    if hasattr(eng, "graphs"):  # the Triton engine
        out["launches_per_step"] = step_launches(eng)
    r2 = decode_tps(eng, CONTEXTS[0], steps)
    with_loops(eng, cfg, 1)
    r1 = decode_tps(eng, CONTEXTS[0], steps)
    with_loops(eng, cfg, 2)
    out["r2_over_r1_decode_time"] = round(r1 / r2, 3)
    return out


SWEEP_SHAPES = [("gate_up", 2 * 27648, 5120), ("down", 5120, 27648), ("qkv", 5120 + 2 * 1024, 5120)]


def kernel_us(fn, reps: int = 20) -> float:
    """Median microseconds of fn() (CUDA events on the GPU)."""
    fn()
    times = []
    for _ in range(reps):
        if DEVICE != "cuda":
            times.append(sync_time(fn) * 1e6)
            continue
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1000)
    return sorted(times)[reps // 2]


# the decode kernels' choices: weight rows per program (dp4a, float), warps, split-K target per SM (0: none)
SWEEP_BLOCK_N, SWEEP_WARPS, SWEEP_PER_SM = {True: (16, 32, 64), False: (8, 16, 32)}, (4, 8), (0, 4, 8)
GEMM_TILES = {"64x3": (64, dict(num_warps=4, num_stages=3)), "128x3": (128, dict(num_warps=8, num_stages=3)),
              "256x2": (256, dict(num_warps=8, num_stages=2))}  # rows per tile x pipeline stages


def matmul_sweep(qtype: str, peak_bw, left, reps: int = 20, peak_tf=None, prefill_rows: int = 4096,
                 decode_rows=(1, 2)) -> dict:
    """The decode matmul alone (M = 1 and 2 rows) on LoopCoder-V2's largest shapes: the
    engine's choice and the others (dp4a or float kernel, `block_n`, warps, split-K target), as
    GB/s of weight bytes read, each product checked against the default's; the activation
    quantizer alone (its launch is part of every decode matmul above); and the prefill GEMM
    (`prefill_rows` rows) under each GEMM_TILES tile, as TFLOPs."""
    from loopcli.kernels import qmatmul as kq
    from loopcli.kernels.qmatmul_int8 import quantize_rows

    base = kq.Q8_0 if qtype == "q8_0" else kq.Q4_K
    t = base | kq.PLANAR if base in kq.PLANES else base  # the layout the engine keeps
    dev = torch.device(DEVICE)
    sms, arch = kq._sm_count(dev), kq._arch(dev)
    gen = torch.Generator(DEVICE).manual_seed(2)
    out = {}
    for name, N, K in SWEEP_SHAPES:
        data = random_blocks(base, N, K, gen)
        data = kq.to_planar(data, base) if t != base else data
        for M in decode_rows:
            x = 0.1 * torch.randn(M, K, device=DEVICE, dtype=torch.float16, generator=gen)
            engine_cfg = kq.launch_config(M, N, K, t, sms, arch=arch)
            want = kq.launch(x, data, t, engine_cfg).float()
            rows = []
            for int8 in (True, False):  # dp4a on int8 activations, or floats on their dequantized values
                for bn in SWEEP_BLOCK_N[int8]:
                    for warps in SWEEP_WARPS:
                        for per_sm in SWEEP_PER_SM:  # 0: no split-K
                            if left() < 15:
                                out["skipped"] = "time budget"
                                return out
                            cfg = kq.launch_config(M, N, K, t, sms, split_k=1 if per_sm == 0 else None, arch=arch,
                                                   block_n=bn, num_warps=warps, per_sm=per_sm or 4, int8=int8)
                            got = kq.launch(x, data, t, cfg).float()
                            us = kernel_us(lambda: kq.launch(x, data, t, cfg), reps)
                            gbs = data.numel() / us / 1e3
                            rows.append(dict(kernel=cfg["kernel"], block_n=bn, num_warps=warps,
                                             split_k=cfg["split_k"], us=round(us, 1), GB_s=round(gbs, 1),
                                             frac_peak=round(gbs / peak_bw, 3) if peak_bw else None,
                                             max_rel_diff=float(((got - want).abs().max() / want.abs().max()).item())))
            us = kernel_us(lambda: kq.launch(x, data, t, engine_cfg), reps)
            gbs = data.numel() / us / 1e3
            default = dict(kernel=engine_cfg["kernel"], block_n=engine_cfg["BLOCK_N"],
                           num_warps=engine_cfg["options"]["num_warps"],
                           split_k=engine_cfg["split_k"],
                           us=round(us, 1), GB_s=round(gbs, 1), frac_peak=round(gbs / peak_bw, 3) if peak_bw else None)
            out[f"{name}_M{M}"] = {"N": N, "K": K, "default": default, "best": max(rows, key=lambda r: r["GB_s"]),
                                   "configs": rows}
            group = kq.act_group(t)
            out[f"{name}_M{M}"]["quantize_us"] = round(kernel_us(lambda: quantize_rows(x, group), reps), 1)
        x = 0.1 * torch.randn(prefill_rows, K, device=DEVICE, dtype=torch.float16, generator=gen)
        engine_cfg = kq.launch_config(prefill_rows, N, K, t, sms, arch=arch)
        want = kq.launch(x, data, t, engine_cfg).float()
        tiles = {"default": None, **GEMM_TILES}
        res = out[f"{name}_prefill"] = {"M": prefill_rows, "N": N, "K": K, "default_rows": engine_cfg["BLOCK_M"]}
        for label, tile in tiles.items():
            if left() < 15:
                out["skipped"] = "time budget"
                return out
            try:
                cfg = kq.launch_config(prefill_rows, N, K, t, sms, arch=arch, gemm_tile=tile)
                got = kq.launch(x, data, t, cfg).float()
                us = kernel_us(lambda: kq.launch(x, data, t, cfg), max(3, reps // 4))
            except Exception as e:  # a tile this GPU cannot launch (shared memory) is a result
                res[label] = {"error": f"{type(e).__name__}: {e}"[:300]}
                continue
            tf = 2 * prefill_rows * N * K / us / 1e6
            res[label] = dict(us=round(us, 1), TFLOPs=round(tf, 1), frac_peak=round(tf / peak_tf, 3) if peak_tf else None,
                              max_rel_diff=float(((got - want).abs().max() / want.abs().max()).item()))
        del data, x
    return out


def copy_bandwidth() -> float:
    """GB/s of a device-to-device copy of 2 GiB (reads + writes counted)."""
    a = torch.empty(1 << 31, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    b.copy_(a)
    dt = min(sync_time(lambda: b.copy_(a)) for _ in range(5))
    del a, b
    return 2 * (1 << 31) / dt / 1e9


def llama_cpp_section(qtype: str, steps: int, peak_bw) -> dict:
    """llama.cpp on the same kind of weights as an R = 1 llama GGUF (GPU offload only)."""
    try:
        import llama_cpp
    except ImportError:
        return {"skipped": "llama-cpp-python is not installed (pip install -e '.[llama]')"}
    if not llama_cpp.llama_supports_gpu_offload():
        return {"skipped": "this llama-cpp-python build has no GPU offload"}
    import gguf
    import numpy as np

    cfg, raw = random_model(qtype, seed=1)
    embed_bytes = raw["model.embed_tokens.weight"].data.numel()  # only one row is read per step
    names = {"model.embed_tokens.weight": "token_embd.weight", "lm_head.weight": "output.weight",
             "model.norm.weight": "output_norm.weight"}
    layer = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "r1.gguf")
        w = gguf.GGUFWriter(path, arch="llama")
        w.add_block_count(cfg.num_layers), w.add_context_length(32768), w.add_embedding_length(cfg.hidden_size)
        w.add_feed_forward_length(cfg.intermediate_size), w.add_head_count(cfg.num_heads)
        w.add_head_count_kv(cfg.num_kv_heads), w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_rope_freq_base(cfg.rope_theta), w.add_rope_dimension_count(cfg.head_dim), w.add_vocab_size(cfg.vocab_size)
        w.add_file_type(15 if qtype == "q4_k_m" else 7), w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_tokenizer_model("llama")
        tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
        tokens += [f"t{i}" for i in range(cfg.vocab_size - len(tokens))]
        w.add_token_list(tokens), w.add_token_scores([0.0] * len(tokens))
        w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 259))
        w.add_bos_token_id(1), w.add_eos_token_id(2)
        for name, r in raw.items():
            if ".plt_gate" in name:
                continue
            if name in names:
                gname = names[name]
            else:
                i, rest = name.split(".")[2], ".".join(name.split(".")[3:-1])
                gname = f"blk.{i}.{layer[rest]}.weight"
            data = r.data.cpu().numpy()
            if r.ggml_type == 0:
                w.add_tensor(gname, data.view(np.float32).reshape(-1) if data.shape[0] == 1 else data.view(np.float32))
            else:
                w.add_tensor(gname, data, raw_shape=data.shape, raw_dtype=gguf.GGMLQuantizationType(r.ggml_type))
        del raw
        w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
        out = {}
        llm = llama_cpp.Llama(path, n_gpu_layers=-1, n_ctx=CONTEXTS[-1] + 256, n_batch=512, verbose=False)
        for ctx in CONTEXTS:
            llm.reset()
            llm.eval([5] * ctx)
            llm.eval([7])
            dt = sync_time(lambda: [llm.eval([7]) for _ in range(steps)])
            out[f"decode_tok_s_{ctx // 1024}k"] = round(steps / dt, 2)
        llm.reset()
        dt = sync_time(lambda: llm.eval([9] * PROMPT))
        out["prompt_tok_s"] = round(PROMPT / dt, 1)
        first = f"{CONTEXTS[0] // 1024}k"  # weights only: the 1k cache is small
        gbs = (os.path.getsize(path) - embed_bytes) * out[f"decode_tok_s_{first}"] / 1e9
        out[f"bandwidth_frac_peak_{first}"] = round(gbs / peak_bw, 3) if peak_bw else None
        del llm
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--types", default="q4_k_m,q8_0")
    ap.add_argument("--steps", type=int, default=64, help="decode steps timed per figure (Triton engine)")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--budget", type=float, default=280.0, help="seconds; later sections are skipped past it")
    ap.add_argument("--sections", default="triton,torch,llama_cpp,sweep",
                    help="which to run, in this order (sweep: the decode matmul's tile choices)")
    args = ap.parse_args()
    types = args.types.split(",")
    if any(t not in ("q4_k_m", "q8_0") for t in types):
        fail(f"--types takes q4_k_m and/or q8_0, not {args.types!r}")
    wanted = args.sections.split(",")
    known = ("triton", "torch", "llama_cpp", "sweep")
    if any(w not in known for w in wanted):
        fail(f"--sections takes some of {', '.join(known)}, not {args.sections!r}")
    if not torch.cuda.is_available():
        fail("benchmarks/gpu.py needs a CUDA GPU and none is visible here; run it on a machine with one "
             "(the kernels' CPU tests: pytest tests/kernels)")
    try:
        import triton  # noqa: F401
    except ImportError:
        fail("benchmarks/gpu.py needs triton: pip install triton")
    from loopcli.runtime.engine import Engine
    from loopcli.runtime.triton_engine import TritonEngine

    start = time.perf_counter()
    name = torch.cuda.get_device_name()
    peak_bw, peak_tf = spec(name)
    result = {"gpu": name, "peak_GB_s": peak_bw, "peak_tflops_f16": peak_tf, "copy_GB_s": round(copy_bandwidth(), 1),
              "shape": SHAPE, "loops": 2, "contexts": list(CONTEXTS), "types": {}}
    copy_bw = result["copy_GB_s"]
    left = lambda: args.budget - (time.perf_counter() - start)
    for qtype in types:
        res = result["types"][qtype] = {}
        sections = [("triton", TritonEngine, args.steps, PROMPT, 60), ("torch", Engine, 2, 512, 60)]
        for label, cls, steps, prompt, need in sections:
            if label not in wanted:
                continue
            if left() < need:
                res[label] = {"skipped": "time budget"}
                continue
            eng = None
            try:
                cfg, raw = random_model(qtype)
                eng = cls(cfg, raw, device=DEVICE, dtype=torch.float16, kv_dtype=torch.float16, max_context=32768)
                del raw
                res[label] = {"weight_GB": round(eng.weight_bytes / 1e9, 2),
                              **measure(eng, cfg, steps, prompt, peak_bw, peak_tf, copy_bw)}
            except Exception as e:  # a section that fails is reported, the others still run
                res[label] = {"error": f"{type(e).__name__}: {e}"}
            del eng
            torch.cuda.empty_cache()
        if "decode_tok_s_1k" in res.get("torch", {}) and "decode_tok_s_1k" in res.get("triton", {}):
            res["triton_over_torch_decode_1k"] = round(res["triton"]["decode_tok_s_1k"] / res["torch"]["decode_tok_s_1k"], 2)
        if "llama_cpp" in wanted:
            if left() < 60:
                res["llama_cpp"] = {"skipped": "time budget"}
            else:
                try:
                    res["llama_cpp"] = llama_cpp_section(qtype, 32, peak_bw)
                except Exception as e:
                    res["llama_cpp"] = {"error": f"{type(e).__name__}: {e}"}
                torch.cuda.empty_cache()
    for qtype in types:  # last: it only informs the next tuning
        if "sweep" in wanted:
            try:
                result["types"][qtype]["sweep"] = matmul_sweep(qtype, peak_bw, left, peak_tf=peak_tf)
            except Exception as e:
                result["types"][qtype]["sweep"] = {"error": f"{type(e).__name__}: {e}"}
            torch.cuda.empty_cache()
    result["seconds"] = round(time.perf_counter() - start, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
