"""The decoding step of ``anybit bench --e2e``'s model with Inductor's combo kernels
(``torch._inductor.config.combo_kernels``: independent kernels of a graph launched as one, such
as the rotary embedding of the query, that of the key with its cache write, and the value's cache
write) and without, for fp16 and int4-g128, in one process.

Usage on a CUDA machine::

    PYTHONPATH=src python benchmarks/e2e_combo.py 1,8

Prints milliseconds per step (best of two rounds of 50 graph replays) and the kernels per step
(torch.profiler over one replay) for each model and setting, and int4's ratios to fp16.
"""
import copy
import sys

import torch
import torch._inductor.config
from _steps import base_model, measure

from anybit import e2e
from anybit.nn import quantize_

batches = [int(b) for b in sys.argv[1].split(",")]


def kernels(model, batch):
    decoder = e2e.Decoder(model, batch, 128, max_steps=16)
    decoder.capture()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        decoder.graph.replay()
        torch.cuda.synchronize()
    count = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    del decoder
    torch.cuda.empty_cache()
    return count


base = base_model()
int4 = copy.deepcopy(base)
quantize_(int4, "int4-g128", skip=(), progress=False)
times = {}
for combo in (False, True):
    torch._inductor.config.combo_kernels = combo
    for name, model in (("float16", base), ("int4-g128", int4)):
        torch._dynamo.reset()
        e2e._compile_layers(model, name != "float16")
        for batch in batches:
            times[name, combo, batch] = measure(model, batch, f"{name} combo={combo}")
            print(f"    {kernels(model, batch)} kernels per step", flush=True)
for combo in (False, True):
    for batch in batches:
        print(f"combo={combo} batch {batch}: int4-g128 {times['float16', combo, batch] / times['int4-g128', combo, batch]:.3f}x"
              " fp16")
