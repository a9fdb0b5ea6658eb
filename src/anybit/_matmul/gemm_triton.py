"""Triton kernel for y = x @ W^T at larger M (batches, prefill), on the split-plane layout.

Same formats, decode and constexpr parameters as the decode kernel
(``gemv_triton``); what differs is the work per program, which here is sized
for the tensor cores rather than for the weight stream:

* Program ``(t, s)`` computes output tile t, BLOCK_N rows of W against
  BLOCK_M rows of x, over the s-th of SPLIT_K ranges of K.  Tiles are
  numbered so that consecutive programs share an x tile and walk SWIZZLE
  W tiles (both stay in L2 while the programs of one wave run)::

      tile t -> (n, m):   n = n0 + (t mod (SWIZZLE*grid_m)) mod size
                          m =      (t mod (SWIZZLE*grid_m)) div size
                          n0 = SWIZZLE * (t div (SWIZZLE*grid_m)), size = min(SWIZZLE, grid_n - n0)

* The product is ``W_tile @ x_tile^T`` (BLOCK_N x BLOCK_M): the decoded
  weight tile is the left operand of ``tl.dot``, which on Hopper compiles to
  warpgroup MMA (``wgmma.mma_async ... m64nBLOCK_Mk16``) taking that operand
  from registers and x's tile from shared memory (checked in the compiled
  kernel by tests/test_gemm_cuda.py).  The accumulator stays in the MMA's
  registers across the K loop.

* Scales multiply the weights before the dot, once per weight and BLOCK_M
  rows of x (the decode kernel scales partial products instead, which pays
  per row of x).  A weight is thus rounded once to x's dtype:
  ``(code - zero) * scale`` for integer codes, ``level * scale`` for tables;
  both factors are exact in x's dtype, so the rounding is that of the exact
  product, the same on the PTX and the generic decode.

* The output tile is transposed before the store, so each thread writes
  along y's rows.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .cache_keys import settle_cache_keys
from .gemv_triton import (
    PDL_EARLY, PDL_LATE, PDL_OFF, TABLE, ROW_TABLE, ZERO_POINT, SYMMETRIC, _codes_per_element, _integer_or_table,
    _interleave, _load_codes, _ptx_values, _table_words, pdl_trigger, pdl_wait,
)
from .split_k_triton import split_k_sum


@triton.jit
def _block_params(scales_ptr, zeros_ptr, w_rows, k0, num_groups, stride_sn, stride_sg, stride_zn, stride_zg,
                  MODE: tl.constexpr, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """Scales (as stored) and zero points (int32; zeros unless ZERO_POINT) of the
    groups the K-block at k0 covers: [len(w_rows), max(1, BLOCK_K // GROUP)] each,
    0 past the last group."""
    SUB: tl.constexpr = BLOCK_K // GROUP if GROUP < BLOCK_K else 1
    group = k0 // GROUP + tl.arange(0, SUB)
    ok = (group < num_groups)[None, :]
    scale = tl.load(scales_ptr + w_rows[:, None] * stride_sn + group[None, :] * stride_sg, mask=ok, other=0)
    zero = tl.zeros(scale.shape, dtype=tl.int32)
    if MODE == ZERO_POINT:
        zero = tl.load(zeros_ptr + w_rows[:, None] * stride_zn + group[None, :] * stride_zg, mask=ok, other=0)
        zero = zero.to(tl.int32)
    return scale, zero


@triton.jit
def _spread(values, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """[R, BLOCK_K // GROUP] per-group values -> [R, BLOCK_K], each repeated over its group."""
    rows: tl.constexpr = values.shape[0]
    SUB: tl.constexpr = values.shape[1]
    return tl.reshape(tl.broadcast_to(values[:, :, None], [rows, SUB, GROUP]), [rows, BLOCK_K])


@triton.jit
def _weights(codes_ptr, table_ptr, table, scale, zero, w_rows, k0, words_per_row, kpad_words,
             BITS: tl.constexpr, GROUP: tl.constexpr, MODE: tl.constexpr, BLOCK_K: tl.constexpr,
             EVEN_K: tl.constexpr, PTX: tl.constexpr, PTX_ASM: tl.constexpr, PTX_CONSTRAINTS: tl.constexpr,
             dtype: tl.constexpr):
    """The K-block's dequantized weights, W[w_rows, k0 : k0 + BLOCK_K] in ``dtype``
    ([BLOCK_N, BLOCK_K], k order), each rounded once from its exact value.

    ``scale``, ``zero``: the block's ``_block_params``.  GROUP >= BLOCK_K (the
    block lies in one group) or BLOCK_K % GROUP == 0.  PTX: the inline-asm
    decode (compiled kernels); otherwise the generic decode, same values.
    """
    ONE_GROUP: tl.constexpr = GROUP >= BLOCK_K
    # exact (code - zero) * scale rounded once: in dtype where the scales are in dtype
    # (one packed multiply per two weights), else in fp32 and then rounded
    SCALE_IN_DTYPE: tl.constexpr = scale.dtype == dtype
    if ONE_GROUP:
        row_zero = tl.reshape(zero, [w_rows.shape[0]])
    else:
        scale = _spread(scale, GROUP, BLOCK_K)
        zero = _spread(zero, GROUP, BLOCK_K)
        row_zero = w_rows * 0  # zero points subtracted after the decode
    if PTX:
        # exact code - zero (or table levels) in dtype from the inline-asm decode
        if MODE == SYMMETRIC:
            row_zero = w_rows * 0 + (1 << (BITS - 1))
        values = _ptx_values(codes_ptr, w_rows, k0, words_per_row, kpad_words, row_zero, table, EVEN_K, BITS, MODE,
                             BLOCK_K, PTX_ASM, PTX_CONSTRAINTS, dtype)
        w = _interleave(values, _codes_per_element(BITS))
        if MODE == ZERO_POINT and not ONE_GROUP:
            w = w - zero.to(dtype)  # small integers: exact
        if SCALE_IN_DTYPE:
            return w * scale
        return (w.to(tl.float32) * scale.to(tl.float32)).to(dtype)
    codes = _load_codes(codes_ptr, w_rows, k0, words_per_row, kpad_words, EVEN_K, BITS, w_rows.shape[0], BLOCK_K)
    value = _integer_or_table(codes, w_rows, table_ptr, MODE, BITS)
    if MODE == TABLE or MODE == ROW_TABLE:
        value = value.to(dtype).to(tl.float32)  # the kernels round a table to x's dtype
    if MODE == ZERO_POINT:
        value -= zero.to(tl.float32)
    return (value * scale.to(tl.float32)).to(dtype)


@triton.jit
def tile_position(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SWIZZLE: tl.constexpr):
    """(W tile, x tile) of output tile ``pid``, numbered as the module docstring draws
    (shared with the Gluon kernel, gemm_gluon)."""
    grid_n = tl.cdiv(N, BLOCK_N)
    width = SWIZZLE * tl.cdiv(M, BLOCK_M)
    first_n = (pid // width) * SWIZZLE
    size = tl.minimum(grid_n - first_n, SWIZZLE)
    return first_n + (pid % width) % size, (pid % width) // size


@triton.jit
def gemm_kernel(
    x_ptr, codes_ptr, scales_ptr, zeros_ptr, table_ptr, bias_ptr, out_ptr, ws_ptr, counter_ptr,
    M, N, K, words_per_row, kpad_words, num_groups, stride_xm, stride_sn, stride_sg, stride_zn, stride_zg,
    BITS: tl.constexpr, GROUP: tl.constexpr, MODE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SWIZZLE: tl.constexpr,
    SPLIT_K: tl.constexpr, BLOCKS_PER_SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, INTERPRET: tl.constexpr,
    EVEN_K: tl.constexpr = False, PTX: tl.constexpr = False, PTX_ASM: tl.constexpr = "",
    PTX_CONSTRAINTS: tl.constexpr = "", SYNC_MMA: tl.constexpr = True, PDL: tl.constexpr = PDL_OFF,
):
    """out (M, N) in x's dtype = x (M, K) @ W^T (+ bias); arguments as ``gemv_kernel``'s.

    Grid: (tiles, SPLIT_K).  PTX: the inline-asm decode (never in the interpreter).
    SYNC_MMA: see ``GemmConfig.sync_mma`` (compiled kernels only).  PDL: as the decode
    kernel's (``gemv_kernel``): launched as a programmatic dependent, it waits for the
    kernel before it first and lets the next one launch after that wait (PDL_EARLY) or
    after the K loop (PDL_LATE).
    """
    pdl_wait(PDL)
    pdl_trigger(PDL, PDL_EARLY)
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_n, pid_m = tile_position(pid, M, N, BLOCK_M, BLOCK_N, SWIZZLE)

    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    # clamped rows (W's, x's last row again) keep the loads unmasked; never stored
    w_rows = tl.minimum(rows, N - 1)
    x_rows = tl.minimum(offs_m, M - 1)
    dtype = x_ptr.dtype.element_ty
    if PTX and (MODE == TABLE or MODE == ROW_TABLE):
        table = _table_words(table_ptr, w_rows, MODE, dtype)  # in registers for the whole loop
    else:
        table = (w_rows,)  # unused

    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    # The block's scales are loaded one K-block ahead: they are not part of the
    # compiler's load pipeline, and the weights cannot be scaled without them.
    k0 = pid_k * BLOCKS_PER_SPLIT * BLOCK_K
    params = _block_params(scales_ptr, zeros_ptr, w_rows, k0, num_groups, stride_sn, stride_sg, stride_zn, stride_zg,
                           MODE, GROUP, BLOCK_K)
    for i in range(0, BLOCKS_PER_SPLIT):
        scale, zero = params
        params = _block_params(scales_ptr, zeros_ptr, w_rows, k0 + BLOCK_K, num_groups, stride_sn, stride_sg,
                               stride_zn, stride_zg, MODE, GROUP, BLOCK_K)
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x_ptrs = x_ptr + x_rows[None, :] * stride_xm + offs_k[:, None]
        if EVEN_K:
            x_t = tl.load(x_ptrs)
        else:
            x_t = tl.load(x_ptrs, mask=(offs_k < K)[:, None], other=0)
        if SYNC_MMA and not INTERPRET:
            # An opaque use of the accumulator before the decode writes the next A operand:
            # the pipeliner then waits for every MMA of the previous K-block here (in the
            # SASS: one `WARPGROUP.DEPBAR.LE gsb0, 0x0` instead of `0x3` after each).
            acc = tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [acc], dtype=tl.float32, is_pure=True, pack=1)
        w = _weights(codes_ptr, table_ptr, table, scale, zero, w_rows, k0, words_per_row, kpad_words, BITS, GROUP,
                     MODE, BLOCK_K, EVEN_K, PTX, PTX_ASM, PTX_CONSTRAINTS, dtype)
        if INTERPRET:
            # Triton 3.6's interpreter gets bf16 dots wrong: widen (exactly) first
            acc += tl.dot(w.to(tl.float32), x_t.to(tl.float32), input_precision="ieee")
        else:
            acc = tl.dot(w, x_t, acc)
        k0 += BLOCK_K
    pdl_trigger(PDL, PDL_LATE)

    # y is (M, N) row-major: store the transposed tile, each thread along a row of y
    acc = tl.trans(acc)
    out_mask = (offs_m < M)[:, None] & (rows < N)[None, :]
    tile_out = offs_m[:, None] * N + rows[None, :]
    acc, last = split_k_sum(acc, ws_ptr, counter_ptr, pid, pid_k, tile_out, out_mask, M, N, SPLIT_K)
    if last:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + tile_out, acc.to(dtype), mask=out_mask)


@triton.jit
def dequant_kernel(
    codes_ptr, scales_ptr, zeros_ptr, table_ptr, out_ptr, N, K, words_per_row, kpad_words, num_groups,
    stride_sn, stride_sg, stride_zn, stride_zg, BITS: tl.constexpr, GROUP: tl.constexpr, MODE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr = False, PTX: tl.constexpr = False,
    PTX_ASM: tl.constexpr = "", PTX_CONSTRAINTS: tl.constexpr = "",
):
    """W (N, K) in out's dtype, each weight as the GEMM kernel rounds it (for large M,
    where the dispatcher multiplies with cuBLAS instead).  Grid: (cdiv(N, BLOCK_N), cdiv(K, BLOCK_K))."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    w_rows = tl.minimum(rows, N - 1)
    dtype = out_ptr.dtype.element_ty
    if PTX and (MODE == TABLE or MODE == ROW_TABLE):
        table = _table_words(table_ptr, w_rows, MODE, dtype)
    else:
        table = (w_rows,)
    scale, zero = _block_params(scales_ptr, zeros_ptr, w_rows, k0, num_groups, stride_sn, stride_sg, stride_zn,
                                stride_zg, MODE, GROUP, BLOCK_K)
    w = _weights(codes_ptr, table_ptr, table, scale, zero, w_rows, k0, words_per_row, kpad_words, BITS, GROUP, MODE,
                 BLOCK_K, EVEN_K, PTX, PTX_ASM, PTX_CONSTRAINTS, dtype)
    cols = k0 + tl.arange(0, BLOCK_K)
    tl.store(out_ptr + rows[:, None] * K + cols[None, :], w, mask=(rows < N)[:, None] & (cols < K)[None, :])


settle_cache_keys(gemm_kernel, dequant_kernel)  # the same keys in every process (cache_keys.py)
