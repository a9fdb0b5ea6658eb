"""The weight-format contract shared by every registered format.

A *format* says what a stored code means (its logical definition).  It does
not say where the code's bits sit in memory: that is the packing's business
(:mod:`anybit.packing`), so that kernels may later use a layout of their own
without changing what any value means.

Every format works on weights split into groups along the input features::

    weight (N, K)  ->  groups (N, ng, G),   ng = ceil(K / G)

where ``G`` is the format's group size (``K`` itself for per-row formats).
When ``K`` is not a multiple of ``G`` the last group of each row is *partial*:
it holds ``K - (ng - 1) * G`` real weights and its statistics (absmax, min,
max, mean) are computed over those alone.  Internally the group is padded by
repeating the row's last weight, and the padded positions are masked out of
every error measure and dropped when the codes are stored.

A format implements four steps, all on float32 tensors of shape (N, ng, G):

``prepare(wg, mask, dtype)``
    tensors that do not depend on the clipping ratio: a per-row codebook, a
    per-tensor scale.  Most formats need none.
``fit(wg, mask, clip, prepared, dtype)``
    per-group parameters, each of shape (N, ng): scales, zero points.
    ``clip`` in (0, 2] shrinks (or widens) the range the group must cover;
    round-to-nearest uses 1.0 and the MSE search tries ``clip_candidates``.
``encode(wg, params)``
    codes, uint8 (N, ng, G), each in [0, 2**bits).
``decode(codes, params, dtype)``
    the value each code stands for, in ``dtype``.  In float64 this is exact
    for every format: it is the reference that kernels are tested against.
"""

from __future__ import annotations

import enum
import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

#: Group sizes accepted by the formats that take a ``-gG`` suffix.
GROUP_SIZES = (16, 32, 64, 128, 256)

#: Default clipping ratios searched by ``method="mse"``: 1.0 down to 0.5.
DEFAULT_CLIPS = tuple(round(1.0 - 0.025 * i, 3) for i in range(21))

#: Scale dtypes a quantized weight may use.
SCALE_DTYPES = (torch.float16, torch.bfloat16)


class Decode(enum.Enum):
    """How a kernel turns a code into a weight; see :class:`KernelDecode`."""

    #: (code - 2**(bits-1)) * scale
    SYMMETRIC = "symmetric"
    #: (2 * code - 1) * scale
    BINARY = "binary"
    #: (code - zero[group]) * scale
    ZERO_POINT = "zero_point"
    #: levels[code] * scale, one table for the whole format
    TABLE = "table"
    #: table[row, code] * scale, one table per output row
    ROW_TABLE = "row_table"


