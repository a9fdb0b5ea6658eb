"""The warp-specialized GEMM's split-K sum through a cluster's shared memory
(``GemmConfig.cluster_sum``), on the CPU: its settings, the compiled kernel (sm_90, no GPU
needed) and the clustered launch.  The GPU runs are in test_gemm_gluon_ws_cuda.py."""

import re
from dataclasses import replace

import pytest
from conftest import compile_script

from anybit._matmul import cluster
from anybit._matmul import gemm as gm

CLUSTER = gm.ws_config(64, 128, 64, 4, 6, cluster_sum=True)


def test_cluster_sum_settings():
    """2, 4 or 8 splits (the CTAs of a cluster), not with stream-K; the tile's fp32 partial
    and one barrier per consumer warpgroup in static shared memory, at most 48 KB."""
    assert gm.Plan(gm.Kernel.GLUON_WS, CLUSTER).label() == "gluon-ws 64x128x64 split4 12w6s cluster"
    assert gm.Plan.from_dict(gm.Plan(gm.Kernel.GLUON_WS, CLUSTER).to_dict()).config == CLUSTER
    assert gm.ws_cluster_bytes(CLUSTER) == 64 * 128 * 4 + 1024  # 2 barriers, whole KB
    assert gm.ws_cluster_bytes(replace(CLUSTER, cluster_sum=False)) == 0
    for split in (1, 3, 16):
        with pytest.raises(ValueError, match="with cluster_sum: accepted: 2, 4 or 8"):
            replace(CLUSTER, split_k=split)
    with pytest.raises(ValueError, match="with stream_k: accepted: split_k 1"):
        replace(CLUSTER, stream_k=True)
    # 128 x 128 at 128 rows of x: a 64 KB partial, beyond what a kernel may declare
    with pytest.raises(ValueError, match="66560 bytes of static shared memory; accepted: at most 49152"):
        gm.Plan(gm.Kernel.GLUON_WS, gm.ws_config(128, 128, 128, 2, 3, cluster_sum=True))


@pytest.mark.parametrize("split, bits", [(2, 4), (4, 4), (8, 4), (4, 8)])
def test_the_cluster_sum_compiles_to_pushes_and_cluster_barriers(split, bits):
    """Each consumer warpgroup pushes its partial by ``st.async`` (4 vectors of 16 bytes a
    thread for a 64 x 64 partial), every partition passes a cluster barrier at its start and
    its end, there is no split-K counter (no atomics), and the kernel compiles without spills
    or serialized wgmma, its static shared memory the cluster sum's."""
    config = replace(CLUSTER, split_k=split)
    text = compile_script("ptxas_report.py", config.block_m, config.block_n, config.block_k, config.num_stages,
                          int(gm.ws_overlap(config)), config.num_warps, bits, 0, split, "--cluster", "--ptx")
    groups = config.block_n // gm.ws_wg_rows(config)
    assert text.count("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32") == groups * 8
    assert text.count("barrier.cluster.arrive") == 2 * (1 + groups)
    assert "atom." not in text
    assert " 0 bytes spill stores" in text and "wgmma.mma_async instructions are serialized" not in text
    assert int(re.search(r"Used \d+ registers, used \d+ barriers, (\d+) bytes smem", text).group(1)) \
        == gm.ws_cluster_bytes(config)


class _Compiled:
    def __init__(self, packed):
        self.packed_metadata = packed


class _Kernel:
    """A Gluon kernel's launch surface: ``warmup`` compiles (here: returns the object whose
    packed metadata Triton's launcher reads), ``kernel[grid](...)`` launches."""

    def __init__(self, packed=(4, 1, 74000)):
        self.compiled = _Compiled(packed)
        self.launches = []

    def warmup(self, *args, grid, **kwargs):
        self.warmed = (args, grid, kwargs)
        return self.compiled

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((grid, args, kwargs, self.compiled.packed_metadata))


def test_launch_clustered_sets_the_compiled_kernels_cluster():
    kernel = _Kernel()
    cluster.launch_clustered(kernel, (32,), 4, "x", "w", BLOCK_M=64, num_warps=4)
    assert kernel.warmed == (("x", "w"), (32,), {"BLOCK_M": 64, "num_warps": 4})
    assert kernel.launches == [((32,), ("x", "w"), {"BLOCK_M": 64, "num_warps": 4}, (4, 4, 74000))]
    with pytest.raises(ValueError, match="cluster=9: accepted: 1 to 8"):
        cluster.launch_clustered(kernel, (32,), 9)
    with pytest.raises(RuntimeError, match=r"launching as clusters needs \(num_warps, num_ctas, shared\)"):
        cluster.launch_clustered(_Kernel(packed=None), (32,), 2)
