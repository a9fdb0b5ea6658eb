"""The Triton GEMM kernel on a GPU: all formats, the standard shapes at
M in {33, 64, 100, 256, 1024, 4096}, forced tiles on the PTX decode path, the
warpgroup MMA in the compiled kernel, torch.compile and CUDA graphs."""

import re

import pytest
import torch
from conftest import KERNEL_SPECS, SWEEP_M, assert_matmul_close, quantized_cuda, unit_roundoff

import anybit
from anybit._matmul import gemm as gm
from anybit._matmul import gemv as g
from anybit.bench import STANDARD_SHAPES
from anybit.matmul import Backend, select_backend

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _assert_close(y, x, qw, bias=None):
    """Against float64: output rounding + fp32 accumulation + one rounding of each weight."""
    assert_matmul_close(y, x, qw, bias, weight_roundoff=unit_roundoff(x.dtype))


@pytest.mark.parametrize("spec", KERNEL_SPECS)
def test_every_kernel_format(spec):
    gen = torch.Generator(device="cuda").manual_seed(hash(spec) % 2**31)
    qw = quantized_cuda(spec, 1000, 1536, gen)
    for m, dtype in [(33, torch.float16), (64, torch.bfloat16), (100, torch.float16), (256, torch.bfloat16)]:
        x = torch.randn(m, 1536, device="cuda", generator=gen).to(dtype)
        bias = torch.randn(1000, device="cuda", generator=gen) * 0.1
        assert select_backend(x, qw) is Backend.TRITON
        _assert_close(anybit.matmul(x, qw, bias), x, qw, bias)


@pytest.mark.parametrize("n, k", STANDARD_SHAPES)
@pytest.mark.parametrize("spec", ["int4-g128", "uint4-g128", "int8-gc", "nf4-g64", "int3-g64"])
def test_standard_shapes_sweep(spec, n, k):
    gen = torch.Generator(device="cuda").manual_seed(n * 7 + k)
    qw = quantized_cuda(spec, n, k, gen)
    for i, m in enumerate(SWEEP_M):
        x = torch.randn(m, k, device="cuda", generator=gen).to(torch.float16 if i % 2 else torch.bfloat16)
        _assert_close(anybit.matmul(x, qw), x, qw)


FORCED = [
    # one group per K-block; several (scales spread over the block); per-row groups
    ("int4-g128", 1000, 1536, gm.GemmConfig(64, 128, 64, 1, 4, 3)),
    ("int4-g128", 576, 1536, gm.GemmConfig(128, 128, 64, 1, 8, 2)),
    ("int4-g32", 1000, 1536, gm.GemmConfig(128, 128, 128, 2, 8, 2)),
    ("int4-gc", 1536, 576, gm.GemmConfig(128, 128, 64, 1, 8, 2)),
    ("int8-gc", 1000, 1536, gm.GemmConfig(128, 128, 64, 1, 8, 2)),
    ("int8-gc", 1000, 1536, gm.GemmConfig(64, 128, 64, 3, 4, 4)),
    # zero points: in the decode (one group per block), subtracted after it (several)
    ("uint4-g128", 1000, 1536, gm.GemmConfig(128, 128, 64, 1, 8, 2)),
    ("uint4-g64", 576, 576, gm.GemmConfig(64, 64, 128, 3, 4, 3)),
    ("uint4-g16", 1000, 1536, gm.GemmConfig(128, 128, 64, 1, 8, 2)),
    ("uint8-g128", 1000, 1536, gm.GemmConfig(64, 128, 64, 2, 4, 3)),
    # other widths: 1 to 8 codes per element
    ("int1-g128", 1000, 1536, gm.GemmConfig(128, 128, 128, 1, 8, 2)),
    ("uint2-g64", 1000, 1536, gm.GemmConfig(128, 128, 64, 1, 8, 2)),
    ("int3-g128", 576, 1536, gm.GemmConfig(128, 128, 128, 1, 8, 2)),
    ("uint5-g64", 1000, 1536, gm.GemmConfig(64, 64, 128, 2, 4, 3)),
    ("int6-gc", 576, 576, gm.GemmConfig(128, 64, 64, 1, 4, 2)),
    ("uint7-g256", 512, 1024, gm.GemmConfig(64, 128, 128, 1, 4, 3)),
    # 4-bit tables (fixed and per row) looked up by prmt
    ("nf4-g128", 1000, 1536, gm.GemmConfig(128, 128, 64, 1, 8, 2)),
    ("nf4-g32", 576, 576, gm.GemmConfig(64, 64, 64, 2, 4, 3)),
    ("lut4-g128", 1000, 1536, gm.GemmConfig(128, 128, 64, 1, 8, 2)),
    ("lut4-gc", 1536, 576, gm.GemmConfig(64, 128, 64, 1, 4, 3)),
    # tables of other widths: the generic decode
    ("lut3-g64", 1000, 1536, gm.GemmConfig(128, 128, 64, 1, 8, 2)),
    # 256 rows of x (an m64n256 MMA) and 128 x 128 on 8 warps with 3 stages: right only with the wait
    ("uint4-g128", 1000, 1536, gm.GemmConfig(256, 128, 64, 1, 8, 3)),
    ("int4-gc", 1000, 1536, gm.GemmConfig(256, 64, 64, 2, 4, 2)),
    ("int8-gc", 1000, 1536, gm.GemmConfig(128, 128, 64, 1, 8, 3)),
]


