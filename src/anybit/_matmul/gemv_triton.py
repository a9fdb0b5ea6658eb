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

Compiled kernels decode 4-bit integer codes (int4, uint4) faster: the packed
bytes go through inline PTX that turns 4 bytes into 8 exact fp16/bf16 values
with the magic-number trick (see ``_NIBBLES_ASM``), low and high nibbles (even
and odd k) as two tiles, each multiplied by the matching half of x.  The
interpreter cannot run PTX and takes the generic path, which computes the
same values.

Scales: when a K-block lies inside one group (GROUP >= BLOCK_K) the
integer-or-table values enter the dot product unscaled (integers are exact
in fp16/bf16) and the group's scale multiplies the partial product once; a
zero point z enters as ``dot(codes, x) - z * sum(x)``.  With smaller groups
the weight is scaled element-wise before the dot and so rounded once to x's
dtype.  Accumulation is fp32.

Split-K: every split writes its fp32 partial to a workspace and counts
itself in on a per-tile counter; the last split to arrive adds the partials
in split order (deterministic), adds the bias and writes y, all in one launch.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..formats._base import Decode

#: constexpr ids of the decode modes (Triton constexprs are ints).
SYMMETRIC: tl.constexpr = tl.constexpr(0)
BINARY: tl.constexpr = tl.constexpr(1)
ZERO_POINT: tl.constexpr = tl.constexpr(2)
TABLE: tl.constexpr = tl.constexpr(3)
ROW_TABLE: tl.constexpr = tl.constexpr(4)
MODE_IDS = {mode: globals()[mode.name].value for mode in Decode}


