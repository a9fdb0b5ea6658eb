"""What ``anybit tune`` measures for a product: the candidate plans (``candidate_plans``)
over the settings below, in a fixed order.  The launchers and the dispatcher are in
``gemm``; the tuner ranks these with ``perf_model`` and measures the first few."""

from __future__ import annotations

from dataclasses import replace

import torch

from ..formats import parse_format
from .gemm import (
    WS_BLOCK_KS, GemmConfig, Kernel, Plan, gluon_supported, gluon_ws_supported, heuristic_block_k, kernel_group,
    ws_config, ws_fit_stages, ws_tail_layout, ws_wg_rows,
)
from .gemv import one_wave_split, split_for
from .perf_model import Problem

#: What ``anybit tune`` tries (``candidate_plans``): tile rows of x and W, warps, stages,
#: and split-K aiming at this many programs per SM (0: no split).
CANDIDATE_BLOCK_M = (64, 128)
CANDIDATE_BLOCK_N = (64, 128)
CANDIDATE_WARPS = (4, 8)
CANDIDATE_STAGES = (2, 3, 4)
CANDIDATE_PROGRAMS_PER_SM = (0, 2, 4)


#: Stages of the Gluon kernel's x / codes ring that ``anybit tune`` tries (more ran slower:
#: fewer programs fit on an SM; docs/NOTES-gemm.md v13).
GLUON_STAGES = (3, 4)


#: The warp-specialized Gluon kernel's settings that ``anybit tune`` tries, as (block_m, block_n,
#: block_k, stages[, rows of W per consumer warpgroup, 64 if not given[, consumer warpgroups per
#: row set, ``GemmConfig.k_warpgroups``, 1 if not given]]); those with more than 64 rows of x only
#: where m > block_m / 2.  From sweeps
#: (docs/NOTES-gemm.md v14, v15, v18): 256 rows of W per program for the large layers at small
#: M, 128 for the small ones (4096 x 4096 at M = 64: 15 against 27 us), about one program per
#: SM; 256 rows of x against 128 of W from M = 1024 (each decoded weight serves twice the
#: rows of x of a 128 x 256 tile: 8192 x 8192 at M = 1024 183 against 215 us); 64 x 128 x 128
#: with PAIRS at M = 64-128 (4096 x 4096 at M=64 10.9 against 11.6 us for 64 x 128 x 64) and
#: 128 x 256 x 128 as two warpgroups of 128 rows at M=128 (57344 x 8192 201 against 209 us for
#: 128 x 256 x 64; four warpgroups at 112 registers cannot hold it; v36); 64 rows of W with two
#: warpgroups sharing K where the small layers needed a split across programs to fill the SMs
#: (v38); 192 rows of W as three warpgroups of 64, so that each warpgroup's decode has two
#: others' MMAs to run under (v39); 64 rows of W as four warpgroups sharing K, two stages each,
#: where 64-row tiles fill the SMs without a split (6144 x 4096 at M=64: 12.2 against 13.1 us
#: for 64 x 128 x 128 in clusters of 2; v52).
GLUON_WS_TILES = ((64, 128, 64, 6), (64, 128, 128, 6), (64, 256, 64, 4), (64, 256, 128, 3), (128, 256, 64, 4),
                  (128, 256, 128, 3, 128), (128, 128, 128, 3), (256, 128, 64, 4), (256, 128, 128, 3),
                  (64, 64, 128, 6, 64, 2), (128, 64, 128, 4, 64, 2), (64, 128, 128, 6, 64, 2), (64, 192, 128, 4),
                  (128, 192, 128, 4), (64, 64, 128, 8, 64, 4))


#: Swizzles (``GemmConfig.swizzle``) ``anybit tune`` tries for the warp-specialized kernel
#: where there is more than one tile of x: which programs run together, so which tiles of x
#: and W they share in L2.  8192 x 8192 at M = 4096 with 256 x 128 tiles ran 3-14% faster
#: at 16 than at 8 in three runs; 4096 x 4096 went either way (docs/NOTES-gemm.md v18).
GLUON_WS_SWIZZLES = (8, 16)


#: Split counts whose partials ``anybit tune`` also tries summed through a cluster's shared
#: memory (``GemmConfig.cluster_sum``; the splits are a cluster's CTAs).  On the H100, 64 x
#: 128 x 64 at M=64: 6144 x 4096 14.5 against 15.8 us with 2 splits, 1024 x 4096 6.7 against
#: 9.2 us with 8; 4096 x 4096 with 4 splits 18.1 against 11.6 us (clusters of 4 do not all fit
#: one wave; docs/NOTES-gemm.md v34).
CLUSTER_SPLITS = (2, 4, 8)

