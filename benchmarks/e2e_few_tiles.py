"""The int4-g128 decoding step of ``anybit bench --e2e``'s model at batch 1 with the decode
heuristic's one-row rule for layers of few tiles (``gemv.ONE_ROW_FEW_TILES``) on and off, in one
process: the model quantized once, its layers compiled once per setting (the rule is read while
the layers are traced), the best of three rounds of 50 graph replays.

Usage on a CUDA machine::

    PYTHONPATH=src python benchmarks/e2e_few_tiles.py
"""
import copy
import time

import torch

from anybit import e2e
from anybit._matmul import gemv as g
from anybit.nn import quantize_

t0 = time.time()
base = e2e.random_llama(e2e.LLAMA_31_8B, torch.device("cuda"))
e2e.use_attention(base, e2e.DEFAULT_ATTENTION)
quantize_(base, "int4-g128", skip=(), progress=False)
for rule in (g.ONE_ROW_FEW_TILES, 0):
    g.ONE_ROW_FEW_TILES = rule
    torch._dynamo.reset()
    model = copy.deepcopy(base)
    e2e._compile_layers(model, True)
    ms = e2e.step_ms(model, 1, prompt_len=128, steps=50, rounds=3, max_steps=200)
    print(f"{'few-tiles rule ' + str(rule):>24} batch 1: {ms:.3f} ms/step  ({time.time() - t0:.0f} s)", flush=True)
    del model