@triton.jit
def _load_piece(codes_ptr, rows, row_ok, k0, words_per_row, kpad_words, WIDTH: tl.constexpr, LOW: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One piece's bits, already shifted to code bit LOW: int32 [BLOCK_N, BLOCK_K]."""
    PER_WORD: tl.constexpr = 32 // WIDTH
    word = k0 // PER_WORD + tl.arange(0, BLOCK_K // PER_WORD)
    ptrs = codes_ptr + rows[:, None] * words_per_row + kpad_words * LOW + word[None, :]
    ok = row_ok[:, None] & (word < kpad_words * WIDTH)[None, :]
    words = tl.load(ptrs, mask=ok, other=0)
    shifts = tl.arange(0, PER_WORD) * WIDTH
    values = (words[:, :, None] >> shifts[None, None, :]) & ((1 << WIDTH) - 1)
    return tl.reshape(values, [BLOCK_N, BLOCK_K]) << LOW


@triton.jit
def _load_codes(codes_ptr, rows, row_ok, k0, words_per_row, kpad_words, BITS: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Codes [BLOCK_N, BLOCK_K] (int32) of columns k0 .. k0 + BLOCK_K of ``rows``.

    ``kpad_words`` = K_pad / 32: words of one 1-bit piece of a row.  A piece
    of width w starts at word ``kpad_words * LOW`` of the row, LOW being the
    code bits held by wider pieces.
    """
    codes = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.int32)
    if (BITS & 8) != 0:
        codes |= _load_piece(codes_ptr, rows, row_ok, k0, words_per_row, kpad_words, 8, 0, BLOCK_N, BLOCK_K)
    if (BITS & 4) != 0:
        codes |= _load_piece(codes_ptr, rows, row_ok, k0, words_per_row, kpad_words, 4, BITS - BITS % 8,
                             BLOCK_N, BLOCK_K)
    if (BITS & 2) != 0:
        codes |= _load_piece(codes_ptr, rows, row_ok, k0, words_per_row, kpad_words, 2, BITS - BITS % 4,
                             BLOCK_N, BLOCK_K)
    if (BITS & 1) != 0:
        codes |= _load_piece(codes_ptr, rows, row_ok, k0, words_per_row, kpad_words, 1, BITS - BITS % 2,
                             BLOCK_N, BLOCK_K)
    return codes


# Two 4-bit codes per byte, low nibble first.  For 4 bytes B0..B3 (codes
# k0..k7) in one register: prmt reorders them to (B0, B2, B1, B3), then each
# shift + lop3 puts two nibbles into the mantissas of an f16x2 (bf16x2) whose
# exponent makes it 1024 + n (128 + n), and one packed subtract removes
# 1024 + offset (128 + offset): 12 instructions for 8 exact values.
#   $0 = (k0, k2)  $1 = (k4, k6)  -> first output: the low nibbles
#   $2 = (k1, k3)  $3 = (k5, k7)  -> second output: the high nibbles
_NIBBLES_ASM = """
{
.reg .b32 s, t, bias, one;
mov.b32 bias, BIAS;
mov.b32 one, ONE;
prmt.b32 s, $4, 0, 0x3120;
lop3.b32 t, s, 0x000F000F, MAGIC, 0xea;
fma.rn.TYPE $0, t, one, bias;
shr.b32 t, s, 8;
lop3.b32 t, t, 0x000F000F, MAGIC, 0xea;
fma.rn.TYPE $1, t, one, bias;
shr.b32 t, s, 4;
lop3.b32 t, t, 0x000F000F, MAGIC, 0xea;
fma.rn.TYPE $2, t, one, bias;
shr.b32 t, s, 12;
lop3.b32 t, t, 0x000F000F, MAGIC, 0xea;
fma.rn.TYPE $3, t, one, bias;
}
"""


def nibbles_asm(offset: int, bf16: bool) -> str:
    """PTX turning 4 packed bytes into 8 values ``nibble - offset`` (f16x2 or bf16x2)."""
    if bf16:
        magic, one, minus = 0x4300, 0x3F80, 0xC300 | offset  # 128.0, 1.0, -(128 + offset)
        kind = "bf16x2"
    else:
        magic, one, minus = 0x6400, 0x3C00, 0xE400 | offset  # 1024.0, 1.0, -(1024 + offset)
        kind = "f16x2"
    pair = lambda half: f"0x{half:04X}{half:04X}"  # noqa: E731
    return (_NIBBLES_ASM.replace("MAGIC", pair(magic)).replace("ONE", pair(one))
            .replace("BIAS", pair(minus)).replace("TYPE", kind))


NIBBLES_SYM_F16: tl.constexpr = tl.constexpr(nibbles_asm(8, bf16=False))
NIBBLES_SYM_BF16: tl.constexpr = tl.constexpr(nibbles_asm(8, bf16=True))
NIBBLES_CODE_F16: tl.constexpr = tl.constexpr(nibbles_asm(0, bf16=False))
NIBBLES_CODE_BF16: tl.constexpr = tl.constexpr(nibbles_asm(0, bf16=True))


@triton.jit
def _nibble_values(codes_ptr, rows, row_ok, k0, words_per_row, OFFSET: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, dtype: tl.constexpr):
    """4-bit codes minus OFFSET (8 or 0) as exact fp16/bf16 values, split by parity of k:
    (even k, odd k), each [BLOCK_N, BLOCK_K // 2].

    Compiled kernels only: the interpreter cannot run PTX, and there the
    generic decode computes the same values.
    """
    byte_ptr = codes_ptr.to(tl.pointer_type(tl.uint8))
    col = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    ok = row_ok[:, None] & (col < words_per_row * 4)[None, :]
    packed = tl.load(byte_ptr + rows[:, None] * (words_per_row * 4) + col[None, :], mask=ok, other=0)
    if dtype == tl.bfloat16:
        asm: tl.constexpr = NIBBLES_SYM_BF16 if OFFSET == 8 else NIBBLES_CODE_BF16
        low, high = tl.inline_asm_elementwise(asm, "=r,=r,=r,=r,r", [packed], dtype=(tl.bfloat16, tl.bfloat16),
                                              is_pure=True, pack=4)
    else:
        asm: tl.constexpr = NIBBLES_SYM_F16 if OFFSET == 8 else NIBBLES_CODE_F16
        low, high = tl.inline_asm_elementwise(asm, "=r,=r,=r,=r,r", [packed], dtype=(tl.float16, tl.float16),
                                              is_pure=True, pack=4)
    return low, high


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
    x_ptr, codes_ptr, scales_ptr, zeros_ptr, table_ptr, bias_ptr, out_ptr, ws_ptr, counter_ptr,
    M, N, K, words_per_row, kpad_words, num_groups, stride_xm,
    BITS: tl.constexpr, GROUP: tl.constexpr, MODE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, BLOCKS_PER_SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr,
    INTERPRET: tl.constexpr, X_PAIRS: tl.constexpr = False,
):
    """out[m, n] (x's dtype) = x (M, K) @ W^T (+ bias).

    With SPLIT_K > 1, ``ws`` is fp32 (SPLIT_K, M, N) scratch and ``counter``
    int32 (grid_m * grid_n,) all zero at launch (and again after it).
    X_PAIRS: x's rows start 4-byte aligned and K is even, so the 4-bit path may
    read x two elements at a time.
    """
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
    # 4-bit integer codes decode through PTX (compiled kernels, one group per K-block).
    FAST4: tl.constexpr = (BITS == 4 and (MODE == SYMMETRIC or MODE == ZERO_POINT) and GROUP >= BLOCK_K
                           and not INTERPRET)
    OFFSET4: tl.constexpr = 8 if MODE == SYMMETRIC else 0
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for i in range(0, BLOCKS_PER_SPLIT):
        k0 = (pid_k * BLOCKS_PER_SPLIT + i) * BLOCK_K
        if FAST4:
            # Even and odd k apart: each decoded nibble tile is a dot operand as it comes.
            even, odd = _nibble_values(codes_ptr, rows, row_ok, k0, words_per_row, OFFSET4, BLOCK_N, BLOCK_K, dtype)
            k_even = k0 + 2 * tl.arange(0, BLOCK_K // 2)
            if X_PAIRS:
                # (x[k], x[k+1]) as one 32-bit word: half the loads, and contiguous
                pair_ptr = x_ptr.to(tl.pointer_type(tl.int32)) + offs_m[None, :] * (stride_xm // 2)
                pairs = tl.load(pair_ptr + (k_even // 2)[:, None], mask=m_ok[None, :] & (k_even < K)[:, None], other=0)
                x_even = (pairs & 0xFFFF).to(tl.int16).to(dtype, bitcast=True)
                x_odd = (pairs >> 16).to(tl.int16).to(dtype, bitcast=True)
            else:
                x_rows = x_ptr + offs_m[None, :] * stride_xm
                x_even = tl.load(x_rows + k_even[:, None], mask=m_ok[None, :] & (k_even < K)[:, None], other=0.0)
                x_odd = tl.load(x_rows + k_even[:, None] + 1, mask=m_ok[None, :] & (k_even + 1 < K)[:, None],
                                other=0.0)
            part = tl.dot(even, x_even) + tl.dot(odd, x_odd)
            if MODE == ZERO_POINT:
                x_sum = tl.sum(x_even.to(tl.float32), axis=0) + tl.sum(x_odd.to(tl.float32), axis=0)
        else:
            offs_k = k0 + tl.arange(0, BLOCK_K)
            x_t = tl.load(x_ptr + offs_m[None, :] * stride_xm + offs_k[:, None],
                          mask=m_ok[None, :] & (offs_k < K)[:, None], other=0.0)
            codes = _load_codes(codes_ptr, rows, row_ok, k0, words_per_row, kpad_words, BITS, BLOCK_N, BLOCK_K)
            value = _integer_or_table(codes, rows, row_ok, table_ptr, MODE, BITS)
            if GROUP >= BLOCK_K:
                part = _dot(value.to(dtype), x_t, INTERPRET)
                if MODE == ZERO_POINT:
                    x_sum = tl.sum(x_t.to(tl.float32), axis=0)
        if GROUP >= BLOCK_K:
            # One group per K-block: its scale (and zero point) apply to the partial product.
            group = k0 // GROUP
            ok = row_ok & (rows * 0 + group < num_groups)  # a vector mask, as interpreters require
            scale = tl.load(scales_ptr + rows * num_groups + group, mask=ok, other=0.0).to(tl.float32)
            if MODE == ZERO_POINT:
                zero = tl.load(zeros_ptr + rows * num_groups + group, mask=ok, other=0).to(tl.float32)
                part -= zero[:, None] * x_sum[None, :]
            acc += part * scale[:, None]
        else:
            # Several groups per K-block: scale each weight, rounding it once to x's dtype.
            group = offs_k // GROUP
            where = rows[:, None] * num_groups + group[None, :]
            ok = row_ok[:, None] & (group < num_groups)[None, :]
            scale = tl.load(scales_ptr + where, mask=ok, other=0.0).to(tl.float32)
            if MODE == ZERO_POINT:
                value -= tl.load(zeros_ptr + where, mask=ok, other=0).to(tl.float32)
            acc += _dot((value * scale).to(dtype), x_t, INTERPRET)

    out_mask = row_ok[:, None] & m_ok[None, :]
    tile_out = offs_m[None, :] * N + rows[:, None]
    if SPLIT_K > 1:
        # Split-K fix-up in the same launch: every split stores its fp32 partial,
        # then counts itself in; the last to arrive sums the partials in split
        # order (deterministic) and writes y.  It resets the counter to 0, so the
        # counters stay zero between launches.
        tl.store(ws_ptr + pid_k * M * N + tile_out, acc, mask=out_mask)
        tl.debug_barrier()
        counter = counter_ptr + pid_m * tl.num_programs(0) + pid_n
        arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:
            acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
            for s in range(0, SPLIT_K):
                acc += tl.load(ws_ptr + s * M * N + tile_out, mask=out_mask, other=0.0, cache_modifier=".cg")
            tl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")
    if SPLIT_K == 1 or arrived == SPLIT_K - 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[:, None]
        tl.store(out_ptr + tile_out, acc.to(dtype), mask=out_mask)
