"""Time a layer's rows in two warp-specialized launches against the plan the dispatcher picks:
the first launch takes whole waves of its tile (``--first``: rows = the most whole waves of
its tiles that fit, SMs x block_n rows a wave), the second the rest of the rows with each
``--rest`` variant, both writing their columns of one y (``launch_gemm_gluon_ws``'s ``out``
slice).  Where a plan's last wave is partly empty (57344 x 8192 at M = 64: 224 tiles of 256
rows on 132 SMs), the rest in smaller tiles fills it.

Usage on a CUDA machine::

    PYTHONPATH=src python benchmarks/row_split.py --format int4-g128 --m 64 --shapes 57344x8192 \\
        --first ws,64,256,128,1,3 --rest ws,64,192,128,1,4 ws,64,128,128,1,6 [--out results.json]

Variants as ``gemv_variants.py --kernel gemm``'s ``ws,...``.  Each split is first checked against
float64 over the whole y, then timed with the dispatcher's plan, the first variant over all rows
and every split in turn (``bench._median_replays_us``: graph-launched, cold L2, fp16 cuBLAS in
the same run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

import anybit
from anybit import bench
from anybit._matmul import gemm as gm

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))
import _weights  # noqa: E402
import gemv_variants  # noqa: E402
from conftest import weight_rows  # noqa: E402


def _ws_launch(x, qw, text: str, out):
    """A call running gemv_variants' ``ws,...`` variant on ``qw`` into ``out`` (a column slice of y)."""
    n, k = qw.shape
    _, config, regs, maxnreg, overlap, after = gemv_variants._config(text, x.shape[0], n, k, "gemm")
    return lambda: gm.on_weight(gm.launch_gemm_gluon_ws, x, qw, None, config, out=out, consumer_regs=regs,
                                maxnreg=maxnreg, overlap=overlap, scale_after=after)


def first_rows(n: int, text: str, m: int, k: int, sms: int) -> int:
    """Rows of W the first launch takes: the most whole waves of its tiles (one program per
    tile and split) that leave some rows to the second."""
    _, config, *_ = gemv_variants._config(text, m, n, k, "gemm")
    per_wave = sms // config.split_k * config.block_n
    return (n - 1) // per_wave * per_wave


def split_call(x, qw, cut: int, first: str, rest: str, y):
    """A call running rows 0 .. cut of ``qw`` with ``first`` and the rest with ``rest``, into y."""
    n = qw.shape[0]
    launches = (_ws_launch(x, weight_rows(qw, 0, cut), first, y[:, :cut]),
                _ws_launch(x, weight_rows(qw, cut, n), rest, y[:, cut:]))

    def call():
        for launch in launches:
            launch()
        return y
    return call


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--format", default="int4-g128")
    parser.add_argument("--m", type=int, nargs="+", default=[64])
    parser.add_argument("--shapes", nargs="+", default=["57344x8192"])
    parser.add_argument("--first", required=True)
    parser.add_argument("--rest", nargs="+", required=True)
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    sms = gm.sm_count(device)
    rows = []
    for shape in args.shapes:
        n, k, qw, copies, w16 = _weights.weights(shape, args.format)
        for m in args.m:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            ref = x.double() @ qw.dequantize(torch.float64).t()
            cut = first_rows(n, args.first, m, k, sms)
            timed = []
            for rest in args.rest:
                y = torch.full((m, n), float("nan"), device="cuda", dtype=torch.float16)
                got = split_call(x, qw, cut, args.first, rest, y)().double()
                rel = ((got - ref).norm() / ref.norm()).item()
                ok = bool(torch.isfinite(got).all()) and rel < 3e-3
                print(f"{n}x{k} M={m} rows {cut} + {n - cut} with {rest}: {'ok' if ok else 'BAD'} err {rel:.1e}")
                if ok:
                    timed.append(rest)
            outs = [torch.empty(m, n, device="cuda", dtype=torch.float16) for _ in copies]
            sets = [[(lambda i: lambda: x @ w16[i].t())(i) for i in range(len(w16))],
                    [(lambda i: lambda: anybit.matmul(x, copies[i]))(i) for i in range(len(copies))],
                    [_ws_launch(x, copies[i], args.first, outs[i]) for i in range(len(copies))]]
            sets += [[split_call(x, copies[i], cut, args.first, rest, outs[i]) for i in range(len(copies))]
                     for rest in timed]
            times = bench._median_replays_us(sets, args.replays)
            fp16_us = times[0] / len(w16)
            us = [t / len(copies) for t in times[1:]]
            labels = ["plan", f"{args.first} all rows"] + [f"{cut} rows {args.first} + {n - cut} {r}" for r in timed]
            for label, t in zip(labels, us):
                print(f"{n}x{k} M={m} {label:60s} {t:8.2f} us  {fp16_us / t:5.2f}x fp16")
                rows.append({"N": n, "K": k, "M": m, "variant": label, "us": t, "fp16_us": fp16_us})
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "format": args.format, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
