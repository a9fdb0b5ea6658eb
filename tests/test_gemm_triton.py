"""The Triton GEMM kernel (x with more than 32 rows) and the dequantize kernel against
float64, in Triton's interpreter on CPU (or on a GPU).

Outputs are poisoned with NaN before each launch, so an element the kernel does
not write fails the test.
"""

import itertools
from dataclasses import dataclass

import pytest
import torch
from conftest import GROUPS, KERNEL_SPECS, assert_matmul_close, launch_poisoned, one_spec_per_family, unit_roundoff

import anybit
from anybit._matmul import gemm as gm
from anybit._matmul import gemv as g
from anybit.formats._base import Decode
from anybit.matmul import Backend, select_backend

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Case:
    spec: str
    m: int
    n: int
    k: int
    dtype: torch.dtype
    config: gm.GemmConfig | None = None  # None: the heuristic's choice

    def __str__(self):
        c = self.config
        cfg = "auto" if c is None else f"{c.block_m}x{c.block_n}x{c.block_k}-s{c.split_k}-w{c.swizzle}"
        return f"{self.spec}-M{self.m}-N{self.n}-K{self.k}-{str(self.dtype)[6:]}-{cfg}"


def _cases():
    shapes = itertools.cycle([(70, 300), (33, 160), (130, 576), (64, 128)])
    ms = itertools.cycle([33, 40, 64, 100])
    dtypes = itertools.cycle([torch.float16, torch.bfloat16])
    cases = []
    for spec in one_spec_per_family(3):
        n, k = next(shapes)
        cases.append(Case(spec, next(ms), n, k, next(dtypes)))
    # Each kernel path forced: one group per K-block or several, zero points kept
    # in the decode or subtracted after it, split-K (with more splits than some
    # ranges have blocks), the tile order's last partial group, x and W tiles
    # larger than the matrices.
    forced = [
        ("int4-g128", gm.GemmConfig(32, 64, 64, 1, 4, 2)),
        ("int4-g32", gm.GemmConfig(16, 32, 64, 2, 4, 2, 2)),
        ("uint4-g64", gm.GemmConfig(64, 64, 64, 3, 4, 2, 1)),
        ("uint4-g16", gm.GemmConfig(16, 64, 128, 1, 4, 2, 3)),
        ("uint3-g128", gm.GemmConfig(32, 16, 128, 4, 4, 2)),
        ("nf4-g32", gm.GemmConfig(16, 32, 64, 1, 4, 2, 5)),
        ("lut4-gc", gm.GemmConfig(128, 128, 32, 1, 4, 2)),
        ("int8-gc", gm.GemmConfig(16, 16, 256, 5, 4, 2)),
        ("int4-g64", gm.GemmConfig(256, 64, 64, 2, 4, 3)),  # 256 rows of x: only with the wait (the default)
        ("uint4-g128", gm.GemmConfig(64, 64, 64, 1, 4, 3, sync_mma=False)),  # no wait (compiled kernels differ)
    ]
    for (spec, config), m in zip(forced, itertools.cycle([33, 100, 64])):
        cases.append(Case(spec, m, 70, 300, torch.float16 if m != 100 else torch.bfloat16, config))
    return cases


CASES = _cases()


def weight_roundoff(dtype: torch.dtype) -> float:
    """The GEMM kernel rounds every weight once to x's dtype (it scales before the
    dot).  Triton 3.6's interpreter converts float32 to bfloat16 by truncation,
    not to nearest, which doubles the error bound there."""
    truncating = g.interpreting() and dtype == torch.bfloat16
    return unit_roundoff(dtype) * (2 if truncating else 1)


def _run(case: Case, bias: bool):
    return launch_poisoned(gm.launch_gemm, gm.launch_settings, case, bias, DEVICE)


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_gemm_matches_float64(case, bias):
    y, x, qw, b = _run(case, bias)
    assert not torch.isnan(y).any(), "the kernel left elements unwritten"
    assert_matmul_close(y.cpu(), x.cpu(), qw.to("cpu"), None if b is None else b.cpu(),
                        weight_roundoff=weight_roundoff(case.dtype))


def test_every_kernel_format_is_covered():
    covered = {c.spec.rsplit("-", 1)[0] for c in CASES}
    assert covered == {s.rsplit("-", 1)[0] for s in KERNEL_SPECS}
    assert {c.spec.rsplit("-", 1)[1] for c in CASES} >= set(GROUPS)