@dataclass(frozen=True)
class KernelDecode:
    """What a kernel needs to decode a format: the mode, and the fixed table if any.

    Every mode is ``integer-or-table value * scale[row, group]``, so kernels
    may apply the scale once per group to a partial dot product.
    """

    mode: Decode
    levels: tuple[float, ...] = ()


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one stored tensor of a quantized weight."""

    shape: tuple[int, ...]
    dtype: torch.dtype


def parse_group(spec: str, text: str) -> int | None:
    """Group size from the ``G`` of ``-gG``; ``"c"`` (per channel) gives None."""
    if text == "c":
        return None
    if text.isdigit() and int(text) in GROUP_SIZES:
        return int(text)
    raise ValueError(
        f"fmt={spec!r}: group size {text!r} is not supported; "
        f"accepted: {', '.join(f'g{g}' for g in GROUP_SIZES)} or gc (one group per row)"
    )


def group_suffix(group_size: int | None) -> str:
    return "gc" if group_size is None else f"g{group_size}"


def group_specs(prefix: str) -> list[str]:
    """``prefix`` with every accepted group suffix: ``int4-g16`` ... ``int4-gc``."""
    return [f"{prefix}-{group_suffix(g)}" for g in (*GROUP_SIZES, None)]


def round_scales(scales: Tensor, dtype: torch.dtype, what: str) -> Tensor:
    """Round float64 scales once to the scale dtype; an all-zero group gets scale 1.

    Formats compute scales in float64 from float64 statistics: float32 would
    round twice, and on CUDA a division by a Python scalar is a multiply by
    its reciprocal, so CPU and GPU could store different scales.

    Raises ValueError when a scale overflows ``dtype`` (fp16 tops out at 65504).
    """
    scales = scales.to(dtype)
    if not torch.isfinite(scales).all():
        raise ValueError(
            f"{what} overflow scale_dtype={dtype}: the weight's magnitude is too large "
            f"for it; pass scale_dtype=torch.bfloat16"
        )
    return torch.where(scales == 0, torch.ones_like(scales), scales)


class WeightFormat(ABC):
    """One weight format: what each code means, and how to fit codes to weights.

    Subclasses are registered with :func:`anybit.formats.register_format` and
    instantiated from spec strings by :func:`anybit.formats.parse_format`.
    Instances are immutable and compare equal when their specs are equal.
    """

    #: Family prefix of the spec string ("int", "nf4", "mxfp4", ...).
    family: ClassVar[str]
    #: Pattern the spec of this family matches; invalid parameters inside a
    #: matching spec raise ValueError from ``from_match``.
    pattern: ClassVar[re.Pattern[str]]
    #: Human-readable spec template for error messages and the format table.
    template: ClassVar[str]
    #: One line on what the format is for.
    summary: ClassVar[str]
    #: Names of the tensors stored besides the packed codes.
    param_names: ClassVar[tuple[str, ...]] = ("scales",)
    #: Clipping ratios the MSE search tries.
    clip_candidates: ClassVar[tuple[float, ...]] = DEFAULT_CLIPS

    def __init__(self, bits: int, group_size: int | None):
        self.bits = bits
        self.group_size = group_size

    # -- identity --------------------------------------------------------
    @property
    @abstractmethod
    def spec(self) -> str:
        """Canonical spec string, e.g. ``"int4-g128"``."""

    @classmethod
    @abstractmethod
    def from_match(cls, spec: str, match: re.Match[str]) -> WeightFormat:
        """Build the format from a spec that matched ``pattern``."""

    @classmethod
    @abstractmethod
    def all_specs(cls) -> list[str]:
        """Every spec string this family accepts (tests sweep them all)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WeightFormat) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)

    # -- storage ---------------------------------------------------------
    def group_len(self, in_features: int) -> int:
        """Number of consecutive input features that share a scale."""
        return in_features if self.group_size is None else self.group_size

    def num_groups(self, in_features: int) -> int:
        return math.ceil(in_features / self.group_len(in_features))

    @abstractmethod
    def param_specs(self, out_features: int, in_features: int, dtype: torch.dtype) -> dict[str, TensorSpec]:
        """Shape and dtype of each tensor in ``param_names`` for an (N, K) weight."""

    @abstractmethod
    def overhead_bits(self, out_features: int, in_features: int) -> float:
        """Stated storage cost per weight beyond the ``bits`` of its code.

        Written as a closed formula (not measured from tensors) so that tests
        can check the stored tensors against it.  Assumes ``in_features`` is a
        multiple of 32, the packing's alignment.
        """

    # -- quantization steps ----------------------------------------------
    def prepare(self, wg: Tensor, mask: Tensor, dtype: torch.dtype) -> dict[str, Tensor]:
        """Clip-independent tensors (per-row codebooks, per-tensor scales)."""
        return {}

    @abstractmethod
    def fit(
        self, wg: Tensor, mask: Tensor, clip: float, prepared: dict[str, Tensor], dtype: torch.dtype
    ) -> dict[str, Tensor]:
        """Per-group parameters, each (N, ng), for groups ``wg`` (N, ng, G)."""

    @abstractmethod
    def encode(self, wg: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Nearest code of each weight, uint8 (N, ng, G)."""

    @abstractmethod
    def decode(self, codes: Tensor, params: dict[str, Tensor], dtype: torch.dtype) -> Tensor:
        """Value of each code, (N, ng, G) in ``dtype``."""

    def kernel_decode(self) -> KernelDecode | None:
        """How the Triton kernels decode this format; None where no kernel handles it."""
        return None


class BitsGroupFormat(WeightFormat):
    """A family spelled ``{family}{K}-g{G}``, with K in ``bit_range``."""

    bit_range: ClassVar[range]

    @classmethod
    def from_match(cls, spec: str, match: re.Match[str]) -> WeightFormat:
        bits = int(match[1])
        if bits not in cls.bit_range:
            lo, hi = cls.bit_range[0], cls.bit_range[-1]
            raise ValueError(f"fmt={spec!r}: bit width {bits} is not supported; {cls.family} accepts K = {lo}..{hi}")
        return cls(bits, parse_group(spec, match[2]))

    @classmethod
    def all_specs(cls) -> list[str]:
        return [s for k in cls.bit_range for s in group_specs(f"{cls.family}{k}")]

    @property
    def spec(self) -> str:
        return f"{self.family}{self.bits}-{group_suffix(self.group_size)}"


class FixedFormat(WeightFormat):
    """A format with a single spec and fixed bits and block size (fp8-e4m3, mxfp4, nvfp4)."""

    fixed_bits: ClassVar[int]
    #: Weights per scale; None = one scale per row.
    fixed_block: ClassVar[int | None]

    def __init__(self) -> None:
        super().__init__(self.fixed_bits, self.fixed_block)

    @classmethod
    def from_match(cls, spec: str, match: re.Match[str]) -> WeightFormat:
        return cls()

    @classmethod
    def all_specs(cls) -> list[str]:
        return [cls.template]

    @property
    def spec(self) -> str:
        return self.template
