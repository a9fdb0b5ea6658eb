"""Whether a product's time depends on what else its timing harness replays: each graph
replayed alone (``bench._time_per_call``, as ws_diagnostics timed a diag until v55) against the
graphs of fp16 cuBLAS and the variants taking turns (``bench._median_replays_us``, as ``anybit
bench``, ``anybit tune`` and gemv_variants time them), in one process on the same weights, twice
(docs/NOTES-gemm.md v55: the first timing after a shape's weights were made ran up to 15% slow).

Usage on a CUDA machine: PYTHONPATH=src python benchmarks/harness_probe.py FORMAT NxK M VARIANT..."""

from __future__ import annotations

import os
import sys

import torch

from anybit import bench

sys.path.insert(0, os.path.dirname(__file__))
import _weights  # noqa: E402
import gemv_variants  # noqa: E402


def main() -> None:
    fmt, shape, m, variants = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    n, k, qw, copies, w16 = _weights.weights(shape, fmt)
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    sets = {"fp16": [lambda i=i: x @ w16[i].t() for i in range(len(w16))]}
    for text in variants:
        config = gemv_variants._config(text, m, n, k, "gemm")
        sets[text] = [gemv_variants._call(x, c, config) for c in copies]
    per_call = {name: len(calls) for name, calls in sets.items()}
    for round_ in range(2):
        alone = {name: bench._median_replays_us([calls], 20)[0] / per_call[name] for name, calls in sets.items()}
        turns = dict(zip(sets, bench._median_replays_us(list(sets.values()), 20)))
        for name in sets:
            print(f"{fmt} {shape} M={m} round {round_} {name:34s} alone {alone[name]:8.2f} us, "
                  f"taking turns {turns[name] / per_call[name]:8.2f} us", flush=True)


if __name__ == "__main__":
    main()
