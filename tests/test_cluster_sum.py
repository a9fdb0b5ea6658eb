"""The warp-specialized GEMM's split-K sum through a cluster's shared memory
(``GemmConfig.cluster_sum``) and the same sum of warpgroups sharing K
(``GemmConfig.k_warpgroups``), on the CPU: their settings, the compiled kernel (sm_90, no GPU
needed) and the clustered launch.  The GPU runs are in test_gemm_gluon_ws_cuda.py."""

import re
import types
from dataclasses import replace

import pytest
from conftest import compile_script

from anybit._matmul import cluster
from anybit._matmul import gemm as gm

CLUSTER = gm.ws_config(64, 128, 64, 4, 6, cluster_sum=True)


def test_cluster_sum_settings():
    """2, 4 or 8 splits (the CTAs of a cluster), not with stream-K; the tile's fp32 partial
    and one barrier per consumer warpgroup after the ring, which then holds fewer stages."""
    assert gm.Plan(gm.Kernel.GLUON_WS, CLUSTER).label() == "gluon-ws 64x128x64 split4 12w6s cluster"
    assert gm.Plan.from_dict(gm.Plan(gm.Kernel.GLUON_WS, CLUSTER).to_dict()).config == CLUSTER
    assert gm.ws_cluster_bytes(CLUSTER) == 64 * 128 * 4 + 128  # 2 barriers, to 128 bytes
    assert gm.ws_cluster_bytes(replace(CLUSTER, cluster_sum=False)) == 0
    for split in (1, 3, 16):
        with pytest.raises(ValueError, match="with cluster_sum: accepted: 2, 4 or 8"):
            replace(CLUSTER, split_k=split)
    with pytest.raises(ValueError, match="with stream_k: accepted: split_k 1"):
        replace(CLUSTER, stream_k=True)
    # 128 x 128 x 128 at 128 rows of x: a 64 KB partial beside the ring of 4-bit codes' 40 KB
    # stages (8-bit: 48 KB) in 227 KB
    wide = gm.ws_config(128, 128, 128, 2, 4, cluster_sum=True)
    assert gm.ws_cluster_bytes(wide) == 128 * 128 * 4 + 128
    assert (gm.ws_fit_stages(wide, 4), gm.ws_fit_stages(wide, 8)) == (4, 3)
    assert gm.ws_fit_stages(replace(wide, cluster_sum=False), 8) == 4
    assert gm.ws_fit_stages(gm.ws_config(256, 128, 128, 2, 3, cluster_sum=True), 4) is None


