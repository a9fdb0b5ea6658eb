"""Time forced launch configurations of the decode or GEMM kernel (the measure-predict loop's tool).

Usage on a CUDA machine::

    PYTHONPATH=src python benchmarks/gemv_variants.py --format int4-g128 --m 1 16 \
        --variants 16,64,128,1,4,2 16,64,128,1,4,1 ... [--out results.json]

A variant is ``auto`` (the decode kernel's heuristic, at M <= 32 with either ``--kernel``) or
``block_m,block_n,block_k,split_k,num_warps,num_stages[,x_pairs[,unroll]]``;
block_m 0 means the next power of two of M; split_k 0 or -p means about four
(p) programs per SM, with a split count that divides the K-blocks, and b<n> about n
K-blocks per split (b<n> with unroll u: n steps of u blocks); x_pairs 1
reads x in pairs (default 0); unroll: K-blocks per loop iteration (default 1).  With ``--kernel gemm`` a variant is
``block_m,block_n,block_k,split_k,num_warps,num_stages[,swizzle[,sync_mma]]`` (sync_mma 0: without
the wait per K-block, wrong results possible; split_k as
above), or ``dq[,block_n,block_k]``: the dequantize kernel then cuBLAS, or
``gl,block_m,block_n,block_k,split_k,stages[,swizzle[,overlap]]``: the Gluon GEMM (gemm_gluon;
overlap 1: measurement only, unsafe), or
``ws,block_m,block_n,block_k,split_k,stages[,swizzle[,regs[,maxnreg[,overlap[,wg_rows[,scale_after[,k_wg[,tail[,ahead[,staged]]]]]]]]]]``:
the warp-specialized Gluon GEMM (gemm_gluon_ws; split_k ``sk``: stream-K, ``c<n>``: n splits summed through a
cluster's shared memory; regs, maxnreg 0: the defaults; overlap 0-2,
``gemm.WsOverlap``, -1 or absent: ``ws_overlap``; wg_rows: rows of W per consumer warpgroup,
64 or 128; scale_after 0 / 1: each weight scaled / each row's sum (one scale per row only), -1 or
absent: ``ws_scale_after``; k_wg: consumer warpgroups sharing each row set's K-blocks, 1, 2 or 4,
``GemmConfig.k_warpgroups``; tail, ahead: ``GemmConfig.tail_rows`` and ``loads_ahead``; staged 0 / 1:
scales loaded from global memory / staged in shared memory, -1 or absent: ``ws_staged``).  Each
variant is first checked against the float64 reference on fresh random data, then timed with the project's protocol (graph-launched, cold L2, fp16
cuBLAS in the same run): fp16 and every right variant of a point replayed in turn, so
that all run under the same clocks (``bench._median_replays_us``).
"""

from __future__ import annotations

import argparse
import json
import math

import torch

import anybit
from anybit import bench
from anybit._matmul import gemm as gm
from anybit._matmul import gemv as g
from anybit._matmul.decode_ptx import codes_per_element


