"""The decoding step of ``anybit bench --e2e``'s model with several attentions, in one process:
fp16 and int4-g128 built once, each (model, attention) compiled and captured in turn, so the
attentions are compared on the same GPU state.

Usage on a CUDA machine::

    PYTHONPATH=src python benchmarks/e2e_attention.py 1,8,32 sdpa-packed-gqa,anybit-gqa

Prints milliseconds per step (best of two rounds of 50 graph replays) and, for int4-g128, the
ratio to fp16 with the same attention at the same batch size.  The layers are compiled as the
benchmark compiles them (``e2e._compile_layers``).
"""
import copy
import sys

import torch
from _steps import base_model, measure

from anybit import e2e
from anybit.nn import quantize_

batches = [int(b) for b in sys.argv[1].split(",")]
attentions = sys.argv[2].split(",")
base = base_model()
quantized = copy.deepcopy(base)
quantize_(quantized, "int4-g128", skip=(), progress=False)
for attention in attentions:
    times = {}
    for name, model in (("float16", base), ("int4-g128", quantized)):
        torch._dynamo.reset()
        e2e.use_attention(model, attention)
        e2e._compile_layers(model, name != "float16")
        times[name] = [measure(model, batch, f"{name} {attention}") for batch in batches]
    for batch, fp16, int4 in zip(batches, *times.values()):
        print(f"    {attention} batch {batch}: int4-g128 {fp16 / int4:.3f}x fp16")
