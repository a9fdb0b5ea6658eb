"""The decoding step of ``anybit bench --e2e``'s model with the model's whole forward compiled as
one graph (``e2e._compile_layers(scope="model")``, where ``anybit.SiblingFusion`` also folds the
norm before each layer into the previous layer's down projection) or each decoder layer on its
own (``layers``, the benchmark's default), for fp16 and int4-g128 in one process.

Usage on a CUDA machine::

    PYTHONPATH=src python benchmarks/e2e_scope.py model[,layers] 1[,8] [float16,int4-g128]

Prints milliseconds per step (best of two rounds of 50 graph replays) for each model and scope,
and int4's ratio to fp16 with the same scope.
"""
import copy
import sys

import torch
from _steps import base_model, measure

from anybit import e2e
from anybit.nn import quantize_

scopes = sys.argv[1].split(",")
batches = [int(b) for b in sys.argv[2].split(",")]
names = sys.argv[3].split(",") if len(sys.argv) > 3 else ["float16", "int4-g128"]
base = base_model()
int4 = copy.deepcopy(base)
quantize_(int4, "int4-g128", skip=(), progress=False)
forwards = {name: model.forward for name, model in (("float16", base), ("int4-g128", int4))}
for scope in scopes:
    times = {}
    for name, model in (("float16", base), ("int4-g128", int4)):
        if name not in names:
            continue
        torch._dynamo.reset()
        model.forward = forwards[name]
        e2e._compile_layers(model, name != "float16", scope=scope)
        for batch in batches:
            times[name, batch] = measure(model, batch, f"{name} scope={scope}")
        if scope == "layers":
            for layer in model.model.layers:
                layer._compiled_call_impl = None  # back to the eager layer for the next scope
    for batch in batches if len(names) == 2 else []:
        print(f"scope={scope} batch {batch}: int4-g128 {times['float16', batch] / times['int4-g128', batch]:.3f}x fp16",
              flush=True)