def test_warpgroups_sharing_k_settings():
    """Two consumer warpgroups per row set (``k_warpgroups``): twice the warps, their partials
    summed through shared memory (a tail of block_n x block_m fp32 per warpgroup sharing K and
    a barrier per consumer warpgroup) with split_k 1 or in a cluster, never through global
    memory or with stream-K, an even ring (each warpgroup's own stages); 64 x 64 x 128 has PAIRS
    as 64 x 128 x 128 (two warpgroups of 64 rows against 64 rows of x)."""
    shared = gm.ws_config(64, 64, 128, 1, 6, 64, 2)
    assert (shared.num_warps, gm.ws_wg_rows(shared), shared.k_warpgroups) == (12, 64, 2)
    assert gm.Plan(gm.Kernel.GLUON_WS, shared).label() == "gluon-ws 64x64x128 split1 12w6s kwg2"
    assert gm.Plan.from_dict(gm.Plan(gm.Kernel.GLUON_WS, shared).to_dict()).config == shared
    assert gm.Plan.from_dict({"kernel": "gluon_ws", "config": {k: v for k, v in gm.Plan(
        gm.Kernel.GLUON_WS, CLUSTER).to_dict()["config"].items() if k != "k_warpgroups"}}).config == CLUSTER
    assert gm.ws_push_sum(shared) and not gm.ws_push_sum(gm.ws_config(64, 64, 128, 1, 6))
    assert gm.ws_cluster_bytes(shared) == 2 * 64 * 64 * 4 + 128
    four = gm.ws_config(64, 128, 128, 2, 4, 64, 2, cluster_sum=True)  # 2 row sets x 2 warpgroups
    assert (four.num_warps, gm.ws_wg_rows(four), gm.ws_cluster_bytes(four)) == (20, 64, 2 * 128 * 64 * 4 + 128)
    assert gm.ws_overlap(shared) is gm.WsOverlap.PAIRS and gm.ws_overlap(four) is gm.WsOverlap.NONE
    assert not gm.ws_vector_store(shared, 4)
    assert gm.ws_fit_stages(shared, 8) == 6 and gm.ws_fit_stages(gm.ws_config(128, 64, 128, 1, 6, 64, 2), 4) == 4
    for bad in (dict(k_warpgroups=3), dict(k_warpgroups=0)):
        with pytest.raises(ValueError, match="k_warpgroups=.*: accepted: 1, 2 or 4"):
            replace(shared, **bad)
    with pytest.raises(ValueError, match="num_stages=5 with k_warpgroups=2: accepted: a multiple of k_warpgroups"):
        replace(shared, num_stages=5)
    assert gm.ws_fit_stages(gm.ws_config(64, 128, 128, 1, 6, 64, 2), 8) == 4  # 5 would fit, but is odd
    four_k = gm.ws_config(64, 64, 128, 2, 8, 64, 4, cluster_sum=True)  # one row set, four warpgroups sharing K
    assert (four_k.num_warps, gm.ws_wg_rows(four_k), gm.ws_cluster_bytes(four_k)) == (20, 64, 4 * 64 * 64 * 4 + 128)
    assert gm.ws_fit_stages(four_k, 4) == 8 and gm.ws_fit_stages(four_k, 8) == 4  # 6 or 7 would fit 8-bit codes
    with pytest.raises(ValueError, match="num_stages=6 with k_warpgroups=4: accepted: a multiple of k_warpgroups"):
        replace(four_k, num_stages=6)
    for bad in (dict(split_k=2), dict(stream_k=True)):
        with pytest.raises(ValueError, match="k_warpgroups=2 with .*accepted: split_k 1, or split_k 2, 4 or 8 with "
                                             "cluster_sum"):
            replace(shared, **bad)
    with pytest.raises(ValueError, match=r"num_warps = 4 \+ 4 x k_warpgroups per 64 or 128 rows"):
        gm.check_gluon_ws_config(replace(shared, num_warps=8))


COMPILED = [(replace(CLUSTER, split_k=2), 4), (CLUSTER, 4), (replace(CLUSTER, split_k=8), 4), (CLUSTER, 8),
            (gm.ws_config(128, 128, 128, 2, 4, cluster_sum=True), 4),
            (gm.ws_config(64, 256, 128, 2, 3, cluster_sum=True), 4),
            (gm.ws_config(64, 64, 128, 1, 6, 64, 2), 4), (gm.ws_config(64, 64, 128, 2, 6, 64, 2, cluster_sum=True), 8),
            (gm.ws_config(128, 64, 128, 1, 4, 64, 2), 4),
            (gm.ws_config(64, 128, 128, 2, 4, 64, 2, cluster_sum=True), 4),
            (gm.ws_config(64, 64, 128, 2, 8, 64, 4, cluster_sum=True), 4), (gm.ws_config(64, 64, 128, 1, 8, 64, 4), 4)]


@pytest.mark.parametrize("config, bits", COMPILED, ids=lambda c: str(c) if isinstance(c, int) else
                         f"{c.block_m}x{c.block_n}x{c.block_k}-s{c.split_k}-kwg{c.k_warpgroups}")
