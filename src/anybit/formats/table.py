"""Lookup-table grids: ``nf4-gG`` (a fixed table) and ``lutK-gG`` (a learned one per row)."""

from __future__ import annotations

import re

import torch
from torch import Tensor

from ._base import BitsGroupFormat, Decode, KernelDecode, TensorSpec, WeightFormat, group_specs, group_suffix, parse_group, round_scales
from .registry import register_format

#: The 16 levels of 4-bit NormalFloat, in code order (Dettmers et al. 2023,
#: "QLoRA: Efficient Finetuning of Quantized LLMs", appendix E; the same
#: constants as the reference implementation in bitsandbytes).
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)


def nearest_index(x: Tensor, levels: Tensor, ties_to_even: bool = False) -> Tensor:
    """Index of the nearest entry of ascending ``levels`` for every element of ``x``.

    ``levels`` is either 1-D (one table for all of ``x``) or has the leading
    dims of ``x`` (one table per row, e.g. (N, T) for ``x`` of shape (N, M)).
    Values beyond the ends map to the end entries.  An exact tie between two
    neighbours goes to the lower one, or with ``ties_to_even`` to the one with
    the even index (round-half-to-even for tables whose index parity is the
    mantissa's last bit, such as FP4 E2M1 magnitudes).  Returns int64.
    """
    mids = ((levels[..., 1:] + levels[..., :-1]) / 2).contiguous()
    lower = torch.searchsorted(mids, x.contiguous(), right=False)
    if not ties_to_even:
        return lower
    upper = torch.searchsorted(mids, x.contiguous(), right=True)
    return torch.where((lower != upper) & (lower % 2 == 1), upper, lower)


@register_format
class NF4Format(WeightFormat):
    """4-bit NormalFloat: code ``c`` stands for ``NF4_LEVELS[c] * scale``.

    ``scale = clip * absmax`` per group (fp16/bf16), so the group's largest
    weight lands on the table's end point ±1.
    Storage per weight: 4 bits + 16 / G bits.
    """

    family = "nf4"
    pattern = re.compile(r"^nf4-g(\w+)$")
    template = "nf4-gG"
    summary = "QLoRA's NormalFloat4 table, absmax scale per group; suits normally distributed weights"

    def __init__(self, group_size: int | None):
        super().__init__(4, group_size)

    @classmethod
    def from_match(cls, spec, match):
        return cls(parse_group(spec, match[1]))

    @classmethod
    def all_specs(cls):
        return group_specs(cls.family)

    @property
    def spec(self):
        return f"{self.family}-{group_suffix(self.group_size)}"

    def param_specs(self, out_features, in_features, dtype):
        return {"scales": TensorSpec((out_features, self.num_groups(in_features)), dtype)}

    def overhead_bits(self, out_features, in_features):
        return 16 / self.group_len(in_features)

    def fit(self, wg, mask, clip, prepared, dtype):
        return {"scales": round_scales(clip * wg.abs().amax(-1).double(), dtype, "nf4 scales")}

    def encode(self, wg, params):
        levels = torch.tensor(NF4_LEVELS, dtype=torch.float32, device=wg.device)
        normalized = wg / params["scales"].float().unsqueeze(-1)
        return nearest_index(normalized, levels).to(torch.uint8)

    def decode(self, codes, params, dtype):
        levels = torch.tensor(NF4_LEVELS, dtype=dtype, device=codes.device)
        return levels[codes.long()] * params["scales"].to(dtype).unsqueeze(-1)

    def kernel_decode(self):
        return KernelDecode(Decode.TABLE, NF4_LEVELS)


def lloyd_codebooks(u: Tensor, levels: int, iters: int = 20, chunk_elems: int = 1 << 22) -> Tensor:
    """One sorted 1-D k-means codebook per row of ``u`` (n, K) -> (n, levels).

    Lloyd's algorithm, initialised at the row's quantiles (deterministic).
    A centre that loses all its points keeps its position.  Rows are processed
    in chunks of about ``chunk_elems`` values to bound memory.
    """
    n, k = u.shape
    rows = max(1, chunk_elems // max(k, 1))
    out = torch.empty(n, levels, dtype=u.dtype, device=u.device)
    positions = ((torch.arange(levels, dtype=torch.float64) + 0.5) / levels * (k - 1)).round().long()
    for start in range(0, n, rows):
        block = u[start : start + rows]
        centers = block.sort(dim=1).values[:, positions.to(u.device)]
        for _ in range(iters):
            idx = nearest_index(block, centers)
            sums = torch.zeros_like(centers).scatter_add_(1, idx, block)
            counts = torch.zeros_like(centers).scatter_add_(1, idx, torch.ones_like(block))
            centers = torch.where(counts > 0, sums / counts.clamp(min=1), centers).sort(dim=1).values
        out[start : start + rows] = centers
    return out


@register_format
class LUTFormat(BitsGroupFormat):
    """Learned K-bit codebooks (K = 2..4): one 2**K-entry table per output row.

    Code ``c`` of row ``n`` stands for ``table[n, c] * scale[n, group]``.  The
    table is a 1-D k-means (Lloyd) fit of that row's weights normalised by
    their group's absmax, so entries lie in [-1, 1] and are sorted ascending;
    ``scale = clip * absmax`` per group.  Tables and scales are fp16/bf16.
    Storage per weight: K bits + 16 / G bits + 16 * 2**K / in_features bits.
    """

    family = "lut"
    pattern = re.compile(r"^lut(\d+)-g(\w+)$")
    template = "lutK-gG"
    summary = "learned 2^K-entry codebook per row (k-means), scale per group; best error at 2-4 bits"
    param_names = ("scales", "table")
    bit_range = range(2, 5)
    kmeans_iters = 20

    def param_specs(self, out_features, in_features, dtype):
        return {
            "scales": TensorSpec((out_features, self.num_groups(in_features)), dtype),
            "table": TensorSpec((out_features, 2**self.bits), dtype),
        }

    def overhead_bits(self, out_features, in_features):
        return 16 / self.group_len(in_features) + 16 * 2**self.bits / in_features

    def prepare(self, wg, mask, dtype):
        n = wg.shape[0]
        absmax = wg.abs().amax(-1, keepdim=True)
        normalized = wg / torch.where(absmax == 0, torch.ones_like(absmax), absmax)
        real = mask.reshape(n, -1)[0]
        u = normalized.reshape(n, -1)[:, real]
        table = lloyd_codebooks(u, 2**self.bits, self.kmeans_iters)
        return {"table": table.to(dtype).sort(dim=1).values}

    def fit(self, wg, mask, clip, prepared, dtype):
        return {"scales": round_scales(clip * wg.abs().amax(-1).double(), dtype, "lut scales")}

    def encode(self, wg, params):
        n, ng, g = wg.shape
        normalized = (wg / params["scales"].float().unsqueeze(-1)).reshape(n, ng * g)
        return nearest_index(normalized, params["table"].float()).reshape(n, ng, g).to(torch.uint8)

    def decode(self, codes, params, dtype):
        n, ng, g = codes.shape
        values = params["table"].to(dtype).gather(1, codes.reshape(n, ng * g).long())
        return values.reshape(n, ng, g) * params["scales"].to(dtype).unsqueeze(-1)

    def kernel_decode(self):
        return KernelDecode(Decode.ROW_TABLE)