def _split(split: int, m: int, n: int, k: int, bm: int, bn: int, bk: int, unroll: int = 1) -> int:
    if split > 0:
        return split
    # about -split (or four) programs per SM
    return g.split_for(-(-k // bk), -(-n // bn) * -(-m // bm), -split or 4, g.sm_count(torch.device("cuda")), unroll)


def _config(text: str, m: int, n: int, k: int, kernel: str):
    if text.startswith("dq"):
        return text
    if text.startswith("gl,"):  # the Gluon GEMM: gl,block_m,block_n,block_k,split_k,stages[,swizzle[,overlap]]
        bm, bn, bk, split, stages, *extra = (int(v) for v in text.split(",")[1:])
        return ("gluon", gm.GemmConfig(bm, bn, bk, _split(split, m, n, k, bm, bn, bk), 4 * (bn // 64), stages,
                                       *extra[:1]), bool(extra[1:2] and extra[1]))
    # ws,bm,bn,bk,split_k,stages[,swizzle[,regs[,maxnreg[,overlap[,wg_rows[,after[,kwg[,tail[,ahead[,staged]]]]]]]]]]
    if text.startswith("ws,"):
        fields = text.split(",")[1:]
        stream_k = fields[3] == "sk"  # stream-K instead of a split count (and split 1)
        cluster = fields[3].startswith("c")  # c<n>: n splits summed through a cluster's shared memory
        split_text = "1" if stream_k else fields[3].lstrip("c")
        bm, bn, bk, split, stages, *extra = (int(v) for v in fields[:3] + [split_text] + fields[4:])
        regs, maxnreg, overlap, wg_rows, after, k_wg, tail, ahead, staged = (
            extra[1:] + [0, 0, -1, 64, -1, 1, 0, 0, -1][len(extra[1:]):])[:9]
        config = gm.ws_config(bm, bn, bk, _split(split, m, n, k, bm, bn, bk), stages, wg_rows, k_wg,
                              swizzle=(extra[:1] or [8])[0], stream_k=stream_k, cluster_sum=cluster, tail_rows=tail,
                              loads_ahead=ahead)
        return ("ws", config, regs or None, maxnreg or None, None if overlap < 0 else gm.WsOverlap(overlap),
                None if after < 0 else bool(after), None if staged < 0 else bool(staged))
    if text == "auto":  # the decode kernel's heuristic (M <= 32), whatever --kernel says
        return None
    fields = text.split(",")
    per_split = fields[3].startswith("b")  # b<n>: n K-blocks per split
    bm, bn, bk, split, warps, stages, *extra = (int(v.lstrip("b")) for v in fields)
    bm = bm or g.row_block(m)
    k_blocks = -(-k // bk)
    if kernel == "gemm":  # [,swizzle[,sync_mma]]
        split = g.even_split(k_blocks, k_blocks // split) if per_split else _split(split, m, n, k, bm, bn, bk)
        return gm.GemmConfig(bm, bn, bk, split, warps, stages, *extra[:1], *(bool(v) for v in extra[1:2]))
    x_pairs, unroll = (extra + [0, 1][len(extra):])[:2]  # [,x_pairs[,unroll]]
    steps = k_blocks // unroll
    split = g.even_split(steps, steps // split) if per_split else _split(split, m, n, k, bm, bn, bk, unroll)
    return g.GemvConfig(bm, bn, bk, split, warps, stages, bool(x_pairs), unroll)


def _call(x, qw, config):
    n, k = qw.shape
    mode = qw.format.kernel_decode().mode
    if isinstance(config, str):  # dq[,block_n,block_k]: dequantize, then cuBLAS
        bn, bk = (int(v) for v in config.split(",")[1:]) if "," in config else (64, 128)
        group = gm.kernel_group(qw.format.group_len(k), k)
        return lambda: x @ gm.launch_dequant(qw.codes, qw.params["scales"], qw.params.get("zeros"),
                                             g.kernel_table(qw), n, k, qw.format.bits, group, mode, x.dtype,
                                             block_n=bn, block_k=bk).t()
    if isinstance(config, tuple) and config[0] == "ws":  # ("ws", GemmConfig, regs, maxnreg, overlap, after, staged)
        _, config, regs, maxnreg, overlap, after, staged = config
        config, group = gm.launch_settings(qw, x.shape[0], x.device, config)
        return lambda: gm.launch_gemm_gluon_ws(x, qw.codes, qw.params["scales"], qw.params.get("zeros"), None, n, k,
                                               qw.format.bits, group, mode, config, consumer_regs=regs,
                                               maxnreg=maxnreg, overlap=overlap, scale_after=after, staged=staged)
    if isinstance(config, tuple):  # ("gluon", GemmConfig, overlap)
        overlap = config[2]
        config, group = gm.launch_settings(qw, x.shape[0], x.device, config[1])
        return lambda: gm.launch_gemm_gluon(x, qw.codes, qw.params["scales"], qw.params.get("zeros"), None, n, k,
                                            qw.format.bits, group, mode, config, overlap=overlap)
    if isinstance(config, gm.GemmConfig):
        config, group = gm.launch_settings(qw, x.shape[0], x.device, config)
        return lambda: gm.launch_gemm(x, qw.codes, qw.params["scales"], qw.params.get("zeros"), g.kernel_table(qw),
                                      None, n, k, qw.format.bits, group, mode, config)
    config, group = g.launch_settings(qw, x.shape[0], x.device, config)
    return lambda: g.launch_gemv(x, qw.codes, qw.params["scales"], qw.params.get("zeros"), g.kernel_table(qw), None,
                                 n, k, qw.format.bits, group, qw.format.kernel_decode().mode, config)


def _moves_only(bits: int, mode: int, bf16: bool) -> str:
    """An "asm decode" that copies the first input register into every output."""
    outputs = 2 * codes_per_element(bits)
    return "\n".join(f"mov.b32 ${i}, ${outputs};" for i in range(outputs))


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the command line ``argv`` (default: the process's); the timed rows."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--kernel", choices=("gemv", "gemm"), default="gemv")
    parser.add_argument("--format", default="int4-g128")
    parser.add_argument("--m", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--shapes", nargs="+", default=[f"{n}x{k}" for n, k in bench.STANDARD_SHAPES])
    parser.add_argument("--variants", nargs="+", required=True)
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--group-major", action="store_true", help="store scales and zeros group-major")
    parser.add_argument("--natural", choices=("auto", "0", "1"), default="auto",
                        help="force the PTX path's interleave into k order (gemv.ptx_natural)")
    parser.add_argument("--no-decode", action="store_true",
                        help="diagnostic: the PTX decode replaced by register moves (wrong values, not checked): "
                             "times the kernel's loads, x handling and dots without the decode")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if args.natural != "auto":
        g.ptx_natural = lambda bits: args.natural == "1"
    if args.no_decode:
        g.decode_asm = _moves_only
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    hw = bench.measure_hw(torch.device("cuda"))
    print(f"copy {hw['copy_TBps']:.2f} TB/s, fp16 {hw['fp16_TFLOPs']:.0f} TFLOP/s")
    rows = []
    for shape in args.shapes:
        n, k = (int(v) for v in shape.split("x"))
        w = torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02
        qw = anybit.quantize(w, args.format)
        if args.group_major:
            qw = anybit.QuantizedWeight(qw.format, qw.shape, qw.codes,
                                        {k: v.t().contiguous().t() for k, v in qw.params.items()}, qw.dtype)
        copies = [qw] + [bench._clone(qw) for _ in range(bench._copies(qw.nbytes, l2) - 1)]
        w16 = [w.clone() for _ in range(bench._copies(2 * n * k, l2))]
        for m in args.m:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            floor_us = max((qw.nbytes + 2 * m * (n + k)) / (hw["copy_TBps"] * 1e6),
                           2 * m * n * k / (hw["fp16_TFLOPs"] * 1e6))
            checked = []  # (variant, config, relative error, right)
            for text in args.variants:
                config = _config(text, m, n, k, args.kernel)
                try:
                    ref = x.double() @ qw.dequantize(torch.float64).t()
                    y = _call(x, qw, config)().double()
                    rel = ((y - ref).norm() / ref.norm()).item()
                    del ref, y
                    checked.append((text, config, rel, rel < 3e-3 or args.no_decode))
                except Exception as error:  # a variant that does not compile (resources) is reported, not fatal
                    print(f"{n:6d}x{k:<6d} M={m:3d} {text:>18}: failed: {str(error).splitlines()[0][:120]}")
                    checked.append((text, config, math.nan, False))
            # fp16 and every right variant of the point replayed in turn (bench._median_replays_us)
            timed = [c for c in checked if c[3]]
            sets = [[(lambda i: lambda: x @ w16[i].t())(i) for i in range(len(w16))]]
            sets += [[_call(x, copies[i], c[1]) for i in range(len(copies))] for c in timed]
            times = bench._median_replays_us(sets, args.replays)
            fp16_us = times[0] / len(w16)
            per_call = iter(t / len(copies) for t in times[1:])
            for text, config, rel, ok in checked:
                us = next(per_call) if ok else math.nan
                rows.append({"N": n, "K": k, "M": m, "variant": text, "config": getattr(config[1] if isinstance(config, tuple) else config, "__dict__", config),
                             "rel_err": rel, "us": us, "fp16_us": fp16_us, "floor_us": floor_us})
                print(f"{n:6d}x{k:<6d} M={m:3d} {text:>18}: {'ok ' if ok else 'BAD'} err {rel:.1e} "
                      f"{us:8.2f} us  {fp16_us / us:5.2f}x fp16  {floor_us / us:5.1%} of floor  "
                      f"{2 * m * n * k / us / 1e6:4.0f} TFLOP/s (fp16 {2 * m * n * k / fp16_us / 1e6:4.0f})")
    print("geomean speedup over fp16 per (variant, M):")
    for text in args.variants:
        for m in args.m:
            r = [row["fp16_us"] / row["us"] for row in rows if row["variant"] == text and row["M"] == m]
            print(f"  {text:>18} M={m:3d}: {math.exp(sum(map(math.log, r)) / len(r)):.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"hw": hw, "gpu": torch.cuda.get_device_name(), "format": args.format, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
