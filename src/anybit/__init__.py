"""anybit: low-bit weights for LLM inference.

Quick use::

    import anybit
    summary = anybit.quantize_(model, "int4-g128")   # nn.Linear -> QuantLinear
    anybit.save(model, "out/")
    model = anybit.load(config_or_model, "out/")

    anybit.quantize_(model, "int3-g64", method="gptq", tokenizer=tok)  # calibrated
    anybit.quantize_(model, budget_bits=3.5, tokenizer=tok)            # a format per layer

    qw = anybit.quantize(weight, "nf4-g64")          # (N, K) -> QuantizedWeight
    y = anybit.matmul(x, qw, bias)                    # x (..., K) -> y (..., N)

    # one kernel launch for layers that share their input (q/k/v, gate/up) under torch.compile
    torch.compile(model, options={"post_grad_custom_post_pass": anybit.SiblingFusion()})
"""

from ._version import __version__
from .evaluation import perplexity
from .calibration import calibration_ids
from .formats import WeightFormat, all_specs, parse_format, registered_formats
from .gptq import GPTQOptions, gptq_quantize
from .io import load, save
from .matmul import matmul
from .nn import QuantizeSummary, QuantLinear, quantize_
from .quantized import Method, QuantizedWeight, quantize

__all__ = [
    "GPTQOptions",
    "Method",
    "QuantLinear",
    "QuantizeSummary",
    "QuantizedWeight",
    "WeightFormat",
    "__version__",
    "all_specs",
    "calibration_ids",
    "gptq_quantize",
    "load",
    "matmul",
    "parse_format",
    "perplexity",
    "quantize",
    "quantize_",
    "registered_formats",
    "save",
    "SiblingFusion",
]


def __getattr__(name: str):
    # torch.compile's graph pass, imported on first use (it loads torch._inductor)
    if name == "SiblingFusion":
        from ._matmul.fusion import SiblingFusion

        return SiblingFusion
    raise AttributeError(f"module 'anybit' has no attribute {name!r}")
