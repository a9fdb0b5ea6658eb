"""Probe: a split-K sum through a cluster's distributed shared memory, in the warp-specialized
kernel's structure (a 4-warp default partition, NUM_WG consumer warpgroups), without the GEMM.

Why (docs/NOTES-gemm.md v32): the split plans of the small layers spend 2-4 us a launch on the
sum of their splits' partials through global memory (stores, a counted release / acquire,
the last split's loads).  If the S splits of a tile are the S CTAs of one cluster, rank 0 can
read the others' partials from their shared memory instead.

What it checks, with Triton's Gluon compiled for one CTA and launched as clusters of S (the
launcher's cluster comes from the compiled kernel's packed ``num_ctas``, set here after
compiling):

* a shared buffer after Triton's own dynamic shared memory (``cluster.tail_buffer``; the
  probe's v32 run declared a static one by inline PTX instead);
* mbarriers in it, initialized by thread 0 before the partitions start, each partition's
  threads then passing a cluster barrier (so no remote arrive meets an uninitialized barrier);
* two ways to sum, each rank summing slice r (of S) of every warpgroup's partial over all
  ranks in rank order (the bits of a sum in split order) and storing it:
  - pull: each warpgroup stores its partial into its own shared memory; after a barrier of
    the warpgroup, one thread fences at cluster scope (``fence.acq_rel.cluster``, a
    ``MEMBAR.ALL.GPU`` in the SASS) and arrives on barrier g of every rank; each rank waits
    on its own, reads its slice from every rank (``mapa`` + ``ld.shared::cluster``, 16 bytes a
    load), and signals a second barrier that each rank waits on before it exits (its shared
    memory must outlive the others' reads);
  - push (``PUSH``): each warpgroup writes slice q of its partial into rank q's shared
    memory by ``st.async``, which counts its bytes on rank q's barrier g (armed with
    ``expect_tx`` at the start): no fence; each rank waits for the others' bytes, sums, and
    the CTAs leave through one cluster barrier.

Each CTA's partial is read from ``parts`` (tiles, S, NUM_WG, PART); the sums go to ``out``
(tiles, NUM_WG, PART) and must equal the sum over the S partials in rank order, bit for bit.
Timed as ``graph.replay()`` of 10 launches (L2 warm; the median of the replays) against the
same cluster launch without a sum (each rank stores its whole partial) and one CTA a tile.
Measured on the H100 (h100-2026-11-23-cluster-probe-v32.txt): both right and repeatable in
CUDA graphs; pull adds 1.4-4 us a launch, push 0.5-1.1 us.

Usage: python benchmarks/cluster_probe.py [--tiles 32] [--splits 2 4] [--part 4096] [--wg 2]
"""

from __future__ import annotations

import argparse

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from anybit._matmul.cluster import (
    buffer_bytes, cluster_barrier, cluster_barrier_relaxed, init_byte_barrier, launch_clustered, tail_buffer, wait_bytes,
)
from anybit._matmul.gemm_gluon import cta_barrier


