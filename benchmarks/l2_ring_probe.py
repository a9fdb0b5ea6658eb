"""How fast a TMA ring fills shared memory from L2, per SM and in all: is the limit the
SM's intake or the L2's output?  (docs/NOTES-gemm.md v20.)

A Gluon kernel of the warp-specialized GEMM's shape without the work: the loader warp
copies tiles by TMA into a STAGES-deep ring, a consumer warpgroup waits for each stage
and frees it at once.  Modes:

* ``shared``: every program reads the same [BLOCK_M, K] rows (L2-resident after the
  first pass), as the GEMM's programs all read x;
* ``unique``: each program reads its own rows of a buffer many times the L2 (HBM);
* ``both``: per K-block one shared tile and one unique tile, the GEMM's ring.

Usage on a Hopper GPU::

    PYTHONPATH=src python benchmarks/l2_ring_probe.py [--programs 16 33 66 132] [--out f.json]

Prints, per mode and program count, the time (CUDA events over one launch, median of
5, after a warm-up), bytes per program and the rates per program and in all.
"""

from __future__ import annotations

import argparse
import json

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared

SHARED, UNIQUE, BOTH = 0, 1, 2


@gluon.jit
def _probe_loader(x_desc, u_desc, x_bufs, u_bufs, ready, empty, k_blocks, reps, u_rows,
                  BLOCK_K: gl.constexpr, STAGES: gl.constexpr, MODE: gl.constexpr):
    pid = gl.program_id(0)
    n = k_blocks * reps
    for i in range(n):
        s = i % STAGES
        mbarrier.wait(empty.index(s), ((i // STAGES) & 1) ^ 1)
        k = (i % k_blocks) * BLOCK_K
        if MODE == 0:
            mbarrier.expect(ready.index(s), x_desc.block_type.nbytes)
            _tma_load(x_desc, [0, k], ready.index(s), x_bufs.index(s))
        elif MODE == 1:
            mbarrier.expect(ready.index(s), u_desc.block_type.nbytes)
            row = (pid * reps + i // k_blocks) % u_rows
            _tma_load(u_desc, [row * u_desc.block_type.shape[0], k], ready.index(s), u_bufs.index(s))
        else:
            mbarrier.expect(ready.index(s), x_desc.block_type.nbytes + u_desc.block_type.nbytes)
            row = (pid * reps + i // k_blocks) % u_rows
            _tma_load(x_desc, [0, k], ready.index(s), x_bufs.index(s))
            _tma_load(u_desc, [row * u_desc.block_type.shape[0], k], ready.index(s), u_bufs.index(s))


@gluon.jit
def _probe_consumer(ready, empty, k_blocks, reps, STAGES: gl.constexpr):
    n = k_blocks * reps
    for i in range(n):
        s = i % STAGES
        mbarrier.wait(ready.index(s), (i // STAGES) & 1)
        mbarrier.arrive(empty.index(s), count=1)


@gluon.jit
def probe_kernel(x_desc, u_desc, k_blocks, reps, u_rows, BLOCK_K: gl.constexpr, STAGES: gl.constexpr,
                 MODE: gl.constexpr, num_warps: gl.constexpr):
    x_bufs = gl.allocate_shared_memory(gl.float16, [STAGES] + x_desc.block_type.shape, x_desc.layout)
    u_bufs = gl.allocate_shared_memory(gl.float16, [STAGES] + u_desc.block_type.shape, u_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=1)
    fence_async_shared()
    gl.warp_specialize([
        (_probe_loader, (x_desc, u_desc, x_bufs, u_bufs, ready, empty, k_blocks, reps, u_rows, BLOCK_K, STAGES,
                         MODE)),
        (_probe_consumer, (ready, empty, k_blocks, reps, STAGES))],
        [4], [24])


def _desc(t: torch.Tensor, block: list[int]) -> TensorDescriptor:
    return TensorDescriptor.from_tensor(t, block, gl.NVMMASharedLayout.get_default_for(block, gl.float16))


def run(mode: int, programs: int, x_rows: int, u_rows_tile: int, k: int = 8192, block_k: int = 64,
        stages: int = 4, reps: int = 16) -> dict:
    x = torch.randn(x_rows, k, device="cuda", dtype=torch.float16)
    u_bytes = 2 << 30
    u_tiles = max(1, u_bytes // (u_rows_tile * k * 2))
    u = torch.randn(u_tiles * u_rows_tile, k, device="cuda", dtype=torch.float16)
    xd, ud = _desc(x, [x_rows, block_k]), _desc(u, [u_rows_tile, block_k])
    k_blocks = k // block_k

    def launch():
        probe_kernel[(programs,)](xd, ud, k_blocks, reps, u_tiles, BLOCK_K=block_k, STAGES=stages, MODE=mode,
                                  num_warps=4)

    launch()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        launch()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    us = sorted(times)[2]
    per_block = (x_rows * block_k * 2 if mode != UNIQUE else 0) + (u_rows_tile * block_k * 2 if mode != SHARED else 0)
    per_program = per_block * k_blocks * reps
    return {"mode": ["shared", "unique", "both"][mode], "programs": programs, "x_rows": x_rows,
            "u_rows": u_rows_tile, "us": us, "bytes_per_program": per_program,
            "gb_s_per_program": per_program / us / 1e3, "tb_s": per_program * programs / us / 1e6}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--programs", type=int, nargs="+", default=[8, 16, 33, 66, 132])
    p.add_argument("--out")
    args = p.parse_args()
    rows = []
    print(f"# {torch.cuda.get_device_name()}")
    for mode, x_rows, u_rows in ((SHARED, 64, 64), (SHARED, 128, 64), (UNIQUE, 64, 128), (BOTH, 64, 128),
                                 (BOTH, 128, 64)):
        for programs in args.programs:
            r = run(mode, programs, x_rows, u_rows)
            rows.append(r)
            print(f"{r['mode']:7s} x_rows {x_rows:4d} u_rows {u_rows:4d} programs {programs:4d}  {r['us']:9.1f} us  "
                  f"{r['gb_s_per_program']:6.1f} GB/s a program  {r['tb_s']:5.2f} TB/s in all", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
