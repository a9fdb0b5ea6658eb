"""Apply a tune's plans to a table only where they beat the table's own plan in that tune.

``anybit tune --out`` replaces every point it measured.  At M = 64-128 plans within a few percent
of each other swap places between runs (docs/NOTES-gemm.md v48, v52), so a table entry is changed
here only where the tune's fastest plan beat the table's plan, measured in the same tune (the tuner
always measures it: ``tune._incumbent``), by at least ``--margin``.  With ``--add``, a point the
table has no entry for (a format or shape tuned for the first time) gets the tune's fastest plan.

Usage::

    python benchmarks/apply_tune.py --table src/anybit/_matmul/tuned/T.json --report R.json.gz [--margin 0.03] [--add]

The table is rewritten in place (its header kept); each point is printed with its decision.
"""

from __future__ import annotations

import argparse
import dataclasses

from anybit import tune
from anybit._matmul import tuning


def main(argv: list[str] | None = None) -> list[tuple[str, int, int, int]]:
    """Run the command line ``argv``; the (format, n, k, m) of the entries changed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--table", required=True)
    parser.add_argument("--report", required=True)
    parser.add_argument("--margin", type=float, default=0.03, help="least gain over the table's plan (0.03: 3%%)")
    parser.add_argument("--add", action="store_true", help="points without an entry get the tune's fastest plan")
    args = parser.parse_args(argv)
    table = tuning.read_table(args.table)
    entries = {(e.format, e.n, e.k, e.m): e for e in table.entries}
    points, _ = tune.read_report(args.report)
    changed = []
    for p in points:
        key, best = (p.format, p.n, p.k, p.m), p.best()
        held = entries.get(key)
        mine = next((c for c in p.measured() if held is not None and c.plan == held.plan), None)
        if args.add and held is None and best is not None:
            print(f"{key}: new, fastest {best.plan.label()} {best.us:.2f} us: added")
            entries[key] = tuning.TunedEntry(*key, best.plan, best.us, p.fp16_us)
            changed.append(key)
            continue
        if best is None or held is None or mine is None:
            print(f"{key}: skipped (no measured best, no entry, or the entry's plan was not measured)")
            continue
        gain = mine.us / best.us
        take = best.plan != held.plan and gain >= 1 + args.margin
        print(f"{key}: table {held.plan.label()} {mine.us:.2f} us, fastest {best.plan.label()} {best.us:.2f} us "
              f"({gain:.3f}x): {'taken' if take else 'kept'}")
        if take:
            entries[key] = tuning.TunedEntry(*key, best.plan, best.us, p.fp16_us)
            changed.append(key)
    ordered = tuple(sorted(entries.values(), key=lambda e: (e.format, e.n, e.k, e.m)))
    tuning.write_table(dataclasses.replace(table, entries=ordered), args.table, merge=False)
    return changed


if __name__ == "__main__":
    main()
