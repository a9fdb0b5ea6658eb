"""Weight formats: one registered class per family, parsed from spec strings.

========  ================  ==========================================
family    spec              bits per weight (codes + stated overhead)
========  ================  ==========================================
int       intK-gG           K + 16/G
uint      uintK-gG          K + 24/G
nf4       nf4-gG            4 + 16/G
lut       lutK-gG           K + 16/G + 16*2^K/in_features
fp8       fp8-e4m3          8 + 16/in_features
mxfp4     mxfp4             4 + 8/32
nvfp4     nvfp4             4 + 8/16 + 32/(N*in_features)
========  ================  ==========================================

K = 1..8 for int/uint, 2..4 for lut; G in 16, 32, 64, 128, 256 or ``c`` (one
group per row).  Adding a format means writing one class and decorating it
with :func:`register_format`; tests sweep :func:`all_specs`.
"""

# Import order is registration order, which is the order formats are listed in.
from ._base import GROUP_SIZES, TensorSpec, WeightFormat
from .integer import IntFormat, UIntFormat  # isort: skip
from .table import NF4_LEVELS, LUTFormat, NF4Format  # isort: skip
from .floating import FP8Format, MXFP4Format, NVFP4Format  # isort: skip
from .registry import all_specs, parse_format, register_format, registered_formats

__all__ = [
    "GROUP_SIZES",
    "NF4_LEVELS",
    "FP8Format",
    "IntFormat",
    "LUTFormat",
    "MXFP4Format",
    "NF4Format",
    "NVFP4Format",
    "TensorSpec",
    "UIntFormat",
    "WeightFormat",
    "all_specs",
    "parse_format",
    "register_format",
    "registered_formats",
]
