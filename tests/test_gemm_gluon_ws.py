"""The warp-specialized Gluon GEMM's parts that run without a GPU: its launch rules, its
plans and tuner candidates, and the dispatcher's fallback where it does not apply (the
Triton kernel with the heuristic's settings, checked against float64 in the interpreter).
The kernel itself is checked on a Hopper GPU (tests/test_gemm_gluon_ws_cuda.py): Gluon
kernels do not run in Triton's interpreter."""

import inspect
import re
from dataclasses import replace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from conftest import assert_matmul_close, compile_script, unit_roundoff

import anybit
from anybit._matmul import candidates as cand
from anybit._matmul import gemm as gm
from anybit._matmul import gemm_gluon as gg
from anybit._matmul import gemm_gluon_ws as gw
from anybit._matmul import gemv as g
from anybit._matmul import tuning, ws_schedule, ws_settings
from anybit.formats._base import Decode

WS = gm.GemmConfig(64, 256, 128, 1, 20, 3)


def test_launch_refuses_what_it_does_not_compute():
    qw = anybit.quantize(torch.randn(128, 256), "int4-g128")
    launch = lambda x, k, config: gm.launch_gemm_gluon_ws(  # noqa: E731
        x, qw.codes, qw.params["scales"], None, None, 128, k, 4, 128, Decode.SYMMETRIC, config)
    with pytest.raises(ValueError, match="does not compute .* x torch.bfloat16"):
        launch(torch.randn(64, 256, dtype=torch.bfloat16), 256, WS)
    with pytest.raises(ValueError, match="k=250; .* k a multiple of 8"):
        launch(torch.randn(64, 250, dtype=torch.float16), 250, WS)
    with pytest.raises(ValueError, match="block_n 64, 128, 192 or 256"):
        launch(torch.randn(64, 256, dtype=torch.float16), 256, replace(WS, num_warps=16))
    with pytest.raises(ValueError, match=r"block_n=96: accepted: a power of two >= 16, or block_n 192"):
        replace(WS, block_n=96)
    three = gm.ws_config(128, 192, 128, 1, 4)  # three warpgroups of 64 rows; the other kernels refuse 192 rows
    assert three.num_warps == 16 and gm.ws_wg_rows(three) == 64 and gm.ws_code_rows(192) == 64
    assert gm.ws_consumer_regs(three) == 160 and gm.ws_code_rows(256) == 256
    for kernel in (gm.Kernel.GEMM, gm.Kernel.GLUON):
        with pytest.raises(ValueError, match="block_n"):
            gm.Plan(kernel, replace(three, num_warps=12))
    # a ring that does not fit shared memory: 3 stages of 256 x 128 (x) and 128 x 128 8-bit codes
    q8 = anybit.quantize(torch.randn(128, 256), "int8-gc")
    big = gm.ws_config(256, 128, 128, 1, 3)
    assert gm.ws_fits(big, 4) and not gm.ws_fits(big, 8) and gm.ws_ring_bytes(big, 8) == 3 * (65536 + 16384)
    with pytest.raises(ValueError, match="245760 bytes of shared memory; accepted: at most 231424"):
        gm.launch_gemm_gluon_ws(torch.randn(64, 256, dtype=torch.float16), q8.codes, q8.params["scales"], None, None,
                                128, 256, 8, 256, Decode.SYMMETRIC, big)


def test_split_k_workspace_holds_whole_tiles():
    """With split-K the kernel keeps each warpgroup's partial as a whole tile: the
    workspace is split_k x tiles x block_n x block_m floats, and a smaller one is refused
    before anything is launched."""
    config = gm.GemmConfig(64, 128, 64, 3, 12, 4)
    # 200 x 1000: 4 x 8 tiles of 64 x 128
    assert gm.ws_workspace_size(config, 200, 1000) == 3 * 32 * 128 * 64
    assert gm.ws_workspace_size(replace(config, split_k=1), 200, 1000) == 32 * 128 * 64
    qw = anybit.quantize(torch.randn(1000, 256), "int4-g128")
    x = torch.randn(200, 256, dtype=torch.float16)
    for bad in (torch.empty(3, 200, 1000), torch.empty(gm.ws_workspace_size(config, 200, 1000), dtype=torch.float16)):
        with pytest.raises(ValueError, match=r"workspace: .* at least 786432 elements"):
            gm.launch_gemm_gluon_ws(x, qw.codes, qw.params["scales"], None, None, 1000, 256, 4, 128,
                                    Decode.SYMMETRIC, config, workspace=bad)


def test_launch_refuses_an_output_it_cannot_write():
    """``out`` may be a slice of a wider y's columns (rows further apart than n), but not one
    whose columns are not contiguous, whose rows overlap, or of another shape or dtype."""
    qw = anybit.quantize(torch.randn(128, 256), "int4-g128")
    x = torch.randn(64, 256, dtype=torch.float16)
    launch = lambda out: gm.launch_gemm_gluon_ws(  # noqa: E731
        x, qw.codes, qw.params["scales"], None, None, 128, 256, 4, 128, Decode.SYMMETRIC, WS, out=out)
    wide = torch.empty(64, 200, dtype=torch.float16)
    for bad in (torch.empty(128, 64, dtype=torch.float16).t(), wide.as_strided((64, 128), (100, 1)),
                wide[:, :100], wide[:, :128].float(), wide[:32, :128]):
        with pytest.raises(ValueError, match=r"out: .* accepted: torch.float16 \(64, 128\) on cpu, columns "
                                             r"contiguous \(stride 1\) and rows at least 128 elements apart"):
            launch(bad)


