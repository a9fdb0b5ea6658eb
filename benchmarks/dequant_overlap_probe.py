"""Dequantize + cuBLAS with the dequantize of W's next row chunk overlapping the
matmul of the current one (a second stream), against the whole W dequantized first.
docs/NOTES-gemm.md v21.

Usage on a GPU::

    PYTHONPATH=src python benchmarks/dequant_overlap_probe.py --shapes 4096x4096 8192x8192 \\
        --m 1024 4096 --chunks 2 4 8 [--format int4-g128] [--parts] [--out results.json]

``--parts`` also times the two halves of the unchunked path alone: the dequantize (each copy
of W to its own fp16 buffer) and cuBLAS on already dequantized copies, to tell which of the
two makes the path slower than fp16 cuBLAS on the same shape (docs/NOTES-gemm.md v24).

Each variant is checked against the unchunked result first (max relative difference;
cuBLAS may pick another algorithm for a narrower N).  Timing as ``anybit bench``'s
(graph-launched, cold L2, fp16 cuBLAS in the same run).
"""

from __future__ import annotations

import json
import os
import sys

import torch

import anybit
from anybit import bench
from anybit._matmul import gemm as gm
from anybit._matmul.gemv import kernel_table

sys.path.insert(0, os.path.dirname(__file__))
import _weights  # noqa: E402

_SIDE: dict = {}


def chunked(x, qw, chunks: int, out=None, bufs=None):
    """y = x @ W^T with W dequantized in ``chunks`` row chunks on a side stream, two buffers."""
    n, k = qw.shape
    group = gm.kernel_group(qw.format.group_len(k), k)
    mode = qw.format.kernel_decode().mode
    zeros = qw.params.get("zeros")
    step = -(-n // chunks)
    step = -(-step // 256) * 256
    main = torch.cuda.current_stream()
    side = _SIDE.setdefault(x.device, torch.cuda.Stream(x.device))
    if out is None:
        out = torch.empty(x.shape[0], n, dtype=x.dtype, device=x.device)
    if bufs is None:
        bufs = [torch.empty(step, k, dtype=x.dtype, device=x.device) for _ in range(2)]
    side.wait_stream(main)
    free = [None, None]
    for i, n0 in enumerate(range(0, n, step)):
        n1 = min(n, n0 + step)
        buf = bufs[i % 2][: n1 - n0]
        with torch.cuda.stream(side):
            if free[i % 2] is not None:
                side.wait_event(free[i % 2])
            gm.launch_dequant(qw.codes[n0:n1], qw.params["scales"][n0:n1], None if zeros is None else zeros[n0:n1],
                              kernel_table(qw), n1 - n0, k, qw.format.bits, group, mode, x.dtype, out=buf)
            ready = torch.cuda.Event()
            ready.record(side)
        main.wait_event(ready)
        torch.mm(x, buf.t(), out=out[:, n0:n1])
        free[i % 2] = torch.cuda.Event()
        free[i % 2].record(main)
    main.wait_stream(side)
    return out


def _parts(x, copies, fp16_us: float, label: str) -> list[dict]:
    """The dequantize alone and cuBLAS alone on dequantized copies (rows for the results)."""
    mode = copies[0].format.kernel_decode().mode
    n, k = copies[0].shape
    group = gm.kernel_group(copies[0].format.group_len(k), k)
    bufs = [torch.empty(n, k, dtype=x.dtype, device=x.device) for _ in copies]

    def dequant(i):
        qw, zeros = copies[i], copies[i].params.get("zeros")
        return lambda: gm.launch_dequant(qw.codes, qw.params["scales"], zeros, kernel_table(qw), n, k,
                                         qw.format.bits, group, mode, x.dtype, out=bufs[i])

    dequant_us = bench._time_per_call(dequant, len(copies), 10)
    assert torch.equal(bufs[0], gm.dequantize(copies[0], x.dtype))
    mm_us = bench._time_per_call(lambda i: lambda: x @ bufs[i].t(), len(bufs), 10)
    print(f"{label} parts: dequantize {dequant_us:8.2f} us ({2 * n * k / dequant_us / 1e6:.2f} TB/s written), "
          f"cuBLAS on dequantized W {mm_us:8.2f} us ({fp16_us / mm_us:4.2f}x fp16)", flush=True)
    m = x.shape[0]
    return [dict(N=n, K=k, M=m, variant="dequantize", us=dequant_us, fp16_us=fp16_us),
            dict(N=n, K=k, M=m, variant="cublas_on_dequantized", us=mm_us, fp16_us=fp16_us)]


def main() -> None:
    parser = _weights.parser()
    parser.add_argument("--chunks", nargs="*", type=int, default=[2, 4, 8])
    parser.add_argument("--parts", action="store_true", help="also time the dequantize and cuBLAS alone")
    args = parser.parse_args()
    rows = []
    for shape in args.shapes:
        n, k, qw, copies, w16 = _weights.weights(shape, args.format)
        for m in args.m:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            fp16_us = bench._time_per_call(lambda i: lambda: x @ w16[i].t(), len(w16), 10)
            whole = gm.dequantize_matmul(x, qw, None)
            whole_us = bench._time_per_call(lambda i: lambda: gm.dequantize_matmul(x, copies[i], None), len(copies), 10)
            plan_us = bench._time_per_call(lambda i: lambda: anybit.matmul(x, copies[i]), len(copies), 10)
            print(f"{n}x{k} M={m} fp16 {fp16_us:8.2f} us; dequant+cuBLAS {whole_us:8.2f} ({fp16_us / whole_us:4.2f}x); "
                  f"plan {plan_us:8.2f} ({fp16_us / plan_us:4.2f}x)", flush=True)
            rows.append(dict(N=n, K=k, M=m, variant="whole", us=whole_us, fp16_us=fp16_us, plan_us=plan_us))
            if args.parts:
                rows += _parts(x, copies, fp16_us, f"{n}x{k} M={m}")
            for c in args.chunks:
                y = chunked(x, qw, c)
                diff = ((y.float() - whole.float()).abs().max() / whole.float().abs().max()).item()
                us = bench._time_per_call(lambda i: lambda: chunked(x, copies[i], c), len(copies), 10)
                print(f"{n}x{k} M={m} chunks {c}: {us:8.2f} us ({fp16_us / us:4.2f}x fp16, {whole_us / us:4.2f}x "
                      f"whole) max rel diff {diff:.1e}", flush=True)
                rows.append(dict(N=n, K=k, M=m, variant=f"chunks{c}", us=us, fp16_us=fp16_us, whole_us=whole_us,
                                 max_rel_diff=diff))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "format": args.format, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
