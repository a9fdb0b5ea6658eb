"""anybit: low-bit weights for LLM inference.

Quick use::

    import anybit
    summary = anybit.quantize_(model, "int4-g128")   # nn.Linear -> QuantLinear
    anybit.save(model, "out/")
    model = anybit.load(config_or_model, "out/")

    qw = anybit.quantize(weight, "nf4-g64")          # (N, K) -> QuantizedWeight
    y = anybit.matmul(x, qw, bias)                    # x (..., K) -> y (..., N)
"""

from ._version import __version__
from .evaluation import perplexity
from .formats import WeightFormat, all_specs, parse_format, registered_formats
from .io import load, save
from .matmul import matmul
from .nn import QuantizeSummary, QuantLinear, quantize_
from .quantized import Method, QuantizedWeight, quantize

__all__ = [
    "Method",
    "QuantLinear",
    "QuantizeSummary",
    "QuantizedWeight",
    "WeightFormat",
    "__version__",
    "all_specs",
    "load",
    "matmul",
    "parse_format",
    "perplexity",
    "quantize",
    "quantize_",
    "registered_formats",
    "save",
]
