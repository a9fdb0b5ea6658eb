"""How many kernels ``anybit tune`` compiles for a set of points, without a GPU: the
launches its ``_choose`` selects (as on a Hopper GPU with ``--sms`` SMs and the shipped table
of ``--gpu``), grouped by what Triton compiles a kernel for (the kernel, the code width
and decode, the plan's settings, the kernel GROUP and the K-blocks per split, which the warp-specialized
kernel's stream-K plans leave out; all the shapes here are multiples of 16).
docs/NOTES-gemm.md v29, v31.

Usage::

    python benchmarks/compile_keys.py --formats int4-g128 uint4-g128 int8-gc --top 8 \\
        --shapes 6144x4096 28672x4096 8192x8192 10240x8192 57344x8192 8192x28672
"""

from __future__ import annotations

import argparse
import collections

import torch

from anybit import tune
from anybit._matmul import gemm as gm
from anybit._matmul import gemv as g
from anybit._matmul import perf_model as pm
from anybit._matmul import tuning
from anybit.formats import parse_format


def compile_key(launch: tune.Launch) -> tuple:
    """What the launch's kernel is compiled for (its constexprs, as the launchers set them)."""
    fmt, plan = parse_format(launch.format), launch.plan
    mode, group = fmt.kernel_decode().mode, g.kernel_group(fmt.group_len(launch.k), launch.k)
    if plan.kernel is gm.Kernel.DEQUANT:
        return plan.kernel, fmt.bits, mode, group, launch.k % gm.DEQUANT_BLOCK_K == 0
    config = plan.config
    k_blocks = -(-launch.k // config.block_k)
    if plan.kernel is gm.Kernel.GLUON_WS:
        per_split = gm.ws_blocks_per_split(config, k_blocks)
    else:
        per_split = -(-k_blocks // config.split_k)
    return plan.kernel, fmt.bits, mode, config, group, per_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=tune.DEFAULT_MODEL)
    parser.add_argument("--shapes", nargs="*", default=[], help="NxK, besides the model's")
    parser.add_argument("--formats", nargs="+", default=["int4-g128"])
    parser.add_argument("--top", type=int, default=4)
    parser.add_argument("--gpu", default="NVIDIA H100 80GB HBM3")
    parser.add_argument("--sms", type=int, default=132)
    parser.add_argument("--tflops", type=float, default=758.0, help="the GPU's measured fp16 rate")
    parser.add_argument("--tbps", type=float, default=2.98, help="the GPU's measured copy rate")
    args = parser.parse_args()
    gm.capability = g.capability = lambda device: (9, 0)  # choose as on a Hopper GPU
    device = torch.device("cuda")
    hw = pm.Hardware(args.sms, args.tflops, args.tbps)
    tables = tuning.tables_for(args.gpu, args.sms, "sm_90")
    params = tune._model_params(tables)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes] + list(tune.model_shapes(args.model))
    launches = []
    for n, k in dict.fromkeys(shapes):
        for spec in args.formats:
            for m in tune.DEFAULT_M:
                _, selected = tune._choose(spec, n, k, m, args.sms, device, hw, params, tables, args.top, False)
                launches += [tune.Launch(spec, n, k, m, c.plan) for c in selected]
    launches = list(dict.fromkeys(launches))
    keys = {compile_key(launch) for launch in launches}
    per_kernel = collections.Counter(key[0].value for key in keys)
    print(f"{len(launches)} launches of {len({(l.format, l.plan) for l in launches})} plans: {len(keys)} kernels "
          f"to compile ({', '.join(f'{kernel} {count}' for kernel, count in sorted(per_kernel.items()))})")


if __name__ == "__main__":
    main()
