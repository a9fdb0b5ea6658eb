"""Streaming-read probes: what a graph-launched kernel that only reads int4-g128 packed
weights costs (no decode, no product), under the project's protocol.

Usage on a CUDA machine: ``PYTHONPATH=src python benchmarks/stream_probe.py``.  Prints the
time of an empty kernel in a CUDA graph (the per-launch cost), then for each layer shape
the time of reading its packed codes with several structures: BLOCK_N rows per program,
CHUNK int32 words per row per load, SPLIT programs along K, loads unrolled (all issued
before any use) or in a loop pipelined over ``stages``.  Each program XOR-folds its words
into one int32 per row so that the loads are not dead code.
"""
import torch
import triton
import triton.language as tl

import anybit
from anybit import bench


@triton.jit
def empty_k(out_ptr, N):
    pid = tl.program_id(0)
    if pid > N:
        tl.store(out_ptr, pid)


@triton.jit
def stream_k(codes_ptr, out_ptr, N, WPR: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
             SPLIT: tl.constexpr, UNROLL: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    PER: tl.constexpr = WPR // SPLIT
    acc = tl.zeros([BLOCK_N], dtype=tl.int32)
    base = codes_ptr + rows[:, None] * WPR + pid_k * PER + tl.arange(0, CHUNK)[None, :]
    if UNROLL:
        for c in tl.static_range(PER // CHUNK):
            w = tl.load(base + c * CHUNK)
            acc += tl.sum(w ^ (w >> 4), axis=1)
    else:
        for c in range(PER // CHUNK):
            w = tl.load(base + c * CHUNK)
            acc += tl.sum(w ^ (w >> 4), axis=1)
    tl.store(out_ptr + pid_k * N + rows, acc)


def main() -> None:
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    hw = bench.measure_hw(torch.device("cuda"))
    print(torch.cuda.get_device_name(), f"copy {hw['copy_TBps']:.2f} TB/s")
    out = torch.empty(1 << 20, dtype=torch.int32, device="cuda")  # >= N * SPLIT of every probe below
    for grid in (128, 512, 2048):
        us = bench._time_per_call(lambda i: lambda: empty_k[(grid,)](out, 1 << 30), 50, 20)
        print(f"empty kernel grid {grid}: {us:.2f} us")
    for n, k in ((4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336), (128256, 4096)):
        w = torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02
        qw = anybit.quantize(w, "int4-g128")
        codes = [qw.codes] + [qw.codes.clone() for _ in range(bench._copies(qw.codes.numel() * 4, l2) - 1)]
        wpr = qw.codes.shape[1]
        floor = qw.codes.numel() * 4 / (hw["copy_TBps"] * 1e6)
        print(f"{n}x{k}: codes {tuple(qw.codes.shape)} {qw.codes.dtype}, floor {floor:.2f} us, copies {len(codes)}")
        for bn, chunk, split, unroll, warps, stages in (
            (8, 128, 1, 1, 4, 1), (8, 256, 1, 1, 4, 1), (16, 128, 1, 1, 4, 1), (4, 256, 1, 1, 4, 1),
            (8, 128, 2, 1, 4, 1), (32, 32, 1, 0, 4, 3), (32, 32, 1, 0, 4, 6), (16, 64, 1, 0, 4, 4),
            (32, 64, 4, 1, 2, 1), (16, 128, 4, 1, 4, 1)):
            if wpr % (split * chunk) or n % bn:
                continue
            grid = (n // bn, split)
            def call(i):
                return lambda: stream_k[grid](codes[i], out, n, wpr, bn, chunk, split, unroll,
                                              num_warps=warps, num_stages=stages)
            try:
                us = bench._time_per_call(call, len(codes), 20)
                print(f"  stream bn {bn:3d} chunk {chunk:4d} split {split} unroll {unroll} warps {warps} "
                      f"stages {stages}: {us:7.2f} us  {floor / us:5.1%} of floor")
            except Exception as e:
                print("  failed", bn, chunk, split, str(e).splitlines()[0][:100])


if __name__ == "__main__":
    main()
