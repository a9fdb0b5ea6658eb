"""Stream-K against one program per tile, from ``anybit tune`` reports: every point where
both were measured with the same tile, stages and swizzle (warp-specialized kernel, no
split), with the tile count in waves of the GPU's SMs.

Usage: python benchmarks/stream_k_pairs.py REPORT.json [...] (``anybit tune --report``)
"""

import json
import sys


def pairs(report: dict) -> list[tuple]:
    sms = report["env"]["sms"]
    rows = []
    for point in report["points"]:
        times: dict[tuple, dict[bool, float]] = {}
        for cand in point["candidates"]:
            config = cand.get("config")
            if cand.get("us") is None or cand.get("error") or cand["kernel"] != "gluon_ws" or config["split_k"] != 1:
                continue
            key = tuple(config[f] for f in ("block_m", "block_n", "block_k", "num_warps", "num_stages", "swizzle"))
            times.setdefault(key, {})[config["stream_k"]] = cand["us"]
        for key, by_mode in times.items():
            if len(by_mode) == 2:
                tiles = -(-point["m"] // key[0]) * -(-point["n"] // key[1])
                rows.append((point["format"], point["n"], point["k"], point["m"], key, tiles / sms, by_mode[False],
                             by_mode[True]))
    return rows


def main(paths: list[str]) -> None:
    for path in paths:
        with open(path) as f:
            rows = pairs(json.load(f))
        print(f"# {path}")
        print("format      N x K         M  tile (bm x bn x bk, warps, stages, swizzle)   waves  tiled us  stream-K us  "
              "tiled / stream-K")
        for fmt, n, k, m, key, waves, tiled, stream_k in rows:
            tile = f"{key[0]}x{key[1]}x{key[2]} {key[3]}w{key[4]}s sw{key[5]}"
            print(f"{fmt:11} {n:>5}x{k:<6} {m:>5}  {tile:44} {waves:6.2f}  {tiled:8.1f}  {stream_k:11.1f}  "
                  f"{tiled / stream_k:5.2f}")
        wins = sum(r[7] < r[6] for r in rows)
        print(f"stream-K faster at {wins} of {len(rows)} pairs\n")


if __name__ == "__main__":
    main(sys.argv[1:])
