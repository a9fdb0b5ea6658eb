"""Integer grids: symmetric ``intK-gG`` and asymmetric ``uintK-gG``, K = 1..8."""

from __future__ import annotations

import re

import torch
from ._base import BitsGroupFormat, Decode, KernelDecode, TensorSpec, round_scales
from .registry import register_format

@register_format
class IntFormat(BitsGroupFormat):
    """Signed symmetric K-bit integers with one scale per group.

    For K >= 2 a code ``c`` in [0, 2**K) stands for ``(c - 2**(K-1)) * scale``:
    the two's-complement grid -2**(K-1) .. 2**(K-1) - 1 stored offset-binary.
    Round-to-nearest sets ``scale = clip * absmax / (2**(K-1) - 1)``, so the
    most negative level is representable but unused by RTN.

    K = 1 is the binary grid: code ``c`` stands for ``(2c - 1) * scale``, i.e.
    ``{-scale, +scale}``, with ``scale = clip * mean(|w|)`` over the group (the
    least-squares scale for sign quantization).

    Scales are fp16, or bf16 for bf16 models (see ``anybit.quantize``).
    Storage per weight: K bits + 16 / G bits of scale.
    """

    family = "int"
    pattern = re.compile(r"^int(\d+)-g(\w+)$")
    template = "intK-gG"
    summary = "signed symmetric K-bit integers, fp16/bf16 scale per group; the general-purpose choice"
    bit_range = range(1, 9)

    def param_specs(self, out_features, in_features, dtype):
        return {"scales": TensorSpec((out_features, self.num_groups(in_features)), dtype)}

    def overhead_bits(self, out_features, in_features):
        return 16 / self.group_len(in_features)

    def fit(self, wg, mask, clip, prepared, dtype):
        if self.bits == 1:
            mean_abs = (wg.double().abs() * mask).sum(-1) / mask.sum(-1)
            scales = clip * mean_abs
        else:
            scales = clip * wg.abs().amax(-1).double() / (2 ** (self.bits - 1) - 1)
        return {"scales": round_scales(scales, dtype, "int scales")}

    def encode(self, wg, params):
        scale = params["scales"].float().unsqueeze(-1)
        if self.bits == 1:
            return (wg >= 0).to(torch.uint8)
        half = 2 ** (self.bits - 1)
        q = torch.round(wg / scale).clamp_(-half, half - 1)
        return (q + half).to(torch.uint8)

    def decode(self, codes, params, dtype):
        scale = params["scales"].to(dtype).unsqueeze(-1)
        c = codes.to(dtype)
        if self.bits == 1:
            return (2 * c - 1) * scale
        return (c - 2 ** (self.bits - 1)) * scale

    def kernel_decode(self):
        return KernelDecode(Decode.BINARY if self.bits == 1 else Decode.SYMMETRIC)


@register_format
class UIntFormat(BitsGroupFormat):
    """Asymmetric K-bit integers with a scale and an integer zero point per group.

    A code ``c`` in [0, 2**K) stands for ``(c - zero) * scale``.  The range
    fitted is [min(w, 0), max(w, 0)] shrunk by ``clip``; ``scale = range /
    (2**K - 1)`` and ``zero = round(-min / scale)`` in [0, 2**K), so 0.0 is
    always exactly representable.

    Scales are fp16/bf16, zero points uint8.
    Storage per weight: K bits + (16 + 8) / G bits.
    """

    family = "uint"
    pattern = re.compile(r"^uint(\d+)-g(\w+)$")
    template = "uintK-gG"
    summary = "asymmetric K-bit integers, scale + zero point per group; for skewed weight rows"
    param_names = ("scales", "zeros")
    bit_range = range(1, 9)

    def param_specs(self, out_features, in_features, dtype):
        shape = (out_features, self.num_groups(in_features))
        return {"scales": TensorSpec(shape, dtype), "zeros": TensorSpec(shape, torch.uint8)}

    def overhead_bits(self, out_features, in_features):
        return (16 + 8) / self.group_len(in_features)

    def fit(self, wg, mask, clip, prepared, dtype):
        levels = 2**self.bits - 1
        lo = wg.amin(-1).clamp(max=0).double() * clip
        hi = wg.amax(-1).clamp(min=0).double() * clip
        scales = round_scales((hi - lo) / levels, dtype, "uint scales")
        zeros = torch.round(-lo / scales.double()).clamp_(0, levels)
        return {"scales": scales, "zeros": zeros.to(torch.uint8)}

    def encode(self, wg, params):
        scale = params["scales"].float().unsqueeze(-1)
        zero = params["zeros"].float().unsqueeze(-1)
        q = (torch.round(wg / scale) + zero).clamp_(0, 2**self.bits - 1)
        return q.to(torch.uint8)

    def decode(self, codes, params, dtype):
        scale = params["scales"].to(dtype).unsqueeze(-1)
        zero = params["zeros"].to(dtype).unsqueeze(-1)
        return (codes.to(dtype) - zero) * scale

    def kernel_decode(self):
        return KernelDecode(Decode.ZERO_POINT)
