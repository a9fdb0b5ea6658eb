"""Tail rows in the warp-specialized Gluon GEMM (``GemmConfig.tail_rows``), without a GPU: the
settings it is accepted with, the launch layout (``ws_tail_layout`` / ``ws_tail_tiles``, what
the kernel's ``tail_origin`` computes), the tuner's candidates and model, and the sm_90
compile.  On a GPU: tests/test_gemm_gluon_ws_cuda.py::test_tail_rows."""

from dataclasses import replace

import pytest
import torch
from conftest import Refused, compile_script
from hypothesis import given
from hypothesis import strategies as st

import anybit
from anybit._matmul import candidates as cand
from anybit._matmul import gemm as gm
from anybit._matmul import perf_model as pm
from anybit.formats._base import Decode

TAIL_256 = gm.ws_config(64, 256, 128, 1, 3, tail_rows=192)


REFUSED = [
    Refused(dict(tail_rows=256), "tail_rows=256 with block_n=256.*accepted: 0, or 0 < tail_rows < block_n"),
    Refused(dict(tail_rows=-64), "tail_rows=-64"),
    Refused(dict(split_k=2), "split_k=2.*accepted: .*split_k 1"),
    Refused(dict(stream_k=True), "stream_k=True.*no stream_k or cluster_sum"),
    Refused(dict(split_k=2, cluster_sum=True), "cluster_sum=True.*no stream_k or cluster_sum"),
    Refused(dict(k_warpgroups=2, num_warps=36, num_stages=4), "k_warpgroups=2.*k_warpgroups 1"),
]


@pytest.mark.parametrize("case", REFUSED, ids=Refused.label)
def test_tail_rows_are_refused_outside_their_settings(case):
    with pytest.raises(ValueError, match=case.match):
        replace(TAIL_256, **case.config)


def test_tail_rows_settings():
    """A multiple of the consumer warpgroup's rows, in the warp-specialized kernel only; the
    label and the table's dict carry it."""
    plan = gm.Plan(gm.Kernel.GLUON_WS, TAIL_256)
    assert plan.label() == "gluon-ws 64x256x128 split1 20w3s tail192"
    assert gm.Plan.from_dict(plan.to_dict()) == plan and TAIL_256.ws_only
    assert gm.Plan.from_dict({"kernel": "gluon_ws", "config": {
        k: v for k, v in plan.to_dict()["config"].items() if k != "tail_rows"}}).config.tail_rows == 0
    with pytest.raises(ValueError, match="tail_rows=100 with 64 rows of W per consumer warpgroup: accepted: a "
                                         "multiple of 64"):
        gm.Plan(gm.Kernel.GLUON_WS, replace(TAIL_256, tail_rows=100))
    with pytest.raises(ValueError, match="tail_rows=64 with 128 rows .*a multiple of 128"):
        gm.Plan(gm.Kernel.GLUON_WS, gm.ws_config(128, 256, 64, 1, 4, 128, tail_rows=64))
    with pytest.raises(ValueError, match="tail_rows=192, loads_ahead=0, block_n=256: accepted: .* in the gluon_ws "
                                         "kernel only"):
        gm.Plan(gm.Kernel.GEMM, replace(TAIL_256, num_warps=8))
    qw = anybit.quantize(torch.randn(256, 128), "int4-g128")
    with pytest.raises(ValueError, match="no stream-K or tail rows"):
        gm.launch_gemm(torch.randn(64, 128), qw.codes, qw.params["scales"], None, None, None, 256, 128, 4, 128,
                       Decode.SYMMETRIC, replace(TAIL_256, num_warps=8))


def test_the_largest_standard_layer_at_m64():
    """57344 rows in tiles of 256 on 132 SMs: 224 tiles, a second wave of 92; with tail rows
    132 whole tiles and the other 23552 rows in 123 tiles of 192, the last with 128 rows of W
    and 64 past its end (docs/NOTES-gemm.md v51)."""
    assert gm.ws_tail_layout(TAIL_256, 64, 57344, 132) == (132, 255)
    tiles = gm.ws_tail_tiles(TAIL_256, 64, 57344, 132)
    assert tiles[131] == (0, 131 * 256, 256) and tiles[132] == (0, 132 * 256, 192) and tiles[-1] == (0, 57216, 192)
    # one wave or less, or whole waves: no tail
    assert gm.ws_tail_layout(TAIL_256, 64, 28672, 132) == (112, 112)
    assert gm.ws_tail_layout(TAIL_256, 64, 264 * 256, 132) == (264, 264)


@given(st.sampled_from([(128, 64), (192, 64), (256, 64), (256, 128)]), st.integers(1, 3), st.integers(1, 600),
       st.integers(1, 70000), st.integers(1, 140))