@gluon.jit
def _fence_cluster():
    """Thread 0 of the warpgroup: a fence at cluster scope (after a barrier of the warpgroup,
    it orders every thread's accesses before the arrivals that follow it)."""
    gl.inline_asm_elementwise(
        "{\n\t.reg .b32 t;\n\t.reg .pred p;\n\tmov.u32 t, %tid.x;\n\tand.b32 t, t, 127;\n\t"
        "setp.eq.u32 p, t, 0;\n\t@p fence.acq_rel.cluster;\n\t}\n\tmov.u32 $0, 0;",
        "=r", [], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _remote_arrive(bar, rank):
    """Thread 0 of the warpgroup arrives on the mbarrier at ``bar`` in CTA ``rank``'s shared
    memory (after ``_fence_cluster``)."""
    gl.inline_asm_elementwise(
        "{\n\t.reg .b32 a, t;\n\t.reg .pred p;\n\tmov.u32 t, %tid.x;\n\tand.b32 t, t, 127;\n\t"
        "setp.eq.u32 p, t, 0;\n\tmapa.shared::cluster.u32 a, $1, $2;\n\t"
        "@p mbarrier.arrive.shared::cluster.b64 _, [a];\n\t}\n\tmov.u32 $0, 0;",
        "=r,r,r", [bar, rank], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _idle(base, END: gl.constexpr):
    cluster_barrier()
    if END:
        cluster_barrier_relaxed()


@gluon.jit
def _consumer(parts_ptr, out_ptr, base, WG: gl.constexpr, NUM_WG: gl.constexpr, S: gl.constexpr,
              PART: gl.constexpr, NO_SUM: gl.constexpr, PUSH: gl.constexpr):
    cluster_barrier()
    layout: gl.constexpr = gl.BlockedLayout([1, 4], [32, 1], [4, 1], [1, 0])
    rank = gl.inline_asm_elementwise("mov.u32 $0, %cluster_ctarank;", "=r", [], dtype=gl.int32, is_pure=True,
                                     pack=1)
    tile = gl.inline_asm_elementwise("mov.u32 $0, %clusterid.x;", "=r", [], dtype=gl.int32, is_pure=True, pack=1)
    offsets = (gl.arange(0, PART // 4, layout=gl.SliceLayout(1, layout))[:, None] * 4
               + gl.arange(0, 4, layout=gl.SliceLayout(0, layout))[None, :])
    mine = gl.load(parts_ptr + ((tile * S + rank) * NUM_WG + WG) * PART + offsets)
    sum_bar = base + NUM_WG * PART * 4 + WG * 8
    done_bar = sum_bar + NUM_WG * 8
    if NO_SUM:  # the cluster launch and barrier alone: each rank stores its own partial
        gl.store(out_ptr + ((tile * S + rank) * NUM_WG + WG) * PART + offsets, mine)
    elif S == 1:
        gl.store(out_ptr + (tile * NUM_WG + WG) * PART + offsets, mine)
    elif PUSH:
        # every rank pushes slice q of its partial into rank q's shared memory (slot: its own
        # rank) by st.async, which counts the bytes on rank q's barrier g; each rank waits for
        # the S - 1 others' bytes and sums its slice over all ranks in rank order
        SLICE: gl.constexpr = PART // S
        piece = (gl.arange(0, SLICE // 4, layout=gl.SliceLayout(1, layout))[:, None] * 4
                 + gl.arange(0, 4, layout=gl.SliceLayout(0, layout))[None, :])
        for d in gl.static_range(1, S):
            q = (rank + d) % S
            value = gl.load(parts_ptr + ((tile * S + rank) * NUM_WG + WG) * PART + q * SLICE + piece)
            slot = base + (WG * PART + rank * SLICE + piece) * 4
            gl.inline_asm_elementwise(
                "{\n\t.reg .b32 a, b;\n\tmapa.shared::cluster.u32 a, $4, $8;\n\tmapa.shared::cluster.u32 b, $12, $8;\n\t"
                "st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [a], {$16, $17, $18, $19}, [b];\n\t}\n\t"
                "mov.u32 $0, 0;\n\tmov.u32 $1, 0;\n\tmov.u32 $2, 0;\n\tmov.u32 $3, 0;",
                "=r,=r,=r,=r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r", [slot, slot * 0 + q, slot * 0 + sum_bar, value.to(gl.int32, bitcast=True)],
                dtype=gl.int32, is_pure=False, pack=4)
        wait_bytes(sum_bar)
        own = gl.load(parts_ptr + ((tile * S + rank) * NUM_WG + WG) * PART + rank * SLICE + piece)
        total = gl.zeros([SLICE // 4, 4], gl.float32, layout)
        for r in gl.static_range(S):
            theirs = gl.inline_asm_elementwise("ld.shared.v4.f32 {$0, $1, $2, $3}, [$4];", "=f,=f,=f,=f,r,r,r,r",
                                               [base + (WG * PART + r * SLICE + piece) * 4], dtype=gl.float32,
                                               is_pure=False, pack=4)
            total += gl.where(rank == r, own, theirs)
        gl.store(out_ptr + (tile * NUM_WG + WG) * PART + rank * SLICE + piece, total)
        cluster_barrier_relaxed()
    else:
        # every rank: its partial into its shared memory, then each rank sums slice r (of S) of
        # the warpgroup's partial over all ranks, in rank order, from their shared memory
        gl.inline_asm_elementwise("st.shared.v4.f32 [$4], {$8, $9, $10, $11};\n\t"
                                  "mov.u32 $0, 0;\n\tmov.u32 $1, 0;\n\tmov.u32 $2, 0;\n\tmov.u32 $3, 0;",
                                  "=r,=r,=r,=r,r,r,r,r,f,f,f,f", [base + (WG * PART + offsets) * 4, mine],
                                  dtype=gl.int32, is_pure=False, pack=4)
        cta_barrier()
        _fence_cluster()
        for r in gl.static_range(S):
            _remote_arrive(sum_bar, (rank + r) % S)
        wait_bytes(sum_bar)
        SLICE: gl.constexpr = PART // S
        piece = (gl.arange(0, SLICE // 4, layout=gl.SliceLayout(1, layout))[:, None] * 4
                 + gl.arange(0, 4, layout=gl.SliceLayout(0, layout))[None, :]) + rank * SLICE
        addr = base + (WG * PART + piece) * 4
        total = gl.zeros([SLICE // 4, 4], gl.float32, layout)
        for r in gl.static_range(S):
            total += gl.inline_asm_elementwise(
                "{\n\t.reg .b32 a;\n\tmapa.shared::cluster.u32 a, $4, $8;\n\t"
                "ld.shared::cluster.v4.f32 {$0, $1, $2, $3}, [a];\n\t}",
                "=f,=f,=f,=f,r,r,r,r,r,r,r,r", [addr, addr * 0 + r], dtype=gl.float32, is_pure=False, pack=4)
        # the others' shared memory is read (the sum needs every load): let them go on, then store
        cta_barrier()
        _fence_cluster()
        for r in gl.static_range(S):
            _remote_arrive(done_bar, (rank + r) % S)
        gl.store(out_ptr + (tile * NUM_WG + WG) * PART + piece, total)
        wait_bytes(done_bar)  # the others have read this CTA's shared memory


@gluon.jit
def cluster_sum_kernel(parts_ptr, out_ptr, S: gl.constexpr, NUM_WG: gl.constexpr, PART: gl.constexpr,
                       NO_SUM: gl.constexpr, PUSH: gl.constexpr, num_warps: gl.constexpr):
    """out[tile, g] = sum over ranks r of parts[tile, r, g] (rank order); grid (tiles,), launched
    as clusters of S CTAs (``launch``).  NO_SUM: out = parts (each rank its own)."""
    base = tail_buffer(buffer_bytes(NUM_WG * PART * 4, 2 * NUM_WG))
    # thread 0 initializes the barriers: sum g and done g count one arrival per rank's warpgroup g
    # (PUSH: sum g one arrival, its own, expecting the other ranks' slices in bytes)
    if PUSH:
        for g in gl.static_range(NUM_WG):
            init_byte_barrier(base + NUM_WG * PART * 4 + g * 8, gl.to_tensor((S - 1) * (PART // S) * 4))
    else:
        for g in gl.static_range(NUM_WG):
            gl.inline_asm_elementwise(
                "{\n\t.reg .pred p;\n\t.reg .b32 t;\n\tmov.u32 t, %tid.x;\n\tsetp.eq.u32 p, t, 0;\n\t"
                "@p mbarrier.init.shared::cta.b64 [$1], $2;\n\t@p mbarrier.init.shared::cta.b64 [$3], $2;\n\t"
                "@p fence.mbarrier_init.release.cluster;\n\t}\n\tmov.u32 $0, 0;", "=r,r,r,r",
                [base + NUM_WG * PART * 4 + g * 8, gl.to_tensor(S), base + NUM_WG * PART * 4 + (NUM_WG + g) * 8],
                dtype=gl.int32, is_pure=False, pack=1)
    END: gl.constexpr = PUSH and S > 1 and not NO_SUM
    if NUM_WG == 1:
        gl.warp_specialize([(_idle, (base, END)),
                            (_consumer, (parts_ptr, out_ptr, base, 0, NUM_WG, S, PART, NO_SUM, PUSH))], [4], [128])
    else:
        gl.warp_specialize([(_idle, (base, END)),
                            (_consumer, (parts_ptr, out_ptr, base, 0, NUM_WG, S, PART, NO_SUM, PUSH)),
                            (_consumer, (parts_ptr, out_ptr, base, 1, NUM_WG, S, PART, NO_SUM, PUSH))], [4, 4], [128, 128])


def launch(parts: torch.Tensor, out: torch.Tensor, splits: int, num_wg: int, part: int, no_sum: bool = False,
           push: bool = False):
    """Compile for one CTA, then launch (tiles,) programs as clusters of ``splits``."""
    tiles = parts.shape[0]
    launch_clustered(cluster_sum_kernel, (tiles,), splits, buffer_bytes(num_wg * part * 4, 2 * num_wg), parts, out,
                     splits, num_wg, part, no_sum, push, num_warps=4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=32)
    parser.add_argument("--splits", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--part", type=int, default=4096, help="floats a warpgroup's partial")
    parser.add_argument("--wg", type=int, default=2, choices=(1, 2))
    parser.add_argument("--replays", type=int, default=50)
    args = parser.parse_args()
    device = torch.device("cuda")
    modes = [(1, False, False)] + [(s, n, p) for s in args.splits for n, p in ((True, False), (False, False),
                                                                                (False, True))]
    for splits, no_sum, push in modes:
        parts = torch.randn(args.tiles, splits, args.wg, args.part, device=device)
        out = torch.full(parts.shape if no_sum else (args.tiles, args.wg, args.part), float("nan"), device=device)
        launch(parts, out, splits, args.wg, args.part, no_sum, push)
        torch.cuda.synchronize()
        want = parts[:, 0].clone()
        for r in range(1, splits):
            want += parts[:, r]
        if no_sum:
            want = parts
        same = torch.equal(out, want)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(10):
                cluster_sum_kernel[(args.tiles,)](parts, out, splits, args.wg, args.part, no_sum, push, num_warps=4)
        times = []
        for _ in range(args.replays):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) * 1000 / 10)
        again = torch.equal(out, want)
        times.sort()
        print(f"tiles {args.tiles} splits {splits}{' (no sum)' if no_sum else ' (st.async)' if push else ''} warpgroups {args.wg} partial {args.part * 4} bytes: "
              f"{'right' if same and again else 'WRONG'} (after the graph: {again}), "
              f"{times[len(times) // 2]:.2f} us a launch (median of {args.replays} graph replays of 10)", flush=True)


if __name__ == "__main__":
    main()
