"""Time the plan anybit.matmul picks with this tree's Gluon GEMM kernels against a baseline
tree's, in one process and alternating (the measure-predict loop's A/B tool for a kernel
change that keeps the plans and the launchers' arguments: the baseline kernels are launched
by this tree's launchers; for a change beyond the kernels, ``tree_ab.py``, and for a baseline
from before the warp-specialized kernel took y's row stride, ``stride_ym``, or its table
pointer, ``table_ptr`` (v56), which its kernel lacks).

Usage on a CUDA machine::

    mkdir -p BASE && for f in gemm_gluon.py gemm_gluon_ws.py; do
        git show REV:src/anybit/_matmul/$f > BASE/$f; done
    PYTHONPATH=src python benchmarks/ws_ab.py --baseline BASE --formats int4-g128 \
        --m 64 128 256 1024 [--shapes 4096x4096 ...] [--rounds 2] [--out results.json]

At each point both kernels' results are checked against float64 (the same bound as the
tests), then timed ``--rounds`` times each in the order A B B A A B ... (BENCH.md: graph-launched,
cold L2, fp16 cuBLAS in the same run).  Points whose plan uses neither Gluon kernel are
skipped (the kernels compared are the same)."""

from __future__ import annotations

import json
import os
import sys
import types

import torch

import anybit
from anybit import bench
from anybit._matmul import gemm as gm
from anybit._matmul import gemm_gluon, gemm_gluon_ws, tuning

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))
import _weights  # noqa: E402
from conftest import assert_matmul_close, unit_roundoff  # noqa: E402

GLUON = (gm.Kernel.GLUON, gm.Kernel.GLUON_WS)


def load_baseline(directory: str) -> tuple[types.ModuleType, types.ModuleType]:
    """The baseline's gemm_gluon and gemm_gluon_ws as modules of a package of their own
    (the rest of anybit shared with this tree)."""
    package = types.ModuleType("anybit_baseline")
    package.__path__ = [directory]
    sys.modules["anybit_baseline"] = package
    modules = []
    for name in ("gemm_gluon", "gemm_gluon_ws"):
        # the baseline's gemm_gluon_ws imports the baseline's gemm_gluon
        text = _weights.absolute_imports(open(os.path.join(directory, f"{name}.py")).read(), keep=("gemm_gluon",))
        modules.append(_weights.load_source(f"anybit_baseline.{name}", text, directory))
    return modules[0], modules[1]


class _Kernels:
    """Swaps the kernels the launchers import (they import them per call)."""

    def __init__(self, gluon, ws):
        self.kernels = (gluon.gemm_gluon_kernel, ws.gemm_gluon_ws_kernel)

    def __enter__(self):
        self.saved = (gemm_gluon.gemm_gluon_kernel, gemm_gluon_ws.gemm_gluon_ws_kernel)
        gemm_gluon.gemm_gluon_kernel, gemm_gluon_ws.gemm_gluon_ws_kernel = self.kernels

    def __exit__(self, *exc):
        gemm_gluon.gemm_gluon_kernel, gemm_gluon_ws.gemm_gluon_ws_kernel = self.saved


def main() -> None:
    parser = _weights.ab_parser(__doc__, "folder with the baseline's gemm_gluon.py, gemm_gluon_ws.py",
                                [64, 128, 256, 1024])
    args = parser.parse_args()
    versions = {"new": _Kernels(gemm_gluon, gemm_gluon_ws), "base": _Kernels(*load_baseline(args.baseline))}
    rows = []
    for spec in args.formats:
        for shape in args.shapes:
            n, k, qw, copies, w16 = _weights.weights(shape, spec)
            for m in args.m:
                plan = tuning.plan(spec, n, k, m, qw.format.group_len(k), qw.format.bits, qw.codes.device)
                if plan.kernel not in GLUON:
                    continue
                x = torch.randn(m, k, device="cuda", dtype=torch.float16)
                fp16_us = bench._time_per_call(lambda i: lambda: x @ w16[i].t(), len(w16), 20)
                for kernels in versions.values():
                    with kernels:
                        assert_matmul_close(anybit.matmul(x, qw), x, qw, weight_roundoff=unit_roundoff(x.dtype))

                def timer(kernels):
                    def run():
                        with kernels:
                            return bench._time_per_call(lambda i: lambda: anybit.matmul(x, copies[i]), len(copies), 20)
                    return run
                timers = {name: timer(kernels) for name, kernels in versions.items()}
                rows.append(_weights.ab_point(spec, n, k, m, plan.label(), fp16_us, timers, args.rounds))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
