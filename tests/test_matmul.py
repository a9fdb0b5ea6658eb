"""anybit.matmul against x.double() @ W.double().T of the dequantized weight."""

from dataclasses import dataclass

import pytest
import torch
from conftest import ALL_SPECS, assert_matmul_close

import anybit


@dataclass(frozen=True)
class Case:
    lead: tuple[int, ...]  # leading dims of x
    n: int
    k: int
    spec: str

    def __str__(self):
        return f"{self.spec}-x{self.lead}-N{self.n}-K{self.k}"


CASES = [
    Case((1,), 1, 40, "int4-g32"),  # M=1, N=1, K not a multiple of G
    Case((3,), 17, 96, "uint3-g16"),
    Case((2, 5), 9, 300, "nf4-g128"),  # leading batch dims, partial last group
    Case((4,), 33, 64, "lut2-gc"),
    Case((1, 1, 1), 5, 48, "mxfp4"),
    Case((6,), 7, 80, "nvfp4"),
    Case((2,), 12, 72, "fp8-e4m3"),
    Case((5,), 3, 1, "int8-g16"),  # K = 1
    Case((0,), 4, 32, "int2-g32"),  # no rows
    Case((31,), 64, 576, "int4-g128"),  # SmolLM2's hidden size with g128
]
DTYPES = [torch.float16, torch.bfloat16, torch.float32]


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matmul_matches_float64(case, dtype, bias):
    qw = anybit.quantize(torch.randn(case.n, case.k), case.spec)
    x = torch.randn(*case.lead, case.k).to(dtype)
    b = torch.randn(case.n) if bias else None
    assert_matmul_close(anybit.matmul(x, qw, b), x, qw, b)


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_matmul_every_format(spec):
    qw = anybit.quantize(torch.randn(11, 200), spec)
    x = torch.randn(3, 200, dtype=torch.float16)
    assert_matmul_close(anybit.matmul(x, qw), x, qw)


def test_bf16_scales_for_bf16_weights():
    qw = anybit.quantize(torch.randn(8, 64, dtype=torch.bfloat16), "int4-g32")
    assert qw.dtype == torch.bfloat16 and qw.params["scales"].dtype == torch.bfloat16
    assert qw.dequantize().dtype == torch.bfloat16
    x = torch.randn(2, 64, dtype=torch.bfloat16)
    assert_matmul_close(anybit.matmul(x, qw), x, qw)


def test_reference_backend_can_be_forced(monkeypatch):
    qw = anybit.quantize(torch.randn(8, 64), "int4-g32")
    x = torch.randn(2, 64)
    monkeypatch.setenv("ANYBIT_BACKEND", "reference")
    assert_matmul_close(anybit.matmul(x, qw), x, qw)
    monkeypatch.setenv("ANYBIT_BACKEND", "cuda-magic")
    with pytest.raises(ValueError, match="ANYBIT_BACKEND='cuda-magic'.*accepted: auto, reference"):
        anybit.matmul(x, qw)


@pytest.fixture
def qw():
    return anybit.quantize(torch.randn(8, 64), "int4-g32")


@pytest.mark.parametrize(
    "x, bias, message",
    [
        (torch.randn(2, 63), None, r"last dim must be in_features=64"),
        (torch.randn(2, 64, dtype=torch.float64), None, "dtype torch.float64"),
        (torch.ones(2, 64, dtype=torch.int32), None, "dtype torch.int32"),
        (torch.tensor(1.0), None, "shape"),
        (torch.randn(2, 64), torch.randn(7), r"bias must be a tensor of shape \(8,\)"),
        (torch.randn(2, 64), torch.ones(8, dtype=torch.int64), "bias must be floating point"),
        (torch.randn(2, 64, device="meta"), None, "x is on meta"),
        ([1.0] * 64, None, "x must be a torch.Tensor"),
    ],
)
def test_bad_inputs_raise(qw, x, bias, message):
    with pytest.raises(ValueError, match=message):
        anybit.matmul(x, qw, bias)


def test_weight_must_be_quantized():
    with pytest.raises(ValueError, match="qw must be a QuantizedWeight"):
        anybit.matmul(torch.randn(2, 64), torch.randn(8, 64))


def test_quantized_weight_properties(qw):
    assert qw.shape == (8, 64)
    assert qw.format == anybit.parse_format("int4-g32")
    assert qw.nbytes == 8 * 64 // 2 + 8 * 2 * 2
    assert qw.to("cpu") is qw
    assert qw.dequantize().shape == (8, 64) and qw.dequantize().dtype == torch.float16
    assert "int4-g32" in repr(qw)


@pytest.mark.parametrize(
    "weight, kwargs, message",
    [
        (torch.randn(64), {}, r"2-D \(out_features, in_features\)"),
        (torch.randn(2, 3, 4), {}, "2-D"),
        (torch.ones(4, 32, dtype=torch.int32), {}, "floating-point"),
        (torch.full((4, 32), float("nan")), {}, "NaN or inf"),
        (torch.tensor([[1.0, float("inf")] * 16]), {}, r"NaN or inf \(first at index \(0, 1\)\)"),
        (torch.randn(0, 32), {}, "non-empty"),
        (torch.randn(4, 32), {"method": "gptq-ish"}, "method='gptq-ish' is not supported"),
        (torch.randn(4, 32), {"scale_dtype": torch.float32}, "scale_dtype=torch.float32"),
        (torch.randn(4, 32) * 1e7, {}, "pass scale_dtype=torch.bfloat16"),
        ("weights", {}, "must be a torch.Tensor"),
    ],
)
def test_quantize_rejects_bad_input(weight, kwargs, message):
    with pytest.raises(ValueError, match=message):
        anybit.quantize(weight, "int4-g32", **kwargs)


def test_fp16_overflow_is_avoided_with_bf16_scales():
    w = torch.randn(4, 32) * 1e7
    qw = anybit.quantize(w, "int8-g32", scale_dtype=torch.bfloat16)
    assert torch.allclose(qw.dequantize(torch.float64), w.double(), rtol=0.02, atol=2e5)


def test_quantized_weight_validates_its_tensors(qw):
    with pytest.raises(ValueError, match="codes must be int32"):
        anybit.QuantizedWeight(qw.format, (8, 65), qw.codes, dict(qw.params), qw.dtype)
    with pytest.raises(ValueError, match="needs params"):
        anybit.QuantizedWeight(qw.format, (8, 64), qw.codes, {}, qw.dtype)
    with pytest.raises(ValueError, match="param 'scales'"):
        anybit.QuantizedWeight(qw.format, (8, 64), qw.codes, {"scales": qw.params["scales"].float()}, qw.dtype)


