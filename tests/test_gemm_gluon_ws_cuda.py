"""The warp-specialized Gluon GEMM (gemm_gluon_ws) on a Hopper GPU: the M sweep on odd
and standard shapes, forced tiles with bias and split-K, repeated launches, the compiled
kernel's TMA loads and register-operand MMA, the split-K sum through a cluster's shared
memory, and plans through the dispatcher (with its fallbacks for bf16 and for x that TMA
cannot read in place)."""

import functools
import re
from dataclasses import replace

import pytest
import torch
from conftest import (assert_matmul_close, check_poisoned_with_bias, check_repeated_launches, check_replays,
                      check_sweep, hopper_only, launch_on_weight, quantized_cuda, unit_roundoff, weight_rows)

import anybit
from anybit._matmul import gemm as gm
from anybit._matmul import tuning, ws_settings

pytestmark = hopper_only("the kernel uses TMA and warpgroup MMA, Hopper (sm_90) instructions")

_run = functools.partial(launch_on_weight, gm.launch_gemm_gluon_ws)


_ws = gm.ws_config


def _ids(c):
    sk = "-stream-k" if c.stream_k else "-cluster" if c.cluster_sum else ""
    sk += f"-kwg{c.k_warpgroups}" if c.k_warpgroups > 1 else ""
    sk += f"-tail{c.tail_rows}" if c.tail_rows else ""
    return f"{c.block_m}x{c.block_n}x{c.block_k}-s{c.split_k}-{c.num_stages}s-wg{gm.ws_wg_rows(c)}{sk}"


@pytest.mark.parametrize("spec", ["int4-g128", "uint4-g128", "int4-gc", "uint4-g64", "int8-gc", "uint8-g128",
                                  "nf4-g128", "nf4-gc", "lut4-g128", "lut4-gc", "int4-g32"])
@pytest.mark.parametrize("n, k", [(1000, 4128), (192, 320), (4096, 4096), (4096, 14336)])
def test_sweep(spec, n, k):
    check_sweep(_run, lambda m: _ws(64 if m <= 64 else 128, 256, 64, 2, 4), spec, n, k)


FORCED = [
    _ws(64, 64, 64, 1, 2),
    _ws(64, 128, 64, 3, 4),  # split-K with a short last split
    _ws(64, 256, 128, 2, 3),
    _ws(128, 256, 64, 1, 4),
    _ws(128, 128, 128, 4, 2),
    # 256 rows of x against 128 of W (PAIRS at K-blocks of 64), with split-K
    _ws(256, 128, 64, 3, 4),
    _ws(256, 128, 128, 1, 3),
    # 128 rows of W per consumer warpgroup (two MMAs per K-step)
    _ws(64, 128, 64, 3, 4, 128),
    _ws(64, 256, 64, 2, 4, 128),
    _ws(128, 256, 64, 1, 4, 128),
    _ws(64, 256, 128, 1, 3, 128),
]


@pytest.mark.parametrize("config", FORCED, ids=_ids)
@pytest.mark.parametrize("spec", ["int4-g128", "uint4-g128", "int8-gc", "nf4-g128", "lut4-g128"])
@pytest.mark.parametrize("m", [33, 100, 256])
def test_forced_tiles_with_bias(config, spec, m):
    """NaN-poisoned output: every element written; bias added once; K not a multiple of
    the K-block (TMA reads past the end as zeros).  A ring too large for shared memory at
    8 bits is refused before launch."""
    if not gm.ws_fits(config, anybit.formats.parse_format(spec).bits):
        with pytest.raises(ValueError, match="bytes of shared memory"):
            check_poisoned_with_bias(_run, config, spec, m, 1000, 1608)
        return
    check_poisoned_with_bias(_run, config, spec, m, 1000, 1608)


@pytest.mark.parametrize("config", [_ws(64, 128, 64, 3, 4), _ws(128, 256, 64, 2, 4), _ws(64, 256, 128, 8, 3),
                                    _ws(64, 256, 64, 3, 4, 128), _ws(256, 128, 64, 2, 4)], ids=_ids)
