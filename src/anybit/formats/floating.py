"""Float grids: ``fp8-e4m3``, ``mxfp4`` (OCP MX) and ``nvfp4`` (NVIDIA).

FP4 E2M1 code layout (4 bits, no infinities or NaN)::

    bit   3    2 1    0
        sign  exp  mantissa        magnitudes by code & 7:
                                   0    1    2    3    4  5  6  7
                                   0  0.5  1.0  1.5    2  3  4  6

FP8 E4M3 ("fn" variant: no infinities, 0x7F/0xFF are NaN, max 448)::

    bit   7    6 5 4 3    2 1 0
        sign  exponent   mantissa     bias 7
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from ._base import FixedFormat, TensorSpec, round_scales
from .registry import register_format
from .table import nearest_index

E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_MAX = 6.0
E4M3_MAX = 448.0


def e2m1_encode(x: Tensor) -> Tensor:
    """Round to the nearest FP4 E2M1 value, ties to even, saturating at ±6.

    Returns uint8 codes (layout in the module docstring).  A negative value
    that rounds to zero keeps its sign (code 8, -0.0).
    """
    magnitudes = torch.tensor(E2M1_MAGNITUDES, dtype=x.dtype, device=x.device)
    index = nearest_index(x.abs().clamp(max=E2M1_MAX), magnitudes, ties_to_even=True)
    return (index | (x < 0).long() << 3).to(torch.uint8)


def e2m1_decode(codes: Tensor, dtype: torch.dtype) -> Tensor:
    magnitudes = torch.tensor(E2M1_MAGNITUDES, dtype=dtype, device=codes.device)
    values = torch.cat([magnitudes, -magnitudes])
    return values[codes.long()]


def e4m3_encode(x: Tensor) -> Tensor:
    """Round to FP8 E4M3 (round-half-even, saturating at ±448); uint8 bit patterns."""
    return x.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).view(torch.uint8)


def e4m3_decode(bits: Tensor, dtype: torch.dtype) -> Tensor:
    return bits.view(torch.float8_e4m3fn).to(dtype)


@register_format
class FP8Format(FixedFormat):
    """FP8 E4M3 weights with one scale per output row.

    Code ``c`` (an E4M3 bit pattern) stands for ``e4m3(c) * scale[row]`` with
    ``scale = clip * absmax(row) / 448``, fp16/bf16.  Values are rounded
    half-to-even and saturate at ±448, as ``torch.float8_e4m3fn`` casts do.
    Storage per weight: 8 bits + 16 / in_features bits.
    """

    family = "fp8"
    pattern = re.compile(r"^fp8-e4m3$")
    template = "fp8-e4m3"
    summary = "FP8 E4M3 values, scale per row; near-lossless at 8 bits"

    fixed_bits = 8
    fixed_block = None

    def param_specs(self, out_features, in_features, dtype):
        return {"scales": TensorSpec((out_features, 1), dtype)}

    def overhead_bits(self, out_features, in_features):
        return 16 / in_features

    def fit(self, wg, mask, clip, prepared, dtype):
        return {"scales": round_scales(clip * wg.abs().amax(-1).double() / E4M3_MAX, dtype, "fp8 scales")}

    def encode(self, wg, params):
        return e4m3_encode(wg / params["scales"].float().unsqueeze(-1))

    def decode(self, codes, params, dtype):
        return e4m3_decode(codes, dtype) * params["scales"].to(dtype).unsqueeze(-1)


@register_format
class MXFP4Format(FixedFormat):
    """MXFP4 as defined by the OCP Microscaling Formats (MX) Specification v1.0.

    Blocks of 32 consecutive weights share one E8M0 scale ``X = 2**(s - 127)``
    (``s`` a uint8, 255 = NaN is never produced); each element is FP4 E2M1.
    A code stands for ``e2m1(c) * X``.  The scale follows the spec's
    conversion rule (section 6.3): ``shared_exp = floor(log2(amax)) - 2``,
    where 2 is the exponent of E2M1's largest normal (6 = 1.5 * 2**2);
    elements are rounded half-to-even and clamped to ±6.  An all-zero block
    gets ``s = 0``.  ``method="mse"`` may instead pick the exponent one above
    or below (``clip_candidates``), still a valid MX encoding.
    Storage per weight: 4 bits + 8 / 32 bits.
    """

    family = "mxfp4"
    pattern = re.compile(r"^mxfp4$")
    template = "mxfp4"
    summary = "OCP MX FP4: E2M1 values, power-of-two E8M0 scale per 32; Blackwell-native"
    clip_candidates = (1.0, 2.0, 0.5)

    fixed_bits = 4
    fixed_block = 32

    def param_specs(self, out_features, in_features, dtype):
        return {"scales": TensorSpec((out_features, self.num_groups(in_features)), torch.uint8)}

    def overhead_bits(self, out_features, in_features):
        return 8 / self.fixed_block

    def fit(self, wg, mask, clip, prepared, dtype):
        amax = clip * wg.abs().amax(-1)
        floor_log2 = torch.frexp(amax).exponent - 1  # amax = m * 2**e, m in [0.5, 1)
        shared = torch.where(amax > 0, floor_log2 - 2, torch.full_like(floor_log2, -127))
        return {"scales": (shared.clamp(-127, 127) + 127).to(torch.uint8)}

    def encode(self, wg, params):
        exponent = params["scales"].int().unsqueeze(-1) - 127
        return e2m1_encode(torch.ldexp(wg, -exponent))

    def decode(self, codes, params, dtype):
        exponent = params["scales"].to(dtype).unsqueeze(-1) - 127
        return torch.ldexp(e2m1_decode(codes, dtype), exponent)


@register_format
class NVFP4Format(FixedFormat):
    """NVFP4 as NVIDIA defines it for Blackwell tensor cores.

    Blocks of 16 consecutive weights share an FP8 E4M3 scale, and the whole
    tensor shares one fp32 scale: code ``c`` stands for
    ``e2m1(c) * e4m3(block_scale) * tensor_scale``.  Following NVIDIA's recipe
    (NVIDIA technical blog "Introducing NVFP4 for Efficient and Accurate
    Low-Precision Inference", 2025; TensorRT Model Optimizer's NVFP4 quantizer):
    ``tensor_scale = amax(W) / (6 * 448)`` so that block scales span E4M3's
    range, ``block_scale = e4m3(amax(block) / 6 / tensor_scale)`` (rounded
    half-to-even, saturating), elements rounded half-to-even to E2M1.
    anybit stores ``tensor_scale`` as the decode multiplier (some toolkits store
    its reciprocal) and block scales as E4M3 bit patterns (uint8).
    Storage per weight: 4 bits + 8 / 16 bits + 32 / (N * K) bits.
    """

    family = "nvfp4"
    pattern = re.compile(r"^nvfp4$")
    template = "nvfp4"
    summary = "NVIDIA FP4: E2M1 values, E4M3 scale per 16 plus an fp32 tensor scale"
    param_names = ("scales", "tensor_scale")

    fixed_bits = 4
    fixed_block = 16

    def param_specs(self, out_features, in_features, dtype):
        return {
            "scales": TensorSpec((out_features, self.num_groups(in_features)), torch.uint8),
            "tensor_scale": TensorSpec((), torch.float32),
        }

    def overhead_bits(self, out_features, in_features):
        return 8 / self.fixed_block + 32 / (out_features * in_features)

    def prepare(self, wg, mask, dtype):
        amax = wg.abs().amax().double()
        scale = amax / (E2M1_MAX * E4M3_MAX)  # float64, rounded once to fp32 below
        return {"tensor_scale": torch.where(amax > 0, scale, torch.ones_like(scale)).float()}

    # fit and encode work in float64: the step e4m3 * tensor_scale has up to
    # 28 significant bits, so float32 would round it and make the nearest-value
    # choice depend on how a device evaluates the division.
    def fit(self, wg, mask, clip, prepared, dtype):
        amax = wg.abs().amax(-1).double()
        block_scale = clip * amax / E2M1_MAX / prepared["tensor_scale"].double()
        return {"scales": e4m3_encode(block_scale)}

    def encode(self, wg, params):
        step = e4m3_decode(params["scales"], torch.float64) * params["tensor_scale"].double()
        step = step.unsqueeze(-1)
        scaled = torch.where(step > 0, wg.double() / torch.where(step > 0, step, 1.0), 0.0)
        return e2m1_encode(scaled)

    def decode(self, codes, params, dtype):
        block_scale = e4m3_decode(params["scales"], dtype).unsqueeze(-1)
        return e2m1_decode(codes, dtype) * block_scale * params["tensor_scale"].to(dtype)
