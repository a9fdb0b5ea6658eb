"""The int4-g128 decoding step of ``anybit bench --e2e``'s model at batch 1 with the decode
heuristic's one-row rule for layers of few tiles (``gemv.ONE_ROW_FEW_TILES``) on and off, in one
process: the model quantized once, its layers compiled once per setting (the rule is read while
the layers are traced), the best of three rounds of 50 graph replays.

Usage on a CUDA machine::

    PYTHONPATH=src python benchmarks/e2e_few_tiles.py
"""
import copy

import torch
from _steps import base_model, measure

from anybit import e2e
from anybit._matmul import gemv as g
from anybit.nn import quantize_

base = base_model()
quantize_(base, "int4-g128", skip=(), progress=False)
for rule in (g.ONE_ROW_FEW_TILES, 0):
    g.ONE_ROW_FEW_TILES = rule
    torch._dynamo.reset()
    model = copy.deepcopy(base)
    e2e._compile_layers(model, True)
    measure(model, 1, f"few-tiles rule {rule}", rounds=3)
    del model
