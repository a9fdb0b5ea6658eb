"""Codes of 1, 2, 3, 5, 6 and 7 bits in the warp-specialized Gluon GEMM on a Hopper GPU
(``ws_pieces``): each kind of launch against float64 on a NaN-poisoned output, repeated
launches and graph replays, the compiled kernel's copies and MMAs, and the dispatcher's
choice for these formats."""

import functools
from dataclasses import replace

import pytest
import torch
from conftest import (assert_matmul_close, check_poisoned_with_bias, check_replays, hopper_only, launch_on_weight,
                      quantized_cuda, unit_roundoff)

import anybit
from anybit._matmul import gemm as gm

pytestmark = hopper_only("the kernel uses TMA and warpgroup MMA, Hopper (sm_90) instructions")

_run = functools.partial(launch_on_weight, gm.launch_gemm_gluon_ws)
_ws = gm.ws_config

#: One plan of each kind of launch, K-blocks of 128: one wave, split-K with a short last
#: split, the cluster sum, stream-K, warpgroups sharing K, tail rows, three warpgroups, 128
#: rows a warpgroup, 256 rows of x.
PLANS = [_ws(64, 256, 128, 1, 3), _ws(64, 128, 128, 3, 4), _ws(64, 128, 128, 2, 6, cluster_sum=True),
         _ws(64, 128, 128, 1, 6, stream_k=True), _ws(64, 64, 128, 2, 6, 64, 2, cluster_sum=True),
         _ws(64, 256, 128, 1, 3, tail_rows=192), _ws(128, 192, 128, 1, 4), _ws(64, 256, 128, 1, 3, 128),
         _ws(256, 128, 128, 2, 3)]

#: Each width, symmetric and with zero points, a scale per group and per row (7 bits: zero
#: points past 64, where the bias is converted rather than stepped)
SPECS = ["int3-g128", "uint3-g128", "int2-g128", "uint1-g128", "int5-g128", "uint6-g128", "int7-gc", "uint7-g128"]

#: (n, k, m), one per case in turn: K = 4200 puts the last K-block past K (read as zeros)
SHAPES = [(1000, 4200, 33), (4096, 4096, 64), (2048, 1536, 256)]

CASES = [(config, spec, SHAPES[(i + j) % len(SHAPES)]) for i, config in enumerate(PLANS) for j, spec in enumerate(SPECS)]


def _ids(c):
    extra = "-cluster" if c.cluster_sum else "-stream-k" if c.stream_k else ""
    extra += f"-kwg{c.k_warpgroups}" if c.k_warpgroups > 1 else ""
    extra += f"-tail{c.tail_rows}" if c.tail_rows else ""
    return f"{c.block_m}x{c.block_n}x{c.block_k}-s{c.split_k}-wg{gm.ws_wg_rows(c)}{extra}"


@pytest.mark.parametrize("config, spec, shape", CASES,
                         ids=[f"{_ids(c)}-{s}-{'x'.join(map(str, shape))}" for c, s, shape in CASES])
def test_piece_codes(config, spec, shape):
    """Every width in every kind of launch: within the float64 tolerance with bias on a
    NaN-poisoned output, the same bits again and in a graph replay."""
    n, k, m = shape
    config = replace(config, num_stages=gm.ws_fit_stages(config, anybit.formats.parse_format(spec).bits))
    x, qw, bias, y = check_poisoned_with_bias(_run, config, spec, m, n, k, seed=n + m + k)
    check_replays(_run, x, qw, config, bias, y, launches=2)


@pytest.mark.parametrize("spec", ["int6-g128", "uint2-g64", "int6-g64"])
@pytest.mark.parametrize("config", [_ws(64, 128, 64, 2, 6), _ws(128, 256, 64, 1, 4), _ws(64, 256, 128, 1, 3)],
                         ids=_ids)
def test_k_blocks_of_64_and_a_piece_read_past_its_end(spec, config):
    """2 and 6 bits with K-blocks of 64; K = 4160 (65 blocks of 64, 32.5 of 128): the last
    block of 128 reads the first piece's words past its end, the next piece's words, against
    x's zeros there."""
    if config.block_k > int(spec.rsplit("g", 1)[1]):
        pytest.skip("K-blocks across groups: not a plan the kernel takes")
    x, qw, bias, y = check_poisoned_with_bias(_run, config, spec, 100, 1000, 4160)
    check_replays(_run, x, qw, config, bias, y, launches=2)


def test_the_compiled_kernel_copies_each_piece_and_multiplies_from_registers():
    """3-bit codes: two TMA copies of codes a K-block besides x's (UTMALDG), wgmma with the
    decoded weights as its register operand, and no shared-memory round trip of the decoded
    weights (the conversions between the pieces' layouts move no data: STS only for the
    output and the scales)."""
    from anybit._matmul.gemm_gluon_ws import gemm_gluon_ws_kernel

    qw = quantized_cuda("int3-g128", 4096, 4096, torch.Generator(device="cuda").manual_seed(0))
    x = torch.randn(64, 4096, device="cuda", dtype=torch.float16)
    cache = gemm_gluon_ws_kernel.device_caches[torch.cuda.current_device()][0]
    before = set(cache)
    y = _run(x, qw, _ws(64, 128, 128, 1, 6))
    assert_matmul_close(y, x, qw, None, weight_roundoff=unit_roundoff(x.dtype))
    kernels = [cache[key] for key in cache if key not in before]
    assert kernels
    for kernel in kernels:
        sass = kernel.asm["sass"]
        assert sass.count("UTMALDG") >= 3 and "HGMMA" in sass
        ptx = kernel.asm["ptx"]
        assert "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16" in ptx


@pytest.mark.parametrize("spec", ["int3-g128", "uint5-g128", "int2-g128"])
def test_the_dispatcher_runs_piece_codes(spec):
    """Through ``anybit.matmul`` on the GPU (the dispatcher's choice at each M, a table's or
    the model's): within the float64 tolerance at M = 64, 100, 256 and 1024."""
    gen = torch.Generator(device="cuda").manual_seed(3)
    qw = quantized_cuda(spec, 3072, 4096, gen)
    for m in (64, 100, 256, 1024):
        x = torch.randn(m, 4096, device="cuda", generator=gen).half()
        assert_matmul_close(anybit.matmul(x, qw), x, qw, None, weight_roundoff=unit_roundoff(x.dtype))