#: Most splits of a warp-specialized candidate that does not divide the K-blocks (its last
#: split takes the rest): the most that one wave of programs holds, up to this.
WS_MAX_UNEVEN_SPLIT = 8


def candidate_plans(m: int, n: int, k: int, bits: int, sms: int, gluon: bool = False,
                    ws: bool | None = None) -> list[Plan]:
    """Every plan ``anybit tune`` may measure for an (m, n, k) product, in a fixed
    order: dequantize + cuBLAS, then the GEMM kernel over the CANDIDATE_* settings
    (128 rows of x only where m > 64; K-blocks of the heuristic's size; split-K
    counts that divide the K-blocks, duplicates dropped; all with ``sync_mma``),
    then, with ``gluon`` (``gluon_supported``), the Gluon kernel over 64 rows of W
    on 4 warps and the same rows of x, stages (GLUON_STAGES) and split-K counts, and, with
    ``ws`` (``gluon_ws_supported``; default: ``gluon``), the warp-specialized one over
    GLUON_WS_TILES with the deepest ring up to the tile's stages that fits shared memory
    (``ws_fit_stages``: two stages for 8-bit codes at 256 x 128 x 128) without a split, about
    one program per SM, the most in one wave (``one_wave_split``; and, up to
    WS_MAX_UNEVEN_SPLIT, whether or not it divides the K-blocks), CLUSTER_SPLITS summed in a
    cluster (with the stages that fit beside the sum's buffer) and, where the last wave is
    partial, stream-K, each with the GLUON_WS_SWIZZLES where there is more than one tile of x,
    and tail rows one warpgroup's rows short of the tile where whole waves leave W's rows
    over (``ws_tail_layout``) (where K is a multiple of 8)."""
    ws = gluon if ws is None else ws
    block_k = heuristic_block_k(bits)
    k_blocks = -(-k // block_k)
    plans = [Plan(Kernel.DEQUANT)]
    for block_m in CANDIDATE_BLOCK_M:
        if block_m > 64 and m <= 64:
            continue
        for block_n in CANDIDATE_BLOCK_N:
            tiles = -(-n // block_n) * -(-m // block_m)
            splits = sorted({split_for(k_blocks, tiles, per_sm, sms) if per_sm else 1
                             for per_sm in CANDIDATE_PROGRAMS_PER_SM})
            for warps in CANDIDATE_WARPS:
                for stages in CANDIDATE_STAGES:
                    for split in splits:
                        plans.append(Plan(Kernel.GEMM, GemmConfig(block_m, block_n, block_k, split, warps, stages)))
    if gluon:
        for block_m in CANDIDATE_BLOCK_M:
            if block_m > 64 and m <= 64:
                continue
            tiles = -(-n // 64) * -(-m // block_m)
            splits = sorted({split_for(k_blocks, tiles, per_sm, sms) if per_sm else 1
                             for per_sm in CANDIDATE_PROGRAMS_PER_SM})
            for stages in GLUON_STAGES:
                for split in splits:
                    plans.append(Plan(Kernel.GLUON, GemmConfig(block_m, 64, block_k, split, 4, stages)))
    if ws:
        for block_m, block_n, ws_block_k, stages, *rows in GLUON_WS_TILES if k % 8 == 0 else ():
            if block_m > 64 and m <= block_m // 2:  # at least half the tile's rows of x are real
                continue
            stages = ws_fit_stages(ws_config(block_m, block_n, ws_block_k, 1, stages, *rows), bits)
            if stages is None:
                continue
            ws_k_blocks = -(-k // ws_block_k)
            tiles = -(-n // block_n) * -(-m // block_m)
            swizzles = GLUON_WS_SWIZZLES if m > block_m else GLUON_WS_SWIZZLES[:1]
            fill = (split_for(ws_k_blocks, tiles, 1, sms), one_wave_split(ws_k_blocks, tiles, sms),
                    min(ws_k_blocks, WS_MAX_UNEVEN_SPLIT, max(1, sms // tiles)))
            shared_k = len(rows) > 1 and rows[1] > 1  # warpgroups sharing K: splits only as clusters
            for split in sorted({1} if shared_k else {1, *fill}):
                for swizzle in swizzles:
                    plans.append(Plan(Kernel.GLUON_WS, ws_config(block_m, block_n, ws_block_k, split, stages, *rows,
                                                                 swizzle=swizzle)))
            for split in CLUSTER_SPLITS:
                config = ws_config(block_m, block_n, ws_block_k, split, stages, *rows, cluster_sum=True)
                fit = ws_fit_stages(config, bits)  # the sum's buffer may leave room for fewer stages
                if split <= ws_k_blocks and fit:
                    plans += [Plan(Kernel.GLUON_WS, replace(config, num_stages=fit, swizzle=swizzle))
                              for swizzle in swizzles]
            if tiles % sms and not shared_k:  # a partial last wave
                for swizzle in swizzles:
                    plans.append(Plan(Kernel.GLUON_WS, ws_config(block_m, block_n, ws_block_k, 1, stages, *rows,
                                                                 swizzle=swizzle, stream_k=True)))
                whole = ws_config(block_m, block_n, ws_block_k, 1, stages, *rows)
                if block_n > ws_wg_rows(whole):  # the last wave's rows spread thinner
                    tail = replace(whole, tail_rows=block_n - ws_wg_rows(whole))
                    if ws_tail_layout(tail, m, n, sms)[0] < -(-n // block_n):
                        plans.append(Plan(Kernel.GLUON_WS, tail))
    return plans


def format_plans(spec: str, m: int, n: int, k: int, sms: int, hopper: bool) -> tuple[Problem, list[Plan]]:
    """The product of m rows of fp16 x with a (n, k) weight of format ``spec`` as the model
    sees it, and ``candidate_plans`` for it that its kernels compute: with ``hopper`` (an sm_90
    GPU) the Gluon kernels' plans where the format's codes and group allow them, each only
    with K-blocks inside one group (``applies``).  ``anybit tune`` measures from these, and the
    dispatcher ranks them for points no table holds (``tuning.model_plan``)."""
    fmt = parse_format(spec)
    mode, group = fmt.kernel_decode().mode, fmt.group_len(k)
    scale_dtype = fmt.param_specs(n, k, torch.float16)["scales"].dtype
    block_k, kgroup = heuristic_block_k(fmt.bits), kernel_group(group, k)  # the candidates' K-blocks
    gluon = hopper and gluon_supported(fmt.bits, mode, kgroup, block_k, torch.float16, scale_dtype)
    ws = hopper and any(gluon_ws_supported(fmt.bits, mode, kgroup, bk, k, torch.float16, scale_dtype)
                        for bk in WS_BLOCK_KS)
    plans = [p for p in candidate_plans(m, n, k, fmt.bits, sms, gluon, ws)
             if applies(p, fmt.bits, mode, kgroup, k, scale_dtype)]
    return Problem(m, n, k, fmt.bits, group), plans


#: The kernels the performance model ranks where the warp-specialized kernel computes a format on
#: Hopper (the dispatcher for untuned points, ``tuning.model_plan``; the tuner, unless
#: exhaustive): those that won every point of the shipped tables.  The Triton GEMM's and the plain
#: Gluon kernel's plan classes have few measurements, and where the model had none for a class it
#: ranked such plans first where they are slow (a 64-row tile at M=4096; int3-g128 at M = 256-1024
#: on the H100, 3-4x slower than modelled: docs/NOTES-gemm.md v57, v59).
MODEL_KERNELS = (Kernel.GLUON_WS, Kernel.DEQUANT)


def model_plans(plans: list[Plan]) -> list[Plan]:
    """The plans of MODEL_KERNELS among ``plans`` (``format_plans``' for a point) where a
    warp-specialized one is among them, else none."""
    if not any(p.kernel is Kernel.GLUON_WS for p in plans):
        return []
    return [p for p in plans if p.kernel in MODEL_KERNELS]


def applies(plan: Plan, bits: int, mode, group: int, k: int, scale_dtype: torch.dtype) -> bool:
    """Whether ``plan``'s kernel computes this product with the plan's K-blocks on a Hopper GPU
    (``group``: the kernel's; fp16 x): the Gluon kernels take K-blocks inside one group only
    (a group of 64: K-blocks of 64)."""
    if plan.kernel is Kernel.GLUON_WS:
        return gluon_ws_supported(bits, mode, group, plan.config.block_k, k, torch.float16, scale_dtype)
    if plan.kernel is Kernel.GLUON:
        return gluon_supported(bits, mode, group, plan.config.block_k, torch.float16, scale_dtype)
    return True


def paced(plan: Plan) -> Plan | None:
    """``plan`` with its loader held to fewer K-blocks in flight (``GemmConfig.loads_ahead``):
    two below the ring's stages, at least 2 and below num_stages (3 or 4 stages: 2; 6: 4);
    None for plans that are not warp-specialized, already held, or have fewer than 3 stages.
    (docs/NOTES-gemm.md v55: holds of 2, 3 and 4 and sleeps of 100-400 ns after each block
    were tried; these ran as fast as any.)"""
    c = plan.config
    if plan.kernel is not Kernel.GLUON_WS or c.loads_ahead or c.num_stages < 3:
        return None
    return Plan(Kernel.GLUON_WS, replace(c, loads_ahead=max(2, c.num_stages - 2)))
