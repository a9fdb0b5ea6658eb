"""Split-K fix-ups of the Triton kernels, in the launch itself: every split stores its fp32
partial to a workspace and counts itself in on a per-tile counter; the last to arrive sums
the partials in split order (the same bits whatever the order of arrival), zeroes the
counter for the next launch and writes the tile."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def last_to_arrive(counter, SPLITS: tl.constexpr):
    """After this program stored its partial result: count it in on ``counter`` (int32,
    zero at launch); whether it is the last of the SPLITS programs sharing the counter.
    That one reads every partial (the acquire makes the others' stores visible), then
    calls ``reset_counter`` so the counter is zero again for the next launch."""
    tl.debug_barrier()
    return tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") == SPLITS - 1


@triton.jit
def reset_counter(counter):
    """Zero ``counter`` again (the last program of a split-K sum, after reading the partials)."""
    tl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")


@triton.jit
def split_k_sum(acc, ws_ptr, counter_ptr, tile, pid_k, tile_out, out_mask, M, N, SPLIT_K: tl.constexpr):
    """Split-K fix-up in the launch itself: (the output tile's full fp32 sum, whether
    this program writes it).

    With SPLIT_K > 1 every split stores its partial ``acc`` at ``ws + pid_k*M*N +
    tile_out`` (fp32 (SPLIT_K, M, N) scratch) and counts itself in on
    ``counter[tile]``; the last to arrive sums the partials in split order
    (deterministic, whatever the arrival order), resets the counter to 0 (so the
    counters are zero between launches) and writes the tile.
    """
    last = True
    if SPLIT_K > 1:
        tl.store(ws_ptr + pid_k * M * N + tile_out, acc, mask=out_mask)
        last = last_to_arrive(counter_ptr + tile, SPLIT_K)
        if last:
            acc = tl.zeros(acc.shape, dtype=tl.float32)
            for s in range(0, SPLIT_K):
                acc += tl.load(ws_ptr + s * M * N + tile_out, mask=out_mask, other=0.0, cache_modifier=".cg")
            reset_counter(counter_ptr + tile)
    return acc, last


@triton.jit
def glu_split_k_sums(gate, up, ws_ptr, counter_ptr, tile, pid_k, tile_out, out_mask, M, N, SPLIT_K: tl.constexpr):
    """GLU's split-K fix-up: (gate sum, up sum, whether this program writes the tile).  With
    SPLIT_K > 1 every split stores both partials (``ws``: the gate's (SPLIT_K, M, N) block,
    then the up weight's) and counts itself in on ``counter[tile]``; the last to arrive
    sums each weight's partials in split order (deterministic) and resets the counter."""
    last = True
    if SPLIT_K > 1:
        tl.store(ws_ptr + pid_k * M * N + tile_out, gate, mask=out_mask)
        tl.store(ws_ptr + (SPLIT_K + pid_k) * M * N + tile_out, up, mask=out_mask)
        last = last_to_arrive(counter_ptr + tile, SPLIT_K)
        if last:
            gate = tl.zeros(gate.shape, dtype=tl.float32)
            up = tl.zeros(up.shape, dtype=tl.float32)
            for s in range(0, SPLIT_K):
                gate += tl.load(ws_ptr + s * M * N + tile_out, mask=out_mask, other=0.0, cache_modifier=".cg")
                up += tl.load(ws_ptr + (SPLIT_K + s) * M * N + tile_out, mask=out_mask, other=0.0,
                              cache_modifier=".cg")
            reset_counter(counter_ptr + tile)
    return gate, up, last
