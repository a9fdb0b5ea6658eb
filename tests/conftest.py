import os

import torch

# Without a GPU the Triton kernels run in Triton's interpreter; this must be
# set before Triton compiles anything (anybit imports Triton lazily).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import anybit  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


def unit_roundoff(dtype: torch.dtype) -> float:
    return {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24, torch.float64: 2.0**-53}[dtype]


def assert_matmul_close(y, x, qw, bias=None, weight_roundoff=0.0):
    """y against x.double() @ W.double().T (+ bias), with a K-scaled bound.

    Bound: rounding of the output to y's dtype, plus float32 accumulation over
    K terms (gamma_K = K * 2**-24) and, for kernels that round the weight to
    x's dtype first, ``weight_roundoff``, applied to |x| @ |W|^T + |bias|; times 2.
    """
    w = qw.dequantize(torch.float64)
    ref = x.double() @ w.t()
    magnitude = x.double().abs() @ w.abs().t()
    if bias is not None:
        ref = ref + bias.double()
        magnitude = magnitude + bias.double().abs()
    k = qw.shape[1]
    bound = 2 * (unit_roundoff(y.dtype) * ref.abs() + ((k + 1) * 2.0**-24 + weight_roundoff) * magnitude) + 1e-30
    assert y.dtype == x.dtype
    assert y.shape == (*x.shape[:-1], qw.shape[0])
    err = (y.double() - ref).abs()
    assert torch.isfinite(y).all()
    worst = (err / bound).max().item() if err.numel() else 0.0
    assert worst <= 1.0, f"max error/bound = {worst:.3f}"


ALL_SPECS = anybit.all_specs()
