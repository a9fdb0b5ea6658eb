"""The GEMM-path plans: candidates, the performance model, tuned tables and their
lookup, and the dispatcher following a table (CPU; the interpreter for the kernels)."""

from __future__ import annotations

import functools
import json
import math
import warnings
from dataclasses import dataclass, replace

import pytest
import torch

from conftest import KERNEL_SPECS

import anybit
from anybit import cli, tune
from anybit._matmul import candidates as cand
from anybit._matmul import gemm as gm
from anybit._matmul import perf_model as pm
from anybit._matmul import tuning
from anybit._matmul.gemv import sm_count
from anybit._matmul.ws_settings import decode_cost
from anybit.formats import parse_format

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

HW = pm.Hardware(sms=132, fp16_tflops=760.0, copy_tbps=4.2)
GEMM_64 = gm.Plan(gm.Kernel.GEMM, gm.GemmConfig(64, 64, 64, 2, 4, 4))
GEMM_128 = gm.Plan(gm.Kernel.GEMM, gm.GemmConfig(128, 64, 64, 1, 4, 4))
WS_64 = gm.Plan(gm.Kernel.GLUON_WS, gm.ws_config(64, 128, 128, 1, 6))
DEQUANT = gm.Plan(gm.Kernel.DEQUANT)


@dataclass(frozen=True)
class Shape:
    m: int
    n: int
    k: int
    bits: int


SHAPES = [Shape(64, 4096, 4096, 4), Shape(33, 1024, 4096, 3), Shape(128, 14336, 4096, 8), Shape(4096, 4096, 14336, 4),
          Shape(100, 576, 1536, 2)]


