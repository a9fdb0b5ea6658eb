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

Compiled kernels decode integer codes (every width, symmetric, binary or
with a zero point) faster, through inline PTX generated per width (see
``decode_ptx``): each piece's packed bytes of a K-block come in one load,
and packed fp16/bf16 magic-number arithmetic turns them into C tensors of
exact integers (tensor j: codes k0 + C*e + j).  4-bit codes (C = 2)
multiply the even and odd halves of x, read in pairs; wider element groups
(C = 4, 8: 1, 2, 3, 5, 6, 7 bits) are interleaved back into k order for
one dot with x's contiguous rows.  4-bit table codes (NF4's fixed table, a
lut4 table per row) are looked up by prmt in the table's bytes, which each
program loads into registers once (``_table_words``).  The interpreter cannot run PTX and takes
the generic path, which computes the same values.

Scales: when a K-block lies inside one group (GROUP >= BLOCK_K) the
integer-or-table values enter the dot product unscaled (integers are exact
in fp16/bf16, zero point already subtracted) and the group's scale
multiplies the partial product once.  With smaller groups
the weight is scaled element-wise before the dot and so rounded once to x's
dtype.  Accumulation is fp32.  On the PTX path the scales of a loop
iteration's K-blocks are loaded one iteration ahead: they are plain loads
(too small for the pipeline's asynchronous copies), and waiting for them
inside the iteration cost up to 13% at one row of x.

Split-K: every split writes its fp32 partial to a workspace and counts
itself in on a per-tile counter; the last split to arrive adds the partials
in split order (deterministic), adds the bias and writes y, all in one launch
(``split_k_triton``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..formats._base import Decode
from . import decode_ptx
from .cache_keys import settle_cache_keys
from .gemv import Trigger
from .split_k_triton import glu_split_k_sums, split_k_sum

#: constexpr ids of the decode modes (Triton constexprs are ints), the same as decode_ptx's.
SYMMETRIC: tl.constexpr = tl.constexpr(decode_ptx.SYMMETRIC)
BINARY: tl.constexpr = tl.constexpr(decode_ptx.BINARY)
ZERO_POINT: tl.constexpr = tl.constexpr(decode_ptx.ZERO_POINT)
TABLE: tl.constexpr = tl.constexpr(decode_ptx.TABLE)
ROW_TABLE: tl.constexpr = tl.constexpr(decode_ptx.ROW_TABLE)
MODE_IDS = {mode: globals()[mode.name].value for mode in Decode}
#: constexpr ids of the PDL argument: launched plainly, or as a programmatic dependent
#: letting the next kernel launch early or late (``gemv.Trigger``).
PDL_OFF: tl.constexpr = tl.constexpr(0)
PDL_EARLY: tl.constexpr = tl.constexpr(1)
PDL_LATE: tl.constexpr = tl.constexpr(2)
TRIGGER_IDS = {Trigger.EARLY: PDL_EARLY.value, Trigger.LATE: PDL_LATE.value}


@triton.jit
def pdl_wait(PDL: tl.constexpr):
    """Launched as a programmatic dependent (PDL not PDL_OFF): wait until the kernel before
    this one has finished and its writes are visible (a kernel does this before it touches
    global memory)."""
    if PDL != PDL_OFF:
        tl.extra.cuda.gdc_wait()


@triton.jit
def pdl_trigger(PDL: tl.constexpr, AT: tl.constexpr):
    """Let the next kernel launch, if this is the point PDL names (AT: PDL_EARLY right
    after the wait, PDL_LATE after the K loop)."""
    if PDL == AT:
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def _load_piece(codes_ptr, rows, k0, words_per_row, kpad_words, EVEN_K: tl.constexpr, WIDTH: tl.constexpr,
                LOW: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One piece's bits, already shifted to code bit LOW: int32 [BLOCK_N, BLOCK_K]."""
    PER_WORD: tl.constexpr = 32 // WIDTH
    word = k0 // PER_WORD + tl.arange(0, BLOCK_K // PER_WORD)
    ptrs = codes_ptr + rows[:, None] * words_per_row + kpad_words * LOW + word[None, :]
    if EVEN_K:
        words = tl.load(ptrs)
    else:
        words = tl.load(ptrs, mask=(word < kpad_words * WIDTH)[None, :], other=0)
    shifts = tl.arange(0, PER_WORD) * WIDTH
    values = (words[:, :, None] >> shifts[None, None, :]) & ((1 << WIDTH) - 1)
    return tl.reshape(values, [BLOCK_N, BLOCK_K]) << LOW


@triton.jit
def _pairs_in_k_order(values):
    """[R, BLOCK_K] values of 4-bit codes in their stored order (``packing``: byte i of word s
    of each chunk of 32 holds codes 8 i + 2 s, + 1) -> k order: [R, chunk, s, i, h] ->
    [R, chunk, i, s, h]."""
    rows: tl.constexpr = values.shape[0]
    BLOCK_K: tl.constexpr = values.shape[1]
    t = tl.permute(tl.reshape(values, [rows, BLOCK_K // 32, 4, 4, 2]), (0, 1, 3, 2, 4))
    return tl.reshape(t, [rows, BLOCK_K])


@triton.jit
def _pairs_in_stored_order(x):
    """Rows [BLOCK_K / 2, L] of x's code pairs in k order -> the order of the 4-bit codes'
    bytes (``_pair_index``): row e holds pair ``_pair_index(e)``, a 4 x 4 transpose of each 16 rows."""
    rows: tl.constexpr = x.shape[0]
    cols: tl.constexpr = x.shape[1]
    t = tl.permute(tl.reshape(x, [rows // 16, 4, 4, cols]), (0, 2, 1, 3))
    return tl.reshape(t, [rows, cols])


@triton.jit
def _pair_index(e, BITS: tl.constexpr):
    """The code pair (k // 2, counted from the K-block's start) that byte ``e`` of the
    block's 4-bit words holds: pairs are stored transposed in each chunk of 16 (``packing``:
    byte i of word s holds pair 4 i + s); for other widths, ``e`` itself."""
    if BITS == 4:
        e = (e & -16) | ((e >> 2) & 3) | ((e & 3) << 2)
    return e


@triton.jit
def _load_codes(codes_ptr, rows, k0, words_per_row, kpad_words, EVEN_K: tl.constexpr, BITS: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Codes [BLOCK_N, BLOCK_K] (int32) of columns k0 .. k0 + BLOCK_K of ``rows``
    (every row valid: the caller clamps them).

    ``kpad_words`` = K_pad / 32: words of one 1-bit piece of a row.  A piece
    of width w starts at word ``kpad_words * LOW`` of the row, LOW being the
    code bits held by wider pieces.  EVEN_K: the block lies inside the row.
    """
    codes = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.int32)
    if BITS == 4:  # one piece, its pairs stored transposed in each chunk (packing)
        return _pairs_in_k_order(_load_piece(codes_ptr, rows, k0, words_per_row, kpad_words, EVEN_K, 4, 0, BLOCK_N,
                                             BLOCK_K))
    if (BITS & 8) != 0:
        codes |= _load_piece(codes_ptr, rows, k0, words_per_row, kpad_words, EVEN_K, 8, 0, BLOCK_N, BLOCK_K)
    if (BITS & 4) != 0:
        codes |= _load_piece(codes_ptr, rows, k0, words_per_row, kpad_words, EVEN_K, 4, BITS - BITS % 8,
                             BLOCK_N, BLOCK_K)
    if (BITS & 2) != 0:
        codes |= _load_piece(codes_ptr, rows, k0, words_per_row, kpad_words, EVEN_K, 2, BITS - BITS % 4,
                             BLOCK_N, BLOCK_K)
    if (BITS & 1) != 0:
        codes |= _load_piece(codes_ptr, rows, k0, words_per_row, kpad_words, EVEN_K, 1, BITS - BITS % 2,
                             BLOCK_N, BLOCK_K)
    return codes


@triton.constexpr_function
def _piece(bits, i):
    """(width, low bit) of piece i of ``bits``-wide codes, widest first (as in
    ``packing.pieces``); (0, 0) past the last."""
    widths = [w for w in (8, 4, 2, 1) if bits & w]
    return (widths[i], sum(widths[:i])) if i < len(widths) else (0, 0)


@triton.constexpr_function
def _codes_per_element(bits):
    """C: 8 / the narrowest piece of ``bits``-wide codes (as decode_ptx.codes_per_element)."""
    return 8 // (bits & -bits)


@triton.constexpr_function
def _repeat(dtype, count):
    return (dtype,) * count


@triton.jit
def _load_elements(codes_ptr, w_rows, k0, words_per_row, kpad_words, EVEN_K: tl.constexpr, WIDTH: tl.constexpr,
                   LOW: tl.constexpr, C: tl.constexpr, BLOCK_K: tl.constexpr):
    """Elements (C codes each) of one piece for the K-block at k0: u8/u16/u32 [BLOCK_N, BLOCK_K / C]."""
    EBITS: tl.constexpr = WIDTH * C
    PER_WORD: tl.constexpr = 32 // EBITS
    if EBITS == 8:
        ptr = codes_ptr.to(tl.pointer_type(tl.uint8))
    elif EBITS == 16:
        ptr = codes_ptr.to(tl.pointer_type(tl.uint16))
    else:
        ptr = codes_ptr
    e = k0 // C + tl.arange(0, BLOCK_K // C)
    ptrs = ptr + w_rows[:, None] * (words_per_row * PER_WORD) + kpad_words * LOW * PER_WORD + e[None, :]
    if EVEN_K:
        return tl.load(ptrs)
    return tl.load(ptrs, mask=(e < kpad_words * WIDTH * PER_WORD)[None, :], other=0)


@triton.jit
def _table_words(table_ptr, w_rows, MODE: tl.constexpr, dtype: tl.constexpr):
    """The 16-entry table of each row rounded to ``dtype``, as the eight int32 [BLOCK_N]
    words of ``decode_ptx.table_words`` (low bytes of entries 4w..4w+3, then high
    bytes).  ROW_TABLE reads row r of a contiguous (N, 16) table, TABLE the one (16,)
    table for every row."""
    entry = tl.arange(0, 16)
    if MODE == ROW_TABLE:
        where = w_rows[:, None] * 16 + entry[None, :]
    else:
        where = w_rows[:, None] * 0 + entry[None, :]
    half = tl.load(table_ptr + where).to(dtype).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    shift = (tl.arange(0, 4) * 8)[None, None, :]
    lo = tl.sum(tl.reshape(half & 0xFF, [w_rows.shape[0], 4, 4]) << shift, axis=2)
    hi = tl.sum(tl.reshape(half >> 8, [w_rows.shape[0], 4, 4]) << shift, axis=2)
    lo_a, lo_b = tl.split(tl.reshape(lo, [w_rows.shape[0], 2, 2]))  # words (0, 2), (1, 3)
    hi_a, hi_b = tl.split(tl.reshape(hi, [w_rows.shape[0], 2, 2]))
    l0, l2 = tl.split(lo_a)
    l1, l3 = tl.split(lo_b)
    h0, h2 = tl.split(hi_a)
    h1, h3 = tl.split(hi_b)
    return l0, l1, l2, l3, h0, h1, h2, h3


@triton.jit
def _ptx_values(codes_ptr, w_rows, k0, words_per_row, kpad_words, zero, table, EVEN_K: tl.constexpr,
                BITS: tl.constexpr, MODE: tl.constexpr, BLOCK_K: tl.constexpr, PTX_ASM: tl.constexpr,
                PTX_CONSTRAINTS: tl.constexpr, dtype: tl.constexpr):
    """The K-block's weights minus ``zero`` (int32 [BLOCK_N], per row) as exact
    fp16/bf16 values: a tuple of C tensors [BLOCK_N, BLOCK_K / C], tensor j
    holding codes k0 + C*e + j (see decode_ptx).  Table modes look the codes up
    in ``table`` (``_table_words``) instead.

    Compiled kernels only: the interpreter cannot run PTX, and there the
    generic decode computes the same values.
    """
    C: tl.constexpr = _codes_per_element(BITS)
    W0: tl.constexpr = _piece(BITS, 0)[0]
    W1: tl.constexpr = _piece(BITS, 1)[0]
    W2: tl.constexpr = _piece(BITS, 2)[0]
    p0 = _load_elements(codes_ptr, w_rows, k0, words_per_row, kpad_words, EVEN_K, W0, _piece(BITS, 0)[1], C,
                        BLOCK_K)
    OUT: tl.constexpr = _repeat(dtype, C)
    if MODE == TABLE or MODE == ROW_TABLE:
        # each row's table words next to its codes (same values along the row)
        values = tl.inline_asm_elementwise(
            PTX_ASM, PTX_CONSTRAINTS,
            [p0, tl.broadcast_to(table[0][:, None], p0.shape), tl.broadcast_to(table[1][:, None], p0.shape),
             tl.broadcast_to(table[2][:, None], p0.shape), tl.broadcast_to(table[3][:, None], p0.shape),
             tl.broadcast_to(table[4][:, None], p0.shape), tl.broadcast_to(table[5][:, None], p0.shape),
             tl.broadcast_to(table[6][:, None], p0.shape), tl.broadcast_to(table[7][:, None], p0.shape)],
            dtype=OUT, is_pure=True, pack=4)
    else:
        MAGIC: tl.constexpr = 1024 if dtype == tl.float16 else (0 if BITS == 8 else 128)  # decode_ptx.bias_offset
        zero = zero.to(tl.float32)
        bias = (-MAGIC - zero).to(dtype)[:, None]
        if dtype == tl.bfloat16:
            bias_high = bias
        else:
            bias_high = (-64.0 - zero).to(tl.float16)[:, None]
        if W1 == 0:
            values = tl.inline_asm_elementwise(PTX_ASM, PTX_CONSTRAINTS, [p0, bias, bias_high], dtype=OUT,
                                               is_pure=True, pack=4)
        else:
            p1 = _load_elements(codes_ptr, w_rows, k0, words_per_row, kpad_words, EVEN_K, W1, _piece(BITS, 1)[1],
                                C, BLOCK_K)
            if W2 == 0:
                values = tl.inline_asm_elementwise(PTX_ASM, PTX_CONSTRAINTS, [p0, p1, bias, bias_high], dtype=OUT,
                                                   is_pure=True, pack=4)
            else:
                p2 = _load_elements(codes_ptr, w_rows, k0, words_per_row, kpad_words, EVEN_K, W2,
                                    _piece(BITS, 2)[1], C, BLOCK_K)
                values = tl.inline_asm_elementwise(PTX_ASM, PTX_CONSTRAINTS, [p0, p1, p2, bias, bias_high],
                                                   dtype=OUT, is_pure=True, pack=4)
    return values


@triton.jit
def _group_scale(scales_ptr, rows, group, num_groups, stride_sn, stride_sg):
    """Scale (fp32 [R]) of group ``group`` of each row; 0 past the last group."""
    ok = rows * 0 + group < num_groups  # a vector mask, as interpreters require
    return tl.load(scales_ptr + rows * stride_sn + group * stride_sg, mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _group_zero(zeros_ptr, rows, group, num_groups, stride_zn, stride_zg):
    """Zero point (int32 [R]) of group ``group`` of each row; 0 past the last group."""
    ok = rows * 0 + group < num_groups
    return tl.load(zeros_ptr + rows * stride_zn + group * stride_zg, mask=ok, other=0).to(tl.int32)


@triton.jit
def _group_tile(ptr, rows, groups, num_groups, stride_n, stride_g, other):
    """fp32 [R, G]: the scale or zero point of group ``groups[j]`` of row ``rows[i]``;
    ``other`` past the last group."""
    where = ptr + rows[:, None] * stride_n + groups[None, :] * stride_g
    return tl.load(where, mask=(groups < num_groups)[None, :], other=other).to(tl.float32)


@triton.jit
def _group_params(scales_ptr, zeros_ptr, rows, group, num_groups, stride_sn, stride_sg, stride_zn, stride_zg,
                  MODE: tl.constexpr):
    """Scale (fp32 [R]) and zero point (int32 [R]; zeros unless MODE is ZERO_POINT)
    of group ``group`` of each row; 0 past the last group."""
    zero = rows * 0
    if MODE == ZERO_POINT:
        zero = _group_zero(zeros_ptr, rows, group, num_groups, stride_zn, stride_zg)
    return _group_scale(scales_ptr, rows, group, num_groups, stride_sn, stride_sg), zero


@triton.jit
def _load_x(ptr, x_m, row_stride, cols, valid, inside, GROUP: tl.constexpr, BLOCK_M: tl.constexpr,
            EVEN_K: tl.constexpr, SUB: tl.constexpr):
    """An x tile [len(cols), SUB * BLOCK_M]: element (i, c) is ptr[x_m[c] * row_stride + cols[i]],
    0 where ``valid[i]`` fails (past K) and, with SUB > 1, where offset ``inside[i]``
    in the K-block lies outside column block c // BLOCK_M's group."""
    ptrs = ptr + x_m[None, :] * row_stride + cols[:, None]
    if EVEN_K and SUB == 1:
        return tl.load(ptrs)
    mask = valid[:, None]
    if SUB > 1:
        mask = mask & ((inside // GROUP)[:, None] == (tl.arange(0, SUB * BLOCK_M) // BLOCK_M)[None, :])
    return tl.load(ptrs, mask=mask, other=0)


@triton.jit
def _flat(a, b):
    """[R, L] a and b -> [R, 2L], a's elements at even places."""
    return tl.reshape(tl.join(a, b), [a.shape[0], 2 * a.shape[1]])


@triton.jit
def _interleave(values, C: tl.constexpr):
    """C tensors [R, BLOCK_K / C] (tensor j: code j of element e) -> one [R, BLOCK_K] in k order:
    element e holds codes C*e .. C*e + C - 1, but for 4-bit codes (C = 2), whose pairs are
    stored transposed (``_pair_index``)."""
    if C == 1:
        w = values[0]
    elif C == 2:
        w = _pairs_in_k_order(_flat(values[0], values[1]))
    elif C == 4:
        w = _flat(_flat(values[0], values[2]), _flat(values[1], values[3]))
    else:
        w = _flat(_flat(_flat(values[0], values[4]), _flat(values[2], values[6])),
                  _flat(_flat(values[1], values[5]), _flat(values[3], values[7])))
    return w


@triton.jit
def _ptx_params(scales_ptr, zeros_ptr, w_rows, k0, num_groups, stride_sn, stride_sg, stride_zn, stride_zg,
                MODE: tl.constexpr, GROUP: tl.constexpr, SUB: tl.constexpr, BLOCK_M: tl.constexpr):
    """The scales of the K-block at k0's groups for ``_ptx_block``, multiplying its partial
    product: (scale fp32 [BLOCK_N, 1] or [BLOCK_N, SUB * BLOCK_M], zero_cols fp32 [BLOCK_N,
    SUB * BLOCK_M]: the zero points of each column block's group, ZERO_POINT with SUB > 1;
    zeros otherwise).  The zero point a single group per block subtracts in the decode is
    ``_ptx_block``'s own load."""
    cols = tl.arange(0, SUB * BLOCK_M)
    zero_cols = tl.zeros([w_rows.shape[0], SUB * BLOCK_M], dtype=tl.float32)
    if SUB == 1:
        scale = _group_scale(scales_ptr, w_rows, k0 // GROUP, num_groups, stride_sn, stride_sg)[:, None]
    else:
        group = k0 // GROUP + cols // BLOCK_M
        scale = _group_tile(scales_ptr, w_rows, group, num_groups, stride_sn, stride_sg, 0.0)
        if MODE == ZERO_POINT:
            zero_cols = _group_tile(zeros_ptr, w_rows, group, num_groups, stride_zn, stride_zg, 0)
    return scale, zero_cols


@triton.jit
def _ptx_params_pair(scales_ptr, zeros_ptr, scales1_ptr, zeros1_ptr, w_rows, k0, num_groups, stride_sn, stride_sg,
                     stride_zn, stride_zg, MODE: tl.constexpr, GROUP: tl.constexpr, SUB: tl.constexpr,
                     BLOCK_M: tl.constexpr, BOTH: tl.constexpr):
    """(``_ptx_params`` of the first weight, of the second with BOTH (GLU's up weight), else
    the first's again, unused)."""
    first = _ptx_params(scales_ptr, zeros_ptr, w_rows, k0, num_groups, stride_sn, stride_sg, stride_zn, stride_zg,
                        MODE, GROUP, SUB, BLOCK_M)
    second = first
    if BOTH:
        second = _ptx_params(scales1_ptr, zeros1_ptr, w_rows, k0, num_groups, stride_sn, stride_sg, stride_zn,
                             stride_zg, MODE, GROUP, SUB, BLOCK_M)
    return first, second


@triton.jit
def _ptx_block(codes_ptr, zeros_ptr, x_ptr, table, params, w_rows, x_rows, k0, K, words_per_row, kpad_words,
               num_groups, stride_xm, stride_zn, stride_zg, BITS: tl.constexpr,
               MODE: tl.constexpr, GROUP: tl.constexpr, SUB: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, X_PAIRS: tl.constexpr, NATURAL: tl.constexpr,
               PTX_ASM: tl.constexpr, PTX_CONSTRAINTS: tl.constexpr, dtype: tl.constexpr):
    """The PTX decode path for one K-block of SUB groups: fp32 [BLOCK_N, SUB * BLOCK_M].

    Each piece's codes come in one load (a row's share of the block together)
    and one inline-asm decode, which yields C tensors; tensor j (codes
    k0 + C*e + j) is multiplied by the matching rows of x.  Several groups per
    block stay apart in the product instead of scaling each weight: column
    g * BLOCK_M + m of the x tile holds row m of x on group g's columns of K
    and zeros elsewhere, so column block g of the product is group g's
    partial sum, and gets group g's scale.  With BLOCK_M * SUB <= 8 that costs
    no extra MMA (the MMA is 8 wide anyway).  The caller adds the SUB column
    blocks after its K loop.  Zero points there stay out of the decode (it
    takes one per row): column block g subtracts zero[g] * (the sum of x over
    group g) from its partial sum instead,
    sum_k (c_k - z) x_k = sum_k c_k x_k - z sum_k x_k.
    """
    C: tl.constexpr = _codes_per_element(BITS)
    scale, zero_cols = params  # (``_ptx_params``)
    zero = w_rows * 0  # several groups: codes decoded as they are; ZERO_POINT corrects each column block below
    if SUB == 1 and MODE == ZERO_POINT:
        zero = _group_zero(zeros_ptr, w_rows, k0 // GROUP, num_groups, stride_zn, stride_zg)
    if MODE == SYMMETRIC:
        zero = w_rows * 0 + (1 << (BITS - 1))
    values = _ptx_values(codes_ptr, w_rows, k0, words_per_row, kpad_words, zero, table, EVEN_K, BITS, MODE,
                         BLOCK_K, PTX_ASM, PTX_CONSTRAINTS, dtype)

    # element e holds codes C * e .. C * e + C - 1 of the block, but for 4-bit codes, whose
    # pairs are stored transposed: pair ``_pair_index(e)``
    e = tl.arange(0, BLOCK_K // C)
    x_m = x_rows if SUB == 1 else tl.reshape(tl.broadcast_to(x_rows[None, :], [SUB, BLOCK_M]), [SUB * BLOCK_M])
    if NATURAL:
        # the C tensors interleaved back into k order: one dot with x's contiguous rows
        inside = tl.arange(0, BLOCK_K)
        x_t = _load_x(x_ptr, x_m, stride_xm, k0 + inside, k0 + inside < K, inside, GROUP, BLOCK_M, EVEN_K, SUB)
        part = tl.dot(_interleave(values, C), x_t)
        if SUB > 1 and MODE == ZERO_POINT:
            x_sum = tl.sum(x_t.to(tl.float32), axis=0)
    elif X_PAIRS and C == 2:
        # (x[k], x[k+1]) as one 32-bit word, split by integer ops
        # (read in k order, in vectors, then rows permuted to the stored order: reading them
        # in that order, 4 bytes at a time, made M = 16-32 up to 1.8x slower)
        pairs = _load_x(x_ptr.to(tl.pointer_type(tl.int32)), x_m, stride_xm // 2, k0 // 2 + e, k0 + 2 * e < K, 2 * e,
                        GROUP, BLOCK_M, EVEN_K, SUB)
        if BITS == 4:
            pairs = _pairs_in_stored_order(pairs)
        # two independent products (chaining them through one accumulator ran ~7% slower at M=1)
        x_even = (pairs & 0xFFFF).to(tl.int16).to(dtype, bitcast=True)
        x_odd = (pairs >> 16).to(tl.int16).to(dtype, bitcast=True)
        part = tl.dot(values[0], x_even) + tl.dot(values[1], x_odd)
        if SUB > 1 and MODE == ZERO_POINT:
            x_sum = tl.sum(x_even.to(tl.float32), axis=0) + tl.sum(x_odd.to(tl.float32), axis=0)
    else:
        part = tl.zeros([w_rows.shape[0], SUB * BLOCK_M], dtype=tl.float32)
        x_sum = tl.zeros([SUB * BLOCK_M], dtype=tl.float32)
        for j in tl.static_range(C):
            k = k0 + C * _pair_index(e, BITS) + j
            x_j = _load_x(x_ptr, x_m, stride_xm, k, k < K, k - k0, GROUP, BLOCK_M, EVEN_K, SUB)
            part = tl.dot(values[j], x_j, part)
            if SUB > 1 and MODE == ZERO_POINT:
                x_sum += tl.sum(x_j.to(tl.float32), axis=0)
    if SUB > 1 and MODE == ZERO_POINT:
        part -= zero_cols * x_sum[None, :]  # x_sum: each column's sum of x over its group
    return part * scale


@triton.jit
def _integer_or_table(codes, rows, table_ptr, MODE: tl.constexpr, BITS: tl.constexpr):
    """The unscaled value of each code, fp32 (exact integers for the affine modes;
    the zero point is the caller's)."""
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
        value = tl.load(table_ptr + where).to(tl.float32)
    return value


@triton.jit
def _generic_block(codes_ptr, scales_ptr, zeros_ptr, table_ptr, x_ptr, w_rows, x_rows, k0, K, words_per_row,
                   kpad_words, num_groups, stride_xm, stride_sn, stride_sg, stride_zn, stride_zg, BITS: tl.constexpr,
                   MODE: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, INTERPRET: tl.constexpr, dtype: tl.constexpr):
    """The generic decode for one K-block (every format; the interpreter's path): fp32 [BLOCK_N, BLOCK_M]."""
    offs_k = k0 + tl.arange(0, BLOCK_K)
    x_t = _load_x(x_ptr, x_rows, stride_xm, offs_k, offs_k < K, offs_k, GROUP, BLOCK_M, EVEN_K, 1)
    codes = _load_codes(codes_ptr, w_rows, k0, words_per_row, kpad_words, EVEN_K, BITS, BLOCK_N, BLOCK_K)
    value = _integer_or_table(codes, w_rows, table_ptr, MODE, BITS)
    if GROUP >= BLOCK_K:
        # One group per K-block: its scale applies to the partial product.
        scale, zero = _group_params(scales_ptr, zeros_ptr, w_rows, k0 // GROUP, num_groups, stride_sn,
                                    stride_sg, stride_zn, stride_zg, MODE)
        if MODE == ZERO_POINT:
            value -= zero.to(tl.float32)[:, None]
        part = _dot(value.to(dtype), x_t, INTERPRET) * scale[:, None]
    else:
        # Several groups per K-block: scale each weight, rounding it once to x's dtype.
        group = offs_k // GROUP
        scale = _group_tile(scales_ptr, w_rows, group, num_groups, stride_sn, stride_sg, 0.0)
        if MODE == ZERO_POINT:
            value -= _group_tile(zeros_ptr, w_rows, group, num_groups, stride_zn, stride_zg, 0)
        part = _dot((value * scale).to(dtype), x_t, INTERPRET)
    return part


@triton.jit
def _dot(a, b, INTERPRET: tl.constexpr):
    """a @ b with fp32 accumulation; fp32 operands multiply in full fp32, not TF32.

    Triton 3.6's CPU interpreter gets ``tl.dot`` of bf16 operands wrong, so
    there the operands (exact in fp32) are widened first: same products, same
    fp32 accumulation.  Compiled kernels use the tensor cores directly.
    """
    if INTERPRET or a.dtype == tl.float32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _norm_parts(h, rows, row_ok, offs_m, m_ok, gamma_ptr, scaled_ptr, parts_ptr, tile, tiles, tile_out, out_mask):
    """For an RMSNorm of h (M, N) read by later products (``NORM_PARTS``): this program's
    tile of h (fp32 [BLOCK_N, BLOCK_M], already rounded to x's dtype) gives
    ``scaled`` = (h * gamma).to(x's dtype) on the tile and its rows' sums of squares,
    one per row of x, at ``parts[m, tile]`` (fp32 (M, tiles)).  The product reading the
    norm's output adds a row's ``tiles`` sums and scales its result by
    rsqrt(sum / N + eps) (``_row_scale``)."""
    gamma = tl.load(gamma_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    tl.store(scaled_ptr + tile_out, (h * gamma[:, None]).to(scaled_ptr.dtype.element_ty), mask=out_mask)
    live = tl.where(row_ok[:, None], h, 0.0)
    tl.store(parts_ptr + offs_m * tiles + tile, tl.sum(live * live, axis=0), mask=m_ok)


@triton.jit
def _row_scale(parts_ptr, n_parts, norm_n, eps, x_rows, PARTS: tl.constexpr):
    """rsqrt(mean of squares + eps) (fp32 [BLOCK_M]) of each row of x, from the sums of
    squares of its ``n_parts`` tiles (fp32 (M, n_parts), ``_norm_parts``), added in a
    fixed order (the same in every program and launch)."""
    j = tl.arange(0, PARTS)
    sums = tl.load(parts_ptr + x_rows[None, :] * n_parts + j[:, None], mask=(j < n_parts)[:, None], other=0.0)
    return tl.rsqrt(tl.sum(sums, axis=0) / norm_n + eps)


@triton.jit
def _past_weight(pid_n, ws_ptr, ws_per_row, weight, following, BLOCK_N: tl.constexpr):
    """Tile ``pid_n`` of ``weight`` (codes, scales, zeros, bias, out, N), or, when it lies
    past that weight's tiles, of the ``following`` one: (its tile index, its workspace,
    its operands).  The workspace of ``weight`` (ws_per_row * N elements) comes first."""
    tiles = tl.cdiv(weight[5], BLOCK_N)
    if pid_n >= tiles:
        pid_n -= tiles
        ws_ptr += ws_per_row * weight[5]
        weight = following
    return pid_n, ws_ptr, weight


@triton.jit
def _scaled_plus_bias(acc, row_scale, bias_ptr, rows, row_ok, ROW_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr):
    """A product's fp32 sum [BLOCK_N, BLOCK_M] with each column scaled by ``row_scale``
    (ROW_SCALE > 0: the folded norm's) and then the bias added (HAS_BIAS)."""
    if ROW_SCALE > 0:
        acc *= row_scale[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    return acc


@triton.jit
def _silu_times(gate, up, dtype: tl.constexpr):
    """silu(gate) * up in ``dtype`` from fp32 sums, rounded as transformers' MLP rounds it
    (each product, the silu, then their product, to ``dtype``)."""
    g = gate.to(dtype).to(tl.float32)
    s = (g / (1.0 + tl.exp(-g))).to(dtype).to(tl.float32)
    return (s * up.to(dtype).to(tl.float32)).to(dtype)


@triton.jit
def gemv_kernel(
    x_ptr, codes_ptr, scales_ptr, zeros_ptr, table_ptr, bias_ptr, out_ptr, ws_ptr, counter_ptr, add_ptr,
    codes1_ptr, scales1_ptr, zeros1_ptr, bias1_ptr, out1_ptr,
    codes2_ptr, scales2_ptr, zeros2_ptr, bias2_ptr, out2_ptr,
    M, N, N1, N2, K, words_per_row, kpad_words, num_groups, stride_xm, stride_sn, stride_sg, stride_zn, stride_zg,
    BITS: tl.constexpr, GROUP: tl.constexpr, MODE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, BLOCKS_PER_SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr,
    INTERPRET: tl.constexpr, X_PAIRS: tl.constexpr = False, EVEN_K: tl.constexpr = False,
    PTX_GROUPS: tl.constexpr = 0, PTX_ASM: tl.constexpr = "", PTX_CONSTRAINTS: tl.constexpr = "",
    PTX_NATURAL: tl.constexpr = False, WEIGHTS: tl.constexpr = 1, PDL: tl.constexpr = PDL_OFF,
    UNROLL: tl.constexpr = 1, HAS_ADDEND: tl.constexpr = False,
    gamma_ptr=None, scaled_ptr=None, parts_out_ptr=None, NORM_PARTS: tl.constexpr = False,
    parts_in_ptr=None, n_parts=1, norm_n=1, eps=0.0, ROW_SCALE: tl.constexpr = 0, GLU: tl.constexpr = False,
):
    """out[m, n] (x's dtype) = x (M, K) @ W^T (+ bias), for WEIGHTS (1 to 3) weights at once.

    Weight w (0, 1, 2) is (codes, scales, zeros, bias, out) with suffix w (none for 0)
    and has N, N1, N2 rows: the first ceil(N / BLOCK_N) programs along axis 0 serve
    weight 0, the next ceil(N1 / BLOCK_N) weight 1, then weight 2.  The weights share
    K, the format and the table, and their scales and zeros share strides.
    ``scales`` and ``zeros`` are (N, num_groups), read through the given strides.
    With SPLIT_K > 1, ``ws`` is fp32 scratch of SPLIT_K * M * (N + N1 + N2) elements
    (weight w's (SPLIT_K, M, N_w) block after those of the weights before it) and
    ``counter`` int32 (grid_m * grid_n,) all zero at launch (and again after it).
    X_PAIRS: x's rows start 4-byte aligned and K is even, so the 4-bit path may
    read x two elements at a time.  EVEN_K: every K-block of every split lies
    inside K (K a multiple of BLOCK_K, the blocks a multiple of SPLIT_K), so
    loads along K need no mask.  PTX_GROUPS: see ``gemv.ptx_groups`` (0 in
    the interpreter, which cannot run PTX).  PDL: PDL_OFF, or launched with
    ``launch_pdl`` (Hopper on; never in the interpreter): wait for the previous
    kernel first, and let the next one launch right after that wait (PDL_EARLY)
    or after the K loop (PDL_LATE).
    UNROLL: K-blocks per loop iteration (``GemvConfig.unroll``); divides
    BLOCKS_PER_SPLIT.  HAS_ADDEND (one weight only): ``add`` (M, N) contiguous, in
    x's dtype, is added to the fp32 result before its one rounding (a residual
    connection folded into the product; see ``fusion``).
    An RMSNorm between two products (``fusion.fuse_rms_norm``), y = gamma * h *
    rsqrt(mean(h^2) + eps) with h this launch's result: NORM_PARTS (one weight only)
    also writes ``scaled`` (M, N) = (h * gamma) in x's dtype and ``parts_out`` fp32
    (M, tiles), each tile's sums of squares of h (``_norm_parts``); a launch reading
    such a ``scaled`` as x takes ROW_SCALE = a power of two >= ``n_parts`` (the
    producer's tiles, 0 otherwise) and multiplies each output column m by rsqrt(sum of
    row m of ``parts_in`` / ``norm_n`` + eps) before the bias (``_row_scale``).
    GLU (two weights of N rows, a gate and an up projection): ``out`` (M, N) = silu(x @
    gate^T) * (x @ up^T), the MLP's activation written by the launch of its products and
    nothing else.  Axis 0 has the tiles of one weight: each program reads tile t of both
    weights in its K loop, into two accumulators (the grid has half the programs, each
    twice the bytes), and writes silu(gate) * up (``_silu_times``); with SPLIT_K > 1,
    ``ws`` holds SPLIT_K * M * 2N elements (``split_k_triton.glu_split_k_sums``).
    """
    tl.static_assert(not HAS_ADDEND or WEIGHTS == 1)
    tl.static_assert(not NORM_PARTS or WEIGHTS == 1)
    tl.static_assert(not GLU or WEIGHTS == 2)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    tile = pid_m * tl.num_programs(0) + pid_n  # this program's split-K counter
    # which weight this program serves, and its tile index within that weight
    weight = (codes_ptr, scales_ptr, zeros_ptr, bias_ptr, out_ptr, N)
    if WEIGHTS > 1 and not GLU:
        pid_n, ws_ptr, weight = _past_weight(pid_n, ws_ptr, SPLIT_K * M, weight,
                                             (codes1_ptr, scales1_ptr, zeros1_ptr, bias1_ptr, out1_ptr, N1), BLOCK_N)
    if WEIGHTS > 2:
        pid_n, ws_ptr, weight = _past_weight(pid_n, ws_ptr, SPLIT_K * M, weight,
                                             (codes2_ptr, scales2_ptr, zeros2_ptr, bias2_ptr, out2_ptr, N2), BLOCK_N)
    codes_ptr, scales_ptr, zeros_ptr, bias_ptr, out_ptr, N = weight
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    # Loads read clamped rows (the last row of W, of x, again) instead of
    # masking: the extra rows are never stored, and the loads stay unmasked.
    w_rows = tl.minimum(rows, N - 1)
    x_rows = tl.minimum(offs_m, M - 1)
    dtype = x_ptr.dtype.element_ty
    # Launched as a programmatic dependent (``gemv.programmatic_launch``): this program
    # may start while the kernel before it still runs.  Nothing is read or written
    # before that kernel has finished (x, the split-K counters and workspace, and
    # buffers it may still read are all touched after the wait); then the next
    # kernel may launch (here or after the K loop), and it waits in turn before
    # touching what this one writes.
    pdl_wait(PDL)
    pdl_trigger(PDL, PDL_EARLY)
    row_scale = 1.0  # (unused without ROW_SCALE)
    if ROW_SCALE > 0:  # read first: the producer has finished (the wait above), and the sums are small
        row_scale = _row_scale(parts_in_ptr, n_parts, norm_n, eps, x_rows, ROW_SCALE)

    # Each split runs BLOCKS_PER_SPLIT K-blocks (a constexpr: fixed per layer
    # shape); without EVEN_K, blocks past the end of K load nothing, the loads
    # along K being masked.
    # Integer codes decode through PTX where the launcher says so
    # (PTX_GROUPS > 0: that many groups per K-block, kept apart in the product).
    PTX: tl.constexpr = PTX_GROUPS > 0
    SUB: tl.constexpr = PTX_GROUPS if PTX else 1
    acc = tl.zeros([BLOCK_N, SUB * BLOCK_M], dtype=tl.float32)
    up_acc = tl.zeros([BLOCK_N, SUB * BLOCK_M], dtype=tl.float32)  # GLU's second product
    if PTX and (MODE == TABLE or MODE == ROW_TABLE):
        table = _table_words(table_ptr, w_rows, MODE, dtype)  # in registers for the whole loop
    else:
        table = (w_rows,)  # unused
    # UNROLL consecutive K-blocks per iteration: the pipeline then fetches them in one
    # stage, so each row's bytes of those blocks are requested together (see
    # ``gemv.GemvConfig.unroll``).  The launcher makes UNROLL divide BLOCKS_PER_SPLIT.
    first = pid_k * BLOCKS_PER_SPLIT * BLOCK_K  # k of the split's first K-block
    AHEAD: tl.constexpr = PTX and UNROLL <= 2
    if AHEAD:
        # The group scales (and, for several groups per block, zero points) of the next
        # iteration's K-blocks are loaded one iteration ahead: plain loads, which the
        # pipeline does not stage.  With UNROLL > 2 each block loads its own in the loop.
        next0 = _ptx_params_pair(scales_ptr, zeros_ptr, scales1_ptr, zeros1_ptr, w_rows, first, num_groups,
                                 stride_sn, stride_sg, stride_zn, stride_zg, MODE, GROUP, SUB, BLOCK_M, GLU)
        next1 = next0
        if UNROLL == 2:
            next1 = _ptx_params_pair(scales_ptr, zeros_ptr, scales1_ptr, zeros1_ptr, w_rows, first + BLOCK_K,
                                     num_groups, stride_sn, stride_sg, stride_zn, stride_zg, MODE, GROUP, SUB,
                                     BLOCK_M, GLU)
    else:
        next0 = ((w_rows,), (w_rows,))  # unused
        next1 = next0
    for i in range(0, BLOCKS_PER_SPLIT, UNROLL):
        now0 = next0
        now1 = next1
        if AHEAD:
            # the last iteration loads its own blocks' again (never past the split)
            ahead = first + tl.minimum(i + UNROLL, BLOCKS_PER_SPLIT - UNROLL) * BLOCK_K
            next0 = _ptx_params_pair(scales_ptr, zeros_ptr, scales1_ptr, zeros1_ptr, w_rows, ahead, num_groups,
                                     stride_sn, stride_sg, stride_zn, stride_zg, MODE, GROUP, SUB, BLOCK_M, GLU)
            if UNROLL == 2:
                next1 = _ptx_params_pair(scales_ptr, zeros_ptr, scales1_ptr, zeros1_ptr, w_rows, ahead + BLOCK_K,
                                         num_groups, stride_sn, stride_sg, stride_zn, stride_zg, MODE, GROUP, SUB,
                                         BLOCK_M, GLU)
        for u in tl.static_range(UNROLL):
            k0 = first + (i + u) * BLOCK_K
            if PTX:
                if not AHEAD:
                    params = _ptx_params_pair(scales_ptr, zeros_ptr, scales1_ptr, zeros1_ptr, w_rows, k0, num_groups,
                                              stride_sn, stride_sg, stride_zn, stride_zg, MODE, GROUP, SUB, BLOCK_M,
                                              GLU)
                elif u == 0:
                    params = now0
                else:
                    params = now1
                acc += _ptx_block(codes_ptr, zeros_ptr, x_ptr, table, params[0], w_rows, x_rows, k0, K,
                                  words_per_row, kpad_words, num_groups, stride_xm, stride_zn, stride_zg, BITS, MODE,
                                  GROUP, SUB, BLOCK_M, BLOCK_K, EVEN_K, X_PAIRS, PTX_NATURAL, PTX_ASM,
                                  PTX_CONSTRAINTS, dtype)
                if GLU:
                    up_acc += _ptx_block(codes1_ptr, zeros1_ptr, x_ptr, table, params[1], w_rows, x_rows, k0, K,
                                         words_per_row, kpad_words, num_groups, stride_xm, stride_zn, stride_zg, BITS,
                                         MODE, GROUP, SUB, BLOCK_M, BLOCK_K, EVEN_K, X_PAIRS, PTX_NATURAL, PTX_ASM,
                                         PTX_CONSTRAINTS, dtype)
            else:
                acc += _generic_block(codes_ptr, scales_ptr, zeros_ptr, table_ptr, x_ptr, w_rows, x_rows, k0, K,
                                      words_per_row, kpad_words, num_groups, stride_xm, stride_sn, stride_sg,
                                      stride_zn, stride_zg, BITS, MODE, GROUP, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K,
                                      INTERPRET, dtype)
                if GLU:
                    up_acc += _generic_block(codes1_ptr, scales1_ptr, zeros1_ptr, table_ptr, x_ptr, w_rows, x_rows,
                                             k0, K, words_per_row, kpad_words, num_groups, stride_xm, stride_sn,
                                             stride_sg, stride_zn, stride_zg, BITS, MODE, GROUP, BLOCK_M, BLOCK_N,
                                             BLOCK_K, EVEN_K, INTERPRET, dtype)
    pdl_trigger(PDL, PDL_LATE)
    if SUB > 1:
        acc = tl.sum(tl.reshape(acc, [BLOCK_N, SUB, BLOCK_M]), axis=1)
        if GLU:
            up_acc = tl.sum(tl.reshape(up_acc, [BLOCK_N, SUB, BLOCK_M]), axis=1)
    out_mask = row_ok[:, None] & m_ok[None, :]
    tile_out = offs_m[None, :] * N + rows[:, None]
    if GLU:
        gate, up, last = glu_split_k_sums(acc, up_acc, ws_ptr, counter_ptr, tile, pid_k, tile_out, out_mask, M, N,
                                          SPLIT_K)
        if last:
            gate = _scaled_plus_bias(gate, row_scale, bias_ptr, rows, row_ok, ROW_SCALE, HAS_BIAS)
            up = _scaled_plus_bias(up, row_scale, bias1_ptr, rows, row_ok, ROW_SCALE, HAS_BIAS)
            tl.store(out_ptr + tile_out, _silu_times(gate, up, dtype), mask=out_mask)
    else:
        acc, last = split_k_sum(acc, ws_ptr, counter_ptr, tile, pid_k, tile_out, out_mask,
                                 M, N, SPLIT_K)
        if last:
            acc = _scaled_plus_bias(acc, row_scale, bias_ptr, rows, row_ok, ROW_SCALE, HAS_BIAS)
            if HAS_ADDEND:
                acc += tl.load(add_ptr + tile_out, mask=out_mask, other=0.0).to(tl.float32)
            h = acc.to(dtype)
            tl.store(out_ptr + tile_out, h, mask=out_mask)
            if NORM_PARTS:
                _norm_parts(h.to(tl.float32), rows, row_ok, offs_m, m_ok, gamma_ptr, scaled_ptr,
                            parts_out_ptr, pid_n, tl.num_programs(0), tile_out, out_mask)


settle_cache_keys(gemv_kernel)  # the same keys in every process (cache_keys.py)
