"""Where a decoding step of ``anybit bench --e2e``'s model goes: kernel time per category.

Usage on a CUDA machine::

    PYTHONPATH=src python benchmarks/e2e_profile.py --batches 1 8 --modes layers model \
        --formats float16 int4-g128 [--attention sdpa] [--layers 8] [--top 14]

``--modes``: ``layers`` compiles each decoder layer (the benchmark's stack),
``model`` the whole forward (both through ``e2e._compile_layers``, with anybit's
graph pass for the quantized formats). ``--layers`` builds the model with fewer
decoder layers (faster to compile). For each (format, mode, batch) it prints the
graph-replayed milliseconds per step (twice) and, from torch.profiler over 5
replays, the kernel time per category (anybit's decode kernel, cuBLAS,
attention, Inductor's Triton kernels, other) and the ``--top`` costliest kernels.
"""
import argparse
import copy
import time
from collections import defaultdict

import torch
import torch._dynamo.config

from anybit import e2e
from anybit.nn import quantize_

torch._dynamo.config.recompile_limit = 4096
torch._dynamo.config.accumulated_recompile_limit = 4096
torch._dynamo.config.cache_size_limit = 4096

parser = argparse.ArgumentParser()
parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
parser.add_argument("--modes", nargs="+", choices=("layers", "model"), default=["layers"])
parser.add_argument("--formats", nargs="+", default=["float16", "int4-g128"])
parser.add_argument("--attention", choices=sorted(e2e.ATTENTION), default=e2e.DEFAULT_ATTENTION)
parser.add_argument("--layers", type=int, default=e2e.LLAMA_31_8B["num_hidden_layers"])
parser.add_argument("--top", type=int, default=14)
args = parser.parse_args()
batches, modes, fmts = args.batches, args.modes, args.formats
steps = 40


def category(name):
    n = name.lower()
    if "flash" in n or "fmha" in n or "attention" in n or "cudnn" in n or "sdpa" in n:
        return "attention"  # before cuBLAS: cuDNN's attention kernels name sm90 too
    if "gemv" in n or "_ptx" in n or "anybit" in n:
        return "anybit decode"
    if "gemm" in n or "cutlass" in n or "sm90" in n or "cublas" in n or "nvjet" in n:
        return "cublas"
    if "triton" in n:
        return "inductor triton"
    return "other"


def profile(dec, label):
    from torch.profiler import ProfilerActivity, profile as prof
    dec.graph.replay()
    torch.cuda.synchronize()
    with prof(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(5):
            dec.graph.replay()
        torch.cuda.synchronize()
    per = defaultdict(lambda: [0.0, 0])
    cats = defaultdict(lambda: [0.0, 0])
    for e in p.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per[e.name][0] += e.device_time / 5
            per[e.name][1] += 1 / 5
            c = category(e.name)
            cats[c][0] += e.device_time / 5
            cats[c][1] += 1 / 5
    total = sum(v[0] for v in per.values())
    nk = sum(v[1] for v in per.values())
    print(f"[{label}] kernel time {total / 1000:.3f} ms/step over {nk:.0f} kernels")
    for c, (t, n) in sorted(cats.items(), key=lambda kv: -kv[1][0]):
        print(f"   {c:16s} {t / 1000:7.3f} ms  {n:5.0f} kernels")
    for name, (t, n) in sorted(per.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print(f"   {t:9.1f} us {n:5.0f}x  {name[:110]}")


base = e2e.random_llama(dict(e2e.LLAMA_31_8B, num_hidden_layers=args.layers), torch.device("cuda"))
e2e.use_attention(base, args.attention)
for fmt in fmts:
    for mode in modes:
        t0 = time.time()
        model = base if fmt == "float16" else copy.deepcopy(base)
        if fmt != "float16":
            quantize_(model, fmt, skip=(), progress=False)
        torch._dynamo.reset()
        e2e._compile_layers(model, fmt != "float16", scope=mode)
        for b in batches:
            dec = e2e.Decoder(model, b, 128, max_steps=3 * steps + 40)
            dec.capture()
            ms = dec.time_ms(steps)
            ms2 = dec.time_ms(steps)
            print(f"{fmt:10s} {mode:7s} batch {b:3d}: {ms:.3f} / {ms2:.3f} ms/step  "
                  f"(setup+compile {time.time() - t0:.0f} s)", flush=True)
            if b in (1, 8):
                profile(dec, f"{fmt} {mode} b{b}")
            del dec
            torch.cuda.empty_cache()
        if model is not base:
            del model
        elif mode == "model":
            del base.forward
        else:
            for layer in base.model.layers:
                layer._compiled_call_impl = None
        torch.cuda.empty_cache()
