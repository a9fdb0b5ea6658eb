import os
from dataclasses import dataclass

import torch

# Without a GPU the Triton kernels run in Triton's interpreter; this must be
# set before Triton compiles anything (anybit imports Triton lazily).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import anybit  # noqa: E402


@dataclass(frozen=True)
class Refused:
    """Settings (``dataclasses.replace`` keywords) a config is refused with, and a regex of what
    the error says."""

    config: dict
    match: str

    def label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.config.items())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


def compile_script(script: str, *args) -> str:
    """The output of ``tests/<script> args..``, run in a process without Triton's
    interpreter: such scripts compile kernels for sm_90 (no GPU needed), which the
    interpreter cannot."""
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), script), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def unit_roundoff(dtype: torch.dtype) -> float:
    return {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24, torch.float64: 2.0**-53}[dtype]


def assert_matmul_close(y, x, qw, bias=None, weight_roundoff=0.0, addend=None):
    """y against x.double() @ W.double().T (+ bias) (+ addend, shaped as y), with a K-scaled bound.

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
    if addend is not None:
        ref = ref + addend.double()
        magnitude = magnitude + addend.double().abs()
    k = qw.shape[1]
    bound = 2 * (unit_roundoff(y.dtype) * ref.abs() + ((k + 1) * 2.0**-24 + weight_roundoff) * magnitude) + 1e-30
    assert y.dtype == x.dtype
    assert y.shape == (*x.shape[:-1], qw.shape[0])
    err = (y.double() - ref).abs()
    assert torch.isfinite(y).all()
    worst = (err / bound).max().item() if err.numel() else 0.0
    rows = x.numel() // max(k, 1)
    assert worst <= 1.0, f"{qw.format.spec} M={rows} N={qw.shape[0]} K={k}: max error/bound = {worst:.3f}"


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
#: Formats the Triton kernels decode, and the group sizes they come in.
KERNEL_SPECS = [s for s in ALL_SPECS if anybit.parse_format(s).kernel_decode() is not None]
GROUPS = ["g16", "g32", "g64", "g128", "g256", "gc"]


def quantized_cuda(spec: str, n: int, k: int, gen: torch.Generator):
    """A random (n, k) weight (std 0.02, like a trained layer's) quantized to ``spec`` on the GPU."""
    return anybit.quantize(torch.randn(n, k, device="cuda", generator=gen) * 0.02, spec)


def weight_rows(qw, r0: int, r1: int):
    """Rows r0 .. r1 of a quantized weight whose parameters all have a row per row of W (the
    integer formats): views of its codes and parameters."""
    return anybit.QuantizedWeight(qw.format, (r1 - r0, qw.shape[1]), qw.codes[r0:r1],
                                  {name: p[r0:r1] for name, p in qw.params.items()}, qw.dtype)


#: Rows of x the GEMM kernels' GPU sweeps cover (issue: batched and prefill kernels).
SWEEP_M = (33, 64, 100, 256, 1024, 4096)


def hopper_only(reason: str):
    """Skip marker for tests of the Hopper-only (sm_90) Gluon kernels."""
    return pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                              reason=reason)


def launch_on_weight(launch, x, qw, config, bias=None, **buffers):
    """A GEMM launcher (``launch_gemm_gluon``, ``launch_gemm_gluon_ws``) on x (M, K) and the
    weight ``qw`` with ``config`` (settings as the dispatcher adjusts them); ``buffers``:
    its other keyword arguments (``out``, ``workspace``, ``overlap``)."""
    from anybit._matmul import gemm as gm

    return gm.on_weight(launch, x, qw, bias, config, **buffers)


def check_sweep(run, config_for, spec: str, n: int, k: int):
    """``run(x, qw, config_for(m))`` for every m in SWEEP_M on one (n, k) weight of ``spec``,
    within the float64 tolerance (fp16 x, GPU)."""
    gen = torch.Generator(device="cuda").manual_seed(n + k)
    qw = quantized_cuda(spec, n, k, gen)
    for m in SWEEP_M:
        x = torch.randn(m, k, device="cuda", generator=gen).half()
        assert_matmul_close(run(x, qw, config_for(m)), x, qw, weight_roundoff=unit_roundoff(x.dtype))


def check_poisoned_with_bias(run, config, spec: str, m: int, n: int, k: int, seed: int | None = None):
    """``run(x, qw, config, bias, out)`` on a NaN-poisoned output: every element written,
    the bias added once, within the float64 tolerance (fp16 x, GPU; random operands from
    ``seed``, default m).  Returns (x, qw, bias, y) for further checks."""
    gen = torch.Generator(device="cuda").manual_seed(m if seed is None else seed)
    qw = quantized_cuda(spec, n, k, gen)
    x = torch.randn(m, k, device="cuda", generator=gen).half()
    bias = torch.randn(n, device="cuda", generator=gen)
    y = run(x, qw, config, bias, out=torch.full((m, n), float("nan"), device="cuda", dtype=torch.float16))
    assert_matmul_close(y, x, qw, bias, weight_roundoff=unit_roundoff(x.dtype))
    return x, qw, bias, y


def check_replays(run, x, qw, config, bias, y, launches: int = 3):
    """``run(x, qw, config, bias)`` gives y's bits in ``launches`` more launches and in a CUDA
    graph's replay into a NaN-poisoned output (GPU)."""
    for _ in range(launches):
        assert torch.equal(run(x, qw, config, bias), y)
    out = torch.full_like(y, float("nan"))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run(x, qw, config, bias, out=out)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, y)


def check_repeated_launches(run, configs, n: int, k: int, m: int, launches: int = 20):
    """``run(x, qw, config)`` gives the same bits in ``launches`` repeated launches (int4-g128, GPU)."""
    gen = torch.Generator(device="cuda").manual_seed(m)
    qw = quantized_cuda("int4-g128", n, k, gen)
    x = torch.randn(m, k, device="cuda", generator=gen).half()
    for config in configs:
        first = run(x, qw, config)
        for _ in range(launches):
            assert torch.equal(run(x, qw, config), first)


def one_spec_per_family(offset: int = 0) -> list[str]:
    """Every kernel family and bit width once (sorted), the group size rotating
    through all six (starting ``offset`` places in)."""
    prefixes = sorted({spec.rsplit("-", 1)[0] for spec in KERNEL_SPECS})
    return [f"{prefix}-{GROUPS[(i + offset) % len(GROUPS)]}" for i, prefix in enumerate(prefixes)]


def tiny_llama(seed: int = 0):
    """A 2-layer random transformers Llama (vocab 97, hidden 64) whose logits are far from uniform, as a trained model's."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    model.lm_head.weight.data *= 20
    return model