def test_split_k_reads_only_what_it_wrote(config):
    """Split-K on a NaN-filled workspace of exactly ``ws_workspace_size``: every partial
    the last split sums was written by this launch (M, N not multiples of the tile)."""
    gen = torch.Generator(device="cuda").manual_seed(7)
    n, k, m = 1000, 4160, 100
    qw = quantized_cuda("int4-g128", n, k, gen)
    x = torch.randn(m, k, device="cuda", generator=gen).half()
    ws = torch.full((gm.ws_workspace_size(config, m, n),), float("nan"), device="cuda")
    y = _run(x, qw, config, workspace=ws)
    assert_matmul_close(y, x, qw, None, weight_roundoff=unit_roundoff(x.dtype))


STREAM_K = [
    _ws(64, 256, 64, 1, 4, stream_k=True),  # PAIRS
    _ws(64, 128, 64, 1, 6, stream_k=True),  # CARRY under Triton 3.6: the last block's stage released per tile
    _ws(128, 128, 128, 1, 3, stream_k=True),  # NONE
    _ws(256, 128, 128, 1, 3, swizzle=16, stream_k=True),
    _ws(256, 128, 64, 1, 4, stream_k=True),
    _ws(64, 256, 64, 1, 4, 128, stream_k=True),  # two MMAs per K-step
]


@pytest.mark.parametrize("config", STREAM_K, ids=_ids)
@pytest.mark.parametrize("n, k, m", [
    (1000, 1608, 100),  # fewer tiles than SMs, K not a multiple of the K-block
    (4096, 40, 300),  # one K-block a tile: fewer shared K-blocks than programs
    (8192, 4096, 256),  # one to a few waves, then shared tiles
    (14336, 4096, 1024),  # several waves
    (576, 1536, 33),
])
def test_stream_k(config, n, k, m):
    """Stream-K (one program per SM): NaN-poisoned output and a NaN-filled workspace of
    exactly ``ws_workspace_size``, so every element is written and every partial summed was
    written by this launch; the bias added once; 3 more launches give the same bits (the
    partials are summed in program order)."""
    gen = torch.Generator(device="cuda").manual_seed(n + m)
    qw = quantized_cuda("int4-g128", n, k, gen)
    x = torch.randn(m, k, device="cuda", generator=gen).half()
    bias = torch.randn(n, device="cuda", generator=gen)
    size = gm.ws_workspace_size(config, m, n, gm.sm_count(x.device))
    runs = []
    for _ in range(4):
        ws = torch.full((max(1, size),), float("nan"), device="cuda")
        out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.float16)
        runs.append(_run(x, qw, config, bias, out=out, workspace=ws))
    assert_matmul_close(runs[0], x, qw, bias, weight_roundoff=unit_roundoff(x.dtype))
    assert all(torch.equal(y, runs[0]) for y in runs[1:])


