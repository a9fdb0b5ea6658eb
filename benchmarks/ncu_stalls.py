"""Where a profiled kernel's warps wait, per part of its K loop: reads Nsight Compute's
source page (per SASS instruction: warp-state samples and their stall reasons) and sums the
samples of the loop's instructions by what they do.

Usage (the report from ``ncu --section SourceCounters ... -o prof python benchmarks/ncu_gemm.py``)::

    ncu -i prof.ncu-rep --page source --print-source sass --csv > sass.csv
    python benchmarks/ncu_stalls.py sass.csv [--loop-count N ...]

A kernel's K loop is told apart by how often its instructions ran: ``--loop-count`` gives
that count per kernel of the file, in order (default: the count of the HGMMA instructions
that hold the most samples, the consumers' loop of the warp-specialized GEMM).  Parts: ``ready-wait``
(the mbarrier wait on a loaded stage: the TRYWAIT and the branch that spins on it),
``wgmma-wait`` (WARPGROUP.DEPBAR), ``hgmma-issue`` (HGMMA and WARPGROUP.ARRIVE), ``decode``
(LDSM / LDS of the codes and the PRMT, LOP3, HFMA2, HMUL2 that make the operand), ``other``.
"""

from __future__ import annotations

import argparse
import collections
import csv

DECODE_OPS = ("PRMT", "LOP3", "HFMA2", "HMUL2", "HADD2", "LDSM", "LDS")
SAMPLES = "Warp Stall Sampling (All Samples)"


def kernels(path: str) -> list[tuple[list[str], list[list[str]]]]:
    """(header, rows) of each kernel in a source-page CSV."""
    found = []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if row and row[0] == "Kernel Name":
                found.append((None, []))
            elif row and row[0] == "Address":
                found[-1] = (row, found[-1][1])
            elif row and found:
                found[-1][1].append(row)
    return found


def part(source: str, long_scoreboard: int, samples: int) -> str:
    """What a SASS instruction does in the loop (see the module docstring)."""
    words = source.split()
    op = words[1] if words[0].startswith("@") else words[0]
    if "TRYWAIT" in source or (op == "BRA" and samples and long_scoreboard > samples / 2):
        return "ready-wait"
    if op.startswith("WARPGROUP.DEPBAR"):
        return "wgmma-wait"
    if op.startswith("HGMMA") or op.startswith("WARPGROUP.ARRIVE"):
        return "hgmma-issue"
    if op.split(".")[0] in DECODE_OPS:
        return "decode"
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("--loop-count", type=int, nargs="*", default=[])
    args = parser.parse_args()
    for i, (header, rows) in enumerate(kernels(args.csv)):
        col = {name: j for j, name in enumerate(header)}
        reasons = [name for name in header if name.startswith("stall_") and "Not Issued" not in name]
        samples = lambda row: int(row[col[SAMPLES]] or 0)  # noqa: E731
        executed = lambda row: int(row[col["Instructions Executed"]] or 0)  # noqa: E731
        mma_counts = collections.Counter()
        for row in rows:
            if "HGMMA" in row[col["Source"]]:
                mma_counts[executed(row)] += samples(row)
        total = sum(samples(row) for row in rows)
        loop = args.loop_count[i] if i < len(args.loop_count) else mma_counts.most_common(1)[0][0]
        parts, stalls = collections.Counter(), collections.Counter()
        for row in rows:
            if executed(row) != loop:
                continue
            parts[part(row[col["Source"]], int(row[col["stall_long_sb"]] or 0), samples(row))] += samples(row)
            for name in reasons:
                stalls[name[len("stall_"):]] += int(row[col[name]] or 0)
        in_loop = sum(parts.values())
        print(f"kernel {i}: {total} samples, {in_loop} ({in_loop / max(1, total):.0%}) in the loop "
              f"({loop} executions of each of its {sum(executed(r) == loop for r in rows)} instructions)")
        print("  parts:  " + ", ".join(f"{k} {v / max(1, in_loop):.0%}" for k, v in parts.most_common()))
        print("  stalls: " + ", ".join(f"{k} {v / max(1, in_loop):.0%}" for k, v in stalls.most_common(9)))


if __name__ == "__main__":
    main()
