"""The MLP's activation written by the launch of its gate and up products (``gemv.launch_gemv_multi``
with ``glu``: silu(x @ gate^T) * (x @ up^T)) against float64, in Triton's interpreter on CPU (or on a
GPU).  Outputs and the workspace are poisoned with NaN, so an element left unwritten fails.
"""

from dataclasses import dataclass

import pytest
import torch
from conftest import unit_roundoff

import anybit
from anybit._matmul import gemv as g

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Case:
    spec: str
    m: int
    n: int  # rows of each weight
    k: int
    dtype: torch.dtype
    config: g.GemvConfig | None = None  # None: the heuristic's
    bias: bool = False
    norm: bool = False  # x is an RMSNorm's h * gamma: rows scaled by the norm's sums (``norm_in``)

    def __str__(self):
        c = self.config
        cfg = "auto" if c is None else f"bm{c.block_m}-bn{c.block_n}-bk{c.block_k}-s{c.split_k}"
        return (f"{self.spec}-M{self.m}-N{self.n}-K{self.k}-{str(self.dtype)[6:]}-{cfg}"
                f"{'-bias' if self.bias else ''}{'-norm' if self.norm else ''}")


CASES = [
    Case("int4-g32", 1, 96, 64, torch.float16),
    # a partial last tile, split-K
    Case("int4-g32", 1, 70, 64, torch.float16, g.GemvConfig(1, 32, 32, 2)),
    Case("uint4-g64", 3, 200, 128, torch.bfloat16, g.GemvConfig(4, 32, 64, 1), bias=True),
    # several row blocks of x, three splits, rows scaled by a norm
    Case("int4-g32", 5, 160, 96, torch.float16, g.GemvConfig(2, 64, 32, 3), norm=True),
    Case("nf4-g32", 8, 64, 96, torch.float16, g.GemvConfig(8, 16, 32, 3), bias=True),
    Case("int3-gc", 2, 33, 48, torch.bfloat16, norm=True),
    Case("int8-g32", 1, 40, 64, torch.float16, g.GemvConfig(1, 16, 32, 2), bias=True, norm=True),
]


def _silu(t: torch.Tensor) -> torch.Tensor:
    return t / (1 + torch.exp(-t))


def _launch(x, weights, biases, config, group, mode, case, norm_in, outs=None, workspace=None):
    parts = [(q.codes, q.params["scales"], q.params.get("zeros"), b, case.n) for q, b in zip(weights, biases)]
    return g.launch_gemv_multi(x, parts, g.kernel_table(weights[0]), case.k, weights[0].format.bits, group, mode,
                               config, outs, workspace, norm_in=norm_in, glu=True)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_glu_matches_float64(case):
    torch.manual_seed(case.m * 1000 + case.n)
    gate, up = (anybit.quantize(torch.randn(case.n, case.k, device=DEVICE), case.spec) for _ in range(2))
    x = torch.randn(case.m, case.k, device=DEVICE).to(case.dtype)
    biases = [torch.randn(case.n, device=DEVICE).to(case.dtype) if case.bias else None for _ in range(2)]
    sums = torch.rand(case.m, 5, device=DEVICE) * case.k if case.norm else None
    eps = 1e-5
    norm_in = (sums, case.k, eps) if case.norm else None
    config, group = g.launch_settings(gate, case.m, torch.device(DEVICE), case.config)
    mode = gate.format.kernel_decode().mode
    y = torch.full((case.m, case.n), float("nan"), dtype=case.dtype, device=DEVICE)
    workspace = (torch.full((2 * config.split_k * case.m * case.n,), float("nan"), device=DEVICE)
                 if config.split_k > 1 else None)
    assert _launch(x, [gate, up], biases, config, group, mode, case, norm_in, [y], workspace)[0] is y
    assert not torch.isnan(y).any(), "the kernel left elements unwritten"
    # the counters are zero again: a second launch gives the same bits
    assert torch.equal(_launch(x, [gate, up], biases, config, group, mode, case, norm_in)[0], y)

    scale = torch.rsqrt(sums.double().sum(-1, keepdim=True) / case.k + eps) if case.norm else 1.0
    u = unit_roundoff(case.dtype)
    table = mode in (g.Decode.TABLE, g.Decode.ROW_TABLE)
    roundoff = 2 * u + (case.k + 4) * 2.0**-24 + (u if table or group < config.block_k else 0.0)
    products = []
    for q, b in zip((gate, up), biases):
        w = q.dequantize(torch.float64)
        ref = scale * (x.double() @ w.t()) + (0.0 if b is None else b.double())
        magnitude = scale * (x.double().abs() @ w.abs().t()) + (0.0 if b is None else b.double().abs())
        products.append((ref, 2 * (u * ref.abs() + roundoff * magnitude)))  # each product's bound, as rounded
    (g64, dg), (u64, du) = products
    s64 = _silu(g64)
    ref = s64 * u64
    # silu's slope lies in [-0.1, 1.1]; the silu and the result are rounded once more each
    bound = 2 * (1.1 * dg * (u64.abs() + du) + (s64.abs() + 1.1 * dg) * du + 2 * u * (s64 * u64).abs()) + 1e-30
    err = (y.double() - ref).abs()
    assert (err <= bound).all(), (err / bound).max()


def test_glu_arguments_are_checked():
    qw = anybit.quantize(torch.randn(40, 64), "int4-g32")
    other = anybit.quantize(torch.randn(32, 64), "int4-g32")
    x = torch.randn(1, 64, dtype=torch.float16)
    config = g.GemvConfig(1, 32, 32, 1)

    def part(q):
        return q.codes, q.params["scales"], None, None, q.shape[0]

    def launch(parts, **kwargs):
        g.launch_gemv_multi(x, parts, None, 64, 4, 32, g.Decode.SYMMETRIC, config, glu=True, **kwargs)

    with pytest.raises(ValueError, match=r"glu takes a gate and an up weight.*\[40\] rows"):
        launch([part(qw)])
    with pytest.raises(ValueError, match=r"\[40, 32\] rows"):
        launch([part(qw), part(other)])
    with pytest.raises(ValueError, match="addend True"):
        launch([part(qw), part(qw)], addend=torch.zeros(1, 40, dtype=torch.float16))