def test_the_cluster_sum_compiles_to_pushes_and_cluster_barriers(config, bits):
    """Each consumer warpgroup pushes its partial by ``st.async``, one 16-byte vector a
    thread per 512 elements (8 for a 64 x 64 partial), every partition arrives at a cluster
    barrier at its start and waits for it once (the consumers before their pushes), there is no split-K counter (no atomics), the kernel
    compiles without spills or serialized wgmma, and it declares no shared memory of its own:
    the cluster sum's buffer is at the end of the launch's dynamic shared memory.  The same
    where two warpgroups share each row set's K in clusters; without splits (one CTA, launched
    alone, where cluster instructions are illegal) plain 16-byte shared stores instead, each
    thread arriving once on each barrier of its row set's warpgroups, and no cluster instruction."""
    text = compile_script("ptxas_report.py", config.block_m, config.block_n, config.block_k, config.num_stages,
                          int(gm.ws_overlap(config)), config.num_warps, bits, 0, config.split_k,
                          *(["--cluster"] if config.cluster_sum else []), "--k-warpgroups", config.k_warpgroups,
                          "--ptx")
    rows = gm.ws_wg_rows(config)
    groups = (config.num_warps - 4) // 4  # consumer warpgroups
    vectors = groups * rows * config.block_m // 512
    if config.cluster_sum:
        assert text.count("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32") == vectors
        # each partition arrives once (release) and waits once (acquire), none before exit
        assert text.count("barrier.cluster.arrive.release") == 1 + groups
        assert text.count("barrier.cluster.wait.acquire") == 1 + groups
        assert text.count("barrier.cluster.arrive") == text.count("barrier.cluster.wait") == 1 + groups
    else:
        # (Triton's own partition set-up stores at fixed addresses, [global_smem+...], are not counted)
        assert len(re.findall(r"st\.shared\.v4\.b32\s+\[%r", text)) == vectors
        assert text.count("mbarrier.arrive.release.cta.shared::cta.b64") == groups * config.k_warpgroups
        assert "barrier.cluster" not in text and "mapa" not in text and "st.async" not in text
    assert "atom." not in text
    assert " 0 bytes spill stores" in text and "wgmma.mma_async instructions are serialized" not in text
    assert "%dynamic_smem_size" in text and "bytes smem" not in text  # ptxas reports no static shared memory


class _Compiled:
    def __init__(self, packed):
        self.packed_metadata = packed
        self.metadata = types.SimpleNamespace(shared=packed[2] if packed else 0)


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


def test_launch_clustered_sets_the_compiled_kernels_cluster_and_tail():
    """The cluster's size and the tail after Triton's shared memory (74,000 bytes, aligned up
    to 74,112) in the compiled kernel's packed metadata, the same at every launch."""
    kernel = _Kernel()
    for _ in range(2):
        cluster.launch_clustered(kernel, (32,), 4, 65664, "x", "w", BLOCK_M=64, num_warps=4)
    assert kernel.warmed == (("x", "w"), (32,), {"BLOCK_M": 64, "num_warps": 4})
    assert kernel.launches == 2 * [((32,), ("x", "w"), {"BLOCK_M": 64, "num_warps": 4}, (4, 4, 74112 + 65664))]
    assert cluster.tail_offset(74000) == 74112 and cluster.tail_offset(74112) == 74112
    with pytest.raises(ValueError, match="cluster=9: accepted: 1 to 8"):
        cluster.launch_clustered(kernel, (32,), 9, 0)
    with pytest.raises(RuntimeError, match=r"launching as clusters needs \(num_warps, num_ctas, shared\)"):
        cluster.launch_clustered(_Kernel(packed=None), (32,), 2, 0)
    # a kernel within the default 48 KB: Triton's loader has not raised its limit
    small = _Kernel(packed=(4, 1, 40000))
    with pytest.raises(ValueError, match="tail=16384: the kernel takes 40000 bytes .* accepted: a tail up to 9088"):
        cluster.launch_clustered(small, (32,), 2, 16384)
    cluster.launch_clustered(small, (32,), 2, 9088)
    assert small.launches[-1][-1] == (4, 2, 49152)
