"""Refit a tuned table's performance model offline from the measurements of ``anybit tune``
reports (``--report``), without a GPU: for when the model's analytic terms change, so that
the coefficients and per-class corrections a table stores match the terms that use them.

Usage::

    PYTHONPATH=src python benchmarks/refit_model.py --table src/anybit/_matmul/tuned/nvidia-h200.json \
        --reports benchmarks/results/h200-2026-11-23-tune-v35-standard.json.gz ... [--write]

The fit starts from the default coefficients (``perf_model.ModelParams``) and learns from
every measured candidate of every report (``tune.refit``; a point measured in two reports
counts twice).  It prints, over the reports' points, how often the model's first choice
among a point's measured candidates is within 10% of the fastest: with the table's stored
model, with the refitted one (in sample), and fitted on the other layer shapes only
(``tune.cross_validated_hits``), and with ``--hold-out F ...`` fitted without formats F at
F's points (``tune.held_out_hits``: how the model ranks a format it has not seen).  ``--write``
stores the refitted model in the table; its plans are left as they are.
"""

from __future__ import annotations

import argparse
import dataclasses
from anybit import tune
from anybit._matmul import perf_model as pm
from anybit._matmul import tuning


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", required=True, help="the tuned table (JSON) whose model to refit")
    parser.add_argument("--reports", nargs="+", required=True, help="reports of `anybit tune --report` on that GPU")
    parser.add_argument("--write", action="store_true", help="store the refitted model in the table")
    parser.add_argument("--hold-out", nargs="+", default=(), metavar="FORMAT",
                        help="also fit without these formats' points and report the picks at them")
    args = parser.parse_args()
    table = tuning.read_table(args.table)
    points: list[tune.Point] = []
    hw = None
    for path in args.reports:
        more, hw = tune.read_report(path)
        points += more
    if hw.sms != table.sms:
        raise SystemExit(f"--reports: measured on {hw.sms} SMs; the table is for {table.gpu} with {table.sms}")
    fitted = tune.refit(points, hw, pm.ModelParams())
    print(f"{len(points)} points, {sum(len(p.measured()) for p in points)} measurements, {table.gpu}")
    stored = table.model or pm.ModelParams()
    for label, params in (("the table's stored model", stored), ("refitted (in sample)", fitted)):
        hits, counted = tune.measured_pick_hits(points, hw, params)
        print(f"{label}: first choice within 10% of the fastest measured at {hits}/{counted} points")
    hits, counted = tune.cross_validated_hits(points, hw, pm.ModelParams())
    print(f"fitted on the other layer shapes: {hits}/{counted}")
    if args.hold_out:
        hits, counted = tune.held_out_hits(points, hw, pm.ModelParams(), args.hold_out)
        print(f"fitted without {', '.join(args.hold_out)}: first choice at their points within 10% of the "
              f"fastest measured at {hits}/{counted}")
    if args.write:
        tuning.write_table(dataclasses.replace(table, model=fitted), args.table, merge=False)
        print(f"model written to {args.table}")


if __name__ == "__main__":
    main()
