"""Integer codes of 1, 2, 3, 5, 6 or 7 bits in the warp-specialized kernel (``gemm_gluon_ws``).

Such a code is stored as pieces of 4, 2 and 1 bits (``anybit.packing``), widest first, each
piece holding the code's next-higher bits; each piece of a row is a run of whole words in k
order, the pieces end to end::

    row n of the codes (int32 words), K_pad = K rounded up to 32:
    | piece 0: K_pad * w0 / 32 words | piece 1: K_pad * w1 / 32 | ...      3 bits: w = (2, 1)
    code bits  | piece 2 (high) | piece 1 | piece 0 (low, from bit 0) |    7 bits: (4, 2, 1)

The kernel copies each piece of a K-block by TMA into a ring buffer of its own (one
descriptor per piece, its box [rows, BLOCK_K * w / 32] words, at least 16 bytes: a 1-bit
piece needs K-blocks of 128; the piece's place in the row added to the copy's column) and
decodes all pieces of a weight pair into one register of the MMA's operand.  In wgmma's
A-operand layout, lane l holds k = 2c, 2c + 1 of every 8 (c = l % 4); in a word of 32 / w
codes in k order those are the bit fields starting at 2wc + 8wj, so once each word is
shifted right by 2wc (per lane, once per word) pair j of the word lies at the bottom of
byte wj (``_piece_words``).  Per pair of codes and piece (``_piece_asm``)::

    prmt  -> | 0 byte | 0 byte |                the pair's byte in both halves
    lop3  -> half0 = 1024 + lo, half1 = 1024 + hi * 2^w      (mask, OR 0x6400: exact)
    fma   -> times {1, 2^-w} plus {-(1024 + z), -(2^(10 - w) + z)} for piece 0 (z: the zero
             point, ``piece_bias``), plus {-1024, -2^(10 - w)} for the others: exact
    fma   -> (pieces above 0) times their place {2^o, 2^o} (o: the bits below the piece)
             added to piece 0's pair: exact, all values integers below 256 in magnitude

then one multiply by the group's scale, the one rounding of each weight, as the other
kernels round it.  About 8.75 instructions a pair of 3-bit codes against 4 for the 4-bit
decode (``ws_settings.decode_cost``, which the performance model scales its per-weight
term by).
"""

from __future__ import annotations

import math

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from .. import packing

from .gemm_gluon import _byte_layout, _rows3

#: Code widths the warp-specialized kernel decodes one word at a time (its original paths).
WHOLE_WORD_BITS = (4, 8)


#: ``anybit.packing.pieces`` as the kernels (and this module's compile-time helpers) call it
pieces = triton.constexpr_function(packing.pieces)


@triton.constexpr_function
def piece_path(bits):
    """Whether ``bits``-bit codes take this module's decode (all widths but 4 and 8)."""
    return bits not in WHOLE_WORD_BITS


@triton.constexpr_function
def piece_count(bits):
    """Pieces of a ``bits``-bit code (``anybit.packing.pieces``; 1 for 4 and 8 bits)."""
    return len(pieces(bits))


@triton.constexpr_function
def piece_width(bits, i):
    """Width of piece ``i`` of a ``bits``-bit code (widest first)."""
    return pieces(bits)[i]


@triton.constexpr_function
def piece_offset(bits, i):
    """Where piece ``i`` starts in a row of codes, in units of K_pad / 32 words."""
    return sum(pieces(bits)[:i])


@triton.constexpr_function
def _half(value):
    """The fp16 bits of a power of two (or its negative) between 2^-14 and 2^15."""
    return (0x8000 if value < 0 else 0) | (math.frexp(abs(value))[1] - 1 + 15) << 10


@triton.constexpr_function
def piece_words(bits, i):
    """(mask, multiplier, bias, place) int32 words of piece ``i``'s ``_piece_asm`` step: the
    mask of the pair's two fields in the halves, the fp16 pairs {1, 2^-w} and {-1024,
    -2^(10 - w)} (the lowest piece's bias holds the zero point instead: ``piece_bias``) that
    make the pair's exact values, and {2^o, 2^o} that places them in the code."""
    widths = pieces(bits)
    w, o = widths[i], sum(widths[:i])
    field = (1 << w) - 1
    mask = field | (field << (16 + w))
    mul = _half(1.0) | _half(2.0 ** -w) << 16
    bias = _half(-1024.0) | _half(-(2.0 ** (10 - w))) << 16
    return mask, mul, bias - (1 << 32), _half(2.0 ** o) * 0x10001


@triton.constexpr_function
def piece_multiplier(bits, i):
    """``piece_words``' multiplier of piece ``i``, for the kernel."""
    return piece_words(bits, i)[1]


@triton.constexpr_function
def piece_high_bias(bits, i):
    """``piece_words``' bias of piece ``i`` (a piece above the lowest), for the kernel."""
    return piece_words(bits, i)[2]


