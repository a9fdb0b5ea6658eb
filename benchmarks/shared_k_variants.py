"""Time each standard shape's table plan against the warp-specialized plans of some tiles: those
whose warpgroups share each row set's K-blocks (``GemmConfig.k_warpgroups`` 2), or with
``--block-n`` those with that many rows of W.

Usage on a CUDA machine::

    PYTHONPATH=src python benchmarks/shared_k_variants.py --table src/anybit/_matmul/tuned/T.json \
        --format int4-g128 --m 64 128 [--block-n 192] [--out F.json]

For each standard shape and M whose table entry is a warp-specialized plan: that plan, and every
such tile of ``candidates.GLUON_WS_TILES`` (those with more rows of x than 64 only where
M > block_m / 2) without a split or with 2 or 4 splits summed in a cluster, where its programs
fill more than half of one wave (clusters of 4: on 120 of 132 SMs,
``perf_model.CLUSTER_SM_SHARE``; without a split also several waves); with ``--block-n`` also
split through global memory as far as one wave holds, and stream-K where the last wave is
partial; each at the stages that fit (``ws_fit_stages``) and the plan's swizzle; all timed by
``gemv_variants.py`` (each first checked against float64, then replayed in turn with fp16
cuBLAS: graph-launched, cold L2).  Prints per point the fastest such plan against the table's.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace

import gemv_variants
import torch
from table_variants import _ws_text, point_parser, ws_points

import anybit
from anybit._matmul import candidates as cand
from anybit._matmul import gemm as gm
from anybit._matmul import gemv as gv
from anybit._matmul.perf_model import CLUSTER_SM_SHARE


def shared_k_plans(m: int, n: int, k: int, bits: int, sms: int, swizzle: int, rows_of_w: int = 0) -> list[gm.GemmConfig]:
    """The plans this script times at one point (see the module): of the tiles sharing K, or
    with ``rows_of_w`` of the tiles of that block_n."""
    plans = []
    for block_m, block_n, block_k, stages, *rows in cand.GLUON_WS_TILES:
        chosen = block_n == rows_of_w if rows_of_w else len(rows) > 1 and rows[1] > 1
        if not chosen or (block_m > 64 and m <= block_m // 2):
            continue
        tiles = -(-m // block_m) * -(-n // block_n)
        k_blocks = -(-k // block_k)
        for split in (1, 2, 4):
            config = gm.ws_config(block_m, block_n, block_k, split, stages, *rows, swizzle=swizzle,
                                  cluster_sum=split > 1)
            programs = tiles * split
            if sms // 2 < programs and (split == 1 or programs <= int(sms * CLUSTER_SM_SHARE.get(split, 1.0))) \
                    and split <= k_blocks:
                plans.append(config)
        if rows_of_w:
            split = gv.one_wave_split(k_blocks, tiles, sms)
            if split > 1:
                plans.append(gm.ws_config(block_m, block_n, block_k, split, stages, *rows, swizzle=swizzle))
            if tiles % sms and tiles > sms // 2:
                plans.append(gm.ws_config(block_m, block_n, block_k, 1, stages, *rows, swizzle=swizzle, stream_k=True))
    return [replace(c, num_stages=fit) for c in plans if (fit := gm.ws_fit_stages(c, bits))]


def main() -> None:
    parser = point_parser(__doc__)
    parser.add_argument("--block-n", type=int, default=0, help="the tiles of this many rows of W (0: sharing K)")
    args = parser.parse_args()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    bits = anybit.parse_format(args.format).bits
    rows, best = [], {}
    for n, k, m, config in ws_points(args.table, args.format, args.m):
        plan = _ws_text(config)
        others = [_ws_text(asdict(c)) for c in shared_k_plans(m, n, k, bits, sms, config["swizzle"], args.block_n)]
        if not others:
            continue
        point = gemv_variants.main(["--kernel", "gemm", "--format", args.format, "--m", str(m), "--shapes",
                                    f"{n}x{k}", "--variants", plan, *others, "--replays", str(args.replays)])
        rows += point
        timed = [r for r in point[1:] if math.isfinite(r["us"])]
        if math.isfinite(point[0]["us"]) and timed:
            fastest = min(timed, key=lambda r: r["us"])
            best[n, k, m] = (point[0], fastest)
    print("fastest plan of those tiles / the table's plan, per point, and the geomean per M of "
          "min(that, table) / table:")
    for m in args.m:
        ratios = []
        for (n, k, mm), (table, fastest) in best.items():
            if mm == m:
                ratios.append(min(1.0, fastest["us"] / table["us"]))
                print(f"  {n:6d}x{k:<6d} M={m:4d} {table['variant']:>36} {table['us']:8.2f} us  "
                      f"{fastest['variant']:>40} {fastest['us']:8.2f} us ({fastest['us'] / table['us']:.3f})")
        if ratios:
            print(f"  M={m}: geomean {math.exp(sum(map(math.log, ratios)) / len(ratios)):.3f} over {len(ratios)} points")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"table": args.table, "format": args.format, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
