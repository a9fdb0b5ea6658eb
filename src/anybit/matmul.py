"""``anybit.matmul``: y = x @ W^T (+ bias) for a quantized W, and the dispatcher.

The dispatcher is the only place that chooses an implementation: callers
(``QuantLinear``, user code) always go through :func:`matmul`.  The choice
depends on the inputs and on ``ANYBIT_BACKEND``, read at call time:

``auto`` (default)
    the Triton kernels for CUDA inputs they support (fp16/bf16 x, integer and
    lookup-table formats): the decode kernel (:mod:`anybit._matmul.gemv`) for
    x with at most ``MAX_M`` = 32 rows; above, the plan of
    :func:`anybit._matmul.tuning.plan` (looked up when the op runs): a per-GPU table measured by
    ``anybit tune`` where one applies, else, for a shape or format that GPU's tables do not
    hold, the performance model's first choice (Hopper, formats of the warp-specialized
    kernel), else the heuristic (the GEMM kernel,
    :mod:`anybit._matmul.gemm`, below ``DEQUANT_MIN_M`` = 256 rows, and from
    there W dequantized by a Triton kernel to x's dtype and multiplied by
    cuBLAS, measured faster there); the reference path for everything else.
    All compute the same function; the kernels round differently (see their
    docstrings).
``triton``
    the Triton kernels, or a ValueError saying why they cannot take the inputs.
    With ``TRITON_INTERPRET=1`` it runs on CPU tensors in Triton's interpreter.
``reference``
    the pure torch reference (:mod:`anybit._matmul.reference`).
"""

from __future__ import annotations

import enum
import os

import torch
from torch import Tensor

from ._matmul.gemm import planned_matmul
from ._matmul.gemv import MAX_M, gemv, unsupported_reason
from ._matmul.reference import matmul_reference
from .quantized import QuantizedWeight

ACTIVATION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
BACKEND_ENV = "ANYBIT_BACKEND"


class Backend(str, enum.Enum):
    AUTO = "auto"
    REFERENCE = "reference"
    TRITON = "triton"


def requested_backend() -> Backend:
    """The backend ``ANYBIT_BACKEND`` asks for (``auto`` when unset)."""
    value = os.environ.get(BACKEND_ENV, Backend.AUTO.value).strip().lower()
    try:
        return Backend(value)
    except ValueError:
        accepted = ", ".join(b.value for b in Backend)
        raise ValueError(f"{BACKEND_ENV}={value!r} is not supported; accepted: {accepted}") from None


def select_backend(x: Tensor, qw: QuantizedWeight) -> Backend:
    """Deterministic choice of implementation for these inputs."""
    requested = requested_backend()
    if requested is Backend.REFERENCE:
        return requested
    reason = unsupported_reason(x, qw)
    if requested is Backend.TRITON and reason is not None:
        raise ValueError(f"{BACKEND_ENV}=triton cannot run these inputs: {reason}")
    if requested is Backend.AUTO and (reason is not None or x.device.type != "cuda"):
        return Backend.REFERENCE
    return Backend.TRITON


def _check_inputs(x: Tensor, qw: QuantizedWeight, bias: Tensor | None) -> None:
    if not isinstance(qw, QuantizedWeight):
        raise ValueError(f"qw must be a QuantizedWeight (from anybit.quantize), got {type(qw).__name__}")
    n, k = qw.shape
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor of shape (..., {k}), got {type(x).__name__}")
    if x.dtype not in ACTIVATION_DTYPES:
        raise ValueError(f"x has dtype {x.dtype}; accepted: torch.float16, torch.bfloat16, torch.float32")
    if x.dim() == 0 or x.shape[-1] != k:
        raise ValueError(f"x has shape {tuple(x.shape)}; its last dim must be in_features={k}")
    if x.device != qw.device:
        raise ValueError(f"x is on {x.device} but the quantized weight is on {qw.device}; move one of them")
    if bias is not None:
        if not isinstance(bias, Tensor) or tuple(bias.shape) != (n,):
            shape = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
            raise ValueError(f"bias must be a tensor of shape ({n},), got {shape}")
        if not bias.is_floating_point():
            raise ValueError(f"bias must be floating point, got dtype {bias.dtype}")
        if bias.device != qw.device:
            raise ValueError(f"bias is on {bias.device} but the quantized weight is on {qw.device}")


def matmul(x: Tensor, qw: QuantizedWeight, bias: Tensor | None = None) -> Tensor:
    """y = x @ W^T + bias for a quantized W of shape (N, K).

    Args:
        x: (..., K), any number of leading dims, fp16, bf16 or fp32, on W's device.
        qw: the quantized weight, from :func:`anybit.quantize`.
        bias: optional (N,), any float dtype.

    Returns:
        (..., N) in x's dtype.
    """
    _check_inputs(x, qw, bias)
    backend = select_backend(x, qw)
    if backend is Backend.REFERENCE:
        return matmul_reference(x, qw, bias)
    if backend is Backend.TRITON:
        if x.numel() // qw.shape[1] <= MAX_M:
            return gemv(x, qw, bias)
        return planned_matmul(x, qw, bias)
    raise AssertionError(f"unhandled backend {backend}")