@triton.constexpr_function
def piece_place(bits, i):
    """``piece_words``' place of piece ``i``, for the kernel."""
    return piece_words(bits, i)[3]


@triton.constexpr_function
def piece_bias(bits, part):
    """The lowest piece's (piece 0's) bias word is base + z * step for zero point z: the fp16
    pair {-(1024 + z), -(2^(10 - w) + z)} (w its width; ulps 1 and 2^-w there, while z < 2^(10 - w):
    ``_zero_bias``).  ``part``: "base" or "step"."""
    w = pieces(bits)[0]
    if part == "step":
        return 1 | 1 << (16 + w)
    return (0xE400 | (0x8000 | (25 - w) << 10) << 16) - (1 << 32)


@triton.constexpr_function
def _piece_asm(count, scaled):
    """The decode of one pair of codes from ``count`` pieces: operands $2 + 5i .. $6 + 5i are
    piece i's (shifted word, prmt selector, multiplier, bias, place), its mask an immediate in
    the text (``MASK{i}``, replaced by the caller's); then the fp16 scale, read if ``scaled``.
    Piece 0 holds the code's low bits and subtracts the zero point; each piece above it is
    added times its place (one fma, exact)."""
    lines = ["{", ".reg .b32 " + ", ".join(f"t{i}" for i in range(count)) + ", sc;"]
    scale = f"${2 + 5 * count}"
    for i in range(count):
        word, sel, mul, bias, place = (f"${2 + 5 * i + j}" for j in range(5))
        lines += [f"prmt.b32 t{i}, {word}, 0, {sel};", f"lop3.b32 t{i}, t{i}, MASK{i}, 0x64006400, 0xea;",
                  f"fma.rn.f16x2 t{i}, t{i}, {mul}, {bias};"]
        if i:
            lines.append(f"fma.rn.f16x2 t0, t{i}, {place}, t0;")
    if scaled:
        lines += [f"mov.b32 sc, {{{scale}, {scale}}};", "mul.rn.f16x2 t0, t0, sc;"]
    return "\n".join(lines + ["mov.b32 {$0, $1}, t0;", "}"])


@triton.constexpr_function
def piece_asm(bits, scaled):
    """``_piece_asm`` for ``bits``-bit codes, the masks written in."""
    text = _piece_asm(len(pieces(bits)), scaled)
    for i in range(len(pieces(bits))):
        text = text.replace(f"MASK{i}", f"{piece_words(bits, i)[0]:#010x}")
    return text


@triton.constexpr_function
def piece_constraints(bits):
    """The inline asm's constraints for ``piece_asm`` (the scale always passed, read if scaled)."""
    return "=h,=h" + ",r,r,r,r,r" * len(pieces(bits)) + ",h"


@triton.constexpr_function
def codes_per_word(bits):
    """Codes of one word the kernel decodes first (4 or 8 bits: a word of them; other widths:
    of piece 0): in k order from word w * codes_per_word on, or for 4 bits (pairs stored
    transposed) inside the 32-code chunk that starts there rounded down to 32."""
    return 32 // pieces(bits)[0]


@triton.constexpr_function
def piece_layout(operand, bits, i):
    """``_byte_layout`` of piece ``i`` (natural order) for the operand layout ``operand``."""
    return _byte_layout(operand, pieces(bits)[i], True)


@triton.constexpr_function
def ws_byte_layout(operand, bits):
    """The layout of the first (or only) words the kernel decodes for ``bits``-bit codes:
    ``_byte_layout``'s for 4 and 8 bits, piece 0's for the others."""
    return _byte_layout(operand, bits) if bits in WHOLE_WORD_BITS else _byte_layout(operand, pieces(bits)[0], True)


