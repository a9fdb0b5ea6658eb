"""``benchmarks/apply_tune.py``: a tune's plan replaces a table entry only where it beat the
entry's own plan by the margin in the same tune; everything else in the table stays as it was."""

import json
import pathlib

from anybit._matmul import gemm as gm
from anybit._matmul import perf_model as pm
from anybit._matmul import tuning

PLAIN = gm.Plan(gm.Kernel.GLUON_WS, gm.ws_config(64, 256, 128, 1, 3))
TAIL = gm.Plan(gm.Kernel.GLUON_WS, gm.ws_config(64, 256, 128, 1, 3, tail_rows=192))


def _entry(n: int, m: int, plan: gm.Plan, us: float) -> tuning.TunedEntry:
    return tuning.TunedEntry("int4-g128", n, 8192, m, plan, us, 400.0)


def _point(n: int, m: int, timings: dict) -> dict:
    return {"format": "int4-g128", "n": n, "k": 8192, "m": m, "fp16_us": 400.0,
            "candidates": [{**plan.to_dict(), "model_us": 1.0, "us": us, "error": None}
                           for plan, us in timings.items()]}


def test_only_clear_wins_replace_an_entry(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
    import apply_tune

    entries = (_entry(57344, 64, PLAIN, 146.0), _entry(57344, 128, PLAIN, 190.0), _entry(28672, 64, PLAIN, 36.0),
               _entry(4096, 64, PLAIN, 10.0))
    table = tuning.TunedTable("GPU", 132, "3.6", "2.11", "0.1.0", "2026-11-24", {}, pm.ModelParams(), entries)
    tuning.write_table(table, path := tmp_path / "table.json", merge=False)
    report = {"env": {"sms": 132}, "hw": {"fp16_TFLOPs": 760.0, "copy_TBps": 3.0}, "points": [
        _point(57344, 64, {PLAIN: 146.0, TAIL: 139.0}),  # 1.050x: taken
        _point(57344, 128, {PLAIN: 190.0, TAIL: 186.0}),  # 1.022x: kept
        _point(28672, 64, {TAIL: 30.0}),  # the entry's plan not measured: kept
    ]}
    (rep := tmp_path / "report.json").write_text(json.dumps(report))
    changed = apply_tune.main(["--table", str(path), "--report", str(rep)])
    assert changed == [("int4-g128", 57344, 8192, 64)]
    after = {(e.n, e.m): e for e in tuning.read_table(path).entries}
    assert after[(57344, 64)] == _entry(57344, 64, TAIL, 139.0)
    assert [after[key] for key in ((57344, 128), (28672, 64), (4096, 64))] == list(entries[1:])
    assert tuning.read_table(path).gpu == "GPU" and len(after) == 4
    assert apply_tune.main(["--table", str(path), "--report", str(rep), "--margin", "0.01"]) == [
        ("int4-g128", 57344, 8192, 128)]


def test_new_points_are_added_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
    import apply_tune

    entries = (_entry(57344, 64, PLAIN, 146.0),)
    table = tuning.TunedTable("GPU", 132, "3.6", "2.11", "0.1.0", "2026-11-24", {}, pm.ModelParams(), entries)
    tuning.write_table(table, path := tmp_path / "table.json", merge=False)
    report = {"env": {"sms": 132}, "hw": {"fp16_TFLOPs": 760.0, "copy_TBps": 3.0}, "points": [
        _point(57344, 64, {PLAIN: 146.0, TAIL: 145.0}),  # within the margin: kept
        _point(8192, 64, {PLAIN: 30.0, TAIL: 29.0}),  # no entry
    ]}
    (rep := tmp_path / "report.json").write_text(json.dumps(report))
    assert apply_tune.main(["--table", str(path), "--report", str(rep)]) == []
    assert tuning.read_table(path).entries == entries
    assert apply_tune.main(["--table", str(path), "--report", str(rep), "--add"]) == [("int4-g128", 8192, 8192, 64)]
    after = {(e.n, e.m): e for e in tuning.read_table(path).entries}
    assert after == {(57344, 64): entries[0], (8192, 64): _entry(8192, 64, TAIL, 29.0)}
