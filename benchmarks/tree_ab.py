"""Time ``anybit.matmul`` of this tree against a baseline tree's, in one process and
alternating, on the same weights: the A/B tool for a change that reaches beyond the Gluon
kernels (``ws_ab.py``), e.g. the stored layout of the codes, which every kernel reads.

Usage on a CUDA machine::

    git archive REV src/anybit | tar -x -C BASE      # BASE/src/anybit: the baseline package
    PYTHONPATH=src python benchmarks/tree_ab.py --baseline BASE/src/anybit --formats int4-g128 \\
        --m 1 16 64 256 [--shapes 4096x4096 ...] [--rounds 2] [--out results.json]

The baseline package is loaded as ``anybit_base`` (its custom ops as ``anybit_base::``).
Each weight is quantized once by this tree; the baseline gets the same codes in its own
stored order (4-bit codes in natural order where its ``packing`` has no pair-transposed
layout) and the same parameters.  Both plans come from the same tuned table (the baseline's
own copy).  At each point both results are checked against float64 (the tests' bound), then
each is timed ``--rounds`` times in the order A B B A ... (BENCH.md: graph-launched, cold
L2, fp16 cuBLAS in the same run)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile

import torch

import anybit
from anybit import bench, packing
from anybit._matmul import tuning

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.dirname(__file__))
import _weights  # noqa: E402
from conftest import assert_matmul_close, unit_roundoff  # noqa: E402


def load_baseline(directory: str):
    """The package at ``directory`` (a copy of ``src/anybit``) as ``anybit_base``, its
    operators renamed so that they do not clash with this tree's."""
    copy = os.path.join(tempfile.mkdtemp(), "anybit_base")
    shutil.copytree(directory, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for root, _, files in os.walk(copy):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                text = open(path).read()
                text = text.replace('"anybit::', '"anybit_base::').replace("torch.ops.anybit.",
                                                                            "torch.ops.anybit_base.")
                open(path, "w").write(text)
    spec = importlib.util.spec_from_file_location("anybit_base", os.path.join(copy, "__init__.py"),
                                                  submodule_search_locations=[copy])
    module = importlib.util.module_from_spec(spec)
    sys.modules["anybit_base"] = module
    spec.loader.exec_module(module)
    return module


def baseline_weight(base, qw):
    """``qw`` as the baseline's QuantizedWeight, its codes in the baseline's stored order."""
    codes = qw.codes
    if packing.pairs_transposed(qw.format.bits) and not hasattr(base.packing, "pairs_transposed"):
        codes = packing.transpose_pairs(codes)
    return base.QuantizedWeight(base.parse_format(qw.format.spec), qw.shape, codes, qw.params, qw.dtype)


def _shape_rows(base, spec: str, shape: str, ms: list[int], rounds: int) -> list[dict]:
    """Check and time both trees at each M on one weight shape; one row per M."""
    n, k, qw, copies, w16 = _weights.weights(shape, spec)
    base_copies = [baseline_weight(base, c) for c in copies]
    rows = []
    for m in ms:
        plan = tuning.plan(spec, n, k, m, qw.format.group_len(k), qw.format.bits, qw.codes.device)
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        fp16_us = bench._time_per_call(lambda i: lambda: x @ w16[i].t(), len(w16), 20)
        calls = {"new": (anybit.matmul, copies), "base": (base.matmul, base_copies)}
        for matmul, weights in calls.values():
            assert_matmul_close(matmul(x, weights[0]), x, qw, weight_roundoff=unit_roundoff(x.dtype))

        def timer(matmul, weights):
            return lambda: bench._time_per_call(lambda i: lambda: matmul(x, weights[i]), len(weights), 20)
        rows.append(_weights.ab_point(spec, n, k, m, plan.label(), fp16_us,
                                      {name: timer(*call) for name, call in calls.items()}, rounds))
    return rows


def main() -> None:
    parser = _weights.ab_parser(__doc__, "a copy of the baseline's src/anybit", [1, 16, 64, 256])
    args = parser.parse_args()
    base = load_baseline(args.baseline)
    rows = []
    for spec in args.formats:
        for shape in args.shapes:
            rows += _shape_rows(base, spec, shape, args.m, args.rounds)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