@pytest.mark.parametrize("spec", ["int4-g128", "uint3-g32", "int8-gc", "uint4-g16", "nf4-g64", "lut4-gc", "int2-g256"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_dequant_kernel_rounds_each_weight_once(spec, dtype):
    """Integer formats: exactly the float64 weight rounded to x's dtype.  Tables:
    the level rounded to x's dtype, times the scale, rounded (two roundings)."""
    qw = anybit.quantize(torch.randn(70, 300, device=DEVICE), spec)
    n, k = qw.shape
    decode = qw.format.kernel_decode()
    group = gm.kernel_group(qw.format.group_len(k), k)
    w = gm.launch_dequant(qw.codes, qw.params["scales"], qw.params.get("zeros"), g.kernel_table(qw), n, k,
                          qw.format.bits, group, decode.mode, dtype,
                          out=torch.full((n, k), float("nan"), dtype=dtype, device=DEVICE))
    exact = qw.dequantize(torch.float64)
    if decode.mode in (Decode.TABLE, Decode.ROW_TABLE) or g.interpreting() and dtype == torch.bfloat16:
        bound = weight_roundoff(dtype) * 3 * exact.abs()
        assert ((w.double() - exact).abs() <= bound).all()
    else:
        assert torch.equal(w, exact.to(dtype))


def test_dispatcher_takes_the_gemm_above_32_rows(monkeypatch):
    monkeypatch.setenv("ANYBIT_BACKEND", "triton")
    qw = anybit.quantize(torch.randn(40, 96, device=DEVICE), "int4-g32")
    x = torch.randn(3, 11, 96, dtype=torch.float16, device=DEVICE)
    assert select_backend(x, qw) is Backend.TRITON
    y = anybit.matmul(x, qw)
    assert y.shape == (3, 11, 40)
    assert_matmul_close(y.cpu(), x.cpu(), qw.to("cpu"), weight_roundoff=weight_roundoff(torch.float16))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_dispatcher_dequantizes_from_the_crossover_on(monkeypatch, dtype):
    """From DEQUANT_MIN_M rows on: W dequantized by the kernel, then cuBLAS (or torch on CPU)."""
    monkeypatch.setenv("ANYBIT_BACKEND", "triton")

    def no_gemm(*args, **kwargs):
        raise AssertionError("the GEMM kernel ran above the crossover")

    monkeypatch.setattr(gm, "launch_gemm", no_gemm)
    qw = anybit.quantize(torch.randn(40, 96, device=DEVICE), "uint4-g32")
    x = torch.randn(gm.DEQUANT_MIN_M + 3, 96, device=DEVICE).to(dtype)
    bias = torch.randn(40, device=DEVICE)
    y = anybit.matmul(x, qw, bias)
    # the bias is rounded to x's dtype before cuBLAS adds it: one more rounding of it
    assert_matmul_close(y.cpu(), x.cpu(), qw.to("cpu"), bias.to(dtype).float().cpu(),
                        weight_roundoff=weight_roundoff(dtype))


def test_config_rejects_bad_tiles():
    with pytest.raises(ValueError, match="block_k=48"):
        gm.GemmConfig(64, 128, 48)
    with pytest.raises(ValueError, match="block_m=512: accepted: at most 256"):
        gm.GemmConfig(512, 128, 64)
    with pytest.raises(ValueError, match="split_k=0"):
        gm.GemmConfig(64, 128, 64, split_k=0)


def test_heuristic_is_deterministic():
    for (m, n, k, group), bits in itertools.product(
        [(33, 4096, 4096, 128), (64, 28672, 4096, 64), (100, 576, 576, 576), (4096, 8192, 8192, 128),
         (256, 4096, 14336, 32), (1024, 96, 96, 96)],
        (1, 2, 3, 4, 8),
    ):
        first = gm.gemm_config(m, n, k, group, bits, 132)
        assert first == gm.gemm_config(m, n, k, group, bits, 132)
        assert first.block_k // (8 // (bits & -bits)) >= gm.MMA_K  # the PTX decode's tensors span the MMA's K
        assert 1 <= first.split_k <= -(-k // first.block_k)
        assert -(-k // first.block_k) % first.split_k == 0
