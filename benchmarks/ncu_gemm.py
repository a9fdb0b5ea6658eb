"""Launch anybit's matmul and fp16 cuBLAS once per point inside a profiler range, for
Nsight Compute's per-kernel counters (L2 and DRAM throughput, tensor-pipe activity, warp
stalls) on the bench's shapes.

Each point is run three times first (compile, plan, warm-up), then once between
``cudaProfilerStart`` and ``cudaProfilerStop``: profile with ``--profile-from-start off``
so only those launches are captured; Nsight Compute flushes the caches before each
profiled kernel by default (``--cache-control all``), the bench's cold L2.

Usage: ncu --profile-from-start off --set detailed python benchmarks/ncu_gemm.py
           [--format int4-g128] [--points 4096x4096x64 57344x8192x64 ...] [--variants ws,64,256,128,sk,3 ...]

``--variants``: launch these plans (``gemv_variants.py --kernel gemm``'s syntax) at each point
instead of the dispatcher's.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from anybit.matmul import matmul
from anybit.quantized import quantize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", default="int4-g128")
    parser.add_argument("--points", nargs="+", default=["4096x4096x64", "4096x4096x128", "57344x8192x64"],
                        help="NxKxM: rows of W, columns of W, rows of x")
    parser.add_argument("--no-fp16", action="store_true", help="skip the fp16 cuBLAS launches")
    parser.add_argument("--variants", nargs="+", default=[],
                        help="plans to launch instead of the dispatcher's, as gemv_variants.py --kernel gemm's")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(__file__))
    import gemv_variants

    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    launches = []
    for point in args.points:
        n, k, m = map(int, point.split("x"))
        w = torch.randn(n, k, dtype=torch.float16, device=device, generator=gen) * 0.02
        qw = quantize(w, args.format)
        x = torch.randn(m, k, dtype=torch.float16, device=device, generator=gen)
        if args.variants:
            launches += [(f"{args.format} {point} {text}", gemv_variants._call(x, qw, gemv_variants._config(
                text, m, n, k, "gemm"))) for text in args.variants]
        else:
            launches.append((f"{args.format} {point}", lambda x=x, qw=qw: matmul(x, qw)))
        if not args.no_fp16:
            launches.append((f"fp16 {point}", lambda x=x, w=w: x @ w.t()))
    for _, call in launches:
        for _ in range(3):
            call()
    torch.cuda.synchronize()
    for name, call in launches:
        print(f"profiled: {name}", flush=True)
        torch.cuda.cudart().cudaProfilerStart()
        call()
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    main()