def test_plans_need_the_kernels_warps():
    assert gm.ws_warps(64) == 8 and gm.ws_warps(256) == 20
    plan = gm.Plan(gm.Kernel.GLUON_WS, WS)
    assert gm.Plan.from_dict(plan.to_dict()) == plan
    assert plan.label() == "gluon-ws 64x256x128 split1 20w3s"
    assert gm.Plan(gm.Kernel.GLUON_WS, replace(WS, swizzle=16)).label() == "gluon-ws 64x256x128 split1 20w3s sw16"
    assert gm.ws_warps(256, 128) == 12 and gm.ws_wg_rows(replace(WS, num_warps=12)) == 128
    for bad in (replace(WS, num_warps=4), replace(WS, block_n=32, num_warps=6), replace(WS, block_k=256),
                replace(WS, num_stages=1), replace(WS, num_warps=6), replace(WS, block_n=64, num_warps=6)):
        with pytest.raises(ValueError, match="warp-specialized"):
            gm.Plan(gm.Kernel.GLUON_WS, bad)


def _check_stream_k_schedule(tiles: int, k_blocks: int, programs: int) -> None:
    work = ws_settings.stream_k_items(tiles, k_blocks, programs)
    waves = tiles // programs
    sk_blocks = tiles % programs * k_blocks
    sharers = max(1, min(programs, sk_blocks))
    seen = [(item.tile, item.first + i) for items in work for item in items for i in range(item.blocks)]
    assert sorted(seen) == [(t, b) for t in range(tiles) for b in range(k_blocks)]  # each K-block once
    for pid, items in enumerate(work):
        whole, shared = items[:waves], items[waves:]
        assert [i.tile for i in whole] == [w * programs + pid for w in range(waves)]
        assert all(i.blocks == k_blocks and not i.shared for i in whole)
        assert len(shared) <= 2 and [i.slot for i in shared] == list(range(len(shared)))
        assert all(i.blocks > 0 and i.shared == (i.blocks < k_blocks) for i in shared)
        # the kernel's sum: owners by share_owner, each owner's item for the tile at the slot it computes
        lo = pid * sk_blocks // sharers
        for item in shared:
            local = item.tile - waves * programs
            for b in (item.first, item.first + item.blocks - 1):
                assert ws_schedule.share_owner.fn(local * k_blocks + b, sk_blocks, sharers) == pid
            assert item.slot == (0 if lo // k_blocks == local else 1)
    # an equal share: the programs' K-blocks differ by at most one
    totals = [sum(i.blocks for i in items) for items in work]
    assert max(totals) - min(totals) <= (1 if sk_blocks >= programs else k_blocks + 1)


@pytest.mark.parametrize("tiles, k_blocks, programs", [
    (80, 64, 132),   # fewer tiles than SMs: one partial wave, all shared
    (264, 32, 132),  # whole waves only: nothing shared
    (160, 64, 132),  # one whole wave, then 28 tiles' K-blocks over 132 programs
    (5, 1, 132),     # fewer K-blocks than SMs: 5 programs of one block, the rest idle
    (133, 3, 132),   # one tile left over
    (1, 1, 1), (7, 5, 4),
])
def test_stream_k_schedule(tiles, k_blocks, programs):
    """Every (tile, K-block) once; the whole waves' tiles whole; at most two shared items
    per program in slots 0 and 1; the owners and slots the kernel's fix-up reads agree."""
    _check_stream_k_schedule(tiles, k_blocks, programs)


@given(st.integers(1, 600), st.integers(1, 80), st.integers(1, 140))
def test_stream_k_schedule_property(tiles, k_blocks, programs):
    _check_stream_k_schedule(tiles, k_blocks, programs)


def test_stream_k_settings():
    """Stream-K with split_k 1 in the warp-specialized kernel only; two partial tiles per
    program of workspace where the last wave is partial, none where it is whole."""
    config = gm.ws_config(128, 128, 128, 1, 3, stream_k=True)
    plan = gm.Plan(gm.Kernel.GLUON_WS, config)
    assert plan.label() == "gluon-ws 128x128x128 split1 12w3s stream-k"
    assert gm.Plan.from_dict(plan.to_dict()) == plan
    with pytest.raises(ValueError, match="split_k=2 with stream_k: accepted: split_k 1"):
        replace(config, split_k=2)
    elsewhere = gm.GemmConfig(64, 64, 64, 1, 4, 3, stream_k=True)
    with pytest.raises(ValueError, match="with stream_k=True, .*accepted: stream-K.* in the gluon_ws kernel only"):
        gm.Plan(gm.Kernel.GEMM, elsewhere)
    with pytest.raises(ValueError, match="Gluon GEMM: .*stream_k=True.*accepted: .* no stream_k"):
        gm.Plan(gm.Kernel.GLUON, elsewhere)
    with pytest.raises(ValueError, match="no stream-K.*; accepted: stream_k=False"):
        qw = anybit.quantize(torch.randn(64, 128), "int4-g128")
        gm.launch_gemm(torch.randn(64, 128), qw.codes, qw.params["scales"], None, None, None, 64, 128, 4, 128,
                       Decode.SYMMETRIC, elsewhere)
    # 200 x 1000: 2 x 8 = 16 tiles of 128 x 128
    assert gm.ws_workspace_size(config, 200, 1000, 132) == 132 * 2 * 128 * 128
    assert gm.ws_workspace_size(config, 200, 1000, 16) == gm.ws_workspace_size(config, 200, 1000, 8) == 0
    # 130 x 384: 3 x 3 tiles of 64 x 128 on the CPU's 4 "SMs" (``sm_count``), one left over
    qw = anybit.quantize(torch.randn(384, 256), "int4-g128")
    with pytest.raises(ValueError, match=r"workspace: .* at least 65536 elements"):
        gm.launch_gemm_gluon_ws(torch.randn(130, 256, dtype=torch.float16), qw.codes, qw.params["scales"], None,
                                None, 384, 256, 4, 128, Decode.SYMMETRIC, replace(config, block_m=64),
                                workspace=torch.empty(100))


@pytest.mark.parametrize("n, m, stream_k", [(4096, 256, True), (101376, 128, False), (10240, 64, True)])
def test_stream_k_candidates(n, m, stream_k):
    """Stream-K variants of the split-1 warp-specialized plans, each swizzle, only where the
    tiles leave a partial last wave on the SMs."""
    plans = [p for p in cand.candidate_plans(m, n, 4096, 4, 132, gluon=True) if p.kernel is gm.Kernel.GLUON_WS]
    sk = [p for p in plans if p.config.stream_k]
    for p in plans:
        tiles = -(-m // p.config.block_m) * -(-n // p.config.block_n)
        if p.config.split_k == 1 and not p.config.stream_k and p.config.k_warpgroups == 1:
            twin = gm.Plan(gm.Kernel.GLUON_WS, replace(p.config, stream_k=True))
            assert (twin in sk) == bool(tiles % 132), p.label()
    assert bool(sk) == stream_k and all(p.config.split_k == 1 for p in sk)


@pytest.mark.parametrize("m, k, bits", [(64, 4096, 4), (128, 4096, 8), (1024, 4096, 4), (64, 320, 4)])
def test_cluster_sum_candidates(m, k, bits):
    """Each warp-specialized tile whose partial fits beside a ring of two stages or more is
    also a candidate with 2, 4 and 8 splits summed in a cluster (not more splits than
    K-blocks), with the stages ``ws_fit_stages`` leaves beside the sum's buffer, each swizzle."""
    plans = [p.config for p in cand.candidate_plans(m, 4096, k, bits, 132, gluon=True)
             if p.kernel is gm.Kernel.GLUON_WS]
    clustered = [c for c in plans if c.cluster_sum]
    for block_m, block_n, block_k, stages, *rows in cand.GLUON_WS_TILES:
        if block_m > 64 and m <= block_m // 2:
            continue
        swizzles = cand.GLUON_WS_SWIZZLES if m > block_m else cand.GLUON_WS_SWIZZLES[:1]
        for split in cand.CLUSTER_SPLITS:
            config = gm.ws_config(block_m, block_n, block_k, split, stages, *rows, cluster_sum=True)
            fit = gm.ws_fit_stages(config, bits)
            expected = [replace(config, num_stages=fit, swizzle=s) for s in swizzles] \
                if fit and split <= -(-k // block_k) else []
            assert [c for c in clustered if (c.block_m, c.block_n, c.block_k, c.split_k, c.num_warps)
                    == (block_m, block_n, block_k, split, config.num_warps)] == expected
            for c in expected:
                assert gm.ws_fits(c, bits, gm.ws_cluster_bytes(c))
    assert clustered and all(c.split_k in cand.CLUSTER_SPLITS for c in clustered)


def test_one_wave_split():
    """The largest divisor of the K-blocks whose programs fit one wave: 64 tiles of 32 blocks on 132
    SMs split in 2 (split_for's nearest divisor gives 4: two waves); never below 1."""
    assert g.one_wave_split(32, 64, 132) == 2 and g.split_for(32, 64, 1, 132) == 4
    assert g.one_wave_split(36, 40, 132) == 3
    assert g.one_wave_split(31, 20, 132) == 1 and g.one_wave_split(64, 200, 132) == 1
    assert g.one_wave_split(8, 1, 132) == 8


@pytest.mark.parametrize("m", [64, 200, 1024])
def test_tuner_candidates(m):
    """Tiles whose x rows are at least half real; both swizzles where there is more than
    one tile of x, swizzle 8 alone where there is one (the cluster-sum plans, with their own
    stages: test_cluster_sum_candidates)."""
    plans = cand.candidate_plans(m, 4096, 4096, 4, 132, gluon=True)
    ws = [p for p in plans if p.kernel is gm.Kernel.GLUON_WS and not p.config.cluster_sum]
    # GLUON_WS_TILES' form: rows of W per warpgroup written only where not 64 or where
    # warpgroups share K, then their count
    rows = lambda c: (gm.ws_wg_rows(c), c.k_warpgroups) if c.k_warpgroups > 1 else (  # noqa: E731
        (gm.ws_wg_rows(c),) if gm.ws_wg_rows(c) != 64 else ())
    tiles = {(c.block_m, c.block_n, c.block_k, c.num_stages, *rows(c)) for c in (p.config for p in ws)}
    assert tiles == {t for t in cand.GLUON_WS_TILES if t[0] == 64 or m > t[0] // 2}
    assert (256, 128, 64, 4) in tiles if m > 128 else (256, 128, 64, 4) not in tiles
    for p in ws:
        swizzles = {q.config.swizzle for q in ws if replace(q.config, swizzle=8) == replace(p.config, swizzle=8)}
        several = m > p.config.block_m and not p.config.tail_rows  # (a tail launch walks no swizzle)
        assert swizzles == (set(cand.GLUON_WS_SWIZZLES) if several else {8}), p.label()
    assert {p.config.split_k for p in ws} >= {1} and max(p.config.split_k for p in ws) > 1
    for p in ws:  # each split-1 tile also split as far as one wave holds (warpgroups sharing K: in clusters only)
        tiles_, k_blocks = -(-m // p.config.block_m) * -(-4096 // p.config.block_n), 4096 // p.config.block_k
        assert p.config.k_warpgroups == 1 or (p.config.split_k == 1 and not p.config.stream_k), p.label()
        if p.config.split_k == 1 and not p.config.stream_k and p.config.k_warpgroups == 1:
            assert replace(p.config, split_k=g.one_wave_split(k_blocks, tiles_, 132)) in {q.config for q in ws}
    assert len(set(plans)) == len(plans)
    assert not any(p.kernel is gm.Kernel.GLUON_WS for p in cand.candidate_plans(m, 4096, 4100, 4, 132, gluon=True))
    # 8-bit codes: each warp-specialized tile at the deepest ring up to its stages that fits
    # shared memory (256 x 128 x 128: 2 stages, not 3), with no Gluon (4-bit) plans
    plans8 = cand.candidate_plans(m, 4096, 4096, 8, 132, gluon=False, ws=True)
    tiles8 = {(p.config.block_m, p.config.block_n, p.config.block_k, p.config.num_stages, *rows(p.config))
              for p in plans8 if p.kernel is gm.Kernel.GLUON_WS and not p.config.cluster_sum}
    assert tiles8 == {(*t[:3], gm.ws_fit_stages(gm.ws_config(*t[:3], 1, *t[3:]), 8), *t[4:]) for t in tiles}
    assert all(gm.ws_fits(c := gm.ws_config(*t[:3], 1, *t[3:]), 8, gm.ws_cluster_bytes(c)) for t in tiles8)
    assert ((256, 128, 128, 2) in tiles8) == (m > 128) and (256, 128, 128, 3) not in tiles8
    assert not any(p.kernel is gm.Kernel.GLUON for p in plans8)


def test_the_deepest_ring_that_fits():
    """A tile keeps its stages where they fit, else the most that do (at least 2)."""
    tile = gm.ws_config(256, 128, 128, 1, 3)
    assert gm.ws_fit_stages(tile, 4) == 3 and gm.ws_fit_stages(tile, 8) == 2
    assert gm.ws_fit_stages(gm.ws_config(256, 128, 128, 1, 8), 4) == 3
    assert gm.ws_fit_stages(gm.ws_config(128, 128, 128, 1, 2), 8) == 2


@pytest.mark.parametrize("spec", ["int4-g128", "uint4-g128", "int8-gc"])
@pytest.mark.parametrize("config", [gm.ws_config(64, 128, 64, 1, 6), gm.ws_config(64, 128, 64, 2, 6),
                                    gm.ws_config(128, 128, 64, 1, 4, stream_k=True)],
                         ids=["split1", "split2", "stream-k"])
def test_compile_key_depends_on_k_only_through_blocks_per_split(monkeypatch, spec, config):
    """What a plan compiles the kernel for (its constexprs, Triton's compile key) across
    layer shapes: the same but for BLOCKS_PER_SPLIT, which is each split's ceil(k_blocks /
    split_k); a stream-K plan passes 0 there and compiles once for every K; per-row groups
    compile as ``gemv.ROW_GROUP`` whatever k; STAGED where a row's groups are a multiple of 8
    (``ws_staged``: not at k = 256, 2 groups), launched with the staged regions' tail."""
    from anybit._matmul import cluster

    seen = []
    signature = inspect.signature(gw.gemm_gluon_ws_kernel.fn)

    def record(*args, **constexprs):
        seen.append((signature.bind_partial(*args).arguments["k_blocks"], constexprs))

    class Recorder:
        def __getitem__(self, grid):
            return record

    monkeypatch.setattr(gw, "gemm_gluon_ws_kernel", Recorder())
    monkeypatch.setattr(cluster, "launch_clustered", lambda kernel, grid, size, tail, *args, **constexprs: record(
        *args, **constexprs))
    for n, k in ((128, 256), (128, 1024), (256, 3072)):
        qw = anybit.quantize(torch.randn(n, k), spec)
        x = torch.randn(64, k, dtype=torch.float16)
        group = gm.kernel_group(qw.format.group_len(k), k)
        gm.launch_gemm_gluon_ws(x, qw.codes, qw.params["scales"], qw.params.get("zeros"), None, n, k,
                                qw.format.bits, group, qw.format.kernel_decode().mode, config)
    assert [k_blocks for k_blocks, _ in seen] == [4, 16, 48]
    per_split = [constexprs.pop("BLOCKS_PER_SPLIT") for _, constexprs in seen]
    assert per_split == ([0, 0, 0] if config.stream_k else [-(-kb // config.split_k) for kb in (4, 16, 48)])
    staged = [constexprs.pop("STAGED") for _, constexprs in seen]
    assert staged == [False, not spec.endswith("-gc"), not spec.endswith("-gc")]
    assert all(constexprs == seen[0][1] for _, constexprs in seen)
    assert seen[0][1]["GROUP"] == (g.ROW_GROUP if spec.endswith("-gc") else 128)
    assert seen[0][1]["SCALE_AFTER"] == spec.endswith("-gc")  # one scale per row: each sum scaled once


def test_scale_after_is_refused_where_rows_have_several_scales():
    """Forcing SCALE_AFTER on a weight with several groups per row would scale whole rows by
    one group's scale: refused, naming what is accepted."""
    qw = anybit.quantize(torch.randn(128, 256), "int4-g128")
    x = torch.randn(64, 256, dtype=torch.float16)
    with pytest.raises(ValueError, match="one scale per row; got 2 groups"):
        gm.launch_gemm_gluon_ws(x, qw.codes, qw.params["scales"], None, None, 128, 256, 4, 128, Decode.SYMMETRIC,
                                gm.ws_config(64, 128, 64, 1, 6), scale_after=True)


@pytest.mark.skipif(not gm.interpreting(), reason="runs the fallback on the CPU in Triton's interpreter "
                                                   "(TRITON_INTERPRET=1); the GPU suite checks it on Hopper")
def test_a_ws_plan_falls_back_to_the_heuristic_where_it_does_not_apply(monkeypatch):
    """On the CPU (no Hopper GPU) a table's warp-specialized plan runs the Triton kernel with
    the heuristic's settings: right result, and not the plan's tiles."""
    monkeypatch.setenv("ANYBIT_BACKEND", "triton")
    calls = []
    real = gm.launch_gemm
    monkeypatch.setattr(gm, "launch_gemm", lambda *a: calls.append(a[-1]) or real(*a))
    monkeypatch.setattr(tuning, "plan", lambda *args: gm.Plan(gm.Kernel.GLUON_WS, WS))
    qw = anybit.quantize(torch.randn(72, 256), "uint4-g128")
    x = torch.randn(40, 256).half()
    y = anybit.matmul(x, qw)
    assert calls == [gm.gemm_config(40, 72, 256, 128, 4, gm.sm_count(x.device))]
    assert_matmul_close(y, x, qw, weight_roundoff=unit_roundoff(x.dtype))


def _ptxas_notes(config: gm.GemmConfig, overlap: gm.WsOverlap, bits: int = 4, *flags: str) -> str:
    """ptxas's report (-v) on the kernel for ``config`` (stream-K or not, warpgroups sharing K
    or not), ``overlap`` and codes of ``bits`` (``flags``: ptxas_report's, e.g. ``--table``),
    compiled for sm_90 without a GPU (tests/ptxas_report.py)."""
    return compile_script("ptxas_report.py", config.block_m, config.block_n, config.block_k, config.num_stages,
                          int(overlap), config.num_warps, bits, int(config.stream_k), "--k-warpgroups",
                          config.k_warpgroups, *flags)


SERIALIZED = "wgmma.mma_async instructions are serialized"


@pytest.mark.parametrize("config", [c for t in (*cand.GLUON_WS_TILES, (64, 64, 64, 6), (64, 128, 64, 6, 128),
                                                 (64, 256, 64, 4, 128), (128, 256, 64, 4, 128))
                                    if gm.ws_overlap(c := gm.ws_config(*t[:3], 1, *t[3:]))], ids=lambda c: f"{gm.Plan(gm.Kernel.GLUON_WS, c).label()}")
def test_the_chosen_overlap_keeps_the_mmas_asynchronous(config):
    """Each tile that ``ws_overlap`` overlaps compiles with its MMAs left in flight: where
    the two register operands do not fit, ptxas waits for every wgmma (its note C7512),
    slower than no overlap at all.  The controls, CARRY at 256 rows of W (4 x 64 rows at
    112 registers, 2 x 128 at 240), at 256 rows of x (a 128-register accumulator) and at
    K-blocks of 128 (64 x 128 x 128 at 160 registers), show the check sees that."""
    assert "Used" in (notes := _ptxas_notes(config, gm.ws_overlap(config))) and SERIALIZED not in notes
    assert _shared_bytes(notes) <= gm.HOPPER_SMEM_BYTES
    if (config.block_n == 256 and config.block_m == 64) or config.block_m == 256 or config.block_k == 128:
        assert SERIALIZED in _ptxas_notes(config, gm.WsOverlap.CARRY)


@pytest.mark.parametrize("table", ["--table", "--row-table"])
@pytest.mark.parametrize("config", [gm.ws_config(64, 128, 64, 1, 6), gm.ws_config(64, 128, 128, 1, 6),
                                    gm.ws_config(64, 64, 128, 1, 6, k_warpgroups=2)],
                         ids=lambda c: f"{gm.Plan(gm.Kernel.GLUON_WS, c).label()}")
def test_table_codes_keep_the_mmas_asynchronous(config, table):
    """The table decode (one table, or a table per row: eight more registers per row) compiles
    with the tile's overlap left in flight and nothing spilled, on tiles the M = 64 tables pick."""
    notes = _ptxas_notes(config, gm.ws_overlap(config), 4, table)
    assert "Used" in notes and SERIALIZED not in notes
    assert re.search(r"\b0 bytes spill stores", notes)


SEVERAL_GROUPS = [(c, bits, group, flags)
                  for c in (gm.ws_config(64, 256, 128, 1, 3), gm.ws_config(64, 128, 64, 1, 6),
                            gm.ws_config(64, 64, 128, 1, 6, k_warpgroups=2))
                  for bits, group in ((4, 32), (3, 64), (8, 32))
                  for flags in ((), ("--staged",), ("--zero-point", "--staged"), ("--table",))
                  if (bits == 4 or "--table" not in flags) and gm.ws_pieces_readable(bits, c.block_k, 4096)]


@pytest.mark.parametrize("config, bits, group, flags", SEVERAL_GROUPS,
                         ids=lambda v: gm.Plan(gm.Kernel.GLUON_WS, v).label() if isinstance(v, gm.GemmConfig) else
                         "-".join(v) if isinstance(v, tuple) else str(v))
def test_k_blocks_of_several_groups_keep_the_mmas_asynchronous(config, bits, group, flags):
    """K-blocks holding several groups (a scale and zero point per row and group, broadcast to
    the words: ``ws_groups``) compile with the tile's overlap in flight and,
    on these tiles that the M = 64-256 tables pick, at most 8 bytes a thread more spilled than
    with groups of 128 (3-bit codes spill 8-16 bytes at 96 registers either way; loaded per
    word, the scales and zero points of 8-bit codes spilled 6 KB a thread on 64 x 256 x 128)
    and no more shared memory (the broadcast moves no data)."""
    notes = _ptxas_notes(config, gm.ws_overlap(config), bits, *flags, "--group", group)
    assert "Used" in notes and SERIALIZED not in notes
    one = _ptxas_notes(config, gm.ws_overlap(config), bits, *flags, "--group", 128)
    spilled = [int(re.search(r"(\d+) bytes spill stores", text).group(1)) for text in (notes, one)]
    assert spilled[0] <= spilled[1] + 8, spilled
    assert _shared_bytes(notes) == _shared_bytes(one)


@pytest.mark.parametrize("config", [gm.ws_config(*t[:3], 1, *t[3:], stream_k=True) for t in cand.GLUON_WS_TILES
                                    if t[5:] in ((), (1,))],
                         ids=lambda c: f"{gm.Plan(gm.Kernel.GLUON_WS, c).label()}")
def test_stream_k_keeps_the_mmas_asynchronous(config):
    """The stream-K loop over work items (its schedule recomputed after the MMAs rather than
    held through them) compiles with the tile's overlap and no serialized wgmma."""
    notes = _ptxas_notes(config, gm.ws_overlap(config))
    assert "Used" in notes and SERIALIZED not in notes
    assert _shared_bytes(notes) <= gm.HOPPER_SMEM_BYTES


@pytest.mark.parametrize("tile", [(64, 128, 128, 6), (64, 256, 128, 3), (128, 256, 64, 4), (256, 128, 64, 4)],
                         ids=lambda t: "x".join(map(str, t[:3])))
def test_scale_after_drops_the_per_weight_multiply(tile):
    """With one scale per row (SCALE_AFTER) the 8-bit decode has no fp16 multiply, the MMAs
    stay asynchronous at the tile's overlap, and the control (a scale per weight) has one."""
    config = gm.ws_config(*tile[:3], 1, tile[3])
    args = (*tile[:3], tile[3], int(gm.ws_overlap(config)), config.num_warps, 8, 0)
    after = compile_script("ptxas_report.py", *args, "--scale-after", "--ptx")
    assert "wgmma.mma_async" in after and "mul.rn.f16x2" not in after and SERIALIZED not in after
    assert "mul.rn.f16x2" in compile_script("ptxas_report.py", *args, "--ptx")


def _shared_bytes(notes: str) -> int:
    """The shared memory the compiled kernel takes (ptxas_report's last line)."""
    return int(re.search(r"shared memory: (\d+) bytes", notes).group(1))


@pytest.mark.parametrize("config, vector", [(gm.ws_config(256, 128, 128, 1, 3), True),
                                            (gm.ws_config(64, 256, 128, 1, 3), True),
                                            (gm.ws_config(128, 256, 64, 1, 9), False)],
                         ids=lambda c: f"{gm.Plan(gm.Kernel.GLUON_WS, c).label()}" if isinstance(c, gm.GemmConfig) else str(c))
def test_the_output_is_stored_in_16_byte_vectors_where_shared_memory_allows(config, vector):
    """Where the ring leaves room for the layout conversion (``gemm.ws_vector_store``), each
    thread writes y in 16-byte vectors; the fullest ring the tuner uses (256 x 128 x 128,
    3 stages: 216 KB) still fits with it.  Where it does not (a 9-stage 128 x 256 x 64 ring,
    216 KB, plus 12 KB of scratch for four warpgroups), 2-byte stores; both within the shared
    memory of an SM."""
    assert gm.ws_fits(config, 4) and gm.ws_vector_store(config, 4) == vector
    sass = compile_script("ptxas_report.py", config.block_m, config.block_n, config.block_k, config.num_stages,
                          int(gm.ws_overlap(config)), config.num_warps, 4, 0, "--sass")
    assert _shared_bytes(sass) <= gm.HOPPER_SMEM_BYTES
    assert ("STG.E.128" in sass) == vector and ("STG.E.U16" in sass) != vector


@pytest.mark.parametrize("config, vector", [(gm.ws_config(64, 128, 64, 2, 6), True),
                                            (gm.ws_config(64, 128, 64, 3, 6), True),
                                            (gm.ws_config(64, 128, 64, 4, 6), False),
                                            (gm.ws_config(64, 256, 128, 2, 3), True),
                                            (gm.ws_config(64, 256, 128, 4, 3), False),
                                            (gm.ws_config(128, 128, 128, 2, 3), True),
                                            (gm.ws_config(128, 128, 128, 4, 3), False)],
                         ids=lambda c: f"{gm.Plan(gm.Kernel.GLUON_WS, c).label()}" if isinstance(c, gm.GemmConfig) else str(c))
def test_split_k_plans_store_vectors_where_the_sum_compiles_without_spills(config, vector):
    """With split-K the last split loads the partials, all loads in flight at once; with the
    16-byte output stores after the sum, ptxas spills where those loads take more than 3/5 of
    the consumer's registers (``gemm.ws_vector_store`` leaves those plans 2-byte stores), and
    also where the split's own partial stays in registers through them (loaded back
    instead: 136 bytes of spills at 64 x 128 x 64 with three splits, none now).  The bound was
    read off Triton 3.6's compiles (the shipped tables' version); under 3.9 the 64 x 256 x 128
    split-2 plan spills 8 bytes, so there only the store width is checked."""
    assert gm.ws_vector_store(config, 4) == vector
    sass = compile_script("ptxas_report.py", config.block_m, config.block_n, config.block_k, config.num_stages,
                          int(gm.ws_overlap(config)), config.num_warps, 4, 0, config.split_k, "--sass")
    if tuning.installed_triton() == "3.6":
        assert not vector or " 0 bytes spill stores" in sass
    assert ("STG.E.U16" in sass) != vector  # y's stores (the partials' are 16-byte either way)


@pytest.mark.parametrize("config", [gm.ws_config(64, 256, 128, 1, 3), gm.ws_config(128, 128, 128, 1, 3)],
                         ids=lambda c: f"{gm.Plan(gm.Kernel.GLUON_WS, c).label()}")
def test_the_nibble_decode_keeps_its_multiplier_in_a_register(config):
    """Symmetric 4-bit codes: the decode's fma takes the bias as its immediate, and the
    multiplier {1, 1/16} (``gemm_gluon.NIBBLE_MUL``) comes from one register; as a constant
    ptxas would move it into a register before every fma (docs/NOTES-gemm.md v22)."""
    sass = compile_script("ptxas_report.py", config.block_m, config.block_n, config.block_k, config.num_stages,
                          int(gm.ws_overlap(config)), config.num_warps, 4, 0, "--sass")
    fmas = [line for line in sass.splitlines() if " HFMA2 " in line]
    assert len(fmas) >= config.block_n * config.block_k // 128 // 2  # a K-block's pairs, per thread
    moves = [line for line in sass.lower().splitlines() if "mov" in line and f"{gg.NIBBLE_MUL.value:#x}" in line]
    assert not moves, moves[:3]


@pytest.mark.parametrize("config", [gm.ws_config(64, 128, 64, 1, 6), gm.ws_config(256, 128, 64, 1, 4)],
                         ids=lambda c: f"{gm.Plan(gm.Kernel.GLUON_WS, c).label()}")
def test_8_bit_codes_keep_the_mmas_asynchronous(config):
    """The 8-bit decode (twice the code words per K-block) fits the same registers: the
    chosen overlap compiles without serialized wgmma or spills."""
    notes = _ptxas_notes(config, gm.ws_overlap(config), 8)
    assert "Used" in notes and SERIALIZED not in notes and "0 bytes spill stores" in notes


def test_overlap_by_tile(monkeypatch):
    """CARRY up to 128 rows of W under the Triton versions checked for it (PAIRS under
    others), PAIRS at 256 (64 x 64 tiles only), and the registers the consumers get."""
    ws = lambda bm, bn, bk: gm.ws_config(bm, bn, bk, 1, 3)  # noqa: E731
    monkeypatch.setattr(tuning, "installed_triton", lambda: "3.6")
    assert gm.ws_overlap(ws(64, 64, 64)) == gm.ws_overlap(ws(64, 128, 64)) == gm.WsOverlap.CARRY
    monkeypatch.setattr(tuning, "installed_triton", lambda: "3.9")
    assert gm.ws_overlap(ws(64, 64, 64)) == gm.ws_overlap(ws(64, 128, 64)) == gm.WsOverlap.PAIRS
    assert gm.ws_overlap(ws(64, 256, 64)) == gm.WsOverlap.PAIRS
    assert gm.ws_overlap(ws(128, 128, 64)) == gm.ws_overlap(ws(256, 128, 64)) == gm.WsOverlap.PAIRS
    assert {gm.ws_overlap(ws(128, 256, 64)), gm.ws_overlap(ws(64, 256, 128)), gm.ws_overlap(ws(256, 128, 128)),
            gm.ws_overlap(ws(128, 128, 128))} == {gm.WsOverlap.NONE}
    assert gm.ws_overlap(ws(64, 128, 128)) == gm.WsOverlap.PAIRS  # K-blocks of 128: two operands at 64 x 128 only
    assert [gm.ws_consumer_regs(ws(64, bn, 64)) for bn in (64, 128, 256)] == [232, 160, 112]
    # more than 64 rows of x: a 64 x 256 accumulator alone is 128 registers a thread
    assert gm.ws_consumer_regs(ws(128, 128, 64)) == gm.ws_consumer_regs(ws(256, 128, 128)) == 240


def test_overlap_at_128_rows_per_warpgroup(monkeypatch):
    """Two MMAs per K-step of each warpgroup: CARRY with one warpgroup (Triton 3.6),
    PAIRS with two at 64 or 128 rows of x, NONE at K-blocks of 128; 240 registers for two."""
    ws = lambda bm, bn, bk: gm.ws_config(bm, bn, bk, 1, 3, 128)  # noqa: E731
    assert [gm.ws_wg_rows(ws(64, bn, 64)) for bn in (128, 256)] == [128, 128]
    monkeypatch.setattr(tuning, "installed_triton", lambda: "3.6")
    assert gm.ws_overlap(ws(64, 128, 64)) == gm.WsOverlap.CARRY
    assert gm.ws_overlap(ws(64, 256, 64)) == gm.ws_overlap(ws(128, 256, 64)) == gm.WsOverlap.PAIRS
    assert gm.ws_overlap(ws(64, 256, 128)) == gm.WsOverlap.NONE
    monkeypatch.setattr(tuning, "installed_triton", lambda: "3.9")
    assert gm.ws_overlap(ws(64, 128, 64)) == gm.WsOverlap.PAIRS
    assert gm.ws_consumer_regs(ws(64, 256, 64)) == 240 and gm.ws_consumer_regs(ws(64, 128, 64)) == 232


def test_the_kernels_overlap_constants_are_the_enums():
    from anybit._matmul import gemm_gluon_ws as gw

    assert [gw.NO_OVERLAP.value, gw.PAIRS.value, gw.CARRY.value] == [int(o) for o in gm.WsOverlap]


@pytest.mark.parametrize("first, blocks, block_k, group, chunks", [
    (0, 32, 128, 128, 4),   # 32 groups from 0: chunks 0-3
    (11, 11, 128, 128, 2),  # groups 11-21: chunks 1-2
    (7, 2, 128, 128, 2),    # groups 7-8 straddle a chunk boundary
    (8, 8, 128, 128, 1),    # one whole chunk
    (13, 13, 64, 128, 2),   # 64-column blocks, two to a group: groups 6-12
    (0, 1, 128, 4096, 1),
    (0, 4, 128, 32, 2),     # four groups a block: groups 0-15
    (3, 3, 128, 64, 2),     # two a block: groups 6-11
])
def test_staged_chunks(first, blocks, block_k, group, chunks):
    from anybit._matmul import staged_params as sp

    assert sp.staged_chunks(first, blocks, block_k, group) == chunks


@given(st.integers(0, 200), st.integers(1, 200),
       st.sampled_from([(64, 64), (64, 128), (128, 128), (64, 256), (128, 32), (128, 64), (64, 32)]))
def test_staged_chunks_cover_every_group_of_the_blocks(first, blocks, tile):
    """The chunks ``staged_chunks`` counts, from the first group's chunk on, hold every group the
    K-blocks touch, and no chunk past the last."""
    from anybit._matmul import staged_params as sp

    block_k, group = tile
    chunks = sp.staged_chunks(first, blocks, block_k, group)
    groups = {c // group for kb in range(first, first + blocks) for c in (kb * block_k, (kb + 1) * block_k - 1)}
    g0 = min(groups) // sp.CHUNK_GROUPS * sp.CHUNK_GROUPS
    assert max(groups) < g0 + sp.CHUNK_GROUPS * chunks and max(groups) >= g0 + sp.CHUNK_GROUPS * (chunks - 1)


@given(st.integers(0, 200), st.sampled_from([1, 2, 4]),
       st.sampled_from([(64, 64), (64, 128), (128, 128), (128, 32), (128, 64), (64, 32)]))
def test_the_first_chunks_hold_the_blocks_read_before_the_rest_is_waited_for(first, wg_k, tile):
    """A consumer waits for ``first_chunks`` chunks before its first K-block and for the rest
    only after its first pair: warpgroup kj of wg_k sharing the region's K-blocks (from block
    ``first``) reads blocks first + kj, + wg_k, + 2 wg_k before, all of whose groups lie in
    those chunks from g0 (the first group rounded down to a chunk); at most 7 (the copy's
    lanes take chunks 4 at a time)."""
    from anybit._matmul import staged_params as sp

    block_k, group = tile
    chunks = sp.first_chunks(block_k, group, wg_k)
    g0 = first * block_k // group // sp.CHUNK_GROUPS * sp.CHUNK_GROUPS
    for kj in range(wg_k):
        for kb in (first + kj, first + kj + wg_k, first + kj + 2 * wg_k):
            assert ((kb + 1) * block_k - 1) // group < g0 + sp.CHUNK_GROUPS * chunks
    assert chunks <= 7 and (chunks == 2 if block_k <= group and wg_k <= 2 else True)


def test_what_the_kernel_stages():
    """Scales (and zero points) are staged in shared memory where a row's groups come in whole
    16-byte chunks and fit beside the ring; not where a row has one scale (applied to the sum),
    a row's groups are not a multiple of 8, the scales are strided or a tail would take a ring
    that fits Triton's default 48 KB past it.  The tail's size: block_n rows of 16 bytes of
    scales (and 8 of zero points) a chunk."""
    sym = anybit.quantize(torch.randn(256, 4096), "int4-g128")
    zp = anybit.quantize(torch.randn(256, 4096), "uint4-g128")
    config = gm.ws_config(64, 256, 128, 1, 3)
    assert gm.ws_staged(config, 4, 32, 128, sym.params["scales"], None, False)
    assert not gm.ws_staged(config, 4, 32, 128, sym.params["scales"], None, True)  # scale_after
    assert gm.ws_staged(config, 4, 32, 128, zp.params["scales"], zp.params["zeros"], False)
    assert gm.ws_staged_bytes(config, 32, 128, False) == 256 * 4 * 16
    assert gm.ws_staged_bytes(config, 32, 128, True) == 256 * 4 * 24
    split = gm.ws_config(64, 128, 128, 3, 6)  # 11, 11 and 10 K-blocks: two chunks each
    assert gm.ws_staged_chunks(split, 32, 128) == 2
    assert gm.ws_staged_chunks(replace(split, split_k=1, stream_k=True), 32, 128) == 4
    odd = anybit.quantize(torch.randn(256, 4224), "int4-g128")  # 33 groups a row
    assert not gm.ws_staged(config, 4, 33, 128, odd.params["scales"], None, False)
    strided = sym.params["scales"].t().contiguous().t()
    assert not gm.ws_staged(config, 4, 32, 128, strided, None, False)
    small = gm.ws_config(64, 64, 64, 1, 2)  # a 20 KB ring: within 48 KB with its tail
    assert gm.ws_staged(small, 4, 64, 128, sym.params["scales"], None, False)
    long = anybit.quantize(torch.randn(64, 65536), "int4-g128")  # 512 groups: 64 chunks, 64 KB of tail
    assert not gm.ws_staged(small, 4, 1024, 128, long.params["scales"], None, False)
    x = torch.randn(64, 4224, dtype=torch.float16)
    with pytest.raises(ValueError, match="staged=True: the scales"):
        gm.launch_gemm_gluon_ws(x, odd.codes, odd.params["scales"], None, None, 256, 4224, 4, 128, Decode.SYMMETRIC,
                                config, staged=True)


@pytest.mark.parametrize("tile, flags", [((64, 256, 128, 3, 0, 20), ()), ((128, 128, 128, 3, 0, 12), ("--zero-point",)),
                                         ((64, 128, 128, 6, 1, 12, 4, 0, 2), ("--cluster",)),
                                         ((64, 128, 128, 6, 0, 20, 4, 0, 2), ("--cluster", "--k-warpgroups", 2)),
                                         ((128, 192, 128, 4, 0, 16, 4, 1), ())],
                         ids=["64x256x128", "128x128x128-zero-point", "64x128x128-cluster", "kwg2", "192-stream-k"])
def test_staged_scales_leave_the_loop_without_global_loads(tile, flags):
    """With the scales staged (STAGED) the kernel loads no 2-byte value from global memory (each
    K-block's scales and zero points come by ld.shared), keeps its MMAs asynchronous and does
    not spill more than 32 bytes; the control loads them from global memory."""
    staged = compile_script("ptxas_report.py", *tile, *flags, "--staged", "--ptx")
    assert "cp.async.cg.shared.global" in staged and "ld.shared.b16" in staged
    assert not re.search(r"ld\.global(\.\w+)*\.(b16|u16|u8)", staged)
    assert SERIALIZED not in staged
    spill = re.search(r"(\d+) bytes spill stores", staged)
    assert spill and int(spill.group(1)) <= 32
    assert re.search(r"ld\.global(\.\w+)*\.b16", compile_script("ptxas_report.py", *tile, *flags, "--ptx"))


@pytest.mark.parametrize("diag", [1, 2, 4, 8, 16, 32, 48, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768])
def test_the_diagnostic_kernels_still_find_what_they_replace(monkeypatch, diag):
    """``benchmarks/ws_diagnostics.py`` builds its kernels by editing this kernel's source text;
    each diagnostic still finds every piece it replaces (it exits naming the piece otherwise)."""
    import pathlib

    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
    import ws_diagnostics

    assert ws_diagnostics.diagnostic_kernel(diag).fn.__name__ == "gemm_gluon_ws_kernel"
