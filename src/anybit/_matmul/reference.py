"""Pure torch reference for ``y = x @ W^T + bias`` on a quantized W.

Every kernel has this as its oracle: same signature as the dispatcher's
backends, exact dequantization (float32 is exact for all formats except
nvfp4, whose three-factor product rounds once), float32 accumulation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..quantized import QuantizedWeight


def matmul_reference(x: Tensor, qw: QuantizedWeight, bias: Tensor | None) -> Tensor:
    """x (..., K) fp16/bf16/fp32 -> y (..., N) in x's dtype; computed in float32."""
    w = qw.dequantize(torch.float32)
    y = x.float() @ w.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