@pytest.mark.parametrize("spec, n, k, config", FORCED, ids=[f"{s}-{n}x{k}-{c.block_m}x{c.block_n}x{c.block_k}"
                                                          f"-s{c.split_k}-w{c.num_warps}" for s, n, k, c in FORCED])
@pytest.mark.parametrize("m", [33, 64, 100, 256])
def test_forced_tiles(spec, n, k, config, m):
    """Forced tiles on the PTX decode path, both dtypes, NaN-poisoned outputs."""
    gen = torch.Generator(device="cuda").manual_seed(n + k + m)
    qw = quantized_cuda(spec, n, k, gen)
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(m, k, device="cuda", generator=gen).to(dtype)
        bias = torch.randn(n, device="cuda", generator=gen)
        config, group = gm.launch_settings(qw, m, x.device, config)
        y = gm.launch_gemm(x, qw.codes, qw.params["scales"], qw.params.get("zeros"), g.kernel_table(qw), bias, n, k,
                           qw.format.bits, group, qw.format.kernel_decode().mode, config,
                           out=torch.full((m, n), float("nan"), device="cuda", dtype=dtype))
        _assert_close(y, x, qw, bias)


#: A warpgroup MMA whose A operand (the decoded weights) is a register list, not a
#: shared-memory descriptor: ``wgmma.mma_async...{acc}, {a regs}, b_desc, ...``.
WGMMA_REGISTER_A = re.compile(r"wgmma\.mma_async\.sync\.aligned\.m64n\d+k16\.f32\.(f16|bf16)\.(f16|bf16)\s*"
                              r"\{[^}]*\},\s*\{%r")


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability()[0] != 9,
                    reason="warpgroup MMA is a Hopper (sm_90) instruction")
@pytest.mark.parametrize("spec", ["int4-g128", "uint4-g128", "int8-gc", "nf4-g128", "int3-g64"])
def test_hopper_uses_wgmma_with_the_weights_in_registers(spec):
    from anybit._matmul.gemm_triton import gemm_kernel

    qw = anybit.quantize(torch.randn(4096, 4096, device="cuda"), spec)
    x = torch.randn(256, 4096, device="cuda", dtype=torch.float16)
    cache = gemm_kernel.device_caches[torch.cuda.current_device()][0]
    before = set(cache)
    gm.gemm(x, qw, None)  # the Triton kernel itself (the dispatcher may pick another for this format)
    new = [cache[key] for key in cache if key not in before] or list(cache.values())
    assert any(WGMMA_REGISTER_A.search(kernel.asm["ptx"]) for kernel in new)


@pytest.mark.parametrize("spec", ["int4-g128", "uint4-g128", "int8-gc", "int3-g64", "nf4-g128"])
@pytest.mark.parametrize("n, k, m", [(28672, 4096, 128), (4096, 4096, 200), (6144, 4096, 64), (4096, 14336, 100)])
def test_repeated_launches_agree(spec, n, k, m):
    """The heuristic's tiles give bit-identical results over 20 launches: the kernel's
    order of operations is fixed, so any difference is a race (some tile shapes of the
    register-operand pipeline showed one; see gemm.gemm_config)."""
    gen = torch.Generator(device="cuda").manual_seed(n + m)
    qw = quantized_cuda(spec, n, k, gen)
    x = torch.randn(m, k, device="cuda", generator=gen).to(torch.float16)
    first = anybit.matmul(x, qw)
    _assert_close(first, x, qw)
    for _ in range(20):
        assert torch.equal(anybit.matmul(x, qw), first)


@pytest.mark.parametrize("n, k, m", [(28672, 4096, 256), (4096, 4096, 4096)])
def test_waiting_for_every_mma_closes_the_register_race(n, k, m):
    """128x128 tiles on 8 warps with 3 stages gave different results in repeated launches of
    these shapes without ``sync_mma``; with it (the default) every launch must give the same, right one."""
    config = gm.GemmConfig(128, 128, 64, 1, 8, 3)
    assert config.sync_mma
    gen = torch.Generator(device="cuda").manual_seed(n + m)
    qw = quantized_cuda("int4-g128", n, k, gen)
    x = torch.randn(m, k, device="cuda", generator=gen).to(torch.float16)
    first = gm.gemm(x, qw, None, config)
    _assert_close(first, x, qw)
    for _ in range(30):
        assert torch.equal(gm.gemm(x, qw, None, config), first)


@pytest.mark.parametrize("rows", [50, 300], ids=["gemm", "dequantize"])
def test_torch_compile_fullgraph(rows):
    layer = anybit.QuantLinear.from_linear(torch.nn.Linear(512, 256).cuda().half(), "int4-g64")
    x = torch.randn(2, rows // 2, 512, device="cuda", dtype=torch.float16)
    expected = layer(x)
    compiled = torch.compile(layer, fullgraph=True)
    torch.testing.assert_close(compiled(x), expected, rtol=0, atol=0)


def test_cuda_graph_capture_and_replay():
    qw = anybit.quantize(torch.randn(1024, 2048, device="cuda"), "uint4-g128")
    x = torch.randn(300, 2048, device="cuda", dtype=torch.bfloat16)
    expected = anybit.matmul(x, qw)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        anybit.matmul(x, qw)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = anybit.matmul(x, qw)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, expected)
