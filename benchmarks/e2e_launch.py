"""The decoding step of ``anybit bench --e2e``'s model under several ``ANYBIT_PDL`` settings, in
one process: fp16 and int4-g128 built and compiled once, one CUDA graph per (setting, batch), so
the settings are compared on the same compiled code and the same GPU state.

Usage on a CUDA machine::

    PYTHONPATH=src python benchmarks/e2e_launch.py 1,8,32 off,on

Prints milliseconds per step (best of two rounds of 50 graph replays) and the ratio to fp16 at
the same batch size.  The layers are compiled as the benchmark compiles them
(``e2e._compile_layers``: Inductor's programmatic dependent launch on).
"""
import copy
import os
import sys

import torch
from _steps import base_model, measure

from anybit import e2e
from anybit._matmul.gemv import PDL_ENV
from anybit.nn import quantize_

batches = [int(b) for b in sys.argv[1].split(",")]
settings = sys.argv[2].split(",")
base = base_model()
e2e._compile_layers(base, False)
fp16 = {batch: measure(base, batch, "float16") for batch in batches}
model = copy.deepcopy(base)
del base
torch.cuda.empty_cache()
quantize_(model, "int4-g128", skip=(), progress=False)
torch._dynamo.reset()
e2e._compile_layers(model, True)
for batch in batches:
    for setting in settings:
        os.environ[PDL_ENV] = setting  # read at every launch, so at each capture
        ms = measure(model, batch, f"int4 {PDL_ENV}={setting}")
        print(f"    -> {fp16[batch] / ms:.3f}x fp16")
