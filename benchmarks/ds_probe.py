"""Times the decoded-in-shared Gluon GEMM prototype (``ds_kernel.py``) against fp16 cuBLAS and the
dispatcher's plan, checking each variant against float64 first.  docs/NOTES-gemm.md v21.

Usage on a Hopper GPU::

    PYTHONPATH=src python benchmarks/ds_probe.py --shapes 57344x8192 8192x8192 --m 64 128 \\
        --variants 64,256,64,4,2,1 64,256,64,4,2,1,d1 [--format int4-g128] [--out results.json]

A variant: block_m,block_n,block_k,stages,slots,decoders[,dec_regs,mma_regs][,s][,dN]: s splits the
MMA into two of half the W rows; N is the kernel's DIAG (1: no decode, 2: no MMA; wrong results on
purpose, reported, not checked).
Timing as ``anybit bench``'s (graph-launched, cold L2, fp16 cuBLAS in the same run).
"""

from __future__ import annotations

import json
import os
import sys

import torch

import anybit
from anybit import bench
from anybit._matmul import gemm as gm

sys.path.insert(0, os.path.dirname(__file__))
import _weights  # noqa: E402
from ds_kernel import launch_gemm_gluon_ds  # noqa: E402


def _variant(text: str) -> dict:
    parts = text.split(",")
    flags = [p for p in parts if not p.isdigit()]
    values = [int(v) for v in parts if v.isdigit()]
    diag = sum(int(f[1:]) for f in flags if f.startswith("d"))
    names = ["block_m", "block_n", "block_k", "stages", "slots", "num_dec", "dec_regs", "mma_regs"]
    return dict(zip(names, values), diag=diag, mma_split="s" in flags)


def _call(x, qw, variant, out):
    n, k = qw.shape
    group = gm.kernel_group(qw.format.group_len(k), k)
    mode = qw.format.kernel_decode().mode
    return lambda: launch_gemm_gluon_ds(x, qw.codes, qw.params["scales"], qw.params.get("zeros"), None, n, k,
                                        qw.format.bits, group, mode, out=out, **variant)


def main() -> None:
    parser = _weights.parser()
    parser.add_argument("--variants", nargs="+", required=True)
    args = parser.parse_args()
    rows = []
    for shape in args.shapes:
        n, k, qw, copies, w16 = _weights.weights(shape, args.format)
        wref = qw.dequantize(torch.float64)
        for m in args.m:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            ref = x.double() @ wref.t()
            fp16_us = bench._time_per_call(lambda i: lambda: x @ w16[i].t(), len(w16), 20)
            plan_y = anybit.matmul(x, qw).double()
            plan_err = ((plan_y - ref).norm() / ref.norm()).item()
            plan_us = bench._time_per_call(lambda i: lambda: anybit.matmul(x, copies[i]), len(copies), 20)
            print(f"{n}x{k} M={m} fp16 {fp16_us:8.2f} us; plan {plan_us:8.2f} us ({fp16_us / plan_us:4.2f}x) "
                  f"err {plan_err:.1e}", flush=True)
            rows.append(dict(N=n, K=k, M=m, variant="plan", us=plan_us, fp16_us=fp16_us, rel_err=plan_err))
            for text in args.variants:
                variant = _variant(text)
                outs = [torch.empty(m, n, dtype=torch.float16, device="cuda") for _ in copies]
                try:
                    y = _call(x, qw, variant, outs[0])()
                    torch.cuda.synchronize()
                    y = y.double()
                    err = ((y - ref).norm() / ref.norm()).item()
                    worst = ((y - ref).abs().max() / ref.abs().max()).item()
                    again = _call(x, qw, variant, outs[1])()
                    same = bool(torch.equal(again, outs[0]))
                    us = bench._time_per_call(lambda i: _call(x, copies[i], variant, outs[i]), len(copies), 20)
                except Exception as e:  # a variant that does not compile or launch is reported, not fatal
                    print(f"{n}x{k} M={m} {text:28s} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
                    rows.append(dict(N=n, K=k, M=m, variant=text, error=f"{type(e).__name__}: {str(e)[:300]}"))
                    continue
                ok = "ok" if variant["diag"] or (err < 2e-3 and same) else "WRONG"
                print(f"{n}x{k} M={m} {text:28s} {us:8.2f} us ({fp16_us / us:4.2f}x fp16, {plan_us / us:4.2f}x plan) "
                      f"err {err:.1e} max {worst:.1e} repeat-identical {same} {ok}", flush=True)
                rows.append(dict(N=n, K=k, M=m, variant=text, us=us, fp16_us=fp16_us, plan_us=plan_us, rel_err=err,
                                 max_err=worst, repeat_identical=same, ok=ok))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "format": args.format, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
