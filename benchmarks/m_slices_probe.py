"""Large M on the warp-specialized kernel: all rows of x in one launch against the same rows
in slices of ``--slice`` rows (one launch each, every slice's x small enough to stay in L2),
beside the plan anybit.matmul picks and fp16 cuBLAS.  docs/NOTES-gemm.md v24.

Usage on a GPU::

    PYTHONPATH=src python benchmarks/m_slices_probe.py --shapes 8192x8192 28672x4096 \\
        --m 4096 --slice 1024 [--format int4-g128] [--out results.json]

The kernel's settings are the tuned table's plan for ``--slice`` rows (the probe stops if
that plan is not the warp-specialized kernel).  Every variant is checked against float64
first (the tests' bound).  Timing as ``anybit bench``'s (graph-launched, cold L2).
"""

from __future__ import annotations

import json
import os
import sys

import torch

import anybit
from anybit import bench
from anybit._matmul import gemm as gm
from anybit._matmul import tuning

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))
import _weights  # noqa: E402
from conftest import assert_matmul_close, unit_roundoff  # noqa: E402


def sliced(x, qw, config, rows: int, out):
    """y = x @ W^T by one launch of the warp-specialized kernel per ``rows`` rows of x."""
    for m0 in range(0, x.shape[0], rows):
        gm.on_weight(gm.launch_gemm_gluon_ws, x[m0:m0 + rows], qw, None, config, out=out[m0:m0 + rows])
    return out


def main() -> None:
    parser = _weights.parser()
    parser.add_argument("--slice", type=int, default=1024)
    args = parser.parse_args()
    rows = []
    for shape in args.shapes:
        n, k, qw, copies, w16 = _weights.weights(shape, args.format)
        fmt = qw.format
        chosen = tuning.plan(args.format, n, k, args.slice, fmt.group_len(k), fmt.bits, torch.device("cuda"))
        if chosen.kernel is not gm.Kernel.GLUON_WS:
            raise SystemExit(f"{shape}: the plan at M={args.slice} is {chosen.kernel.value}, not the ws kernel")
        config = chosen.config
        for m in args.m:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            outs = [torch.empty(m, n, device="cuda", dtype=torch.float16) for _ in copies]
            whole = gm.on_weight(gm.launch_gemm_gluon_ws, x, qw, None, config)
            assert_matmul_close(whole, x, qw, None, weight_roundoff=unit_roundoff(x.dtype))
            parts = sliced(x, qw, config, args.slice, outs[0])
            assert_matmul_close(parts, x, qw, None, weight_roundoff=unit_roundoff(x.dtype))
            fp16_us = bench._time_per_call(lambda i: lambda: x @ w16[i].t(), len(w16), 5)
            plan_us = bench._time_per_call(lambda i: lambda: anybit.matmul(x, copies[i]), len(copies), 5)
            whole_us = bench._time_per_call(
                lambda i: lambda: gm.on_weight(gm.launch_gemm_gluon_ws, x, copies[i], None, config, out=outs[i]),
                len(copies), 5)
            sliced_us = bench._time_per_call(lambda i: lambda: sliced(x, copies[i], config, args.slice, outs[i]),
                                             len(copies), 5)
            fp16_again = bench._time_per_call(lambda i: lambda: x @ w16[i].t(), len(w16), 5)
            tflops = 2 * m * n * k / 1e6
            print(f"{shape} M={m} ({config.block_m}x{config.block_n}x{config.block_k} split{config.split_k}"
                  f"{' stream-k' if config.stream_k else ''} sw{config.swizzle}): fp16 {fp16_us:8.1f} / {fp16_again:8.1f}"
                  f" us; plan {plan_us:8.1f} ({fp16_us / plan_us:4.2f}x); ws whole {whole_us:8.1f} "
                  f"({fp16_us / whole_us:4.2f}x, {tflops / whole_us:5.0f} TFLOP/s); ws in {args.slice}-row slices "
                  f"{sliced_us:8.1f} ({fp16_us / sliced_us:4.2f}x, {tflops / sliced_us:5.0f} TFLOP/s)", flush=True)
            rows.append(dict(N=n, K=k, M=m, slice=args.slice, config=str(config), fp16_us=fp16_us,
                             fp16_again_us=fp16_again, plan_us=plan_us, whole_us=whole_us, sliced_us=sliced_us))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "format": args.format, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
