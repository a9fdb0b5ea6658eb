"""Triton kernel for y = x @ W^T at small M (token decoding), on the split-plane layout.

One kernel body serves every bit width, group size and decode mode: all of
them are ``tl.constexpr`` parameters, so each combination compiles to its own
specialised code without a copy of the source.

Work split: program (i, s, j) computes rows ``i*BLOCK_N ..`` of W against rows
``j*BLOCK_M ..`` of x over the s-th of ``SPLIT_K`` equal ranges of K.  The
product is formed as ``W_tile @ x_tile^T`` (BLOCK_N x BLOCK_M), so the decoded
weight tile is the left operand of ``tl.dot``.

Decoding a K-block of BLOCK_K codes (a multiple of 32, so every piece of the
split-plane layout covers whole int32 words)::

    for each piece (width w, holding code bits [o, o + w)):
        words  [BLOCK_N, BLOCK_K*w/32]   one load per word
        values (words >> w*j) & (2**w - 1),  j < 32/w   -> [BLOCK_N, BLOCK_K]
        codes |= values << o

Scales: when a K-block lies inside one group (GROUP >= BLOCK_K) the
integer-or-table values enter the dot product unscaled (integers are exact
in fp16/bf16) and the group's scale multiplies the partial product once; a
zero point z enters as ``dot(codes, x) - z * sum(x)``.  With smaller groups
the weight is scaled element-wise before the dot and so rounded once to x's
dtype.  Accumulation is fp32.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..formats._base import Decode

#: constexpr ids of the decode modes (Triton constexprs are ints).
MODE_IDS = {
    Decode.SYMMETRIC: 0,
    Decode.BINARY: 1,
    Decode.ZERO_POINT: 2,
    Decode.TABLE: 3,
    Decode.ROW_TABLE: 4,
}
SYMMETRIC: tl.constexpr = tl.constexpr(0)
BINARY: tl.constexpr = tl.constexpr(1)
ZERO_POINT: tl.constexpr = tl.constexpr(2)
TABLE: tl.constexpr = tl.constexpr(3)
ROW_TABLE: tl.constexpr = tl.constexpr(4)


@triton.jit
def _load_codes(codes_ptr, rows, row_ok, k0, words_per_row, kpad_words, BITS: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Codes [BLOCK_N, BLOCK_K] (int32) of columns k0 .. k0 + BLOCK_K of ``rows``.

    ``kpad_words`` = K_pad / 32: words of one 1-bit piece of a row.
    """
    codes = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.int32)
    for i in tl.static_range(4):
        WIDTH: tl.constexpr = 8 >> i
        if (BITS & WIDTH) != 0:
            LOW: tl.constexpr = BITS - BITS % (2 * WIDTH)  # code bits held by wider pieces
            PER_WORD: tl.constexpr = 32 // WIDTH
            N_WORDS: tl.constexpr = BLOCK_K // PER_WORD
            word = k0 // PER_WORD + tl.arange(0, N_WORDS)
            ptrs = codes_ptr + rows[:, None] * words_per_row + kpad_words * LOW + word[None, :]
            ok = row_ok[:, None] & (word < kpad_words * WIDTH)[None, :]
            words = tl.load(ptrs, mask=ok, other=0)
            shifts = tl.arange(0, PER_WORD) * WIDTH
            values = (words[:, :, None] >> shifts[None, None, :]) & ((1 << WIDTH) - 1)
            codes |= tl.reshape(values, [BLOCK_N, BLOCK_K]) << LOW
    return codes


@triton.jit
def _integer_or_table(codes, rows, row_ok, table_ptr, MODE: tl.constexpr, BITS: tl.constexpr):
    """The unscaled value of each code, fp32 (exact integers for the affine modes)."""
    if MODE == SYMMETRIC:
        value = (codes - (1 << (BITS - 1))).to(tl.float32)
    elif MODE == BINARY:
        value = (2 * codes - 1).to(tl.float32)
    elif MODE == ZERO_POINT:
        value = codes.to(tl.float32)
    elif MODE == TABLE:
        value = tl.load(table_ptr + codes).to(tl.float32)
    else:
        tl.static_assert(MODE == ROW_TABLE)
        where = rows[:, None] * (1 << BITS) + codes
        value = tl.load(table_ptr + where, mask=row_ok[:, None], other=0.0).to(tl.float32)
    return value


@triton.jit
def _dot(a, b, INTERPRET: tl.constexpr):
    """a @ b with fp32 accumulation.

    Triton 3.6's CPU interpreter gets ``tl.dot`` of bf16 operands wrong, so
    there the operands (exact in fp32) are widened first: same products, same
    fp32 accumulation.  Compiled kernels use the tensor cores directly.
    """
    if INTERPRET:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def gemv_kernel(
    x_ptr, codes_ptr, scales_ptr, zeros_ptr, table_ptr, bias_ptr, out_ptr,
    M, N, K, words_per_row, kpad_words, num_groups, stride_xm,
    BITS: tl.constexpr, GROUP: tl.constexpr, MODE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, BLOCKS_PER_SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """out[s, m, n] (fp32, SPLIT_K > 1) or out[m, n] (x's dtype) of x (M, K) @ W^T."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    dtype = x_ptr.dtype.element_ty

    # Each split runs BLOCKS_PER_SPLIT K-blocks (a constexpr: fixed per layer
    # shape); blocks past the end of K load nothing, every load being masked.
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for i in range(0, BLOCKS_PER_SPLIT):
        k0 = (pid_k * BLOCKS_PER_SPLIT + i) * BLOCK_K
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x_t = tl.load(x_ptr + offs_m[None, :] * stride_xm + offs_k[:, None],
                      mask=m_ok[None, :] & (offs_k < K)[:, None], other=0.0)
        codes = _load_codes(codes_ptr, rows, row_ok, k0, words_per_row, kpad_words, BITS, BLOCK_N, BLOCK_K)
        value = _integer_or_table(codes, rows, row_ok, table_ptr, MODE, BITS)
        if GROUP >= BLOCK_K:
            group = k0 // GROUP
            ok = row_ok & (rows * 0 + group < num_groups)  # a vector mask, as interpreters require
            scale = tl.load(scales_ptr + rows * num_groups + group, mask=ok, other=0.0).to(tl.float32)
            part = _dot(value.to(dtype), x_t, INTERPRET)
            if MODE == ZERO_POINT:
                zero = tl.load(zeros_ptr + rows * num_groups + group, mask=ok, other=0).to(tl.float32)
                x_sum = tl.sum(x_t.to(tl.float32), axis=0)
                part -= zero[:, None] * x_sum[None, :]
            acc += part * scale[:, None]
        else:
            group = offs_k // GROUP
            where = rows[:, None] * num_groups + group[None, :]
            ok = row_ok[:, None] & (group < num_groups)[None, :]
            scale = tl.load(scales_ptr + where, mask=ok, other=0.0).to(tl.float32)
            if MODE == ZERO_POINT:
                value -= tl.load(zeros_ptr + where, mask=ok, other=0).to(tl.float32)
            acc += _dot((value * scale).to(dtype), x_t, INTERPRET)

    out_mask = row_ok[:, None] & m_ok[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[:, None]
        tl.store(out_ptr + offs_m[None, :] * N + rows[:, None], acc.to(dtype), mask=out_mask)
    else:
        tl.store(out_ptr + (pid_k * M + offs_m[None, :]) * N + rows[:, None], acc, mask=out_mask)