@gluon.jit
def _piece_words(codes, operand: gl.constexpr, BITS: gl.constexpr, I: gl.constexpr, like):
    """Piece I's words of a ring stage (``codes``: [ROWS, BLOCK_K * w / 32] int32 in shared
    memory) as (shifted words, prmt selectors), int32 [ROWS, words, pairs] in piece 0's
    shape and layout (``like``: any tensor of that shape, or None for piece 0 itself): word
    q's pair j of lane c is its pair 4j + c, which the shift by 2wc brings to the bottom of
    byte wj."""
    W: gl.constexpr = piece_width(BITS, I)
    layout: gl.constexpr = piece_layout(operand, BITS, I)
    words = codes.load(gl.SliceLayout(2, layout))
    pair = gl.arange(0, 16 // W, layout=gl.SliceLayout(0, gl.SliceLayout(0, layout)))
    words3, pair3 = gl.broadcast(gl.expand_dims(words, 2), gl.expand_dims(gl.expand_dims(pair, 0), 0))
    shifted = (words3.to(gl.uint32, bitcast=True) >> (2 * W * (pair3 % 4)).to(gl.uint32)).to(gl.int32, bitcast=True)
    select = 0x4040 | (W * (pair3 // 4)) * 0x101
    if like is not None:
        shifted = gl.convert_layout(gl.reshape(shifted, like.shape), like.type.layout)
        select = gl.convert_layout(gl.reshape(select, like.shape), like.type.layout)
    return shifted, select


@gluon.jit
def _zero_bias(zero, BITS: gl.constexpr):
    """The lowest piece's bias words of each row's zero point (int32 [ROWS]): ``piece_bias``'
    integer multiply-add where every zero point of the width lies in its binade, else (7 bits:
    -(64 + z) passes 128) each half converted."""
    W: gl.constexpr = piece_width(BITS, 0)
    if (1 << BITS) <= (1 << (10 - W)):
        bias = zero * piece_bias(BITS, "step") + piece_bias(BITS, "base")
    else:
        hi = (-(zero + (1 << (10 - W)))).to(gl.float16).to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
        bias = (zero * piece_bias(BITS, "step") + piece_bias(BITS, "base")) & 0xFFFF | hi << 16
    return bias


@gluon.jit
def _piece_operands(shifted, select, BITS: gl.constexpr, I: gl.constexpr, bias, runtime_zero):
    """Piece I's five asm operands; ``bias``: the lowest piece's (zero point) words.  The
    multiplier is held in a register (``runtime_zero``: an int32 0 the compiler cannot fold):
    as an immediate, ptxas moves it into one before every fma whose other operand is an
    immediate too (every piece's bias but a zero-point code's lowest)."""
    if I == 0:
        b = bias
    else:
        b = shifted * 0 + piece_high_bias(BITS, I)
    return shifted, select, shifted * 0 + (piece_multiplier(BITS, I) + runtime_zero), b, \
        shifted * 0 + piece_place(BITS, I)


@gluon.jit
def decode_pieces(codes, zero, scale, runtime_zero, operand: gl.constexpr, a_layout: gl.constexpr, ROWS: gl.constexpr,
                  BLOCK_K: gl.constexpr, BITS: gl.constexpr, SCALED: gl.constexpr):
    """A K-block's pieces (``codes``: a tuple of the stage's [ROWS, BLOCK_K * w / 32] int32
    shared-memory views, one per piece and unused beyond ``piece_count``) -> wgmma's register
    operand [ROWS, BLOCK_K] fp16 (``a_layout``; ``operand``: its linear layout): (q - zero) *
    scale per weight with each row's ``zero`` (int32 [ROWS]) and ``scale`` (fp16 [ROWS]; either
    may instead be per row and word of piece 0, [ROWS, words] or [ROWS, 1]), or
    without SCALED the exact q - zero (one scale per row, applied to the sum; ``scale`` unused).
    ``runtime_zero``: an int32 0 the compiler cannot fold (``_piece_operands``)."""
    s0, p0 = _piece_words(codes[0], operand, BITS, 0, None)
    bias = _rows3(s0, _zero_bias(zero, BITS))
    sc = _rows3(s0, scale)
    ASM: gl.constexpr = piece_asm(BITS, SCALED)
    CONSTRAINTS: gl.constexpr = piece_constraints(BITS)
    w0, q0, m0, b0, o0 = _piece_operands(s0, p0, BITS, 0, bias, runtime_zero)
    if piece_count(BITS) == 1:
        lo, hi = gl.inline_asm_elementwise(ASM, CONSTRAINTS, [w0, q0, m0, b0, o0, sc], dtype=(gl.float16, gl.float16),
                                           is_pure=True, pack=1)
    elif piece_count(BITS) == 2:
        s1, p1 = _piece_words(codes[1], operand, BITS, 1, s0)
        w1, q1, m1, b1, o1 = _piece_operands(s1, p1, BITS, 1, bias, runtime_zero)
        lo, hi = gl.inline_asm_elementwise(ASM, CONSTRAINTS, [w0, q0, m0, b0, o0, w1, q1, m1, b1, o1, sc],
                                           dtype=(gl.float16, gl.float16), is_pure=True, pack=1)
    else:
        s1, p1 = _piece_words(codes[1], operand, BITS, 1, s0)
        s2, p2 = _piece_words(codes[2], operand, BITS, 2, s0)
        w1, q1, m1, b1, o1 = _piece_operands(s1, p1, BITS, 1, bias, runtime_zero)
        w2, q2, m2, b2, o2 = _piece_operands(s2, p2, BITS, 2, bias, runtime_zero)
        lo, hi = gl.inline_asm_elementwise(ASM, CONSTRAINTS,
                                           [w0, q0, m0, b0, o0, w1, q1, m1, b1, o1, w2, q2, m2, b2, o2, sc],
                                           dtype=(gl.float16, gl.float16), is_pure=True, pack=1)
    pairs = gl.join(lo, hi)  # [ROWS, words, pairs, 2]: k = word * (32 / w0) + 2 pair + h
    return gl.convert_layout(gl.reshape(pairs, [ROWS, BLOCK_K]), a_layout)
