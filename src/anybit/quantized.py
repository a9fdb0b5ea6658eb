"""Quantized weights: :func:`quantize` and the :class:`QuantizedWeight` it returns."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from . import packing
from .formats import WeightFormat, parse_format
from .formats._base import SCALE_DTYPES


class Method(str, enum.Enum):
    """How :func:`quantize` picks each group's parameters."""

    #: Round to nearest with the format's natural range (absmax, min/max).
    RTN = "rtn"
    #: Try each of the format's clipping ratios and keep, per group, the one
    #: with the least squared reconstruction error.
    MSE = "mse"
    #: GPTQ (:mod:`anybit.gptq`): needs calibration data, so only
    #: :func:`anybit.quantize_` (which runs the model) and
    #: :func:`anybit.gptq.gptq_quantize` (given a Hessian) accept it.
    GPTQ = "gptq"


def _parse_method(method: str | Method) -> Method:
    try:
        return Method(method)
    except ValueError:
        accepted = ", ".join(repr(m.value) for m in Method)
        raise ValueError(f"method={method!r} is not supported; accepted: {accepted}") from None


def default_scale_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """bf16 weights keep bf16 scales (range); every other dtype gets fp16 (precision)."""
    return torch.bfloat16 if weight_dtype == torch.bfloat16 else torch.float16


