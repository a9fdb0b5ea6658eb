"""The warp-specialized Gluon GEMM's parts that run without a GPU: its launch rules, its
plans and tuner candidates, and the dispatcher's fallback where it does not apply (the
Triton kernel with the heuristic's settings, checked against float64 in the interpreter).
The kernel itself is checked on a Hopper GPU (tests/test_gemm_gluon_ws_cuda.py): Gluon
kernels do not run in Triton's interpreter."""

from dataclasses import replace

import pytest
import torch
from conftest import assert_matmul_close, compile_script, unit_roundoff

import anybit
from anybit._matmul import gemm as gm
from anybit._matmul import tuning
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
    with pytest.raises(ValueError, match="block_n 64, 128 or 256"):
        launch(torch.randn(64, 256, dtype=torch.float16), 256, replace(WS, num_warps=16))
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


@pytest.mark.parametrize("m", [64, 200, 1024])
def test_tuner_candidates(m):
    """Tiles whose x rows are at least half real; both swizzles where there is more than
    one tile of x, swizzle 8 alone where there is one."""
    plans = gm.candidate_plans(m, 4096, 4096, 4, 132, gluon=True)
    ws = [p for p in plans if p.kernel is gm.Kernel.GLUON_WS]
    tiles = {(p.config.block_m, p.config.block_n, p.config.block_k, p.config.num_stages) for p in ws}
    assert tiles == {t for t in gm.GLUON_WS_TILES if t[0] == 64 or m > t[0] // 2}
    assert (256, 128, 64, 4) in tiles if m > 128 else (256, 128, 64, 4) not in tiles
    for p in ws:
        swizzles = {q.config.swizzle for q in ws if replace(q.config, swizzle=8) == replace(p.config, swizzle=8)}
        assert swizzles == (set(gm.GLUON_WS_SWIZZLES) if m > p.config.block_m else {8}), p.label()
    assert {p.config.split_k for p in ws} >= {1} and max(p.config.split_k for p in ws) > 1
    assert len(set(plans)) == len(plans)
    assert not any(p.kernel is gm.Kernel.GLUON_WS for p in gm.candidate_plans(m, 4096, 4100, 4, 132, gluon=True))
    # 8-bit codes: the warp-specialized tiles whose ring fits shared memory, with no Gluon (4-bit) plans
    plans8 = gm.candidate_plans(m, 4096, 4096, 8, 132, gluon=False, ws=True)
    tiles8 = {(p.config.block_m, p.config.block_n, p.config.block_k, p.config.num_stages) for p in plans8
              if p.kernel is gm.Kernel.GLUON_WS}
    assert tiles8 == {t for t in tiles if gm.ws_fits(gm.ws_config(*t[:3], 1, t[3]), 8)}
    assert (256, 128, 128, 3) not in tiles8 and not any(p.kernel is gm.Kernel.GLUON for p in plans8)


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


def _ptxas_notes(config: gm.GemmConfig, overlap: gm.WsOverlap, bits: int = 4) -> str:
    """ptxas's report (-v) on the kernel for ``config``, ``overlap`` and codes of ``bits``,
    compiled for sm_90 without a GPU (tests/ptxas_report.py)."""
    return compile_script("ptxas_report.py", config.block_m, config.block_n, config.block_k, config.num_stages,
                          int(overlap), config.num_warps, bits)


SERIALIZED = "wgmma.mma_async instructions are serialized"


@pytest.mark.parametrize("config", [c for t in (*gm.GLUON_WS_TILES, (64, 64, 64, 6), (64, 128, 64, 6, 128),
                                                 (64, 256, 64, 4, 128), (128, 256, 64, 4, 128))
                                    if gm.ws_overlap(c := gm.ws_config(*t[:3], 1, *t[3:]))], ids=lambda c: f"{gm.Plan(gm.Kernel.GLUON_WS, c).label()}")
def test_the_chosen_overlap_keeps_the_mmas_asynchronous(config):
    """Each tile that ``ws_overlap`` overlaps compiles with its MMAs left in flight: where
    the two register operands do not fit, ptxas waits for every wgmma (its note C7512),
    slower than no overlap at all.  The controls, CARRY at 256 rows of W (4 x 64 rows at
    112 registers, 2 x 128 at 240) and at 256 rows of x (a 128-register accumulator), show
    the check sees that."""
    assert "Used" in (notes := _ptxas_notes(config, gm.ws_overlap(config))) and SERIALIZED not in notes
    if (config.block_n == 256 and config.block_m == 64) or config.block_m == 256:
        assert SERIALIZED in _ptxas_notes(config, gm.WsOverlap.CARRY)


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
