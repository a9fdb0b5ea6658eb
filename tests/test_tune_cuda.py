"""``anybit tune`` on a GPU: a real (small) tuning run, its table, and the dispatcher
following the table; the shipped table's plans on their shapes."""

import json

import pytest
import torch
from conftest import assert_matmul_close, unit_roundoff

import anybit
from anybit import cli, tune
from anybit._matmul import gemm, tuning
from anybit._matmul.gemv import sm_count

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def tables_env(monkeypatch, tmp_path):
    monkeypatch.setenv(tuning.TABLE_ENV, str(tmp_path / "tables"))
    (tmp_path / "tables").mkdir()
    tuning.clear_caches()
    yield tmp_path / "tables"
    tuning.clear_caches()


def test_tune_writes_a_table_the_dispatcher_follows(tables_env, tmp_path):
    out, report = tables_env / "tuned.json", tmp_path / "report.json"
    assert cli.main(["tune", "--shapes", "1024x512", "--formats", "int4-g128", "--m", "64", "300", "--top", "2",
                     "--replays", "3", "--out", str(out), "--report", str(report)]) == 0
    table = tuning.read_table(out)
    device = torch.device("cuda")
    assert (table.gpu, table.sms) == (tuning.device_name(device), sm_count(device))
    assert {(e.format, e.n, e.k, e.m) for e in table.entries} == {("int4-g128", 1024, 512, 64),
                                                                  ("int4-g128", 1024, 512, 300)}
    points = json.loads(report.read_text())["points"]
    assert all(any(c["us"] for c in p["candidates"]) for p in points)
    tuning.clear_caches()
    qw = anybit.quantize(torch.randn(1024, 512, device="cuda") * 0.02, "int4-g128")
    for e in table.entries:
        assert tuning.plan("int4-g128", 1024, 512, e.m, 128, 4, device) == e.plan
        x = torch.randn(e.m, 512, device="cuda", dtype=torch.float16)
        assert_matmul_close(anybit.matmul(x, qw), x, qw, weight_roundoff=unit_roundoff(x.dtype))


def test_tune_checkpoints_the_points_measured_so_far():
    """With ``checkpoint_s`` 0 the checkpoint gets a partial report after every point: the
    points so far, their table entries, the model not refitted; the returned report is whole."""
    seen = []
    final = tune.tune([(1024, 512)], ["int4-g128"], [64, 300], top=1, replays=3, jobs=0,
                      checkpoint=seen.append, checkpoint_s=0)
    assert [len(r.points) for r in seen] == [1, 2] and not any(r.complete for r in seen)
    assert [(e.m, e.plan) for e in seen[0].table.entries] == [(final.table.entries[0].m, final.table.entries[0].plan)]
    assert seen[-1].fitted is None and final.complete and final.fitted is not None
    assert [(p.m, p.best().plan) for p in seen[-1].points] == [(p.m, p.best().plan) for p in final.points]


def test_a_tune_stopped_early_keeps_its_table_and_report(tables_env, tmp_path, monkeypatch):
    """``anybit tune`` interrupted at its second point has written the first point's entry to
    its table and report (checkpoints every point here)."""
    from anybit import bench

    monkeypatch.setattr(tune, "CHECKPOINT_SECONDS", 0.0)
    timings = []
    real = bench._median_replays_us

    def interrupted(groups, replays):
        if len(groups) > 1:  # a point's timing (fp16 and its candidates), not measure_hw's
            if timings:
                raise KeyboardInterrupt
            timings.append(1)
        return real(groups, replays)

    monkeypatch.setattr(bench, "_median_replays_us", interrupted)
    out, report = tables_env / "tuned.json", tmp_path / "report.json"
    with pytest.raises(KeyboardInterrupt):
        cli.main(["tune", "--shapes", "1024x512", "--formats", "int4-g128", "--m", "64", "300", "--top", "1",
                  "--replays", "3", "--jobs", "0", "--out", str(out), "--report", str(report)])
    assert [(e.format, e.n, e.k, e.m) for e in tuning.read_table(out).entries] == [("int4-g128", 1024, 512, 64)]
    data = json.loads(report.read_text())
    assert data["complete"] is False and [p["m"] for p in data["points"]] == [64]