@pytest.mark.parametrize("s", SHAPES, ids=str)
def test_candidates_are_valid_unique_and_safe(s):
    plans = cand.candidate_plans(s.m, s.n, s.k, s.bits, HW.sms)
    assert plans[0] == DEQUANT
    assert len(set(plans)) == len(plans)
    k_blocks = -(-s.k // plans[1].config.block_k)
    for plan in plans[1:]:
        c = plan.config
        assert k_blocks % c.split_k == 0
        assert not gm.racy(c)
        assert c.block_m == 64 or s.m > 64
        assert c.block_k // gm.codes_per_element(s.bits) >= gm.MMA_K
    assert gm.default_plan(s.m, s.n, s.k, 128, s.bits, HW.sms) in plans or s.m >= gm.DEQUANT_MIN_M


def test_only_settings_without_the_wait_are_racy():
    for config in [gm.GemmConfig(128, 128, 64, 1, 8, 3), gm.GemmConfig(64, 64, 64, 1, 4, 4)]:
        assert config.sync_mma and not gm.racy(config)
        assert gm.racy(replace(config, sync_mma=False))
    assert not gm.racy(gm.GemmConfig(256, 128, 64, 1, 8, 2))
    with pytest.raises(ValueError, match="without sync_mma"):
        gm.GemmConfig(256, 128, 64, sync_mma=False)


def test_plan_requires_a_config_for_gemm_only():
    with pytest.raises(ValueError, match="GemmConfig is required"):
        gm.Plan(gm.Kernel.GEMM)
    with pytest.raises(ValueError, match="refused for dequant"):
        gm.Plan(gm.Kernel.DEQUANT, gm.GemmConfig(64, 64, 64))


def test_default_plan_follows_the_crossover():
    assert gm.default_plan(gm.DEQUANT_MIN_M - 1, 4096, 4096, 128, 4, 132).kernel is gm.Kernel.GEMM
    assert gm.default_plan(gm.DEQUANT_MIN_M, 4096, 4096, 128, 4, 132) == DEQUANT


def test_model_terms_move_the_right_way():
    p = pm.ModelParams()
    small, large = pm.Problem(64, 4096, 4096, 4, 128), pm.Problem(4096, 4096, 4096, 4, 128)
    # 128 rows of x per program at M=64 pay twice the MMA for nothing
    assert pm.predict_us(small, GEMM_128, HW, p) > pm.predict_us(small, GEMM_64, HW, p)
    # time grows with m and with n; the dequantize path wins at large m
    assert pm.predict_us(large, GEMM_64, HW, p) > pm.predict_us(small, GEMM_64, HW, p)
    wide = pm.Problem(64, 8192, 4096, 4, 128)
    assert pm.predict_us(wide, GEMM_64, HW, p) > pm.predict_us(small, GEMM_64, HW, p)
    assert pm.predict_us(large, DEQUANT, HW, p) < pm.predict_us(large, GEMM_64, HW, p)
    # never below the bytes at the copy rate
    assert pm.predict_us(small, GEMM_64, HW, p) >= small.weight_bytes() / (HW.copy_tbps * 1e6)


def test_decode_and_mma_add_up_per_block():
    """A consumer decodes a block's weights, then multiplies (docs/NOTES-gemm.md v46, v59): the
    model's time of a block is the MMA's cycles plus the decode's issue cycles, so codes with
    more decode instructions a weight (3 bits: ``decode_cost`` 2.19) add their extra decode to
    the MMA's time even where the MMA alone is longer.  Then, for int3 at M=256, a 128-row tile
    of x (each weight decoded once for 128 rows) ranks ahead of four 64-row ones, which the
    H100 measured 1.5-2x slower (the v58 tune)."""
    p = pm.ModelParams(latency=0.0, load_latency=0.0, launch_us=0.0)
    config = gm.ws_config(64, 128, 128, 1, 6, 64, 2)  # two warpgroups taking turns at the K-blocks
    for bits in (3, 4):
        problem = pm.Problem(4096, 16896, 8192, bits, 128)  # compute-bound: 64 x 132 tiles, 64 whole waves
        mma = config.block_n * config.block_m * config.block_k / HW.fma_per_sm_cycle
        issue = (config.block_n * config.block_k * p.instr_per_weight * decode_cost(bits)
                 + config.block_m * config.block_k * p.instr_per_x) / 128
        waves, k_blocks = 64, 8192 // 128
        shared_sum = p.fixup * 8 * 4096 * 16896 * 2 / (HW.copy_tbps * 1e6) * pm.CLUSTER_FIXUP_SHARE
        assert pm.gemm_us(problem, config, HW, p, one_per_sm=True) == pytest.approx(
            waves * k_blocks * (mma + issue) / (HW.clock_ghz * 1e3) + shared_sum)
    fitted = pm.ModelParams(instr_per_weight=3.0, instr_per_x=0.5)
    problem = pm.Problem(256, 6144, 4096, 3, 128)
    wide, narrow = gm.ws_config(128, 128, 128, 1, 3), gm.ws_config(64, 128, 128, 1, 6, 64, 2)
    assert pm.gemm_us(problem, wide, HW, fitted, one_per_sm=True) \
        < pm.gemm_us(problem, narrow, HW, fitted, one_per_sm=True)


def test_stream_k_terms():
    """Stream-K: one wave of an equal share of all K-blocks, two partial tiles per program
    to fix up where the last wave is partial, none where the tiles fill whole waves; its own
    correction class."""
    p = pm.ModelParams()
    config = gm.ws_config(128, 128, 128, 1, 3)
    tiled, stream_k = gm.Plan(gm.Kernel.GLUON_WS, config), gm.Plan(gm.Kernel.GLUON_WS, replace(config, stream_k=True))
    # 10240 x 8192 at M=256: 160 tiles on 132 SMs, the second wave 28 tiles: stream-K shares them
    partial = pm.Problem(256, 10240, 8192, 4, 128)
    assert pm.gemm_us(partial, stream_k.config, HW, p) < pm.gemm_us(partial, tiled.config, HW, p)
    # 264 tiles: two whole waves either way, stream-K adds no fix-up
    whole = pm.Problem(256, 16896, 4096, 4, 128)
    assert pm.gemm_us(whole, stream_k.config, HW, p) == pytest.approx(pm.gemm_us(whole, tiled.config, HW, p))
    assert pm.plan_class(partial, stream_k) == "gluon_ws 128x128x128 12w3s stream-k m256"
    assert pm.plan_class(partial, tiled) == "gluon_ws 128x128x128 12w3s m256"


def test_cluster_sum_terms():
    """The cluster sum keeps CLUSTER_FIXUP_SHARE of the global split-K fix-up; its clusters
    run in waves of whole clusters on CLUSTER_SM_SHARE of the SMs (4096 x 4096 at M=64 in 64
    x 128 tiles: 64 clusters of 2 fill one wave of 132 SMs, 32 clusters of 4 two); it has its
    own correction class."""
    p = pm.ModelParams()
    problem = pm.Problem(64, 4096, 4096, 4, 128)
    us = functools.partial(pm.gemm_us, problem, hw=HW, params=p, one_per_sm=True)
    two, four = gm.ws_config(64, 128, 64, 2, 6), gm.ws_config(64, 128, 64, 4, 6)
    fixup = p.fixup * 8 * 64 * 4096 * 2 / (HW.copy_tbps * 1e6)  # 2 splits' fp32 partials written and read
    assert us(config=two) - us(config=replace(two, cluster_sum=True)) \
        == pytest.approx(fixup * (1 - pm.CLUSTER_FIXUP_SHARE))
    assert us(config=replace(four, cluster_sum=True)) > 1.5 * us(config=four)  # two waves against one
    summed = gm.Plan(gm.Kernel.GLUON_WS, replace(four, cluster_sum=True))
    assert pm.plan_class(problem, summed) == "gluon_ws 64x128x64 12w6s cluster m64"


def test_the_warp_specialized_kernel_runs_one_program_per_sm():
    """Its registers fill the SM: the model runs its programs one per SM, where the register
    count of the other kernels (_resident) would allow two of a 64 x 128 x 64 tile."""
    problem = pm.Problem(64, 28672, 4096, 4, 128)  # 224 tiles: two waves of one program per SM
    config = gm.ws_config(64, 128, 64, 1, 6)
    p = pm.ModelParams()
    assert pm._resident(config, 4, HW, p) == 2
    assert pm.analytic_us(problem, gm.Plan(gm.Kernel.GLUON_WS, config), HW, p) \
        == pm.gemm_us(problem, config, HW, p, one_per_sm=True) > pm.gemm_us(problem, config, HW, p)


def test_rank_is_deterministic_and_sorted():
    problem = pm.Problem(128, 4096, 4096, 4, 128)
    plans = cand.candidate_plans(128, 4096, 4096, 4, HW.sms)
    first = pm.rank(problem, plans, HW, pm.ModelParams())
    assert first == pm.rank(problem, plans, HW, pm.ModelParams())
    times = [us for us, _ in first]
    assert times == sorted(times) and len(first) == len(plans)


def test_fit_learns_the_measured_times():
    """Times drawn from other coefficients and a per-class slowdown: the fit gets
    closer to them than the defaults, and ranks them right."""
    truth = pm.ModelParams(instr_per_weight=14.0, latency=400.0, launch_us=2.0)
    observations = []
    for s in SHAPES[:4]:
        problem = pm.Problem(s.m, s.n, s.k, s.bits, 128)
        for plan in cand.candidate_plans(s.m, s.n, s.k, s.bits, HW.sms)[:12]:
            slow = 1.5 if plan.config is not None and plan.config.num_warps == 8 else 1.0
            observations.append(pm.Observation(problem, plan, pm.predict_us(problem, plan, HW, truth) * slow))
    start = pm.ModelParams()
    fitted = pm.fit(observations, HW, start)
    assert pm.log_error(observations, HW, fitted) < 0.5 * pm.log_error(observations, HW, start)
    assert fitted.corrections and all(math.isfinite(v) for _, v in fitted.corrections)
    assert pm.ModelParams.from_dict(json.loads(json.dumps(fitted.to_dict()))) == fitted


def test_model_params_refuse_unknown_coefficients():
    with pytest.raises(ValueError, match="unknown model coefficients"):
        pm.ModelParams.from_dict({"speed": 1.0})


def _table(gpu="cpu", sms=4, triton=None, entries=(), arch="cpu") -> tuning.TunedTable:
    return tuning.TunedTable(gpu, sms, triton or tuning._triton_version() or "", torch.__version__,
                             anybit.__version__, "2026-01-01", {"copy_TBps": 1.0}, pm.ModelParams(), tuple(entries),
                             arch)


def _entry(m, plan, spec="int4-g128", n=64, k=96):
    return tuning.TunedEntry(spec, n, k, m, plan, 1.0, 2.0)


def test_table_round_trip(tmp_path):
    table = _table(entries=[_entry(64, GEMM_64), _entry(256, DEQUANT)])
    path = tuning.write_table(table, tmp_path / "t.json")
    assert tuning.read_table(path) == table


def test_write_merges_entries_of_the_same_gpu(tmp_path):
    path = tmp_path / "t.json"
    tuning.write_table(_table(entries=[_entry(64, GEMM_64), _entry(128, GEMM_64)]), path)
    tuning.write_table(_table(entries=[_entry(128, GEMM_128)]), path)
    plans = {e.m: e.plan for e in tuning.read_table(path).entries}
    assert plans == {64: GEMM_64, 128: GEMM_128}


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(schema=99), "schema 99 is not supported"),
    (lambda d: d.pop("gpu"), "missing or bad field"),
    (lambda d: d["entries"][0].update(kernel="fast"), "bad entry"),
    (lambda d: d["entries"][0]["config"].update(block_m=96), "bad entry"),
    (lambda d: d["entries"][0].update(config=None), "bad entry"),
    (lambda d: d["entries"][0]["config"].update(stream_k=True), "bad entry"),  # stream-K in the Triton GEMM
])
def test_bad_tables_are_refused_naming_the_file(tmp_path, change, message):
    data = json.loads(_table(entries=[_entry(64, GEMM_64)]).to_json())
    change(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as err:
        tuning.read_table(path)
    assert str(path) in str(err.value)


def test_tune_also_measures_the_plan_the_table_holds():
    """The incumbent: the plan of the first table with an entry for exactly this point."""
    tables = (_table(entries=[_entry(64, GEMM_64)]), _table(entries=[_entry(64, GEMM_128), _entry(128, DEQUANT)]))
    assert tune._incumbent(tables, "int4-g128", 64, 96, 64) == GEMM_64
    assert tune._incumbent(tables, "int4-g128", 64, 96, 128) == DEQUANT
    assert tune._incumbent(tables, "int4-g128", 64, 96, 100) is None  # no nearest-m lookup here
    assert tune._incumbent(tables, "uint4-g128", 64, 96, 64) is None


def test_tune_measures_the_models_top_the_heuristics_plan_and_the_incumbent():
    incumbent = gm.Plan(gm.Kernel.GEMM, gm.GemmConfig(64, 128, 64, 1, 8, 2))
    tables = (_table(entries=[_entry(64, incumbent, n=1024, k=4096)]),)
    point, selected = tune._choose("int4-g128", 1024, 4096, 64, 4, torch.device("cpu"), HW, pm.ModelParams(),
                                   tables, 2, False)
    assert [c.model_us for c in point.candidates[:-1]] == sorted(c.model_us for c in point.candidates[:-1])
    plans = [c.plan for c in selected]
    default = gm.default_plan(64, 1024, 4096, 128, 4, 4)
    assert plans[:2] == [c.plan for c in point.candidates[:2]]
    assert default in plans and incumbent in plans and len(plans) == len(set(plans)) <= 4
    every = tune._choose("int4-g128", 1024, 4096, 64, 4, torch.device("cpu"), HW, pm.ModelParams(), (), 1, True)
    assert len(every[1]) == len(every[0].candidates) > 4


def test_tune_measures_the_models_first_kernel_variants(monkeypatch):
    """Besides the model's top: its first WS_MEASURED warp-specialized plans, first stream-K
    plan, first CLUSTER_MEASURED cluster-sum plans and first SHARED_K_MEASURED plans of two and
    of four warpgroups sharing K (where the kernels run: here made to, as on a Hopper GPU).
    The model ranks only MODEL_KERNELS' plans there; the heuristic's plan (the Triton GEMM at
    M=64) is measured besides the ranking, never the model's pick."""
    monkeypatch.setattr(gm, "hopper", lambda device: True)
    point, selected = tune._choose("int4-g128", 4096, 4096, 64, HW.sms, torch.device("cpu"), HW, pm.ModelParams(),
                                   (), 1, False)
    plans = [c.plan for c in selected]
    ranked = [c.plan for c in point.candidates]
    ws = [p for p in ranked if p.kernel is gm.Kernel.GLUON_WS]
    clusters = [p for p in ws if p.config.cluster_sum]
    assert len(clusters) > tune.CLUSTER_MEASURED and set(clusters[:tune.CLUSTER_MEASURED]) <= set(plans)
    assert set(ws[:tune.WS_MEASURED]) <= set(plans)
    default = gm.default_plan(64, 4096, 4096, 128, 4, HW.sms)
    assert default.kernel is gm.Kernel.GEMM and default in plans
    assert [c.plan for c in point.candidates if not c.ranked] == [default]
    assert {c.plan.kernel for c in point.candidates if c.ranked} <= set(tuning.MODEL_KERNELS)
    assert point.model_pick().ranked
    assert next(p for p in ws if p.config.stream_k) in plans
    assert ranked[0] in plans and len(plans) == len(set(plans))
    shared_k = set()
    for k_wg in (2, 4):
        first = [p for p in ws if p.config.k_warpgroups == k_wg][:tune.SHARED_K_MEASURED]
        assert len(first) == tune.SHARED_K_MEASURED and set(first) <= set(plans)
        shared_k |= set(first)
    # no other cluster plan than those (and one that the top or the first WS_MEASURED hold), but
    # for the paced twins of the first PACED_MEASURED (tests/test_ws_loads_ahead.py)
    measured_clusters = {p for p in plans if p.kernel is gm.Kernel.GLUON_WS and p.config.cluster_sum
                         and not p.config.loads_ahead}
    assert measured_clusters <= (set(clusters[:tune.CLUSTER_MEASURED]) | set(ws[:tune.WS_MEASURED]) | {ranked[0]}
                                 | shared_k)


@pytest.mark.parametrize("spec", KERNEL_SPECS)
def test_placeholder_weight_is_a_valid_zero_weight(spec):
    qw = tune.placeholder_weight(spec, 40, 300, torch.device("cpu"))
    assert qw.shape == (40, 300) and qw.dtype == torch.float16
    assert not qw.dequantize(torch.float64).any()


def test_precompile_launches_each_plan_in_worker_processes(capsys):
    """Two plans on two shapes compile in two spawned processes (the interpreter stands in
    for the compiler here); a launch that fails is reported, not raised: the tuner's own
    launch raises it."""
    good = gm.Plan(gm.Kernel.GEMM, gm.GemmConfig(32, 32, 32, 1, 4, 2))
    bad = gm.Plan(gm.Kernel.GLUON_WS, gm.ws_config(64, 128, 64, 1, 2))  # Hopper only
    launches = [tune.Launch("int4-g128", 64, 256, 40, good), tune.Launch("int4-g128", 32, 128, 40, good),
                tune.Launch("int4-g128", 64, 256, 40, bad), tune.Launch("int4-g128", 64, 256, 40, good)]
    lines: list[str] = []
    tune.precompile(launches, torch.device("cpu"), workers=2, log=lines.append)
    assert len(lines) == 1 and lines[0].startswith("compiling 2 plans for 3 launches took "), lines
    assert "1 failed, first: " + bad.label() in lines[0]
    assert tune._compile_plans(torch.device("cpu"), launches[:2]) == []
    assert tune.precompile(launches, torch.device("cpu"), workers=1, log=lines.append) == 0.0 and len(lines) == 1
    with pytest.raises(ValueError, match=r"workers=-1; accepted: >= 0"):
        tune.precompile(launches, torch.device("cpu"), workers=-1)


def test_precompile_reports_a_process_that_dies(monkeypatch):
    monkeypatch.setattr(tune, "_WORKER_CODE", "import sys; sys.stdin.buffer.read(1); sys.exit(3)")
    plans = [gm.Plan(gm.Kernel.GEMM, gm.GemmConfig(32, 32, 32, 1, 4, stages)) for stages in (2, 3)]
    lines: list[str] = []
    tune.precompile([tune.Launch("int4-g128", 64, 256, 40, plan) for plan in plans], torch.device("cpu"), workers=2,
                    log=lines.append)
    assert "2 failed, first: a compiling process exited with code 3 compiling 32x32x32 split1 4w" in lines[0], lines


def test_lookup_takes_the_next_tuned_m():
    tables = (_table(entries=[_entry(64, GEMM_64), _entry(128, GEMM_128), _entry(1024, DEQUANT)]),)
    assert tuning.lookup(tables, "int4-g128", 64, 96, 33) == GEMM_64
    assert tuning.lookup(tables, "int4-g128", 64, 96, 64) == GEMM_64
    assert tuning.lookup(tables, "int4-g128", 64, 96, 65) == GEMM_128
    assert tuning.lookup(tables, "int4-g128", 64, 96, 300) == DEQUANT  # inside the tuned range: the next tuned M
    assert tuning.lookup(tables, "int4-g128", 64, 96, 2048) == DEQUANT
    assert tuning.lookup(tables, "int4-g128", 64, 96, 2049) is None  # past LOOKUP_REACH x the largest
    assert tuning.lookup(tables, "int4-g128", 64, 128, 64) is None
    assert tuning.lookup(tables, "uint4-g128", 64, 96, 64) is None


def test_lookup_leaves_points_far_outside_a_shapes_tuned_m_to_the_next_table():
    """A shape tuned at some M only (a tune stopped early, or ``--m 256 1024``) serves M up to
    LOOKUP_REACH x outside that range; farther, the next table's entries serve, else none (the
    performance model's plan then)."""
    partial = _table(entries=[_entry(256, GEMM_128), _entry(1024, DEQUANT)])
    whole = _table(entries=[_entry(m, GEMM_64) for m in (64, 128, 256, 1024, 4096)])
    assert tuning.lookup((partial,), "int4-g128", 64, 96, 128) == GEMM_128
    assert tuning.lookup((partial,), "int4-g128", 64, 96, 127) is None
    assert tuning.lookup((partial,), "int4-g128", 64, 96, 64) is None
    assert tuning.lookup((partial,), "int4-g128", 64, 96, 4096) is None
    assert tuning.lookup((partial, whole), "int4-g128", 64, 96, 64) == GEMM_64
    assert tuning.lookup((partial, whole), "int4-g128", 64, 96, 200) == GEMM_128  # the first table serves it
    assert tuning.lookup((partial, whole), "int4-g128", 64, 96, 4096) == GEMM_64


@pytest.fixture
def tables_env(monkeypatch, tmp_path):
    """ANYBIT_TUNED pointing at a fresh directory; the table cache cleared around the test."""
    monkeypatch.setenv(tuning.TABLE_ENV, str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tuning.clear_caches()
    yield tmp_path
    tuning.clear_caches()


def test_tables_apply_to_their_gpu_the_installed_triton_first(tables_env):
    tuning.write_table(_table(entries=[_entry(64, GEMM_64)]), tables_env / "cpu.json")
    tuning.write_table(_table(gpu="other", entries=[_entry(64, GEMM_128)]), tables_env / "other.json")
    assert [t.gpu for t in tuning.tables_for("cpu", 4)] == ["cpu"]
    assert tuning.tables_for("cpu", 8) == ()
    # tables of other Tritons after the installed one's, the nearest first, each with a warning
    installed = tuning.installed_triton()
    major, minor = (int(v) for v in installed.split("."))
    tuning.write_table(_table(triton="0.1.0", entries=[_entry(64, GEMM_128)]), tables_env / "a-old.json",
                       merge=False)
    tuning.write_table(_table(triton=f"{major}.{minor + 1}.0", entries=[_entry(64, GEMM_128)]),
                       tables_env / "b-next.json", merge=False)
    tuning.clear_caches()
    with pytest.warns(UserWarning, match="measured with Triton 0.1.0"):
        found = tuning.tables_for("cpu", 4)
    assert [t.triton for t in found] == [tuning._triton_version(), f"{major}.{minor + 1}.0", "0.1.0"]
    # alone, another Triton's table serves: its plan, not the heuristic's
    (tables_env / "cpu.json").unlink()
    tuning.clear_caches()
    with pytest.warns(UserWarning, match=f"installed Triton is {installed}: used after"):
        assert tuning.plan("int4-g128", 64, 96, 64, 32, 4, torch.device("cpu")) == GEMM_128


def test_a_gpu_without_a_table_takes_those_of_its_compute_capability(tables_env):
    # (a capability no shipped table has: the shipped ones are read too)
    tuning.write_table(_table(gpu="big", sms=132, entries=[_entry(64, GEMM_64)], arch="sm_99"), tables_env / "a.json")
    tuning.write_table(_table(gpu="small", sms=114, entries=[_entry(64, GEMM_128)], arch="sm_99"),
                       tables_env / "b.json")
    tuning.write_table(_table(gpu="other", sms=120, entries=[_entry(64, DEQUANT)], arch="sm_80"), tables_env / "c.json")
    tuning.write_table(_table(gpu="old", sms=120, entries=[_entry(64, DEQUANT)], arch=""), tables_env / "d.json")
    # its own table only, when it has one (no warning: same GPU and Triton)
    assert [t.gpu for t in tuning.tables_for("big", 132, "sm_99")] == ["big"]
    # none of its own: the same capability's, nearest SM count first, with a warning; never another
    # capability's or a table that does not say its capability
    with pytest.warns(UserWarning, match=r"no tuned table for new \(116 SMs\): .* serves it"):
        found = tuning.tables_for("new", 116, "sm_99")
    assert [t.gpu for t in found] == ["small", "big"]
    assert tuning.lookup(found, "int4-g128", 64, 96, 64) == GEMM_128
    assert tuning.tables_for("new", 116, "sm_98") == ()
    assert tuning.tables_for("new", 116) == ()


def test_old_tables_without_arch_still_read(tmp_path):
    data = json.loads(_table(entries=[_entry(64, GEMM_64)]).to_json())
    del data["arch"]
    (tmp_path / "t.json").write_text(json.dumps(data))
    table = tuning.read_table(tmp_path / "t.json")
    assert table.arch == "" and table.entries[0].plan == GEMM_64
    assert tuning.TunedTable.from_json(_table(arch="sm_90").to_json()).arch == "sm_90"


def test_tables_off_and_missing_path(monkeypatch, tables_env):
    tuning.write_table(_table(entries=[_entry(64, GEMM_64)]), tables_env / "cpu.json")
    monkeypatch.setenv(tuning.TABLE_ENV, "off")
    tuning.clear_caches()
    assert tuning.tables_for("cpu", 4) == ()
    monkeypatch.setenv(tuning.TABLE_ENV, str(tables_env / "nowhere.json"))
    tuning.clear_caches()
    with pytest.raises(ValueError, match="no such file or directory"):
        tuning.tables_for("cpu", 4)


def test_plan_falls_back_to_the_heuristic(tables_env):
    cpu = torch.device("cpu")
    assert tuning.plan("int4-g128", 64, 96, 40, 32, 4, cpu) == gm.default_plan(40, 64, 96, 32, 4, 4)
    assert tuning.plan("int4-g128", 64, 96, 300, 32, 4, cpu) == DEQUANT


def test_planned_matmul_compiles_without_graph_breaks(tables_env, monkeypatch):
    """The table lookup runs inside the op, so torch.compile(fullgraph=True) takes
    the dispatcher with a table present, and follows it."""
    device = torch.device(DEVICE)
    monkeypatch.setenv("ANYBIT_BACKEND", "triton")
    qw = anybit.quantize(torch.randn(64, 96, device=device), "int4-g32")
    entries = [_entry(48, GEMM_128, spec="int4-g32")]
    tuning.write_table(_table(tuning.device_name(device), sm_count(device), entries=entries), tables_env / "t.json")
    x = torch.randn(40, 96, device=device).to(torch.float16)
    compiled = torch.compile(lambda x: anybit.matmul(x, qw), fullgraph=True)
    assert torch.equal(compiled(x), gm.gemm(x, qw, None, GEMM_128.config))


def test_shipped_tables_load():
    for path in sorted(tuning.SHIPPED_DIR.glob("*.json")):
        table = tuning.read_table(path)
        assert path.name == tuning.table_file_name(table.gpu)
        assert table.entries and table.model is not None
        assert not any(e.plan.config is not None and gm.racy(e.plan.config) for e in table.entries)
        # every warp-specialized entry launches for its format: a code width the kernel decodes
        # and a ring that fits shared memory (each entry was measured, so this guards edits)
        for e in table.entries:
            if e.plan.kernel is gm.Kernel.GLUON_WS:
                bits = parse_format(e.format).bits
                assert bits in gm.GLUON_WS_BITS and gm.ws_fits(e.plan.config, bits), (e.format, e.plan.label())


def test_table_file_name():
    assert tuning.table_file_name("NVIDIA H200") == "nvidia-h200.json"
    assert tuning.table_file_name("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3.json"


def test_dispatcher_follows_the_table(tables_env, monkeypatch):
    """With a table saying dequantize at 40 rows, anybit.matmul takes that path (and
    the GEMM kernel where the table says so), with the right result either way."""
    device = torch.device(DEVICE)
    monkeypatch.setenv("ANYBIT_BACKEND", "triton")
    calls = []
    real_dq, real_gemm = gm.launch_dequant, gm.launch_gemm
    monkeypatch.setattr(gm, "launch_dequant", lambda *a: calls.append("dequant") or real_dq(*a))
    monkeypatch.setattr(gm, "launch_gemm", lambda *a: calls.append(("gemm", a[-1])) or real_gemm(*a))
    qw = anybit.quantize(torch.randn(64, 96, device=device), "int4-g32")
    entries = [_entry(40, DEQUANT, spec="int4-g32"), _entry(64, GEMM_128, spec="int4-g32")]
    tuning.write_table(_table(tuning.device_name(device), sm_count(device), entries=entries), tables_env / "t.json")
    x = torch.randn(64, 96, device=device).to(torch.float16)
    reference = x.double() @ qw.dequantize(torch.float64).t()
    for rows, want in ((40, "dequant"), (48, ("gemm", GEMM_128.config))):
        y = anybit.matmul(x[:rows], qw)
        assert calls[-1] == want
        err = (y.double() - reference[:rows]).abs().max().item()
        assert err <= 1e-2 * reference.abs().max().item()


def test_model_shapes_presets_and_configs(tmp_path):
    assert tune.model_shapes("llama-3.1-8b") == [(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)]
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=160, num_attention_heads=4,
                                      num_key_value_heads=2, num_hidden_layers=2, vocab_size=100)
    config.save_pretrained(tmp_path)
    assert sorted(tune.model_shapes(str(tmp_path))) == sorted([(64, 64), (32, 64), (160, 64), (64, 160)])
    with pytest.raises(ValueError, match="neither a preset"):
        tune.model_shapes("no-such-model")


def test_tune_refuses_bad_arguments_before_measuring(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="rows > 32"):
        tune.tune([(64, 64)], ms=[16])
    with pytest.raises(ValueError, match="top=0"):
        tune.tune([(64, 64)], top=0)
    with pytest.raises(ValueError, match="no Triton kernel"):
        tune.tune([(64, 64)], formats=["fp8-e4m3"])


def test_tune_without_cuda_is_a_clear_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the GPU test tunes for real")
    assert cli.main(["tune", "--shapes", "64x64"]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err


def test_hits_and_cross_validation_count_right():
    def point(n, times):
        p = tune.Point("int4-g128", n, 4096, 64, 10.0)
        p.candidates = [tune.Measured(plan, model_us=i, us=t) for i, (plan, t) in enumerate(times)]
        return p

    fast_first = point(4096, [(GEMM_64, 1.0), (GEMM_128, 2.0)])
    slow_first = point(8192, [(GEMM_128, 2.0), (GEMM_64, 1.0)])
    assert fast_first.hit() is True and slow_first.hit() is False
    report = tune.TuneReport(_table(), [fast_first, slow_first], exhaustive=True, seconds=1.0)
    assert report.hit_rate() == (1, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hits, counted = tune.cross_validated_hits([fast_first, slow_first], HW, pm.ModelParams())
    assert counted == 2 and 0 <= hits <= 2


def test_refit_learns_the_measured_classes_and_keeps_the_others():
    """A tune stores the model refitted to its measurements: the measured plan classes get
    corrections from them, a class it did not measure keeps the one it started with."""
    def point(n, m):
        p = tune.Point("int4-g128", n, 4096, m, 10.0)
        p.candidates = [tune.Measured(GEMM_64, model_us=1.0, us=3.0 * m), tune.Measured(GEMM_128, model_us=2.0)]
        return p

    start = pm.ModelParams(corrections=(("dequant m64", 0.5), ("gemm 64x64x64 4w4s m64", 9.0)))
    points = [point(n, m) for n in (4096, 8192) for m in (64, 256)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = tune.refit(points, HW, start)
    classes = {pm.plan_class(tune._problem(p), GEMM_64) for p in points}
    corrections = dict(fitted.corrections)
    assert corrections["dequant m64"] == 0.5 and classes <= set(corrections)
    assert corrections["gemm 64x64x64 4w4s m64"] != 9.0  # measured: learned anew
    assert pm.log_error(tune._observations(points), HW, fitted) < pm.log_error(tune._observations(points), HW, start)


def _report_points():
    def point(n, m, times):
        p = tune.Point("int4-g128", n, 4096, m, 10.0)
        p.candidates = [tune.Measured(plan, model_us=float(i), us=t) for i, (plan, t) in enumerate(times)]
        return p

    cluster = gm.Plan(gm.Kernel.GLUON_WS, gm.ws_config(64, 128, 64, 2, 6, cluster_sum=True))
    points = [point(n, m, [(GEMM_64, 3.0 * m), (GEMM_128, 2.0 * m), (cluster, 1.5 * m), (DEQUANT, None)])
              for n in (4096, 8192) for m in (64, 128)]
    points[0].candidates[1].us, points[0].candidates[1].error = float("nan"), "wrong result"
    return points


@pytest.mark.parametrize("name", ["report.json", "report.json.gz"])
def test_a_tune_report_reads_back(tmp_path, name):
    """``read_report`` gives back the points a report holds (plans, model and measured times,
    errors) and the GPU's rates, for refitting the model offline, from plain or gzip JSON."""
    table = replace(_table(sms=HW.sms), hw={"copy_TBps": HW.copy_tbps, "fp16_TFLOPs": HW.fp16_tflops})
    points = _report_points()
    path = tmp_path / name
    tune.write_report(tune.TuneReport(table, points, exhaustive=False, seconds=1.0), path)
    read, hw = tune.read_report(path)
    assert (hw.sms, hw.copy_tbps, hw.fp16_tflops) == (HW.sms, HW.copy_tbps, HW.fp16_tflops)
    assert [(p.format, p.n, p.k, p.m, p.fp16_us) for p in read] == [(p.format, p.n, p.k, p.m, p.fp16_us) for p in points]
    for got, want in zip(read, points):
        assert [(c.plan, c.model_us, c.error, c.ranked) for c in got.candidates] \
            == [(c.plan, c.model_us, c.error, c.ranked) for c in want.candidates]
        assert [c.us for c in got.measured()] == [c.us for c in want.measured()]
    assert math.isnan(read[0].candidates[1].us) and read[0].candidates[3].us is None


def test_a_plan_measured_besides_the_ranking_is_never_the_models_pick(tmp_path):
    """A candidate with ``ranked`` False (the heuristic's plan where its kernel is not ranked)
    is measured and kept in the report, but ``model_pick`` passes over it however low its
    modelled time; reports written before the field existed read back as ranked."""
    point = tune.Point("int4-g128", 4096, 4096, 64, 10.0, [
        tune.Measured(WS_64, 9.0, 8.0), tune.Measured(GEMM_64, 1.0, 20.0, ranked=False)])
    assert point.model_pick().plan == WS_64 and point.hit()
    table = replace(_table(sms=HW.sms), hw={"copy_TBps": HW.copy_tbps, "fp16_TFLOPs": HW.fp16_tflops})
    path = tmp_path / "report.json"
    tune.write_report(tune.TuneReport(table, [point], exhaustive=False, seconds=1.0), path)
    read, _ = tune.read_report(path)
    assert [c.ranked for c in read[0].candidates] == [True, False]
    data = json.loads(path.read_text())
    for candidate in data["points"][0]["candidates"]:
        del candidate["ranked"]
    path.write_text(json.dumps(data))
    assert [c.ranked for c in tune.read_report(path)[0][0].candidates] == [True, True]


def test_a_partial_tune_report_says_so(tmp_path):
    """A checkpoint's report (``complete`` False) is marked in its JSON and reads back like a
    whole one (``benchmarks/apply_tune.py`` takes either)."""
    table = replace(_table(sms=HW.sms), hw={"copy_TBps": HW.copy_tbps, "fp16_TFLOPs": HW.fp16_tflops})
    points = _report_points()[:1]
    for complete in (False, True):
        path = tmp_path / f"report-{complete}.json"
        tune.write_report(tune.TuneReport(table, points, exhaustive=False, seconds=1.0, complete=complete), path)
        assert json.loads(path.read_text())["complete"] is complete
        read, _ = tune.read_report(path)
        assert [(p.format, p.n, p.k, p.m) for p in read] == [(p.format, p.n, p.k, p.m) for p in points]


def test_refit_model_script_writes_only_the_model(tmp_path):
    """benchmarks/refit_model.py refits a table's model from reports and, with --write,
    stores it there, leaving the table's plans and header as they were."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    table = replace(_table(sms=HW.sms, entries=[_entry(64, GEMM_64)]),
                    hw={"copy_TBps": HW.copy_tbps, "fp16_TFLOPs": HW.fp16_tflops})
    table_path, report_path = tmp_path / "table.json", tmp_path / "report.json"
    tuning.write_table(table, table_path, merge=False)
    report_path.write_text(tune.TuneReport(table, _report_points(), exhaustive=False, seconds=1.0).to_json())
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "refit_model.py"), "--table", str(table_path),
                           "--reports", str(report_path), "--write", "--hold-out", "uint4-g128"],
                          capture_output=True, text=True, env=env, check=True)
    assert "4 points, 11 measurements" in done.stdout and "fitted on the other layer shapes: " in done.stdout
    assert "fitted without uint4-g128: first choice at their points within 10% of the fastest measured at 0/0" \
        in done.stdout
    written = tuning.read_table(table_path)
    assert written.entries == table.entries and written.gpu == table.gpu and written.hw == table.hw
    assert written.model != table.model
    assert "gluon_ws 64x128x64 12w6s cluster m64" in dict(written.model.corrections)


def test_held_out_hits_fit_without_the_held_formats():
    """``held_out_hits`` fits on the other formats' points only and counts the picks at the held
    ones: a held format whose fastest plan the others' times rank last is missed; none held or
    none left to fit on counts nothing."""
    slow, fast = GEMM_64, GEMM_128

    def point(spec, n, slow_us, fast_us):
        return tune.Point(spec, n, 4096, 64, 10.0, [tune.Measured(slow, 1.0, slow_us), tune.Measured(fast, 2.0, fast_us)])

    seen = [point("int4-g128", n, 10.0, 20.0) for n in (4096, 8192)]  # the others: `slow` is the faster
    held = [point("int2-g128", 4096, 20.0, 10.0)]  # the held format: the other way round
    assert tune.held_out_hits(seen + held, HW, pm.ModelParams(), ["int2-g128"]) == (0, 1)
    assert tune.held_out_hits(seen + [point("int2-g128", 4096, 10.0, 20.0)], HW, pm.ModelParams(),
                              ["int2-g128"]) == (1, 1)
    assert tune.held_out_hits(seen, HW, pm.ModelParams(), ["int2-g128"]) == (0, 0)
    assert tune.held_out_hits(held, HW, pm.ModelParams(), ["int2-g128"]) == (0, 0)


@pytest.mark.parametrize("spec, block_ks", [("nf4-g64", {64, 128}), ("int4-g64", {64, 128}), ("nf4-g128", {64, 128}),
                                            ("int3-g64", {128}), ("int4-g16", set())])
def test_the_tuner_measures_only_plans_whose_k_blocks_fit_the_group(monkeypatch, spec, block_ks):
    """The warp-specialized kernel takes K-blocks inside one group or holding whole groups of
    32 codes or more: for groups of 64 the tuner ranks and measures its plans with K-blocks
    of 64 and 128 (3 bits: 128 only, a 1-bit piece's copy), for groups of 16 none (they would
    fail at launch)."""
    monkeypatch.setattr(gm, "hopper", lambda device: True)  # choose as on a Hopper GPU
    point, selected = tune._choose(spec, 8192, 8192, 256, 132, torch.device("cpu"), HW, pm.ModelParams(), (), 2,
                                   False)
    ws = [c.plan for c in point.candidates if c.plan.kernel is gm.Kernel.GLUON_WS]
    assert {p.config.block_k for p in ws} == block_ks
    assert all(c.plan.config.block_k in block_ks for c in selected if c.plan.kernel is not gm.Kernel.DEQUANT
               and c.plan.kernel is not gm.Kernel.GEMM)


def _rated_table(entries=(), gpu="hopper", sms=132, hw=None, model=pm.ModelParams()) -> tuning.TunedTable:
    """A table of an sm_90 GPU with the rates the model needs."""
    rates = {"copy_TBps": 2.9, "fp16_TFLOPs": 740.0} if hw is None else hw
    return tuning.TunedTable(gpu, sms, tuning._triton_version() or "", torch.__version__, anybit.__version__,
                             "2026-01-01", rates, model, tuple(entries), "sm_90")


def test_model_rows_are_powers_of_two_from_64():
    assert [tuning.model_rows(m) for m in (33, 64, 65, 128, 200, 256, 257, 4096, 5000)] == \
        [64, 64, 128, 128, 256, 256, 512, 4096, 8192]


@pytest.mark.parametrize("spec", ["int4-g128", "uint4-g128", "int8-gc", "nf4-g128", "lut4-g128", "nf4-g64",
                                  "int4-g64", "int4-g256"])
@pytest.mark.parametrize("m", [40, 64, 256, 1000, 4096])
def test_an_untuned_point_takes_the_models_first_choice(tables_env, spec, m):
    """On a Hopper GPU with a table, a shape the table does not hold gets the model's first
    choice among the plans its kernels compute for the format (K-blocks inside one group),
    ranked with the table's rates and coefficients at m rounded up to a power of two."""
    n, k = 4608, 3584
    params = pm.ModelParams(instr_per_weight=7.0)
    table = _rated_table(entries=[_entry(64, GEMM_64, spec=spec, n=4096, k=4096)], model=params)
    tuning.write_table(table, tables_env / "hopper.json")
    chosen = tuning._cached_plan(spec, n, k, m, parse_format(spec).group_len(k), parse_format(spec).bits,
                                 "hopper", 132, "sm_90")
    problem, plans = cand.format_plans(spec, tuning.model_rows(m), n, k, 132, hopper=True)
    plans = [p for p in plans if p.kernel in tuning.MODEL_KERNELS]
    assert chosen == pm.rank(problem, plans, pm.Hardware(132, 740.0, 2.9), params)[0][1]
    fmt = parse_format(spec)
    group = gm.kernel_group(fmt.group_len(k), k)
    if chosen.kernel is gm.Kernel.GLUON_WS:
        assert gm.gluon_ws_supported(fmt.bits, fmt.kernel_decode().mode, group, chosen.config.block_k, k,
                                     torch.float16, torch.float16)
    # the tuned shape keeps its entry
    assert tuning._cached_plan(spec, 4096, 4096, 64, fmt.group_len(4096), fmt.bits, "hopper", 132, "sm_90") == GEMM_64


@pytest.mark.parametrize("table", sorted(p.name for p in tuning.SHIPPED_DIR.glob("*.json")))
def test_untuned_shapes_take_the_warp_specialized_kernel_at_small_m_with_the_shipped_tables(tables_env, table):
    """A Qwen2.5-7B layer (no shipped entry) at M = 64-128 gets a warp-specialized plan from
    either shipped table's model, never the Triton GEMM (not among MODEL_KERNELS)."""
    shipped = tuning.read_table(tuning.SHIPPED_DIR / table)
    for n, k in ((4608, 3584), (37888, 3584), (3584, 18944)):
        for spec in ("int4-g128", "int8-gc", "nf4-g64"):
            fmt = parse_format(spec)
            assert tuning.lookup((shipped,), spec, n, k, 64) is None
            for m in (64, 128, 256, 1024, 4096):
                plan = tuning.model_plan((shipped,), spec, n, k, m, shipped.sms, "sm_90")
                assert plan.kernel in tuning.MODEL_KERNELS
                if m <= 128:
                    assert plan.kernel is gm.Kernel.GLUON_WS
                    assert gm.gluon_ws_supported(fmt.bits, fmt.kernel_decode().mode, gm.kernel_group(
                        fmt.group_len(k), k), plan.config.block_k, k, torch.float16, torch.float16)


@pytest.mark.parametrize("case", ["no table", "no rates", "not hopper", "triton-only format", "small groups"])
def test_the_heuristic_serves_where_the_model_has_nothing_to_rank_with(tables_env, monkeypatch, case):
    """No table of the GPU (nor of its capability), a table without measured rates, a GPU that is
    not sm_90, or a format that only the Triton kernels compute (signs; groups of 16): the
    heuristic's plan."""
    spec, arch = "int4-g128", "sm_90"
    if case == "no table":  # (else the shipped sm_90 tables serve)
        monkeypatch.setenv(tuning.TABLE_ENV, "off")
    elif case == "no rates":
        tuning.write_table(_rated_table(hw={"copy_TBps": 2.9}), tables_env / "hopper.json")
    elif case != "no table":
        tuning.write_table(_rated_table(), tables_env / "hopper.json")
    if case == "not hopper":
        arch = "sm_80"
    # (int1 is a format of signs, BINARY, which no Gluon kernel decodes)
    spec = {"triton-only format": "int1-g128", "small groups": "int4-g16"}.get(case, spec)
    fmt = parse_format(spec)
    for m in (64, 256, 4096):
        plan = tuning._cached_plan(spec, 4608, 3584, m, fmt.group_len(3584), fmt.bits, "hopper", 132, arch)
        assert plan == gm.default_plan(m, 4608, 3584, fmt.group_len(3584), fmt.bits, 132)
