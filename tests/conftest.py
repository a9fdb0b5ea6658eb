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


def launch_poisoned(launch, settings, case, bias: bool, device: str):
    """Run a Triton kernel's launcher on a test case's random inputs, its output and
    split-K workspace filled with NaN (an element the kernel fails to write stays NaN).

    ``launch``/``settings``: ``launch_gemv``/``launch_gemm`` and the module's
    ``launch_settings``; ``case`` has spec, m, n, k, dtype and config (None: the
    heuristic's).  Returns (y, x, qw, bias or None).
    """
    from anybit._matmul import gemv

    torch.manual_seed(hash(str(case)) % 2**31)
    qw = anybit.quantize(torch.randn(case.n, case.k, device=device), case.spec)
    x = torch.randn(case.m, case.k, device=device).to(case.dtype)
    b = torch.randn(case.n, device=device) if bias else None
    config, group = settings(qw, case.m, x.device, case.config)
    out = torch.full((case.m, case.n), float("nan"), dtype=case.dtype, device=device)
    ws = torch.full((config.split_k, case.m, case.n), float("nan"), device=device)
    y = launch(
        x, qw.codes, qw.params["scales"], qw.params.get("zeros"), gemv.kernel_table(qw), b,
        case.n, case.k, qw.format.bits, group, qw.format.kernel_decode().mode, config, out=out, workspace=ws,
    )
    ring = gemv._RINGS.get(x.device)
    assert ring is None or not ring.counters.any(), "split-K counters must end at zero"
    return y, x, qw, b


ALL_SPECS = anybit.all_specs()
