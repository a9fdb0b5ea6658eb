"""The decoding step of ``anybit bench --e2e``'s model with one of ``anybit.SiblingFusion``'s rules
on (the default) and off, in one process: ``residual`` (residual adds folded into the decode
kernel), ``norm`` (an RMSNorm of a product written by the product's own launch) or ``glu``
(the MLP's silu(gate) * up written by the gate/up launch).

Usage on a CUDA machine::

    PYTHONPATH=src python benchmarks/e2e_fusion_rule.py residual|norm|glu 1,8 [--no-fp16]

Prints milliseconds per step (best of two rounds of 50 graph replays) for fp16 (unless
``--no-fp16``) and for int4-g128 with the rule off and on, and the ratios to fp16 at the same
batch size.  (Results before this script took the rule as an argument: ``e2e_residual.py``,
the same with ``residual``.)
"""
import copy
import sys

import torch
from _steps import base_model, measure

from anybit import e2e
from anybit.nn import quantize_

RULES = ("residual", "norm", "glu")
rule = sys.argv[1]
if rule not in RULES:
    raise SystemExit(f"rule {rule!r}: expected one of {', '.join(RULES)}")
batches = [int(b) for b in sys.argv[2].split(",")]
base = base_model()
with_fp16 = "--no-fp16" not in sys.argv
if with_fp16:
    e2e._compile_layers(base, False)
fp16 = {batch: measure(base, batch, "float16") if with_fp16 else None for batch in batches}
model = copy.deepcopy(base)
del base
torch.cuda.empty_cache()
quantize_(model, "int4-g128", skip=(), progress=False)
for on in (False, True):
    torch._dynamo.reset()
    e2e._compile_layers(model, True, **{rule: on})
    for batch in batches:
        ms = measure(model, batch, f"int4 {rule}={on}")
        if with_fp16:
            print(f"    -> {fp16[batch] / ms:.3f}x fp16")
