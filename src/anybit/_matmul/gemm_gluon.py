"""Gluon kernel for y = x @ W^T at larger M on Hopper, 4-bit integer codes, fp16:
the codes decoded straight into the register operand of the warpgroup MMA.

The Triton kernel (``gemm_triton``) decodes W in a layout of its own choosing and
converts it to the MMA's register layout through shared memory (a store, a
barrier and ``ldmatrix`` per K-block).  Gluon states layouts explicitly, so here
each thread reads exactly the codes its register fragment needs:

* In wgmma's A-operand layout (fp16, 2 values per register) thread lane l holds,
  of each 8 consecutive k of its rows, k = 2c and 2c + 1 with c = l % 4: in the
  pair-transposed layout of 4-bit codes (``anybit.packing``: word s of each chunk of
  32 codes holds the pairs 2s + 8i, i < 4, in byte i) that is all of word c of each
  chunk, so each lane reads one word per chunk and row (``_byte_layout``), and one
  short PTX sequence per byte i turns it into the register (code k - zero, code
  k + 1 - zero) * scale, k = 2c + 8i (``_NIBBLE_PAIR_ASM``)::

      word c = | byte 3 | byte 2 | byte 1 | byte 0 |     byte i = (n_{k+1}, n_k)
      prmt  -> | 0 byte_i | 0 byte_i |                   byte i in both halves
      lop3  -> half0 = 1024 + n_k, half1 = 1024 + 16 n_{k+1}   (fp16, exact)
      fma   -> (n_k - z, n_{k+1} - z)           times {1, 1/16} (a register) plus
                                                  {-(1024 + z), -(64 + z)}: exact
      mul   -> times the group's scale: the one rounding of each weight

  (8-bit codes: half c % 2 of words c // 2 and c // 2 + 2 of each 4-word chunk.)

  so each weight is rounded once, exactly as the Triton kernels round it.
* Per K-block: x [BLOCK_M, BLOCK_K] and the code words [BLOCK_N, BLOCK_K / 8]
  arrive by cp.async in an S-stage ring (rows past M and words past the row
  read as zeros); the words are read from shared memory, decoded, and the MMA
  ``W_tile (regs) @ x_tile^T (smem)`` is issued, then waited for before any
  register is written again: without that wait the next decode could overwrite
  the operand of an MMA in flight (triton-lang/triton#9433; ``OVERLAP`` keeps
  it in flight for measurements only).  Then the ring stage of the block just
  finished is refilled with block i + S - 1.
* Program ``(t, s)``: output tile t (BLOCK_N rows of W by BLOCK_M rows of x,
  numbered as in ``gemm_triton``), over the s-th of SPLIT_K ranges of K; the
  accumulator [BLOCK_N, BLOCK_M] fp32 stays in the MMA's registers and is
  written transposed into y (M, N), with the deterministic split-K fix-up of
  the other kernels.

Limits (``gemm.gluon_supported``): sm_90, 4-bit symmetric or zero-point codes,
fp16 x and scales, K-blocks a multiple of 64 inside one group.  Gluon kernels do
not run in Triton's interpreter: on the CPU the tests run the decode's PTX on an
emulator and check the operand layout and the launch rules (tests/test_gemm_gluon.py);
the kernel itself is checked on the GPU against float64 (tests/test_gemm_gluon_cuda.py).
"""

from __future__ import annotations

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    async_copy, fence_async_shared, warpgroup_mma, warpgroup_mma_wait,
)

from . import decode_ptx
from .cache_keys import settle_cache_keys
from .gemm_triton import tile_position
from .gemv_triton import PDL_EARLY, PDL_LATE, PDL_OFF, pdl_trigger, pdl_wait

#: cp.async global -> shared: ``async_load`` from the Tritons that have it (3.9 removed the
#: older name, 3.6 has only that)
_cp_async = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared

#: The mode ids of codes with zero points and of 4-bit codes looked up in a table per row
#: (decode_ptx; ``table_mode`` tells the table modes; any other mode here is symmetric).
ZERO_POINT = gl.constexpr(decode_ptx.ZERO_POINT)
ROW_TABLE = gl.constexpr(decode_ptx.ROW_TABLE)

