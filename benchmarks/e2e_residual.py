"""The decoding step of ``anybit bench --e2e``'s model with ``anybit.SiblingFusion`` folding the
residual adds into the decode kernel (``residual=True``, the default) and without, in one process.

Usage on a CUDA machine::

    PYTHONPATH=src python benchmarks/e2e_residual.py 1,8 [--no-fp16]

Prints milliseconds per step (best of two rounds of 50 graph replays) for fp16 (unless
``--no-fp16``) and for int4-g128 with each setting, and the ratios to fp16 at the same batch size.
"""
import copy
import sys

import torch
from _steps import base_model, measure

from anybit import e2e
from anybit.nn import quantize_

batches = [int(b) for b in sys.argv[1].split(",")]
base = base_model()
with_fp16 = "--no-fp16" not in sys.argv
if with_fp16:
    e2e._compile_layers(base, False)
fp16 = {batch: measure(base, batch, "float16") if with_fp16 else None for batch in batches}
model = copy.deepcopy(base)
del base
torch.cuda.empty_cache()
quantize_(model, "int4-g128", skip=(), progress=False)
for residual in (False, True):
    torch._dynamo.reset()
    e2e._compile_layers(model, True, residual=residual)
    for batch in batches:
        ms = measure(model, batch, f"int4 residual={residual}")
        if with_fp16:
            print(f"    -> {fp16[batch] / ms:.3f}x fp16")
