"""The Gluon GEMM kernel (gemm_gluon) on a Hopper GPU: the M sweep on odd and standard
shapes, forced tiles with bias and split-K, repeated launches, the register operand in
the compiled kernel, and a tuned-table plan through the dispatcher."""

import functools
import re

import pytest
import torch
from conftest import (assert_matmul_close, check_poisoned_with_bias, check_repeated_launches, check_sweep,
                      hopper_only, launch_on_weight, quantized_cuda, unit_roundoff)

from anybit._matmul import gemm as gm
from anybit._matmul import tuning

pytestmark = hopper_only("the Gluon kernel uses warpgroup MMA, a Hopper (sm_90) instruction")

_run = functools.partial(launch_on_weight, gm.launch_gemm_gluon)


@pytest.mark.parametrize("spec", ["int4-g128", "uint4-g128", "int4-gc", "uint4-g64"])
@pytest.mark.parametrize("n, k", [(1000, 4128), (192, 320), (4096, 4096), (4096, 14336)])
def test_sweep(spec, n, k):
    check_sweep(_run, lambda m: gm.GemmConfig(64 if m <= 64 else 128, 64, 64, 2, 4, 4), spec, n, k)


FORCED = [
    gm.GemmConfig(64, 64, 64, 1, 4, 2),
    gm.GemmConfig(64, 64, 64, 3, 4, 4),  # split-K with a short last split
    gm.GemmConfig(128, 64, 128, 2, 4, 3),
    gm.GemmConfig(64, 128, 64, 1, 8, 3),  # two warpgroups
    gm.GemmConfig(256, 128, 64, 1, 8, 2),  # an m64n256 MMA
]


@pytest.mark.parametrize("config", FORCED, ids=lambda c: f"{c.block_m}x{c.block_n}x{c.block_k}-s{c.split_k}-"
                                                         f"{c.num_warps}w{c.num_stages}s")
@pytest.mark.parametrize("spec", ["int4-g128", "uint4-g128"])
@pytest.mark.parametrize("m", [33, 100, 256])
def test_forced_tiles_with_bias(config, spec, m):
    """NaN-poisoned output: every element written; bias added once."""
    check_poisoned_with_bias(_run, config, spec, m, 1000, 1536)


@pytest.mark.parametrize("n, k, m", [(28672, 4096, 256), (4096, 4096, 1024), (6144, 4096, 64)])
def test_repeated_launches_agree(n, k, m):
    """The MMA is waited for before the next decode writes registers: 20 launches, same bits."""
    check_repeated_launches(_run, (gm.GemmConfig(64, 64, 64, 1, 4, 4), gm.GemmConfig(128, 128, 64, 1, 8, 3)), n, k, m)


#: wgmma with the weights as a register list and x's tile as a descriptor.
WGMMA_REGISTER_A = re.compile(r"wgmma\.mma_async\.sync\.aligned\.m64n\d+k16\.f32\.f16\.f16\s*\{[^}]*\},\s*\{%r")


def test_weights_go_straight_into_the_mma_registers():
    """The compiled loop has register-operand HGMMA and no shared-memory stores: the decoded
    weights never pass through shared memory (its loads, ldmatrix among them, read only what
    the copies brought: each lane's code words of the pair-transposed layout, ``packing``)."""
    from anybit._matmul.gemm_gluon import gemm_gluon_kernel

    qw = quantized_cuda("int4-g128", 4096, 4096, torch.Generator(device="cuda").manual_seed(0))
    x = torch.randn(64, 4096, device="cuda", dtype=torch.float16)
    cache = gemm_gluon_kernel.device_caches[torch.cuda.current_device()][0]
    before = set(cache)
    _run(x, qw, gm.GemmConfig(64, 64, 64, 1, 4, 4))
    # this launch's kernel, or (compiled by an earlier test in this process) every one so far
    kernels = [cache[key] for key in cache if key not in before] or list(cache.values())
    assert all(WGMMA_REGISTER_A.search(kernel.asm["ptx"]) for kernel in kernels)
    # (kernels of a few K-blocks, compiled by other tests, may have their loop unrolled)
    loops = [loop for loop in (_mma_loop(kernel.asm["sass"]) for kernel in kernels) if loop]
    assert loops
    for loop in loops:
        assert not re.search(r"\bSTS(M)?\b", loop)


def _mma_loop(sass: str) -> str:
    """The SASS loop (from a label to the branch back to it) that holds the HGMMAs, or ""."""
    lines = sass.splitlines()
    for i, line in enumerate(lines):
        label = re.fullmatch(r"\s*(\w+):\s*", line)
        if label:
            for j in range(i + 1, len(lines)):
                if re.search(rf"\bBRA\s+{label.group(1)}\b", lines[j]):
                    body = "\n".join(lines[i:j + 1])
                    if "HGMMA" in body:
                        return body
                    break
    return ""


def test_a_tuned_gluon_plan_runs_through_the_dispatcher(monkeypatch):
    """anybit.matmul with a table entry of the Gluon kernel: that kernel, same result as
    launching it directly; bf16 x takes the same tiles on the Triton kernel."""
    import anybit

    gen = torch.Generator(device="cuda").manual_seed(1)
    qw = quantized_cuda("uint4-g128", 1000, 1536, gen)
    config = gm.GemmConfig(128, 64, 64, 2, 4, 3)
    monkeypatch.setattr(tuning, "plan", lambda *args: gm.Plan(gm.Kernel.GLUON, config))
    x = torch.randn(100, 1536, device="cuda", generator=gen).half()
    assert torch.equal(anybit.matmul(x, qw), _run(x, qw, config))
    xb = x.bfloat16()
    assert_matmul_close(anybit.matmul(xb, qw), xb, qw, weight_roundoff=unit_roundoff(xb.dtype))
