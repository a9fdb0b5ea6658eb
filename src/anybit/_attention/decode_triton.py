"""Triton kernel: attention of one query token per sequence over a key/value cache,
grouped-query heads native (split over the cache, combined in the same launch).

Program (g, s) takes key/value head ``h`` of sequence ``b`` (g = b * KV_HEADS + h)
and the s-th of ``SPLITS`` ranges of cache slots, ``BLOCKS_PER_SPLIT`` blocks of
``BLOCK_S`` slots each.  The GROUP query heads that share the key/value head
(h*GROUP .. h*GROUP + GROUP - 1) are the rows of one tile, padded to
GROUP_PAD (>= 16, what the tensor-core dot needs)::

    q      [GROUP_PAD, DIM]      loaded once
    per block of slots:
      k    [BLOCK_S, DIM]        s = q @ k^T * scale * log2(e) (+ mask)
      v    [BLOCK_S, DIM]        online softmax in base 2: m (running max),
                                 l (running sum), acc += p @ v (p rounded to v's dtype)

Keys and values of slots the mask does not keep are not read (their loads are
predicated off), so a static cache's unfilled tail costs only its mask bytes;
the loop stays free of branches, so the compiler pipelines its loads.

Split combine: with SPLITS > 1 every program stores (m, l, acc) of its range to
fp32 scratch and counts itself in on a counter per (b, h); the last to arrive
combines the SPLITS partials in split order (deterministic, whatever the
arrival order), resets the counter to 0 and writes the output.  A row whose
mask keeps no slot at all gets zeros (as PyTorch's scaled_dot_product_attention
gives for a fully masked row).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._matmul.cache_keys import settle_cache_keys
from .._matmul.gemv_triton import PDL_EARLY, PDL_LATE, PDL_OFF, _dot, pdl_trigger, pdl_wait
from .._matmul.split_k_triton import last_to_arrive, reset_counter

#: constexpr ids of the mask argument
MASK_NONE: tl.constexpr = tl.constexpr(0)
MASK_BOOL: tl.constexpr = tl.constexpr(1)
MASK_ADD: tl.constexpr = tl.constexpr(2)

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)


@triton.jit
def _slot_bias(mask_ptr, b, offs, slots, stride_mb, stride_ms, MASK: tl.constexpr):
    """(additive bias per slot in base-2 units, -inf where not attended; which slots are attended)."""
    inside = offs < slots
    if MASK == MASK_BOOL:
        keep = (tl.load(mask_ptr + b * stride_mb + offs * stride_ms, mask=inside, other=0) != 0) & inside
        bias = tl.where(keep, 0.0, -float("inf"))
    elif MASK == MASK_ADD:
        bias = tl.load(mask_ptr + b * stride_mb + offs * stride_ms, mask=inside, other=-float("inf")).to(tl.float32)
        bias = bias * LOG2E
        keep = bias > -float("inf")
    else:
        keep = inside
        bias = tl.where(keep, 0.0, -float("inf"))
    return bias, keep


@triton.jit
def decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, ws_ptr, stats_ptr, counter_ptr,
    slots, scale_log2,
    stride_qb, stride_qh, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    stride_mb, stride_ms, stride_ob, stride_oh,
    KV_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, DIM: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCKS_PER_SPLIT: tl.constexpr, SPLITS: tl.constexpr, MASK: tl.constexpr,
    INTERPRET: tl.constexpr, PDL: tl.constexpr = PDL_OFF,
):
    """out (B, KV_HEADS * GROUP, DIM) = softmax(q k^T * scale + mask) v per head.

    q (B, KV_HEADS * GROUP, DIM), k and v (B, KV_HEADS, slots, DIM), all fp16,
    bf16 or fp32 with unit stride along DIM; mask per (b, slot): uint8 (nonzero = keep)
    with MASK_BOOL, additive float with MASK_ADD, unused with MASK_NONE (stride_mb
    0 broadcasts one row over the batch).  ``scale_log2`` = scale * log2(e).
    ws fp32 (B * KV_HEADS, SPLITS, GROUP_PAD, DIM), stats fp32 (B * KV_HEADS,
    SPLITS, 2, GROUP_PAD), counter int32 (B * KV_HEADS,) zero at launch (and
    after); the three are not read with SPLITS = 1.  PDL: PDL_OFF, or launched as
    a programmatic dependent: wait for the kernel before (which writes q, k, v)
    first, and let the next launch right after (PDL_EARLY) or after the loop
    over the cache (PDL_LATE).
    """
    group_id = tl.program_id(0)
    split = tl.program_id(1)
    b = group_id // KV_HEADS
    h = group_id % KV_HEADS
    rows = tl.arange(0, GROUP_PAD)
    dims = tl.arange(0, DIM)
    real = rows < GROUP
    pdl_wait(PDL)
    pdl_trigger(PDL, PDL_EARLY)
    q = tl.load(q_ptr + b * stride_qb + (h * GROUP + rows)[:, None] * stride_qh + dims[None, :],
                mask=real[:, None], other=0.0)
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    m_i = tl.full([GROUP_PAD], -float("inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, DIM], tl.float32)
    for i in range(0, BLOCKS_PER_SPLIT):
        offs = (split * BLOCKS_PER_SPLIT + i) * BLOCK_S + tl.arange(0, BLOCK_S)
        bias, keep = _slot_bias(mask_ptr, b, offs, slots, stride_mb, stride_ms, MASK)
        # slots not attended are not read (predicated-off loads move no bytes)
        k = tl.load(k_base + offs[:, None] * stride_ks + dims[None, :], mask=keep[:, None], other=0.0)
        v = tl.load(v_base + offs[:, None] * stride_vs + dims[None, :], mask=keep[:, None], other=0.0)
        s = _dot(q, tl.trans(k), INTERPRET) * scale_log2 + bias[None, :]
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == -float("inf"), 0.0, m_new)  # rows with nothing attended yet
        alpha = tl.exp2(m_i - m_use)
        p = tl.exp2(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, INTERPRET)
        m_i = m_new
    pdl_trigger(PDL, PDL_LATE)
    write = True
    if SPLITS > 1:
        part = group_id * SPLITS + split
        tl.store(ws_ptr + (part * GROUP_PAD + rows[:, None]) * DIM + dims[None, :], acc)
        tl.store(stats_ptr + part * 2 * GROUP_PAD + rows, m_i)
        tl.store(stats_ptr + part * 2 * GROUP_PAD + GROUP_PAD + rows, l_i)
        write = last_to_arrive(counter_ptr + group_id, SPLITS)
        if write:
            first = group_id * SPLITS
            m_i = tl.full([GROUP_PAD], -float("inf"), tl.float32)
            for s in range(0, SPLITS):
                m_i = tl.maximum(m_i, tl.load(stats_ptr + (first + s) * 2 * GROUP_PAD + rows, cache_modifier=".cg"))
            m_use = tl.where(m_i == -float("inf"), 0.0, m_i)
            l_i = tl.zeros([GROUP_PAD], tl.float32)
            acc = tl.zeros([GROUP_PAD, DIM], tl.float32)
            for s in range(0, SPLITS):
                stats = stats_ptr + (first + s) * 2 * GROUP_PAD
                weight = tl.exp2(tl.load(stats + rows, cache_modifier=".cg") - m_use)
                l_i += weight * tl.load(stats + GROUP_PAD + rows, cache_modifier=".cg")
                part_acc = tl.load(ws_ptr + ((first + s) * GROUP_PAD + rows[:, None]) * DIM + dims[None, :],
                                   cache_modifier=".cg")
                acc += weight[:, None] * part_acc
            reset_counter(counter_ptr + group_id)
    if write:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + b * stride_ob + (h * GROUP + rows)[:, None] * stride_oh + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=real[:, None])


settle_cache_keys(decode_attention_kernel)  # the same keys in every process (cache_keys.py)