def test_stream_k_whole_tiles_match_the_tile_kernel():
    """Where ``stream_k_items`` says a tile is whole, the stream-K launch gives the bits of
    the one-program-per-tile launch (the same K order); the shared tiles are within the
    float64 tolerance (test_stream_k).  28672 x 1024 at M = 256, 256 x 128 tiles: 224
    tiles, one full wave and shared tiles after it on a GPU of 113 to 223 SMs."""
    gen = torch.Generator(device="cuda").manual_seed(3)
    n, k, m = 28672, 1024, 256
    qw = quantized_cuda("int4-g128", n, k, gen)
    x = torch.randn(m, k, device="cuda", generator=gen).half()
    y = _run(x, qw, _ws(256, 128, 128, 1, 3, stream_k=True))
    y_tiles = _run(x, qw, _ws(256, 128, 128, 1, 3))
    tiles = n // 128  # one tile of x: with swizzle 8, tile t holds rows t * 128 .. of W
    items = ws_settings.stream_k_items(tiles, k // 128, gm.sm_count(x.device))
    whole = {item.tile for work in items for item in work if not item.shared}
    assert whole and len(whole) < tiles, "the check needs whole and shared tiles: a GPU of 113 to 223 SMs"
    for tile in whole:
        assert torch.equal(y[:, tile * 128:(tile + 1) * 128], y_tiles[:, tile * 128:(tile + 1) * 128])
    assert_matmul_close(y, x, qw, None, weight_roundoff=unit_roundoff(x.dtype))


ROW_RANGES = [_ws(64, 256, 128, 1, 3), _ws(64, 192, 128, 1, 4), _ws(64, 128, 64, 3, 4), _ws(128, 128, 128, 2, 3),
              _ws(64, 128, 128, 2, 6, cluster_sum=True), _ws(64, 256, 128, 1, 3, stream_k=True)]


@pytest.mark.parametrize("config", ROW_RANGES, ids=_ids)
@pytest.mark.parametrize("spec", ["int4-g128", "uint4-g128"])
def test_row_ranges_write_their_columns_of_a_wider_y(config, spec):
    """W's rows in two launches (0 .. 512 and 512 .. 1000, neither a whole number of tiles),
    each writing its columns of one NaN-poisoned y (M, 1024): both right with the bias, the
    columns past 1000 untouched, and (but for stream-K, whose shares depend on the tile count)
    the bits of the launch over all rows."""
    gen = torch.Generator(device="cuda").manual_seed(11)
    n, k, m, cut = 1000, 4096, 100, 512
    qw = quantized_cuda(spec, n, k, gen)
    x = torch.randn(m, k, device="cuda", generator=gen).half()
    bias = torch.randn(n, device="cuda", generator=gen)
    wide = torch.full((m, 1024), float("nan"), device="cuda", dtype=torch.float16)
    for r0, r1 in ((0, cut), (cut, n)):
        _run(x, weight_rows(qw, r0, r1), config, bias[r0:r1], out=wide[:, r0:r1])
    assert wide[:, n:].isnan().all()
    assert_matmul_close(wide[:, :n], x, qw, bias, weight_roundoff=unit_roundoff(x.dtype))
    if not config.stream_k:
        assert torch.equal(wide[:, :n], _run(x, qw, config, bias))


def _check_replays(x, qw, config, bias, y):
    """Three more launches and a CUDA graph's replay (into a NaN-poisoned output) give y's bits."""
    check_replays(_run, x, qw, config, bias, y)


CLUSTER = [_ws(64, 128, 64, 2, 6, cluster_sum=True), _ws(64, 128, 64, 4, 6, cluster_sum=True),
           _ws(128, 128, 128, 2, 3, cluster_sum=True), _ws(128, 128, 128, 4, 3, cluster_sum=True),
           _ws(64, 256, 128, 2, 3, cluster_sum=True),
           _ws(64, 128, 64, 8, 4, cluster_sum=True), _ws(64, 64, 64, 4, 6, cluster_sum=True),
           _ws(64, 128, 64, 2, 4, 128, cluster_sum=True)]


@pytest.mark.parametrize("config", CLUSTER, ids=_ids)
@pytest.mark.parametrize("spec", ["int4-g128", "int8-gc"])
@pytest.mark.parametrize("n, k, m", [(1000, 4160, 33), (4096, 4096, 64), (192, 320, 100)])
def test_cluster_sum(config, spec, n, k, m):
    """The split-K sum through the cluster's shared memory (``GemmConfig.cluster_sum``): on a
    NaN-poisoned output every element is written and the bias added once, within the float64
    tolerance; the bits are those of the same plan summed through global memory (the same
    split order), again in repeated launches and replayed from a CUDA graph.  320 columns are
    5 K-blocks: with 8 splits, some have none."""
    x, qw, bias, y = check_poisoned_with_bias(_run, config, spec, m, n, k, seed=n + m)
    assert torch.equal(y, _run(x, qw, replace(config, cluster_sum=False), bias))
    _check_replays(x, qw, config, bias, y)


SHARED_K = [_ws(64, 64, 128, 1, 6, 64, 2), _ws(64, 64, 128, 2, 6, 64, 2, cluster_sum=True),
            _ws(64, 64, 128, 4, 6, 64, 2, cluster_sum=True), _ws(128, 64, 128, 1, 4, 64, 2),
            _ws(128, 64, 128, 2, 4, 64, 2, cluster_sum=True), _ws(64, 128, 128, 2, 4, 64, 2, cluster_sum=True),
            _ws(64, 64, 64, 1, 6, 64, 2), _ws(64, 128, 64, 1, 6, 128, 2), _ws(64, 128, 128, 1, 4, 64, 2),
            _ws(64, 64, 128, 1, 8, 64, 4), _ws(64, 64, 128, 2, 8, 64, 4, cluster_sum=True), _ws(64, 64, 64, 1, 8, 64, 4)]


@pytest.mark.parametrize("config", SHARED_K, ids=_ids)
@pytest.mark.parametrize("spec", ["int4-g128", "uint4-g128", "int8-gc"])
@pytest.mark.parametrize("n, k, m", [(1000, 4160, 33), (4096, 4096, 64), (192, 320, 100), (320, 128, 64),
                                     (16384, 2048, 64)])
def test_warpgroups_sharing_k(config, spec, n, k, m):
    """Two or four consumer warpgroups per row set taking every second or fourth K-block
    (``GemmConfig.k_warpgroups``), their partials summed with the splits' through shared
    memory, at the most stages that fit for the codes' width: on a NaN-poisoned output every
    element written and the bias added once, within the float64 tolerance, the same bits in
    repeated launches and replayed from a CUDA graph.  4160 columns are 33 or 65 K-blocks (the
    warpgroups' counts differ), 320 are 3 or 5 (with 4 splits, or four warpgroups, some
    warpgroups have none), 128 one or two; 16384 rows of W take several waves of programs (with
    a ring of 5 stages shared in turn by the two warpgroups, int8-gc gave wrong results and
    graph replays faulted there)."""
    config = replace(config, num_stages=gm.ws_fit_stages(config, anybit.formats.parse_format(spec).bits))
    x, qw, bias, y = check_poisoned_with_bias(_run, config, spec, m, n, k, seed=n + m + k)
    _check_replays(x, qw, config, bias, y)


TAIL = [_ws(64, 256, 128, 1, 3, tail_rows=192), _ws(64, 256, 128, 1, 3, tail_rows=64),
        _ws(64, 192, 128, 1, 4, tail_rows=128), _ws(128, 256, 64, 1, 4, 128, tail_rows=128),
        _ws(128, 256, 64, 1, 4, tail_rows=192)]


@pytest.mark.parametrize("config", TAIL, ids=_ids)
@pytest.mark.parametrize("spec", ["int4-g128", "uint4-g128", "int8-gc"])
@pytest.mark.parametrize("n, k, m, gpu_sms", [(1000, 4160, 33, False), (1000, 320, 100, False),
                                              (4096, 1024, 64, False), (57344, 1024, 64, True)])
def test_tail_rows(monkeypatch, config, spec, n, k, m, gpu_sms):
    """Tail rows (``GemmConfig.tail_rows``): whole tiles for the full waves, the rest of W's
    rows in tiles of fewer warpgroups, the others idle.  On a NaN-poisoned output every
    element written and the bias added once, within the float64 tolerance; the bits of the
    same plan without tail rows (each row's K-blocks in the same order); the same in repeated
    launches and graph replays.  Small layers take a tail from a launch that sees about half
    their tiles' count of SMs (``sm_count`` replaced); 57344 rows take one on the GPU's own."""
    bits = anybit.formats.parse_format(spec).bits
    config = replace(config, num_stages=gm.ws_fit_stages(config, bits))
    m_tiles, w_tiles = -(-m // config.block_m), -(-n // config.block_n)
    if not gpu_sms:
        monkeypatch.setattr(gm, "sm_count", lambda device: m_tiles * (w_tiles // 2 + 1))
    assert gm.ws_tail_layout(config, m, n, gm.sm_count(torch.device("cuda")))[0] < w_tiles  # tail programs run
    x, qw, bias, y = check_poisoned_with_bias(_run, config, spec, m, n, k, seed=n + m + k)
    assert torch.equal(y, _run(x, qw, replace(config, tail_rows=0), bias))
    _check_replays(x, qw, config, bias, y)


PACED = [(_ws(64, 256, 128, 1, 3), 2), (_ws(64, 128, 128, 2, 6, cluster_sum=True), 4),
         (_ws(64, 128, 128, 1, 6, stream_k=True), 4), (_ws(64, 64, 128, 2, 6, 64, 2, cluster_sum=True), 2),
         (_ws(64, 256, 128, 1, 3, tail_rows=192), 2), (_ws(128, 128, 128, 3, 3), 1)]


@pytest.mark.parametrize("config, ahead", PACED, ids=lambda c: _ids(c) if isinstance(c, gm.GemmConfig) else f"ahead{c}")
@pytest.mark.parametrize("spec", ["int4-g128", "uint4-g128", "int8-gc"])
@pytest.mark.parametrize("n, k, m", [(1000, 4160, 33), (4096, 4096, 64), (192, 320, 100), (16384, 2048, 64)])
def test_loads_ahead(config, ahead, spec, n, k, m):
    """The loader held to loads_ahead K-blocks in flight (``GemmConfig.loads_ahead``) in each
    kind of launch (split, cluster sum, stream-K, warpgroups sharing K, tail rows, three
    splits of a short K): on a NaN-poisoned output every element written and the bias added
    once, within the float64 tolerance; the bits of the same plan with the ring issued full;
    the same in repeated launches and graph replays."""
    stages = gm.ws_fit_stages(config, anybit.formats.parse_format(spec).bits)
    config = replace(config, num_stages=stages, loads_ahead=min(ahead, stages - 1))
    x, qw, bias, y = check_poisoned_with_bias(_run, config, spec, m, n, k, seed=n + m + k)
    assert torch.equal(y, _run(x, qw, replace(config, loads_ahead=0), bias))
    _check_replays(x, qw, config, bias, y)


TABLE_PLANS = [_ws(64, 256, 128, 1, 3), _ws(128, 128, 64, 3, 4), _ws(64, 128, 128, 2, 6, cluster_sum=True),
               _ws(64, 128, 128, 1, 6, stream_k=True), _ws(64, 64, 128, 2, 6, 64, 2, cluster_sum=True),
               _ws(64, 256, 128, 1, 3, tail_rows=192), _ws(128, 192, 128, 1, 4), _ws(64, 256, 64, 1, 4, 128),
               _ws(256, 128, 64, 2, 4)]


@pytest.mark.parametrize("config", TABLE_PLANS, ids=_ids)
@pytest.mark.parametrize("spec", ["nf4-g128", "lut4-g128", "nf4-gc", "lut4-gc"])
@pytest.mark.parametrize("n, k, m", [(1000, 4160, 33), (4096, 4096, 64), (16384, 2048, 256)])
def test_table_codes(config, spec, n, k, m):
    """4-bit table codes (NF4's levels; lut4, a table per row of W) in each kind of launch
    (one wave, three splits, cluster sum, stream-K, warpgroups sharing K, tail rows, three
    warpgroups, 128 rows a warpgroup, 256 rows of x), with a scale per group or per row
    (scaled once, after the sum): on a NaN-poisoned output every element written and the
    bias added once, within the float64 tolerance; the same bits in repeated launches and
    graph replays."""
    config = replace(config, num_stages=gm.ws_fit_stages(config, 4))
    x, qw, bias, y = check_poisoned_with_bias(_run, config, spec, m, n, k, seed=n + m + k)
    _check_replays(x, qw, config, bias, y)


def test_table_launch_refuses_a_missing_or_misshapen_table():
    """The launcher checks the table it is given against the codes' mode."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(64, 256, device="cuda", generator=gen).half()
    config = _ws(64, 128, 128, 1, 6)
    for spec, table in [("lut4-g128", None), ("lut4-g128", torch.zeros(16, device="cuda")),
                        ("nf4-g128", torch.zeros(128, 16, device="cuda")),
                        ("int4-g128", torch.zeros(16, device="cuda"))]:
        qw = quantized_cuda(spec, 128, 256, gen)
        with pytest.raises(ValueError, match="table: "):
            gm.launch_gemm_gluon_ws(x, qw.codes, qw.params["scales"], None, None, 128, 256, 4, 128,
                                    qw.format.kernel_decode().mode, config, table=table)


THREE_WARPGROUPS = [_ws(128, 192, 128, 1, 4), _ws(64, 192, 128, 1, 4), _ws(128, 192, 128, 3, 4),
                    _ws(128, 192, 128, 2, 4, cluster_sum=True), _ws(64, 192, 128, 4, 4, cluster_sum=True),
                    _ws(128, 192, 128, 1, 4, stream_k=True), _ws(128, 192, 128, 1, 4, swizzle=16)]


@pytest.mark.parametrize("config", THREE_WARPGROUPS, ids=_ids)
@pytest.mark.parametrize("spec", ["int4-g128", "uint4-g128", "int8-gc"])
@pytest.mark.parametrize("n, k, m", [(1000, 4160, 33), (4096, 4096, 64), (192, 320, 100), (6144, 4096, 1024),
                                     (16384, 2048, 128)])
def test_three_warpgroups(config, spec, n, k, m):
    """192 rows of W per program as three consumer warpgroups of 64 (their codes copied in
    three TMA boxes of 64 rows a stage), at the most stages that fit for the codes' width,
    without a split, split through global memory (3 splits: a short last one), in a cluster
    and stream-K: on a NaN-poisoned output every element written and the bias added once,
    within the float64 tolerance, the same bits in repeated launches and replayed from a CUDA
    graph.  1000 and 4096 rows of W end inside a tile, 16384 take several waves."""
    config = replace(config, num_stages=gm.ws_fit_stages(config, anybit.formats.parse_format(spec).bits))
    x, qw, bias, y = check_poisoned_with_bias(_run, config, spec, m, n, k, seed=n + m + k)
    _check_replays(x, qw, config, bias, y)


STAGED = [_ws(64, 256, 128, 1, 3), _ws(128, 128, 128, 3, 3), _ws(64, 128, 128, 2, 6, cluster_sum=True),
          _ws(64, 64, 128, 2, 6, 64, 2, cluster_sum=True), _ws(64, 192, 128, 1, 4), _ws(128, 256, 128, 1, 3, 128),
          _ws(128, 128, 128, 1, 3, stream_k=True), _ws(64, 128, 64, 5, 6), _ws(64, 128, 128, 1, 6, 64, 2)]


@pytest.mark.parametrize("config", STAGED, ids=_ids)
@pytest.mark.parametrize("spec", ["int4-g128", "uint4-g128"])
@pytest.mark.parametrize("n, k, m", [(1000, 4096, 64), (4096, 5120, 100)])
def test_staged_scales_give_the_same_bits(config, spec, n, k, m):
    """Scales and zero points staged in shared memory (``ws_staged``; the default where they
    can be): on a NaN-poisoned output every element written and the bias added once, within
    the float64 tolerance, and the bits of the same plan with each K-block's loaded from global
    memory; the same bits in repeated launches and replayed from a CUDA graph.  3 and 5 splits
    of 32 or 40 K-blocks start inside an 8-group chunk; 1000 rows end inside a tile."""
    x, qw, bias, y = check_poisoned_with_bias(functools.partial(_run, staged=True), config, spec, m, n, k,
                                              seed=n + m + k)
    assert gm.ws_staged(config, 4, -(-k // config.block_k), 128, qw.params["scales"], qw.params.get("zeros"), False)
    assert torch.equal(y, _run(x, qw, config, bias, staged=False))
    _check_replays(x, qw, config, bias, y)


SEVERAL_GROUPS = [_ws(64, 256, 128, 1, 3), _ws(128, 128, 128, 3, 3), _ws(64, 128, 64, 5, 6),
                  _ws(64, 64, 128, 2, 6, 64, 2, cluster_sum=True), _ws(64, 64, 128, 1, 8, 64, 4),
                  _ws(128, 256, 128, 1, 3, 128), _ws(128, 128, 128, 1, 3, stream_k=True)]
SEVERAL_GROUPS_SPECS = ["int4-g32", "uint4-g64", "nf4-g32", "lut4-g64", "uint8-g32", "int3-g32", "uint6-g64"]


def _several_groups(config, spec):
    """Whether ``spec``'s K-blocks of ``config`` hold several groups the kernel computes."""
    fmt = anybit.formats.parse_format(spec)
    return fmt.group_len(4096) < config.block_k and gm.gluon_ws_supported(
        fmt.bits, fmt.kernel_decode().mode, fmt.group_len(4096), config.block_k, 4096, torch.float16, torch.float16)


@pytest.mark.parametrize("config, spec", [(c, s) for c in SEVERAL_GROUPS for s in SEVERAL_GROUPS_SPECS
                                          if _several_groups(c, s)], ids=lambda v: v if isinstance(v, str) else _ids(v))
@pytest.mark.parametrize("n, k, m", [(1000, 4096, 64), (4096, 5120, 100)])
def test_k_blocks_of_several_groups(config, spec, n, k, m):
    """K-blocks holding two or four groups (a scale and zero point per row and group, broadcast
    to the words decoded: ``ws_groups``), every kind of code (4 bits symmetric
    and with zero points, NF4's and lut4's tables, 8 bits, 3 and 6 bits as pieces) on every kind
    of launch (split, cluster sum, warpgroups sharing K, 128 rows a warpgroup, stream-K): on a
    NaN-poisoned output every element written and the bias added once, within the float64
    tolerance; the scales staged in shared memory and loaded from global memory give the same
    bits; the same bits in repeated launches and replayed from a CUDA graph."""
    config = replace(config, num_stages=gm.ws_fit_stages(config, anybit.formats.parse_format(spec).bits))
    x, qw, bias, y = check_poisoned_with_bias(_run, config, spec, m, n, k, seed=n + m + k)
    assert torch.equal(y, _run(x, qw, config, bias, staged=False))
    _check_replays(x, qw, config, bias, y)


def test_staging_is_refused_where_the_scales_do_not_come_in_chunks():
    """4160 columns are 33 groups of 128 a row: not whole 8-group chunks, so the default loads
    each K-block's scales, and staged=True is refused."""
    gen = torch.Generator(device="cuda").manual_seed(3)
    qw = quantized_cuda("int4-g128", 256, 4160, gen)
    x = torch.randn(64, 4160, device="cuda", generator=gen).half()
    config = _ws(64, 128, 128, 1, 6)
    assert not gm.ws_staged(config, 4, 33, 128, qw.params["scales"], None, False)
    assert_matmul_close(_run(x, qw, config), x, qw, None, weight_roundoff=unit_roundoff(x.dtype))
    with pytest.raises(ValueError, match="staged=True"):
        _run(x, qw, config, staged=True)


@pytest.mark.parametrize("n, k, m", [(28672, 4096, 256), (4096, 4096, 1024), (6144, 4096, 64)])
def test_repeated_launches_agree(n, k, m):
    """Each MMA is waited for before its registers or its ring stage are reused, with each
    overlap of decode and MMA (CARRY, PAIRS, NONE, on the tiles ``ws_overlap`` gives them
    under Triton 3.6): 20 launches, same bits (split-K sums in a fixed order)."""
    for config, overlap in ((_ws(64, 128, 64, 1, 6), gm.WsOverlap.CARRY), (_ws(64, 256, 64, 4, 4), gm.WsOverlap.PAIRS),
                            (_ws(128, 256, 64, 1, 4), gm.WsOverlap.NONE),
                            (_ws(64, 128, 64, 1, 6, 128), gm.WsOverlap.CARRY),
                            (_ws(64, 256, 64, 1, 4, 128), gm.WsOverlap.PAIRS),
                            (_ws(128, 256, 64, 2, 4, 128), gm.WsOverlap.PAIRS),
                            (_ws(256, 128, 64, 1, 4, swizzle=16), gm.WsOverlap.PAIRS),
                            (_ws(128, 128, 64, 2, 4), gm.WsOverlap.PAIRS),
                            (_ws(64, 128, 128, 2, 6), gm.WsOverlap.PAIRS),
                            (_ws(128, 256, 128, 1, 3, 128), gm.WsOverlap.NONE)):
        check_repeated_launches(functools.partial(_run, overlap=overlap), (config,), n, k, m)


@pytest.mark.parametrize("overlap", list(gm.WsOverlap), ids=lambda o: o.name)
@pytest.mark.parametrize("config", [_ws(64, 64, 64, 1, 2), _ws(64, 128, 64, 3, 4), _ws(128, 256, 64, 2, 3),
                                    _ws(64, 256, 64, 2, 3, 128), _ws(256, 128, 64, 2, 3), _ws(64, 128, 128, 2, 4),
                                    _ws(128, 256, 128, 2, 3, 128)],
                         ids=_ids)
@pytest.mark.parametrize("k", [40, 136, 1608])
def test_every_overlap_mode(overlap, config, k):
    """Each overlap forced on each tile (one deeper than the registers hold runs with its
    wgmma serialized, still right): 1, 3 and 26 K-blocks, so odd and even counts per split
    (an odd one starts with a block of its own), against float64 with bias."""
    gen = torch.Generator(device="cuda").manual_seed(k)
    qw = quantized_cuda("uint4-g128" if k == 136 else "int4-g128", 1000, k, gen)
    x = torch.randn(100, k, device="cuda", generator=gen).half()
    bias = torch.randn(1000, device="cuda", generator=gen)
    y = _run(x, qw, config, bias, out=torch.full((100, 1000), float("nan"), device="cuda", dtype=torch.float16),
             overlap=overlap)
    assert_matmul_close(y, x, qw, bias, weight_roundoff=unit_roundoff(x.dtype))


@pytest.mark.parametrize("spec", ["int8-gc", "int4-gc", "uint8-gc"])
@pytest.mark.parametrize("config", [_ws(64, 128, 128, 2, 6), _ws(128, 256, 64, 1, 4), _ws(64, 256, 128, 1, 3),
                                    _ws(64, 128, 128, 1, 6, stream_k=True), _ws(64, 128, 128, 2, 6, cluster_sum=True),
                                    _ws(128, 256, 128, 1, 3, 128)],
                         ids=_ids)
def test_one_scale_per_row_scales_each_sum_once(spec, config):
    """Per-channel formats (one scale per row, ``ws_scale_after``): the exact codes less the
    zero enter the MMA and each row's fp32 sum is scaled once (every split and stream-K share
    alike), so y is within the float64 bound with no allowance for weights rounded to fp16;
    forced to scale every weight instead, within the bound that allows for it."""
    gen = torch.Generator(device="cuda").manual_seed(7)
    qw = quantized_cuda(spec, 1000, 4160, gen)
    x = torch.randn(100, 4160, device="cuda", generator=gen).half()
    bias = torch.randn(1000, device="cuda", generator=gen)

    def run(**options):
        return _run(x, qw, config, bias, out=torch.full((100, 1000), float("nan"), device="cuda",
                                                       dtype=torch.float16), **options)

    assert_matmul_close(run(), x, qw, bias)
    assert_matmul_close(run(scale_after=False), x, qw, bias, weight_roundoff=unit_roundoff(x.dtype))


#: wgmma with the weights as a register list and x's tile as a descriptor.
WGMMA_REGISTER_A = re.compile(r"wgmma\.mma_async\.sync\.aligned\.m64n\d+k16\.f32\.f16\.f16\s*\{[^}]*\},\s*\{%r")


def test_tma_loads_and_register_operand_mma():
    """The compiled kernel loads by TMA (UTMALDG), sets per-partition register counts
    (USETMAXREG) and multiplies with the decoded weights as wgmma's register operand: the
    weights never pass through shared memory after decoding.  ldmatrix (LDSM) reads only
    the 4-bit code words out of the TMA ring (v28's pair-transposed layout): a 64 x 16 A
    tile's codes are 512 bytes, a quarter of one x4 ldmatrix per warp of the warpgroup, so
    at most one LDSM per four HGMMA; fp16 weights read that way would need one per HGMMA."""
    from anybit._matmul.gemm_gluon_ws import gemm_gluon_ws_kernel

    qw = quantized_cuda("int4-g128", 4096, 4096, torch.Generator(device="cuda").manual_seed(0))
    x = torch.randn(64, 4096, device="cuda", dtype=torch.float16)
    cache = gemm_gluon_ws_kernel.device_caches[torch.cuda.current_device()][0]
    before = set(cache)
    _run(x, qw, _ws(64, 256, 64, 1, 4))
    kernels = [cache[key] for key in cache if key not in before] or list(cache.values())
    for kernel in kernels:
        assert WGMMA_REGISTER_A.search(kernel.asm["ptx"])
        sass = kernel.asm["sass"]
        assert "UTMALDG" in sass and "USETMAXREG" in sass and "HGMMA" in sass
        assert 4 * sass.count("LDSM") <= sass.count("HGMMA"), (sass.count("LDSM"), sass.count("HGMMA"))


def test_plans_run_through_the_dispatcher(monkeypatch):
    """anybit.matmul with a table entry of the kernel: that kernel, same bits as launching
    it directly; bf16 x and an x that TMA cannot read in place take the fallback (the
    Triton kernel with the heuristic's settings), still right."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    qw = quantized_cuda("uint4-g128", 1000, 1536, gen)
    config = _ws(128, 256, 64, 2, 4)
    monkeypatch.setattr(tuning, "plan", lambda *args: gm.Plan(gm.Kernel.GLUON_WS, config))
    x = torch.randn(100, 1536, device="cuda", generator=gen).half()
    assert torch.equal(anybit.matmul(x, qw), _run(x, qw, config))
    xb = x.bfloat16()
    assert_matmul_close(anybit.matmul(xb, qw), xb, qw, weight_roundoff=unit_roundoff(xb.dtype))
    shifted = torch.empty(100 * 1536 + 1, device="cuda", dtype=torch.float16)[1:].view(100, 1536)
    shifted.copy_(x)
    assert not gm._tma_readable(shifted)
    assert_matmul_close(anybit.matmul(shifted, qw), x, qw, weight_roundoff=unit_roundoff(x.dtype))
