"""Programmatic dependent launch of the GEMM kernels, on against off, by the bench's protocol.

For each (shape, M, format): the bench's weight copies (cold L2) in one CUDA graph per
setting of ``ANYBIT_PDL`` (off, late, early: read at each launch, so at the graph's
capture), fp16 cuBLAS beside them, all replayed in turn (``bench._median_replays_us``).
The three settings must give bit-identical outputs (checked first).  Prints each point
and the geomean of off / setting (above 1: faster than without PDL) per format and M;
``--out`` writes the rows as JSON.

Usage: python benchmarks/pdl_ab.py [--formats int4-g128 ...] [--m 64 128 ...]
       [--shapes 4096x4096 ...] [--replays 20] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
from unittest import mock

import torch

from anybit import bench
from anybit.matmul import matmul
from anybit.quantized import quantize

SETTINGS = ("off", "late", "early")


def _with_pdl(setting: str, call):
    """``call`` made with ANYBIT_PDL set to ``setting`` (read at its launches)."""
    def run():
        with mock.patch.dict(os.environ, {"ANYBIT_PDL": setting}):
            return call()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="+", default=["int4-g128"])
    parser.add_argument("--m", nargs="+", type=int, default=[64, 128, 256, 1024])
    parser.add_argument("--shapes", nargs="+", default=[f"{n}x{k}" for n, k in bench.STANDARD_SHAPES])
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--out")
    args = parser.parse_args()
    device = torch.device("cuda")
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    gen = torch.Generator(device=device).manual_seed(0)
    rows = []
    for shape in args.shapes:
        n, k = map(int, shape.split("x"))
        w = torch.randn(n, k, dtype=torch.float16, device=device, generator=gen) * 0.02
        w16 = [w.clone() for _ in range(bench._copies(2 * n * k, l2))]
        for fmt in args.formats:
            qw = quantize(w, fmt)
            copies = [qw] + [bench._clone(qw) for _ in range(bench._copies(qw.nbytes, l2) - 1)]
            for m in args.m:
                x = torch.randn(m, k, dtype=torch.float16, device=device, generator=gen)
                outs = [_with_pdl(setting, lambda: matmul(x, qw))() for setting in SETTINGS]
                if not all(torch.equal(outs[0], out) for out in outs[1:]):
                    raise AssertionError(f"{fmt} {n}x{k} M={m}: the outputs differ between PDL settings")
                call_sets = [[lambda i=i: x @ w16[i].t() for i in range(len(w16))]]
                call_sets += [[_with_pdl(setting, lambda c=c: matmul(x, c)) for c in copies] for setting in SETTINGS]
                times = bench._median_replays_us(call_sets, args.replays)
                row = {"N": n, "K": k, "M": m, "format": fmt, "copies": len(copies), "fp16_us": times[0] / len(w16),
                       **{f"{s}_us": t / len(copies) for s, t in zip(SETTINGS, times[1:])}}
                rows.append(row)
                gains = ", ".join(f"off/{s} {row['off_us'] / row[f'{s}_us']:.3f}" for s in SETTINGS[1:])
                print(f"{fmt:>10} {n:6d}x{k:<6d} M={m:5d} copies {len(copies):3d}: fp16 {row['fp16_us']:8.2f} us, "
                      + ", ".join(f"{s} {row[f'{s}_us']:8.2f}" for s in SETTINGS) + f"; {gains}", flush=True)
        del w16
        torch.cuda.empty_cache()
    print("geomean of off / setting (above 1: faster with PDL)")
    for fmt in args.formats:
        for m in args.m:
            points = [r for r in rows if r["format"] == fmt and r["M"] == m]
            ratios = {s: math.exp(sum(math.log(r["off_us"] / r[f"{s}_us"]) for r in points) / len(points))
                      for s in SETTINGS[1:]}
            print(f"{fmt:>10} M={m:5d}: " + ", ".join(f"{s} {v:.3f}" for s, v in ratios.items()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(device), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