#: A barrier of all threads of the CTA (bar.sync): ``barrier`` in newer Gluon, which
#: removed the older name ``thread_barrier``.
cta_barrier = getattr(gl, "barrier", None) or gl.thread_barrier


@triton.constexpr_function
def _rows_cols_layout(rows, cols, vec, num_warps):
    """A blocked layout for [rows, cols] with ``vec`` consecutive elements per thread along a row."""
    vec = min(vec, cols)
    along = min(cols // vec, 32)
    return gl.BlockedLayout([1, vec], [32 // along, along], [num_warps, 1], [1, 0])


@triton.constexpr_function
def _byte_layout(operand, bits=4, natural=False):
    """The layout of [R, K * bits / 32, 16 / bits] (row, 32-bit word of codes, code pair)
    that, after a join of two values per pair (``decode_operand``: and for 4 bits the
    permutation back to k order) and a reshape to [R, K], is the MMA's register operand
    ``operand`` (a DistributedLinearLayout of [R, K] whose first register basis is k + 1);
    ``bits``: 4 (pairs are the bytes of a word of 8 codes, stored pair-transposed:
    ``anybit.packing``) or 8 (the 16-bit halves of a word of 4 codes); with ``natural``, a
    word of 32 / bits codes in k order (pieces of other widths, ``ws_pieces``: 1, 2 or 4).

    The A operand of wgmma gives each thread the codes 2c, 2c + 1 of every 8 along k
    (c: lane % 4): all four bytes of 4-bit word c of each chunk of 32 codes (k's bits 1
    and 2 pick the word, bits 3 and 4 the byte), half c % 2 of 8-bit word c // 2; so
    the pairs come straight from the words, each 4-bit word read by one lane."""
    per_word = 32 // bits

    def pair_basis(b):
        n, k = b
        if k % 2:
            raise ValueError(f"operand layout {operand}: no register basis but the first may cross a code pair")
        if bits == 4 and k < 32 and not natural:  # inside a chunk: k = 8 i + 2 s + h is byte i of word s
            return [n, k // 2, 0] if k < 8 else [n, 0, k // 8]
        return [n, k // per_word, (k // 2) % (per_word // 2)]
    if operand.reg_bases[0] != [0, 1]:
        raise ValueError(f"operand layout {operand}: its first register basis must pair codes 2c, 2c + 1")
    rows, k = operand.shape
    return gl.DistributedLinearLayout([pair_basis(b) for b in operand.reg_bases[1:]],
                                      [pair_basis(b) for b in operand.lane_bases],
                                      [pair_basis(b) for b in operand.warp_bases], [],
                                      [rows, k // per_word, per_word // 2])


@triton.constexpr_function
def _code_smem(words):
    """The shared layout of a ring stage's code words [BLOCK_N, words]: a warp's read takes
    one word of a 4-word chunk per lane from 8 rows, so a row's chunks are XOR-swizzled by
    row (chunk q of row r at q ^ (r // per_phase) % max_phase) to put those 32 words in 32
    banks (without it, 128-code K-blocks read them four to a bank)."""
    return gl.SwizzledSharedLayout(vec=4, per_phase=max(1, 32 // words), max_phase=max(1, words // 4), order=[1, 0])


#: byte (0..3) of a word of 8 4-bit codes -> fp16 pair (low nibble - zero, high nibble - zero) * scale:
#: the byte into both halves (prmt), each nibble ORed into 1024.0 (the high one times 16),
#: then one packed fma by $6 = {1, 1/16} (``NIBBLE_MUL``) plus the bias {-(1024 + zero),
#: -(64 + zero)} (exact), then the scale.
_NIBBLE_PAIR_ASM = gl.constexpr("""{
.reg .b32 t;
prmt.b32 t, $2, 0, $3;
lop3.b32 t, t, 0x00f0000f, 0x64006400, 0xea;
fma.rn.f16x2 t, t, $6, $4;
mul.rn.f16x2 t, t, $5;
mov.b32 {$0, $1}, t;
}""")

#: ``_NIBBLE_PAIR_ASM`` without the scale: the exact pair (low nibble - zero, high nibble - zero),
#: for formats with one scale per row, applied to the fp32 sum instead (``decode_operand``).
_NIBBLE_PAIR_UNSCALED_ASM = gl.constexpr(_NIBBLE_PAIR_ASM.value.replace("mul.rn.f16x2 t, t, $5;\n", ""))


@triton.constexpr_function
def _half_scale(asm):
    """``asm`` with its scale operand $5 an fp16 value (constraint "h") instead of the pair word
    {s, s}: the pair made in the asm, which ptxas folds into the multiply's operand (HMUL2 ...,
    R.H0_H0), so the kernel needs no integer multiply a row and block to build the word
    (docs/NOTES-gemm.md v48)."""
    return asm.replace(".reg .b32 t;", ".reg .b32 t, sc;").replace(
        "mul.rn.f16x2 t, t, $5;", "mov.b32 sc, {$5, $5};\nmul.rn.f16x2 t, t, sc;")


#: The fp16 pair {1.0, 1/16} that ``_NIBBLE_PAIR_ASM``'s fma multiplies by (high half 0x2c00).
NIBBLE_MUL = gl.constexpr(0x2C003C00)


@gluon.jit
def nibble_multiplier(runtime):
    """``NIBBLE_MUL`` as a value the compiler cannot fold, for ``decode_operand``: ``runtime``
    is any int32 the kernel gets at launch that is never negative (a size), so
    ``runtime >> 31`` is 0.  As an immediate, ptxas would move the pair into a register
    before every fma where the fma's immediate slot already holds the bias (symmetric
    codes): 23 of 217 instructions a 64 x 128 K-block of a consumer warpgroup's loop
    (docs/NOTES-gemm.md v22); held in one register they are gone."""
    return NIBBLE_MUL + (runtime >> 31)


#: half (0, 1) of a word of 4 8-bit codes -> fp16 pair (code 2h - zero, code 2h+1 - zero) * scale:
#: the two bytes under the exponent byte 0x64 (prmt: 1024 + code, exact), plus the bias
#: {-(1024 + zero)} twice (exact), then the scale.
_BYTE_PAIR_ASM = gl.constexpr("""{
.reg .b32 t;
prmt.b32 t, $2, 0x64646464, $3;
add.rn.f16x2 t, t, $4;
mul.rn.f16x2 t, t, $5;
mov.b32 {$0, $1}, t;
}""")

#: ``_BYTE_PAIR_ASM`` without the scale: the exact pair (code 2h - zero, code 2h+1 - zero).
_BYTE_PAIR_UNSCALED_ASM = gl.constexpr(_BYTE_PAIR_ASM.value.replace("mul.rn.f16x2 t, t, $5;\n", ""))


#: byte c of a word of 8 4-bit codes -> fp16 pair (T[low nibble], T[high nibble]) * scale, for a
#: 16-entry table T (NF4's levels, or a row's) given as ``decode_ptx.table_words``' eight words
#: ($7 .. $14: the low bytes of entries 0-3, 4-7, 8-11, 12-15, then their high bytes)::
#:
#:     m  = (word & 0x77777777) >> $3          nibbles of half $3 / 16 of the word, bit 3 cleared
#:     la = prmt(L0, L1, m), lb = prmt(L2, L3, m)     low bytes of entries (n & 7), (n & 7) + 8
#:     k  = prmt(word << 4, word, $4)           0xFF where the nibble's bit 3 is set (sign bytes)
#:     lo = k ? lb : la,  hi likewise from the high bytes          (lop3)
#:     pair = prmt(lo, hi, $6)                  byte c's two entries as (low, high) halves
#:
#: then times the scale $5.  For both bytes of a half everything but the last prmt and the
#: multiply is the same instructions on the same operands, which ptxas computes once: 25
#: instructions a word of 8 codes (the integer decode: 16).
_TABLE_PAIR_ASM = gl.constexpr("""{
.reg .b32 t;
.reg .b32 m, u, la, lb, ha, hb, k, lo, hi;
and.b32 m, $2, 0x77777777;
shr.b32 m, m, $3;
shl.b32 u, $2, 4;
prmt.b32 la, $7, $8, m;
prmt.b32 lb, $9, $10, m;
prmt.b32 ha, $11, $12, m;
prmt.b32 hb, $13, $14, m;
prmt.b32 k, u, $2, $4;
lop3.b32 lo, la, lb, k, 0xD8;
lop3.b32 hi, ha, hb, k, 0xD8;
prmt.b32 t, lo, hi, $6;
mul.rn.f16x2 t, t, $5;
mov.b32 {$0, $1}, t;
}""")

#: ``_TABLE_PAIR_ASM`` without the scale: the table's entries themselves (rounded to fp16).
_TABLE_PAIR_UNSCALED_ASM = gl.constexpr(_TABLE_PAIR_ASM.value.replace("mul.rn.f16x2 t, t, $5;\n", ""))

#: ``_TABLE_PAIR_ASM``'s $4 for half h of a word (prmt's sign bytes of nibbles 4h .. 4h + 3) and
#: its $6 for byte c within its half (c % 2: the entries of bytes 0 and 1 of the lookups).
_SIGNS0, _SIGNS1, _PAIRS0, _PAIRS1 = (gl.constexpr(v) for v in (0xD9C8, 0xFBEA, 0x5140, 0x7362))
TABLE_SIGNS = (_SIGNS0.value, _SIGNS1.value)
TABLE_PAIRS = (_PAIRS0.value, _PAIRS1.value)


@triton.constexpr_function
def table_mode(mode):
    """Whether the decode mode id ``mode`` looks 4-bit codes up in a table (``decode_ptx.TABLE_MODES``)."""
    return mode in decode_ptx.TABLE_MODES


@gluon.jit
def table_pair_operands(select):
    """``_TABLE_PAIR_ASM``'s per-byte operands ($3, $4, $6) from ``pair_select``'s 4-bit
    selectors (byte c = select & 3): constants the compiler folds."""
    c = select & 3
    half = c >> 1
    return half * 16, _SIGNS0 + half * (_SIGNS1 - _SIGNS0), _PAIRS0 + (c & 1) * (_PAIRS1 - _PAIRS0)


@gluon.jit
def table_words(table_ptr, rows, ROW_TABLE: gl.constexpr):
    """The eight int32 [R] words of ``decode_ptx.table_words`` for each of ``rows`` (int32 [R]):
    row r's 16 entries at ``table_ptr + 16 r`` (ROW_TABLE, a (N, 16) table), else the one
    table of 16 entries for every row; entries rounded to fp16 (round to nearest even)."""
    lo0, hi0 = _table_word(table_ptr, rows, 0, ROW_TABLE)
    lo1, hi1 = _table_word(table_ptr, rows, 1, ROW_TABLE)
    lo2, hi2 = _table_word(table_ptr, rows, 2, ROW_TABLE)
    lo3, hi3 = _table_word(table_ptr, rows, 3, ROW_TABLE)
    return lo0, lo1, lo2, lo3, hi0, hi1, hi2, hi3


@gluon.jit
def _table_word(table_ptr, rows, w: gl.constexpr, ROW_TABLE: gl.constexpr):
    """Entries 4w .. 4w + 3 of each row's table as (low bytes, high bytes), int32 [R] each,
    entry 4w + i in byte i.  The one table is read by scalar loads, so every row holds the
    same registers."""
    lo = rows * 0
    hi = rows * 0
    for i in gl.static_range(4):
        if ROW_TABLE:
            entry = gl.load(table_ptr + rows * 16 + (4 * w + i))
        else:
            entry = gl.load(table_ptr + (4 * w + i))
        bits = entry.to(gl.float16).to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
        lo = lo | (bits & 0xFF) << (8 * i)
        hi = hi | (bits >> 8) << (8 * i)
    return lo, hi


@gluon.jit
def pair_select(pair, BITS: gl.constexpr = 4):
    """The prmt selector of ``decode_operand``'s pair ``pair`` of a word: 4 bits, byte c into
    both halves over zero bytes (0x4040 | c * 0x101); 8 bits, bytes 2h and 2h + 1 into the
    low bytes of the halves under 0x64 bytes (0x4140 + h * 0x202)."""
    if BITS == 8:
        return 0x4140 + pair * 0x202
    return 0x4040 | (pair * 0x101)


@gluon.jit
def decode_operand(words, select, bias, scale, mul, ROWS: gl.constexpr, BLOCK_K: gl.constexpr,
                   a_layout: gl.constexpr, BITS: gl.constexpr = 4, SCALED: gl.constexpr = True, table=None,
                   TABLE: gl.constexpr = False):
    """Code words [ROWS, BLOCK_K * BITS / 32] (int32, in ``_byte_layout``'s word layout)
    -> wgmma's register operand [ROWS, BLOCK_K] fp16 (``a_layout``): pair ``select``
    (``pair_select``) of each word by ``_NIBBLE_PAIR_ASM`` (4 bits; ``mul``: int32 scalar,
    ``nibble_multiplier``) or ``_BYTE_PAIR_ASM`` (8 bits; ``mul`` unused) with each row's
    ``bias`` and ``scale`` words (``group_words``; ``scale`` may instead be each row's fp16
    scale itself, ``_half_scale``; either may be per row and word, [ROWS, words], ``_rows3``).
    4-bit pairs come in the stored order (byte i of word s of a chunk: k = 8 i + 2 s) and
    are permuted to k order, which moves no data (``_byte_layout`` put each value where the
    MMA wants it).  Without SCALED the operand is the exact code - zero
    (``_BYTE_PAIR_UNSCALED_ASM``, ``_NIBBLE_PAIR_UNSCALED_ASM``; ``scale`` unused): for one
    scale per row, applied to the product's fp32 sum.  TABLE (4 bits):
    each code looked up in its row's table instead (``table``: ``table_words``' eight int32 [ROWS];
    ``_TABLE_PAIR_ASM``; ``bias`` and ``mul`` unused)."""
    words3 = gl.broadcast(gl.expand_dims(words, 2), select)[0]
    sel3 = gl.broadcast(words3, select)[1]
    bias3 = _rows3(words3, bias)
    scale3 = _rows3(words3, scale)
    HALF: gl.constexpr = scale.dtype == gl.float16
    S: gl.constexpr = "h" if HALF else "r"  # the scale's constraint (no asm reads it unscaled)
    if TABLE:
        gl.static_assert(BITS == 4, "table codes are 4 bits wide")
        shift, signs, place = table_pair_operands(sel3)
        asm: gl.constexpr = _TABLE_PAIR_ASM if SCALED else _TABLE_PAIR_UNSCALED_ASM
        asm2: gl.constexpr = _half_scale(asm) if HALF and SCALED else asm
        lo, hi = gl.inline_asm_elementwise(
            asm2, "=h,=h,r,r,r," + S + ",r,r,r,r,r,r,r,r,r",
            [words3, shift, signs, scale3, place, _rows3(words3, table[0]), _rows3(words3, table[1]),
             _rows3(words3, table[2]), _rows3(words3, table[3]), _rows3(words3, table[4]),
             _rows3(words3, table[5]), _rows3(words3, table[6]), _rows3(words3, table[7])],
            dtype=(gl.float16, gl.float16), is_pure=True, pack=1)
    elif BITS == 8:
        asm: gl.constexpr = _BYTE_PAIR_ASM if SCALED else _BYTE_PAIR_UNSCALED_ASM
        asm2: gl.constexpr = _half_scale(asm) if HALF and SCALED else asm
        lo, hi = gl.inline_asm_elementwise(asm2, "=h,=h,r,r,r," + S, [words3, sel3, bias3, scale3],
                                           dtype=(gl.float16, gl.float16), is_pure=True, pack=1)
    else:
        mul3 = words3 * 0 + mul
        asm: gl.constexpr = _NIBBLE_PAIR_ASM if SCALED else _NIBBLE_PAIR_UNSCALED_ASM
        asm2: gl.constexpr = _half_scale(asm) if HALF and SCALED else asm
        lo, hi = gl.inline_asm_elementwise(asm2, "=h,=h,r,r,r," + S + ",r", [words3, sel3, bias3, scale3, mul3],
                                           dtype=(gl.float16, gl.float16), is_pure=True, pack=1)
    pairs = gl.join(lo, hi)  # [ROWS, words, pairs, 2]
    if BITS == 4:  # [ROWS, chunk, s, i, h] -> [ROWS, chunk, i, s, h]: k = 32 chunk + 8 i + 2 s + h
        pairs = gl.permute(gl.reshape(pairs, [ROWS, BLOCK_K // 32, 4, 4, 2]), (0, 1, 3, 2, 4))
    return gl.convert_layout(gl.reshape(pairs, [ROWS, BLOCK_K]), a_layout)


@gluon.jit
def _rows3(words3, values):
    """Per-row values [ROWS] (or per row and word: [ROWS, words] or [ROWS, 1], in the words'
    layout) broadcast to ``words3``' shape [ROWS, words, pairs]."""
    if len(values.shape) == 1:
        values = gl.expand_dims(values, 1)
    return gl.broadcast(words3, gl.expand_dims(values, 2))[1]


@gluon.jit
def _issue_loads(x_ptr, codes_ptr, x_buf, c_buf, x_rows, x_cols, c_rows, c_cols, k0, K, stride_xm, words_per_row,
                 x_ok, valid):
    """cp.async the K-block at k0: x [BLOCK_M, BLOCK_K] and the code words [BLOCK_N, BLOCK_K / 8]."""
    kx = k0 + x_cols
    _cp_async(
        x_buf, x_ptr + x_rows[:, None] * stride_xm + kx[None, :], mask=x_ok & (kx < K)[None, :] & valid)
    word = k0 // 8 + c_cols
    _cp_async(
        c_buf, codes_ptr + c_rows[:, None] * words_per_row + word[None, :],
        mask=(c_rows >= 0)[:, None] & (word < words_per_row)[None, :] & valid)
    async_copy.commit_group()


@gluon.jit
def _pair_words(lo, hi):
    """Two fp16 [R] -> int32 [R]: lo in the low half, hi in the high half."""
    lo = lo.to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
    hi = hi.to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
    return lo | (hi << 16)


#: The decode's bias word of an integer zero point z (``group_words``): BIAS_BASE + z * BIAS_STEP
#: holds the fp16 pair (-(1024 + z), -(64 + z)) for 4-bit codes, z < 16 (low half 0xE400 + z:
#: fp16's ulp at 1024 is 1; high half 0xD400 + 16 z: its ulp at 64 is 1/16), and (-(1024 + z),
#: -(1024 + z)) for 8-bit codes, z < 256; as int32 (the bases' top bit set: negative).
BIAS_BASE = {4: 0xD400E400 - (1 << 32), 8: 0xE400E400 - (1 << 32)}
BIAS_STEP = {4: 0x00100001, 8: 0x00010001}


@triton.constexpr_function
def _bias_word(bits, part):
    """``BIAS_BASE[bits]`` (part "base") or ``BIAS_STEP[bits]`` (part "step"), for the kernels."""
    return (BIAS_BASE if part == "base" else BIAS_STEP)[bits]


@gluon.jit
def group_params(scales_ptr, zeros_ptr, rows, group, num_groups, stride_sn, stride_sg, stride_zn, stride_zg,
                 MODE: gl.constexpr, BITS: gl.constexpr = 4):
    """The loads of ``group``'s parameters per row: (scale fp16 [R], zero point int32 [R]:
    the format's uint8 zero point, 2^(BITS-1) when symmetric, 0 past the last group)."""
    ok = (rows >= 0) & (group < num_groups)
    scale = gl.load(scales_ptr + rows * stride_sn + group * stride_sg, mask=ok, other=0).to(gl.float16)
    if MODE == ZERO_POINT:
        zero = gl.load(zeros_ptr + rows * stride_zn + group * stride_zg, mask=ok, other=0).to(gl.int32)
    else:
        zero = rows * 0 + (1 << (BITS - 1))  # symmetric: offset-binary codes
    return scale, zero


@gluon.jit
def bias_word(zero, BITS: gl.constexpr = 4):
    """The decode's bias word of each row's zero point (``group_params``' int32 [R]): the pair
    -(1024 + z), -(64 + z) for 4 bits, -(1024 + z) twice for 8, by one integer multiply-add
    (``BIAS_BASE``; through fp32 and two conversions it took ~9% more instructions in the
    zero-point kernel, docs/NOTES-gemm.md v37)."""
    return zero * _bias_word(BITS, "step") + _bias_word(BITS, "base")


@gluon.jit
def group_words(scale, zero, BITS: gl.constexpr = 4):
    """The decode's per-row words from ``group_params``' values: (``bias_word``, scale pair),
    int32 [R]."""
    return bias_word(zero, BITS), _pair_words(scale, scale)


@gluon.jit
def _group_words(scales_ptr, zeros_ptr, rows, group, num_groups, stride_sn, stride_sg, stride_zn, stride_zg,
                 MODE: gl.constexpr):
    """The decode's per-row words for ``group`` (``group_params``, then ``group_words``)."""
    scale, zero = group_params(scales_ptr, zeros_ptr, rows, group, num_groups, stride_sn, stride_sg, stride_zn,
                               stride_zg, MODE)
    return group_words(scale, zero)


@gluon.jit
def gemm_gluon_kernel(
    x_ptr, codes_ptr, scales_ptr, zeros_ptr, bias_ptr, out_ptr, ws_ptr, counter_ptr,
    M, N, K, words_per_row, num_groups, stride_xm, stride_sn, stride_sg, stride_zn, stride_zg,
    GROUP: gl.constexpr, MODE: gl.constexpr,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, SWIZZLE: gl.constexpr,
    SPLIT_K: gl.constexpr, BLOCKS_PER_SPLIT: gl.constexpr, STAGES: gl.constexpr, HAS_BIAS: gl.constexpr,
    num_warps: gl.constexpr, OVERLAP: gl.constexpr = False, PDL: gl.constexpr = PDL_OFF,
):
    """out (M, N) fp16 = x (M, K) fp16 @ W^T (+ bias), W of 4-bit codes (symmetric or with
    zero points, fp16 scales); operands and PDL as ``gemm_triton.gemm_kernel``'s.
    Grid: (tiles, SPLIT_K); num_warps = 4 * (BLOCK_N // 64)."""
    pdl_wait(PDL)
    pdl_trigger(PDL, PDL_EARLY)
    W: gl.constexpr = BLOCK_K // 8  # code words of a row per K-block

    pid = gl.program_id(0)
    pid_k = gl.program_id(1)
    pid_n, pid_m = tile_position(pid, M, N, BLOCK_M, BLOCK_N, SWIZZLE)

    # layouts: the MMA's accumulator and register operand; the operand's code bytes and
    # words (byte_layout); cp.async tiles of x and of the words (16 bytes per thread)
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                         instr_shape=[16, BLOCK_M, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
    byte_layout: gl.constexpr = _byte_layout(gl.to_linear_layout(a_layout, [BLOCK_N, BLOCK_K]))
    word_layout: gl.constexpr = gl.SliceLayout(2, byte_layout)
    row_layout: gl.constexpr = gl.SliceLayout(1, word_layout)
    x_layout: gl.constexpr = _rows_cols_layout(BLOCK_M, BLOCK_K, 8, num_warps)
    w_copy_layout: gl.constexpr = _rows_cols_layout(BLOCK_N, W, 4, num_warps)
    x_smem: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=min(128, 2 * BLOCK_K), element_bitwidth=16,
                                                rank=2)
    c_smem: gl.constexpr = _code_smem(W)

    x_bufs = gl.allocate_shared_memory(gl.float16, [STAGES, BLOCK_M, BLOCK_K], x_smem)
    c_bufs = gl.allocate_shared_memory(gl.int32, [STAGES, BLOCK_N, W], c_smem)

    # clamped rows (x's, W's last row again) keep loads in bounds; never stored
    x_index = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, x_layout))
    x_rows = gl.minimum(x_index, M - 1)
    x_cols = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, x_layout))
    x_ok = (x_index < M)[:, None]
    c_rows = gl.minimum(pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, w_copy_layout)), N - 1)
    c_cols = gl.arange(0, W, layout=gl.SliceLayout(0, w_copy_layout))
    w_rows = gl.minimum(pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=row_layout), N - 1)
    byte = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(0, byte_layout)))
    select = gl.expand_dims(gl.expand_dims(pair_select(byte), 0), 0)  # prmt: byte b into both halves

    k_first = pid_k * BLOCKS_PER_SPLIT * BLOCK_K
    for s in gl.static_range(STAGES - 1):
        _issue_loads(x_ptr, codes_ptr, x_bufs.index(s), c_bufs.index(s), x_rows, x_cols, c_rows, c_cols,
                     k_first + s * BLOCK_K, K, stride_xm, words_per_row, x_ok, s < BLOCKS_PER_SPLIT)
    # the decode's words for the group of the first K-block; then always one block ahead
    bias, scale = _group_words(scales_ptr, zeros_ptr, w_rows, k_first // GROUP, num_groups, stride_sn, stride_sg,
                               stride_zn, stride_zg, MODE)

    mul = nibble_multiplier(N)
    acc = gl.zeros([BLOCK_N, BLOCK_M], dtype=gl.float32, layout=acc_layout)
    a_prev = gl.zeros([BLOCK_N, BLOCK_K], dtype=gl.float16, layout=a_layout)
    for i in range(BLOCKS_PER_SPLIT):
        k0 = k_first + i * BLOCK_K
        st = i % STAGES
        next_bias, next_scale = _group_words(scales_ptr, zeros_ptr, w_rows, (k0 + BLOCK_K) // GROUP, num_groups,
                                             stride_sn, stride_sg, stride_zn, stride_zg, MODE)
        # block i's copies (this thread's) have landed; then everyone's, visible to the MMA
        async_copy.wait_group(STAGES - 2)
        fence_async_shared()
        cta_barrier()
        a = decode_operand(c_bufs.index(st).load(word_layout), select, bias, scale, mul, BLOCK_N, BLOCK_K, a_layout)
        pending = warpgroup_mma(a, x_bufs.index(st).permute((1, 0)), acc, is_async=True)
        if OVERLAP:
            # measurement only: MMA(i) left in flight over the next decode, which may
            # overwrite its register operand (nothing in the PTX keeps ptxas from it)
            acc, a_prev = warpgroup_mma_wait(num_outstanding=1, deps=(pending, a_prev))
            a_prev = a
        else:
            # MMA(i) done before any register is written again: race-free by construction
            acc, a = warpgroup_mma_wait(num_outstanding=0, deps=(pending, a))
        # MMA(i-1) is done: refill its stage (block i's stage is refilled in the next iteration)
        j = i + STAGES - 1
        sj = j % STAGES
        _issue_loads(x_ptr, codes_ptr, x_bufs.index(sj), c_bufs.index(sj), x_rows, x_cols, c_rows, c_cols,
                     k_first + j * BLOCK_K, K, stride_xm, words_per_row, x_ok, j < BLOCKS_PER_SPLIT)
        bias = next_bias
        scale = next_scale
    acc, a_prev = warpgroup_mma_wait(num_outstanding=0, deps=(acc, a_prev))
    async_copy.wait_group(0)
    pdl_trigger(PDL, PDL_LATE)

    rows = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, acc_layout))
    offs_m = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, acc_layout))
    out_mask = (rows < N)[:, None] & (offs_m < M)[None, :]
    tile_out = offs_m[None, :] * N + rows[:, None]
    last = True
    if SPLIT_K > 1:
        gl.store(ws_ptr + pid_k * M * N + tile_out, acc, mask=out_mask)
        cta_barrier()
        arrived = gl.atomic_add(counter_ptr + pid, 1, sem="acq_rel", scope="gpu")
        last = arrived == SPLIT_K - 1
        if last:
            acc = gl.zeros([BLOCK_N, BLOCK_M], dtype=gl.float32, layout=acc_layout)
            for part in range(SPLIT_K):
                acc += gl.load(ws_ptr + part * M * N + tile_out, mask=out_mask, other=0.0, cache_modifier=".cg")
            gl.atomic_xchg(counter_ptr + pid, 0, sem="relaxed", scope="gpu")
    if last:
        if HAS_BIAS:
            acc += gl.load(bias_ptr + rows, mask=rows < N, other=0.0).to(gl.float32)[:, None]
        gl.store(out_ptr + tile_out, acc.to(gl.float16), mask=out_mask)


settle_cache_keys(gemm_gluon_kernel)  # the same keys in every process (cache_keys.py)
