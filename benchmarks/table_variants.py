"""Time the warp-specialized plans of a shipped table against the same plans with the
decode / MMA overlap, the rows of W per consumer warpgroup, the K-blocks or where the scale is
applied changed (an A/B of one field over every point where it applies).

Usage on a CUDA machine::

    PYTHONPATH=src python benchmarks/table_variants.py --table src/anybit/_matmul/tuned/T.json \
        --format int4-g128 --m 128 1024 --overlap 1 [--block-k 128] [--wg-rows 128] [--scale-after 0] \
        [--staged 0] [--out F.json]

For each standard shape and M whose table entry is a warp-specialized plan with K-blocks of
``--block-k`` (default: any), the plan and its variant (``--overlap`` as ``gemm.WsOverlap``,
``--wg-rows`` rows of W per consumer warpgroup, ``--block-k`` replaced by ``--to-block-k``,
``--scale-after`` 0 / 1 as ``launch_gemm_gluon_ws``'s ``scale_after``, ``--staged`` 0 / 1 as its
``staged``: then only points where ``ws_staged`` holds, the other way round)
are timed by ``gemv_variants.py`` (each first checked against float64, then replayed in turn
with fp16 cuBLAS: graph-launched, cold L2).
"""

from __future__ import annotations

import argparse
import json
import math

import gemv_variants
import torch

import anybit
from anybit import bench
from anybit._matmul import gemm as gm


def _ws_text(config: dict, overlap: int = -1, wg_rows: int = 0, block_k: int = 0, scale_after: int = -1,
             staged: int = -1) -> str:
    """gemv_variants' ``ws,...`` string of a table config (its fields: ``GemmConfig``'s)."""
    split = "sk" if config["stream_k"] else f"c{config['split_k']}" if config["cluster_sum"] else str(config["split_k"])
    rows = wg_rows or gm.ws_wg_rows(gm.GemmConfig(**config))
    return (f"ws,{config['block_m']},{config['block_n']},{block_k or config['block_k']},{split},"
            f"{config['num_stages']},{config['swizzle']},0,0,{overlap},{rows},{scale_after},"
            f"{config.get('k_warpgroups', 1)},{config.get('tail_rows', 0)},{config.get('loads_ahead', 0)},{staged}")


def _stages(spec: str, n: int, k: int, config: dict) -> bool:
    """Whether the plan stages its scales by default (``ws_staged``) on an (n, k) weight of ``spec``
    with contiguous parameters."""
    fmt = anybit.formats.parse_format(spec)
    group = gm.kernel_group(fmt.group_len(k), k)
    scales = torch.empty(1, max(1, k // fmt.group_len(k)), dtype=torch.float16)
    zeros = scales.to(torch.uint8) if fmt.kernel_decode().mode is gm.Decode.ZERO_POINT else None
    c = gm.GemmConfig(**config)
    return gm.ws_staged(c, fmt.bits, -(-k // c.block_k), group, scales, zeros, gm.ws_scale_after(scales.shape[1]))


def ws_points(table: str, spec: str, ms: list[int]):
    """(n, k, m, config) of each standard shape and M whose entry in the table at path ``table``
    for format ``spec`` is a warp-specialized plan (config: its ``GemmConfig`` fields)."""
    with open(table) as f:
        entries = {(e["format"], e["n"], e["k"], e["m"]): e for e in json.load(f)["entries"]}
    for n, k in bench.STANDARD_SHAPES:
        for m in ms:
            entry = entries.get((spec, n, k, m))
            if entry is not None and entry["kernel"] == "gluon_ws":
                yield n, k, m, entry["config"]


def point_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments both variant scripts take: the points (``ws_points``: --table, --format,
    --m), --replays and --out; a script adds its own with ``add_argument`` before parsing."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--table", required=True)
    parser.add_argument("--format", default="int4-g128")
    parser.add_argument("--m", type=int, nargs="+", required=True)
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--out")
    return parser


def main() -> None:
    parser = point_parser(__doc__)
    parser.add_argument("--block-k", type=int, default=0, help="only plans with these K-blocks (0: any)")
    parser.add_argument("--overlap", type=int, default=-1, help="the variant's overlap (-1: ws_overlap's)")
    parser.add_argument("--wg-rows", type=int, default=0, help="the variant's rows of W per warpgroup (0: the plan's)")
    parser.add_argument("--to-block-k", type=int, default=0, help="the variant's K-blocks (0: the plan's)")
    parser.add_argument("--scale-after", type=int, default=-1,
                        help="the variant's scale_after, 0 or 1 (-1: ws_scale_after's)")
    parser.add_argument("--staged", type=int, default=-1,
                        help="the variant's staged, 0 or 1 (-1: ws_staged's); only points staged by default with 0")
    args = parser.parse_args()
    rows = []
    for n, k, m, config in ws_points(args.table, args.format, args.m):
        if args.block_k and config["block_k"] != args.block_k:
            continue
        if args.staged >= 0 and _stages(args.format, n, k, config) != (args.staged == 0):
            continue
        plan = _ws_text(config)
        variant = _ws_text(config, args.overlap, args.wg_rows, args.to_block_k, args.scale_after, args.staged)
        rows += gemv_variants.main(["--kernel", "gemm", "--format", args.format, "--m", str(m), "--shapes",
                                    f"{n}x{k}", "--variants", plan, variant, "--replays", str(args.replays)])
    print("variant / plan time per point, and their geomean per M:")
    for m in args.m:
        ratios = []
        for n, k in bench.STANDARD_SHAPES:
            pair = [r for r in rows if (r["N"], r["K"], r["M"]) == (n, k, m)]
            if len(pair) == 2 and all(math.isfinite(r["us"]) for r in pair):
                ratios.append(pair[1]["us"] / pair[0]["us"])
                print(f"  {n:6d}x{k:<6d} M={m:4d} {pair[0]['variant']:>32} {pair[0]['us']:9.2f} us -> "
                      f"{pair[1]['us']:9.2f} us ({ratios[-1]:.3f})")
        if ratios:
            print(f"  M={m}: geomean {math.exp(sum(map(math.log, ratios)) / len(ratios)):.3f} over {len(ratios)} points")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"table": args.table, "format": args.format, "overlap": args.overlap, "wg_rows": args.wg_rows,
                       "to_block_k": args.to_block_k, "scale_after": args.scale_after, "staged": args.staged,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