def test_the_tiles_cover_each_row_once(tile, short, m, n, sms):
    """For every tile of x, the programs' row ranges of W follow one another from row 0 and
    cover all n rows (the last may run past n, by less than its rows); the whole tiles come
    first, as many as fill whole waves (or all of them), and each tail tile is ``short``
    warpgroups' rows below the whole tile."""
    block_n, wg_rows = tile
    block_m = 128 if wg_rows == 128 else 64
    if short * wg_rows >= block_n:
        short = 1
    config = gm.ws_config(block_m, block_n, 64, 1, 3, wg_rows, tail_rows=block_n - short * wg_rows)
    full, programs = gm.ws_tail_layout(config, m, n, sms)
    tiles = gm.ws_tail_tiles(config, m, n, sms)
    m_tiles, w_tiles = -(-m // block_m), -(-n // block_n)
    assert len(tiles) == programs and full <= w_tiles
    assert full == w_tiles or full % max(1, sms // m_tiles) == 0
    for t in range(m_tiles):
        ranges = [(n0, rows) for m0, n0, rows in tiles if m0 == t * block_m]
        assert [n0 for n0, _ in ranges] == [sum(r for _, r in ranges[:i]) for i in range(len(ranges))]
        end = ranges[-1][0] + ranges[-1][1]
        assert n <= end < n + ranges[-1][1]
        assert all(rows == block_n for _, rows in ranges[:full]) and all(
            rows == config.tail_rows for _, rows in ranges[full:])


@pytest.mark.parametrize("n, m, tail", [(57344, 64, True), (4096, 64, False), (16384, 64, False),
                                        (57344, 128, True)])
def test_tail_candidates(n, m, tail):
    """Each split-1 tile of several row sets gets a twin with tail rows one warpgroup's rows
    short, only where whole waves leave rows over; the model ranks the 256-row twin of
    57344 x 8192 at M=64 ahead of its plain plan (a second wave of 92 tiles on 132 SMs)."""
    plans = [p for p in cand.candidate_plans(m, n, 8192, 4, 132, gluon=True) if p.kernel is gm.Kernel.GLUON_WS]
    tails = [p for p in plans if p.config.tail_rows]
    assert bool(tails) == tail
    for p in tails:
        plain = replace(p.config, tail_rows=0)
        assert gm.Plan(gm.Kernel.GLUON_WS, plain) in plans
        assert p.config.tail_rows == p.config.block_n - gm.ws_wg_rows(p.config)
        assert gm.ws_tail_layout(p.config, m, n, 132)[0] < -(-n // p.config.block_n)
    if n == 57344 and m == 64:
        problem, hw = pm.Problem(m, n, 8192, 4, 128), pm.Hardware(sms=132, fp16_tflops=764.0, copy_tbps=3.0)
        twin = gm.Plan(gm.Kernel.GLUON_WS, TAIL_256)
        assert twin in tails
        plain = gm.Plan(gm.Kernel.GLUON_WS, replace(TAIL_256, tail_rows=0))
        assert pm.predict_us(problem, twin, hw, pm.ModelParams()) < pm.predict_us(problem, plain, hw, pm.ModelParams())


@pytest.mark.parametrize("config", [TAIL_256, gm.ws_config(64, 256, 128, 1, 3, tail_rows=128),
                                    gm.ws_config(64, 192, 128, 1, 4, tail_rows=128),
                                    gm.ws_config(128, 256, 128, 1, 3, 128, tail_rows=128)],
                         ids=lambda c: gm.Plan(gm.Kernel.GLUON_WS, c).label())
@pytest.mark.parametrize("bits", [4, 8])
def test_tail_plans_compile_with_their_mmas_in_flight(config, bits):
    """Compiled for sm_90 with the tile's overlap: no serialized wgmma, the ring and its
    copies of one warpgroup's rows each within shared memory, and the codes' copies issued
    under a predicate (a tail program skips its idle row sets')."""
    config = replace(config, num_stages=gm.ws_fit_stages(config, bits))
    args = (config.block_m, config.block_n, config.block_k, config.num_stages, int(gm.ws_overlap(config)),
            config.num_warps, bits, 0, 1, "--tail-rows", config.tail_rows)
    notes = compile_script("ptxas_report.py", *args, "--ptx")
    assert "Used" in notes and "wgmma.mma_async instructions are serialized" not in notes
    assert int(notes.rsplit("shared memory: ", 1)[1].split()[0]) <= gm.HOPPER_SMEM_BYTES
    copies = [line for line in notes.splitlines() if "cp.async.bulk.tensor.2d" in line]
    assert len(copies) == 1 + config.block_n // gm.ws_wg_rows(config)  # x, then a copy per row set
    assert sum(line.lstrip().startswith("@") for line in copies) >= config.block_n // gm.ws_wg_rows(config)