def test_shipped_table_plans_are_right_and_repeatable():
    """Every GEMM plan of the tables for this GPU (each distinct format, M and plan, under
    whichever Triton is installed), on its own kernel as the tuner runs it, with the entry's
    K and 1024 rows of W: right against float64 and bit-identical over repeated launches."""
    device = torch.device("cuda")
    tuning.clear_caches()
    tables = tuning.tables_for(tuning.device_name(device), sm_count(device), tuning.device_arch(device))
    entries = {(e.format, e.m, e.k, e.plan): e for t in tables for e in t.entries if e.plan.config is not None}
    if not entries:
        pytest.skip("no shipped table for this GPU (the heuristic serves it; see tuning's docstring)")
    # compiled by a pool of processes first, as the tuner does (serially: over 4 minutes)
    tune.precompile([tune.Launch(e.format, 1024, e.k, e.m, e.plan) for e in entries.values()], device)
    gen = torch.Generator(device="cuda").manual_seed(1)
    for e in entries.values():
        qw = anybit.quantize(torch.randn(1024, e.k, device="cuda", generator=gen) * 0.02, e.format)
        x = torch.randn(e.m, e.k, device="cuda", dtype=torch.float16, generator=gen)
        run = tune._runner(e.plan, x, qw)
        ys = [run() for _ in range(tune.VERIFY_LAUNCHES * 3)]
        assert all(torch.equal(ys[0], y) for y in ys[1:]), f"{e.format} M={e.m} K={e.k} {e.plan.label()}"
        assert_matmul_close(ys[0], x, qw, weight_roundoff=unit_roundoff(x.dtype))


def test_untuned_shapes_run_the_models_plan_right():
    """Layers of shapes and groups no shipped table holds, through the dispatcher: each
    product takes ``tuning.model_plan``'s choice (a Hopper GPU with a table) or the
    heuristic's, and is right against float64."""
    device = torch.device("cuda")
    tuning.clear_caches()
    gpu, sms, arch = tuning.device_name(device), sm_count(device), tuning.device_arch(device)
    tables = tuning.tables_for(gpu, sms, arch)
    cases = [(spec, n, k, m) for spec in ("int4-g128", "int8-gc", "nf4-g64", "lut4-g128", "uint4-g64", "int4-g32",
                                                  "int3-g64", "uint8-g32")
             for n, k in ((4608, 3584), (3584, 18944)) for m in (40, 100, 256, 1000)]
    planned = {}
    for spec, n, k, m in cases:
        assert tuning.lookup(tables, spec, n, k, m) is None
        model = tuning.model_plan(tables, spec, n, k, m, sms, arch)
        fmt = anybit.formats.parse_format(spec)
        chosen = tuning.plan(spec, n, k, m, fmt.group_len(k), fmt.bits, device)
        assert chosen == (model or gemm.default_plan(m, n, k, fmt.group_len(k), fmt.bits, sms))
        planned[spec, n, k, m] = chosen
    tune.precompile([tune.Launch(spec, n, k, m, plan) for (spec, n, k, m), plan in planned.items()], device)
    gen = torch.Generator(device="cuda").manual_seed(2)
    for (spec, n, k, m), plan in planned.items():
        qw = anybit.quantize(torch.randn(n, k, device="cuda", generator=gen) * 0.02, spec)
        x = torch.randn(m, k, device="cuda", dtype=torch.float16, generator=gen)
        y = anybit.matmul(x, qw)
        assert_matmul_close(y, x, qw, weight_roundoff=unit_roundoff(x.dtype))
