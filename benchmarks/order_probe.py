"""Does the order of timings move them?  fp16 cuBLAS (F) and the plan anybit.matmul picks (A)
timed one after the other in a fixed sequence, each timing as ``anybit bench``'s (graph-launched,
cold L2, median of the replays), at M=4096 where both run the GPU at its power limit.
docs/NOTES-gemm.md v24.

Usage on a GPU::

    PYTHONPATH=src python benchmarks/order_probe.py 8192x8192 28672x4096 [--format int4-g128]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

import anybit
from anybit import bench

sys.path.insert(0, os.path.dirname(__file__))
import _weights  # noqa: E402

SEQUENCE = "FFFFFFAAAFFFAAAFAFAF"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("shapes", nargs="+")
    parser.add_argument("--format", default="int4-g128")
    parser.add_argument("--m", type=int, default=4096)
    args = parser.parse_args()
    for shape in args.shapes:
        n, k, qw, copies, w16 = _weights.weights(shape, args.format)
        x = torch.randn(args.m, k, device="cuda", dtype=torch.float16)
        timings = {
            "F": lambda: bench._time_per_call(lambda i: lambda: x @ w16[i].t(), len(w16), 15),
            "A": lambda: bench._time_per_call(lambda i: lambda: anybit.matmul(x, copies[i]), len(copies), 15),
        }
        print(shape, " ".join(f"{c}{timings[c]():.0f}" for c in SEQUENCE), flush=True)


if __name__ == "__main__":
    main()
