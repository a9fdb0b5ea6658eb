"""The Triton decode kernel on a GPU: all formats, the standard shapes, M = 1..32,
inside torch.compile and CUDA graphs.  Every call gets fresh random inputs."""

import itertools

import pytest
import torch
from conftest import KERNEL_SPECS, assert_matmul_close, quantized_cuda, unit_roundoff

import anybit
from anybit.bench import STANDARD_SHAPES
from anybit.formats._base import Decode
from anybit.matmul import Backend, select_backend

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _check(qw, m, dtype, gen):
    n, k = qw.shape
    x = torch.randn(m, k, device="cuda", generator=gen).to(dtype)
    bias = torch.randn(n, device="cuda", generator=gen) * 0.1
    assert select_backend(x, qw) is Backend.TRITON
    y = anybit.matmul(x, qw, bias)
    # output rounding + fp32 accumulation + (at most) one rounding of each weight to x's dtype
    assert_matmul_close(y, x, qw, bias, weight_roundoff=unit_roundoff(dtype))


@pytest.mark.parametrize("spec", KERNEL_SPECS)
def test_every_kernel_format(spec):
    gen = torch.Generator(device="cuda").manual_seed(hash(spec) % 2**31)
    qw = quantized_cuda(spec, 1000, 1536, gen)
    for m, dtype in zip((1, 5, 16, 32), itertools.cycle((torch.float16, torch.bfloat16))):
        _check(qw, m, dtype, gen)


@pytest.mark.parametrize("n, k", [*STANDARD_SHAPES, (576, 1536), (1536, 576), (49152, 576)])
@pytest.mark.parametrize("spec", ["int4-g128", "uint4-g128", "int3-g64", "int8-gc", "nf4-g64", "lut4-g128"])
def test_standard_shapes(spec, n, k):
    gen = torch.Generator(device="cuda").manual_seed(n * 7 + k)
    qw = quantized_cuda(spec, n, k, gen)
    for m in range(1, 33, 3):
        _check(qw, m, torch.float16 if m % 2 else torch.bfloat16, gen)


def test_torch_compile_fullgraph():
    layer = anybit.QuantLinear.from_linear(torch.nn.Linear(512, 256).cuda().half(), "int4-g64")
    x = torch.randn(4, 512, device="cuda", dtype=torch.float16)
    compiled = torch.compile(layer, fullgraph=True)
    assert torch.equal(compiled(x), layer(x))


def test_cuda_graph_capture_and_replay():
    qw = anybit.quantize(torch.randn(1024, 2048, device="cuda"), "uint3-g32")
    x = torch.randn(8, 2048, device="cuda", dtype=torch.float16)
    expected = anybit.matmul(x, qw)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = anybit.matmul(x, qw)
    x.copy_(torch.randn_like(x))
    expected = anybit.matmul(x, qw)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, expected)


def test_wgmma_or_mma_in_the_compiled_kernel():
    """The decode kernel's dot runs on tensor cores (mma or wgmma in the PTX)."""
    qw = anybit.quantize(torch.randn(4096, 4096, device="cuda"), "int4-g128")
    x = torch.randn(1, 4096, device="cuda", dtype=torch.float16)
    anybit.matmul(x, qw)
    from anybit._matmul.gemv_triton import gemv_kernel

    kernels = [k for cache in gemv_kernel.device_caches.values() for k in cache[0].values()]
    assert kernels
    assert any("mma" in k.asm["ptx"] for k in kernels)