def group(w: Tensor, group_len: int) -> tuple[Tensor, Tensor]:
    """Split (N, K) into (N, ng, G) groups plus a bool mask of real positions.

    A partial last group is padded by repeating the row's last weight, which
    leaves its absmax, min and max unchanged.
    """
    n, k = w.shape
    ng = -(-k // group_len)
    pad = ng * group_len - k
    if pad:
        w = torch.cat([w, w[:, -1:].expand(n, pad)], dim=1)
    mask = torch.ones(ng * group_len, dtype=torch.bool, device=w.device)
    if pad:
        mask[k:] = False
    return w.reshape(n, ng, group_len), mask.reshape(1, ng, group_len).expand(n, ng, group_len)


def ungroup(wg: Tensor, in_features: int) -> Tensor:
    return wg.reshape(wg.shape[0], -1)[:, :in_features]


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A weight matrix of shape (N, K) = (out_features, in_features) in a low-bit format.

    Attributes:
        format: the :class:`~anybit.formats.WeightFormat` giving each code its meaning.
        shape: (N, K).
        codes: int32 (N, packing.packed_words(bits, K)), codes packed as
            described in :mod:`anybit.packing`.
        params: the format's other tensors by name (``format.param_names``):
            ``scales`` (N, ng) always, ``zeros`` (N, ng) uint8 for uint,
            ``table`` (N, 2**K) for lut, ``tensor_scale`` () fp32 for nvfp4.
        dtype: fp16 or bf16, the scale dtype, which is also the default dtype
            of :meth:`dequantize` (for mxfp4/nvfp4, whose scales are 8-bit
            floats, only the latter).
    """

    format: WeightFormat
    shape: tuple[int, int]
    codes: Tensor
    params: Mapping[str, Tensor]
    dtype: torch.dtype

    def __post_init__(self) -> None:
        n, k = self.shape
        expected = (n, packing.packed_words(self.format.bits, k))
        if self.codes.dtype != torch.int32 or tuple(self.codes.shape) != expected:
            raise ValueError(
                f"codes must be int32 of shape {expected} for {self.format.spec} {self.shape}, "
                f"got {self.codes.dtype} {tuple(self.codes.shape)}"
            )
        specs = self.format.param_specs(n, k, self.dtype)
        if set(self.params) != set(specs):
            raise ValueError(f"{self.format.spec} needs params {sorted(specs)}, got {sorted(self.params)}")
        for name, spec in specs.items():
            t = self.params[name]
            if t.dtype != spec.dtype or tuple(t.shape) != spec.shape:
                raise ValueError(
                    f"param {name!r} of {self.format.spec} {self.shape} must be {spec.dtype} {spec.shape}, "
                    f"got {t.dtype} {tuple(t.shape)}"
                )
            if t.device != self.codes.device:
                raise ValueError(f"param {name!r} is on {t.device} but codes are on {self.codes.device}")

    @classmethod
    def empty(cls, fmt: WeightFormat, shape: tuple[int, int], dtype: torch.dtype,
              device: torch.device | str | None = None) -> QuantizedWeight:
        """A weight of ``shape`` (N, K) in ``fmt`` with scale dtype ``dtype`` whose tensors
        are allocated (codes int32 (N, packed words), the format's params) but not written."""
        n, k = shape
        codes = torch.empty(n, packing.packed_words(fmt.bits, k), dtype=torch.int32, device=device)
        params = {name: torch.empty(spec.shape, dtype=spec.dtype, device=device)
                  for name, spec in fmt.param_specs(n, k, dtype).items()}
        return cls(fmt, (n, k), codes, params, dtype)

    @property
    def device(self) -> torch.device:
        return self.codes.device

    @property
    def nbytes(self) -> int:
        """Bytes of all stored tensors: packed codes plus scales, zeros, tables."""
        return self.codes.nbytes + sum(t.nbytes for t in self.params.values())

    @property
    def bits_per_weight(self) -> float:
        """Storage bits per weight, everything included."""
        return 8 * self.nbytes / (self.shape[0] * self.shape[1])

    def to(self, device: torch.device | str) -> QuantizedWeight:
        """A copy on ``device`` (the same object when already there)."""
        device = torch.device(device)
        if device == self.device:
            return self
        params = {k: v.to(device) for k, v in self.params.items()}
        return QuantizedWeight(self.format, self.shape, self.codes.to(device), params, self.dtype)

    def unpacked_codes(self) -> Tensor:
        """uint8 (N, K) codes, each in [0, 2**bits)."""
        return packing.unpack(self.codes, self.format.bits, self.shape[1])

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        """The weight each code stands for, (N, K) in ``dtype`` (default: ``self.dtype``).

        Values are computed in float32 (float64 when ``dtype`` is float64,
        where they are exact for every format) and then rounded once to ``dtype``.
        """
        dtype = self.dtype if dtype is None else dtype
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        k = self.shape[1]
        grouped, _ = group(self.unpacked_codes(), self.format.group_len(k))
        values = self.format.decode(grouped, dict(self.params), compute)
        return ungroup(values, k).to(dtype)

    def __repr__(self) -> str:
        return (
            f"QuantizedWeight(format={self.format.spec!r}, shape={self.shape}, dtype={self.dtype}, "
            f"bits_per_weight={self.bits_per_weight:.3f}, device={self.device})"
        )


def _check_weight(weight: Tensor) -> None:
    if not isinstance(weight, Tensor):
        raise ValueError(f"weight must be a torch.Tensor of shape (out_features, in_features), got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(
            f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}"
        )
    if weight.shape[0] == 0 or weight.shape[1] == 0:
        raise ValueError(f"weight must be non-empty, got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise ValueError(f"weight must be a floating-point tensor, got dtype {weight.dtype}")
    if weight.device.type == "meta":
        raise ValueError("weight is on the meta device: materialise the model's weights before quantizing")
    if not torch.isfinite(weight).all():
        bad = (~torch.isfinite(weight)).nonzero()[0].tolist()
        raise ValueError(f"weight contains NaN or inf (first at index {tuple(bad)}); quantize only finite weights")


def quantize(
    weight: Tensor,
    fmt: str | WeightFormat,
    *,
    method: str | Method = "rtn",
    scale_dtype: torch.dtype | None = None,
) -> QuantizedWeight:
    """Quantize a weight matrix to a low-bit format.

    Args:
        weight: (N, K) = (out_features, in_features), any float dtype, finite,
            on any device (the result lives on the same device).
        fmt: a spec string such as ``"int4-g128"`` or a WeightFormat.
        method: ``"rtn"`` (round to nearest) or ``"mse"`` (per-group search of
            the clipping ratio that minimises squared reconstruction error).
        scale_dtype: fp16 or bf16 for the scales; default bf16 for bf16
            weights, fp16 otherwise.

    Raises:
        ValueError: for an unknown format, method or scale dtype, or a weight
            that is not 2-D, not floating point, empty, or not finite.
    """
    fmt = parse_format(fmt)
    method = _parse_method(method)
    if method is Method.GPTQ:
        raise ValueError(
            "method='gptq' needs calibration data: use anybit.quantize_(model, fmt, method='gptq', "
            "calibration=...) or anybit.gptq.gptq_quantize(weight, hessian, fmt)"
        )
    _check_weight(weight)
    dtype = default_scale_dtype(weight.dtype) if scale_dtype is None else scale_dtype
    if dtype not in SCALE_DTYPES:
        raise ValueError(f"scale_dtype={dtype} is not supported; accepted: torch.float16, torch.bfloat16")

    n, k = weight.shape
    wg, mask = group(weight.detach().float(), fmt.group_len(k))
    prepared = fmt.prepare(wg, mask, dtype)
    params = fmt.fit(wg, mask, 1.0, prepared, dtype)
    if method is Method.MSE:
        params = _search_clip(fmt, wg, mask, prepared, params, dtype)
    all_params = {**prepared, **params}
    codes = ungroup(fmt.encode(wg, all_params), k)
    return QuantizedWeight(fmt, (n, k), packing.pack(codes, fmt.bits), all_params, dtype)


def _group_error(fmt: WeightFormat, wg: Tensor, mask: Tensor, params: dict[str, Tensor]) -> Tensor:
    """Squared reconstruction error per group, (N, ng)."""
    decoded = fmt.decode(fmt.encode(wg, params), params, torch.float32)
    return ((decoded - wg) ** 2 * mask).sum(-1)


def _search_clip(fmt, wg, mask, prepared, params, dtype):
    best = dict(params)
    best_err = _group_error(fmt, wg, mask, {**prepared, **best})
    for clip in fmt.clip_candidates:
        candidate = fmt.fit(wg, mask, clip, prepared, dtype)
        err = _group_error(fmt, wg, mask, {**prepared, **candidate})
        better = err < best_err
        best = {name: torch.where(better, candidate[name], best[name]) for name in best}
        best_err = torch.where(better, err, best_err)
    return best