@pytest.mark.parametrize(
    "spec, n, k, config",
    [
        # several groups per K-block kept apart in the product's columns
        ("int4-g128", 1000, 1536, (256, 1)),
        ("int4-g128", 576, 576, (256, 3)),  # K not a multiple of the block: a partial group, a missing one
        ("int4-g64", 1536, 576, (256, 1)),
        ("int4-g32", 512, 1024, (256, 2)),
        ("int4-g128", 4096, 4096, (256, 8)),
        # one group per block, unmasked and masked K
        ("uint4-g128", 1000, 1536, (128, 4)),
        ("uint4-g64", 576, 576, (64, 3)),
        # zero points with several groups per block (a correction per column block)
        ("uint4-g128", 1000, 1536, (256, 2)),
        ("uint4-g64", 1000, 1536, (256, 3)),
        ("uint3-g64", 576, 1536, (256, 2)),
        ("uint2-g32", 1000, 1536, (128, 2)),
        ("uint8-g64", 576, 576, (128, 1)),
        ("int4-gc", 1000, 1000, (256, 2)),
        ("uint4-gc", 4096, 4096, (256, 4)),
        # other widths: one, two or three pieces, 1 to 8 codes per element
        ("int8-gc", 1000, 1536, (256, 2)),
        ("uint8-g128", 576, 576, (128, 3)),
        ("int3-g128", 1000, 1536, (128, 4)),
        ("int3-g128", 576, 1536, (256, 2)),
        ("uint3-g128", 1536, 576, (128, 1)),
        ("int2-g64", 1000, 1536, (256, 2)),
        ("uint2-gc", 1000, 1000, (128, 2)),
        ("int1-g128", 1000, 1536, (256, 3)),
        ("uint5-g128", 1000, 1536, (128, 4)),
        ("int6-gc", 576, 576, (256, 1)),
        ("uint7-g128", 1000, 1536, (128, 2)),
        ("int7-g256", 512, 1024, (256, 4)),
        # 4-bit tables looked up by prmt (levels rounded once to x's dtype): NF4's
        # fixed one, a learned one per row
        ("nf4-g128", 1000, 1536, (256, 2)),
        ("nf4-g64", 576, 576, (128, 3)),
        ("nf4-gc", 1536, 576, (256, 1)),
        ("lut4-g128", 1000, 1536, (256, 2)),
        ("lut4-g64", 576, 576, (128, 3)),
        ("lut4-gc", 1536, 576, (256, 1)),
    ],
)
@pytest.mark.parametrize("m", [1, 2, 3, 4, 8, 16, 32])
def test_forced_ptx_blocks(spec, n, k, config, m):
    """Forced K-blocks of the PTX decode path (one or several groups), both dtypes, checked against float64."""
    from anybit._matmul import gemv as g

    block_k, split_k = config
    gen = torch.Generator(device="cuda").manual_seed(n + k + m)
    qw = quantized_cuda(spec, n, k, gen)
    k_blocks = -(-k // block_k)
    per_split = -(-k_blocks // split_k)
    # one K-block per loop iteration, and two where they divide a split's blocks
    for dtype, unroll in itertools.product((torch.float16, torch.bfloat16), (1, 2) if per_split % 2 == 0 else (1,)):
        x = torch.randn(m, k, device="cuda", generator=gen).to(dtype)
        forced = g.GemvConfig(g.row_block(m), 32, block_k, split_k, num_warps=2, num_stages=3, x_pairs=True,
                              unroll=unroll)
        config, group = g.launch_settings(qw, m, x.device, forced)
        y = g.launch_gemv(x, qw.codes, qw.params["scales"], qw.params.get("zeros"), g.kernel_table(qw), None, n, k,
                          qw.format.bits, group, qw.format.kernel_decode().mode, config,
                          out=torch.full((m, n), float("nan"), device="cuda", dtype=dtype))
        # Integer codes are exact in fp16/bf16; the PTX path scales partial sums, so
        # no weight is rounded, except where the block takes the generic path (more
        # than 32 product columns needed, or a decoded tensor narrower than the MMA's
        # K): there weights are scaled and rounded to x's dtype.
        # Table levels are rounded to x's dtype on either path.
        mode = qw.format.kernel_decode().mode
        generic = g.ptx_groups(qw.format.bits, mode, group, block_k, config.block_m) == 0
        rounded = generic or mode in (Decode.TABLE, Decode.ROW_TABLE)
        assert_matmul_close(y, x, qw, weight_roundoff=unit_roundoff(dtype) if rounded else 0.0)
