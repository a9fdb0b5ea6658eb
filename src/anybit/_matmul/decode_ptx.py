"""Inline PTX that turns packed integer codes into exact fp16/bf16 values.

The decode kernel's fast path hands ``tl.inline_asm_elementwise`` (pack=4)
four *elements* at a time.  An element is the bits of C consecutive codes
in one piece of the split-plane layout (see ``anybit.packing``), where
C = 8 / (narrowest piece width) is the same for every piece of a format, so
element e of every piece covers codes C*e .. C*e + C - 1::

    bits  pieces    C   element of each piece (bits)     outputs
    1     1         8   u8                               8 tensors
    2     2         4   u8                               4
    3     2,1       8   u16, u8                          8
    4     4         2   u8                               2
    5     4,1       8   u32, u8                          8
    6     4,2       4   u16, u8                          4
    7     4,2,1     8   u32, u16, u8                     8
    8     8         1   u8                               1

Output j holds code j of each element, so the kernel multiplies it by
x[k0 + C*e + j].  Every output register is an f16x2 (bf16x2) pair of
elements (0, 1) or (2, 3), built without per-element conversions: the code
bits of both elements are moved into the low mantissa bits of the two
halves (prmt/shift), ORed into a magic number whose exponent makes the half
equal to MAGIC + code (lop3), and one packed fma adds the per-row bias
-(MAGIC + zero), leaving the exact integer code - zero::

    half:  0 1 1 0 0 1 0 0 | 0 0 0 0 c c c c     = 1024 + c   (fp16, MAGIC 1024)
           0 1 0 0 0 0 1 1 | 0 c c c c c c c     =  128 + c   (bf16, MAGIC 128, c < 128)

bf16 has 7 mantissa bits, so 8-bit codes there add bit 7 back as a
separate 128.  Binary codes (value 2c - 1) become the sign of +-1.

Operands, in order: outputs (2 registers each), then each piece's four
elements (E/8 registers: 1 for u8, 2 for u16, 4 for u32), then the bias
pair (2 registers) and a second bias pair that only the 4-bit fp16 decode
uses (-(64 + zero), for high nibbles left in place and scaled by 1/16).
The table modes (4-bit codes looked up in 16 fp16/bf16 levels, one table
for the format or one per row) take the codes and then the table itself, as
eight words of bytes (``table_words``), built by the kernel once per program.

This module is plain Python (no Triton import) so that the CPU tests can
run the generated PTX through a small emulator.
"""

from __future__ import annotations

import functools
import struct

from ..packing import pieces

#: The decode's mode ids (the kernel's constexprs; see gemv_triton.MODE_IDS).
SYMMETRIC, BINARY, ZERO_POINT, TABLE, ROW_TABLE = 0, 1, 2, 3, 4
MODES = (SYMMETRIC, BINARY, ZERO_POINT, TABLE, ROW_TABLE)
#: Modes whose codes index a 16-entry table (one for the format, or one per row).
TABLE_MODES = (TABLE, ROW_TABLE)
#: Registers per table word operand: the kernel passes each word as an int32
#: tensor of the codes' shape, and inline asm with pack=4 hands over all four
#: elements' copies; the decode reads element 0's (the four elements of one call
#: are consecutive codes of one row, so they share the row's table).
TABLE_WORD_REGS = 4


def codes_per_element(bits: int) -> int:
    """C: codes per element (8 / the narrowest piece width)."""
    return 8 // min(pieces(bits))


def element_bits(width: int, bits: int) -> int:
    """Bits of one element of a piece of ``width`` (8, 16 or 32)."""
    return width * codes_per_element(bits)


def bias_offset(bits: int, bf16: bool) -> int:
    """MAGIC: the bias the kernel passes is -(MAGIC + zero)."""
    if not bf16:
        return 1024
    return 0 if bits == 8 else 128


@functools.lru_cache(maxsize=None)
def constraints(bits: int, mode: int = SYMMETRIC) -> str:
    """The inline-asm constraint string for ``bits``-wide codes in ``mode``."""
    c = codes_per_element(bits)
    if mode in TABLE_MODES:
        inputs = 1 + 8 * TABLE_WORD_REGS
    else:
        inputs = sum(element_bits(w, bits) // 8 for w in pieces(bits)) + 4
    return ",".join(["=r"] * (2 * c) + ["r"] * inputs)


# Hand-scheduled 4-bit decodes (one piece, two codes per byte).  prmt
# reorders bytes B0..B3 to (B0, B2, B1, B3) so each half holds one byte of
# a pair; fp16 keeps high nibbles in place (1024 + 16 n, scaled by 1/16 in
# the fma with bias -(64 + zero)); bf16's 7-bit mantissa shifts them down.
_NIBBLES_F16 = """
{
.reg .b32 s, t, q, one, sixteenth;
mov.b32 one, 0x3C003C00;
mov.b32 sixteenth, 0x2C002C00;
prmt.b32 s, $4, 0, 0x3120;
lop3.b32 t, s, 0x000F000F, 0x64006400, 0xea;
fma.rn.f16x2 $0, t, one, $5;
lop3.b32 t, s, 0x00F000F0, 0x64006400, 0xea;
fma.rn.f16x2 $2, t, sixteenth, $7;
shr.b32 q, s, 8;
lop3.b32 t, q, 0x000F000F, 0x64006400, 0xea;
fma.rn.f16x2 $1, t, one, $6;
lop3.b32 t, q, 0x00F000F0, 0x64006400, 0xea;
fma.rn.f16x2 $3, t, sixteenth, $8;
}
"""
_NIBBLES_BF16 = """
{
.reg .b32 s, t, q, one;
mov.b32 one, 0x3F803F80;
prmt.b32 s, $4, 0, 0x3120;
lop3.b32 t, s, 0x000F000F, 0x43004300, 0xea;
fma.rn.bf16x2 $0, t, one, $5;
shr.b32 q, s, 4;
lop3.b32 t, q, 0x000F000F, 0x43004300, 0xea;
fma.rn.bf16x2 $2, t, one, $7;
shr.b32 q, s, 8;
lop3.b32 t, q, 0x000F000F, 0x43004300, 0xea;
fma.rn.bf16x2 $1, t, one, $6;
shr.b32 q, s, 12;
lop3.b32 t, q, 0x000F000F, 0x43004300, 0xea;
fma.rn.bf16x2 $3, t, one, $8;
}
"""

# lop3 truth tables (a = 0xF0, b = 0xCC, c = 0xAA)
_AND_OR = 0xEA  # (a & b) | c
_AND_XOR = 0x6A  # (a & b) ^ c
_SELECT = 0xD8  # c ? b : a


def _pair_selector(q: int) -> int:
    """prmt selector: bytes 2q and 2q + 1 of a into the low byte of each half, zeros (b = 0) above."""
    return 0x4040 | (2 * q + 1) << 8 | 2 * q


def _half_bits(value: float, bf16: bool) -> int:
    """The 16 bits of ``value`` rounded to fp16 (bf16), round to nearest even."""
    f32 = struct.unpack("<I", struct.pack("<f", value))[0]
    if bf16:
        return (f32 + 0x7FFF + (f32 >> 16 & 1)) >> 16 & 0xFFFF
    return struct.unpack("<H", struct.pack("<e", value))[0]


def table_words(levels: list[float], bf16: bool) -> list[int]:
    """The eight 32-bit table registers of the 4-bit table decode for 16 ``levels``
    (rounded once to fp16/bf16): low bytes of entries 0-3, 4-7, 8-11, 12-15, then
    their high bytes, entry 4w + i in byte i of word w::

        word 0: | lo(3) | lo(2) | lo(1) | lo(0) |     ...   word 4: | hi(3) | hi(2) | hi(1) | hi(0) |

    The kernel builds the same words from the table in memory once per program.
    """
    if len(levels) != 16:
        raise ValueError(f"a 4-bit table has 16 levels, got {len(levels)}")
    half = [_half_bits(v, bf16) for v in levels]
    return [sum((half[4 * w + i] >> shift & 0xFF) << 8 * i for i in range(4)) for shift in (0, 8) for w in range(4)]


def _table4_asm() -> str:
    """16-entry table lookups of 4-bit codes, four codes per lookup.

    Operands: outputs $0..$3, the codes $4 (four u8 elements e0..e3 of two
    codes each), then the eight table words of ``table_words`` ($5, $9, ..,
    $33: element 0's copy of each).  The codes of e0, e1 already sit in the
    low four nibbles of $4 (those of e2, e3 above them), which is where prmt
    reads its four byte indices; so one prmt looks up four 3-bit indices in
    the low (high) bytes of entries 0-7, one in those of 8-15, and a byte mask
    from each code's bit 3 (prmt's sign replication) picks between them.  Two
    prmt then gather the low and high bytes into f16x2 (bf16x2) pairs of one
    code index from two elements::

        sel   = $4 & 0x7777.. (e0, e1),  then >> 16 (e2, e3): nibbles e.c0, e.c1, e'.c0, e'.c1
        lo    = code & 8 ? prmt(L[8:16], sel) : prmt(L[0:8], sel)   (and hi from H)
        out   = code 0: (lo.b0, hi.b0 | lo.b2, hi.b2),  code 1: (lo.b1, hi.b1 | lo.b3, hi.b3)

    The same code serves fp16 and bf16: the table words carry the dtype.
    """
    l0, l1, l2, l3, h0, h1, h2, h3 = (f"${5 + TABLE_WORD_REGS * w}" for w in range(8))
    lines = [
        "{",
        ".reg .b32 m0, m1, t, msk, la, lb, ha, hb, lo, hi;",
        "and.b32 m0, $4, 0x77777777;",  # 3-bit indices, e0 e1 in the low half
        "shr.b32 m1, m0, 16;",  # e2 e3
        "shl.b32 t, $4, 4;",
    ]
    for q in range(2):  # elements (0, 1), then (2, 3): register q of each output
        m = f"m{q}"
        lines += [
            f"prmt.b32 la, {l0}, {l1}, {m};",
            f"prmt.b32 lb, {l2}, {l3}, {m};",
            f"prmt.b32 ha, {h0}, {h1}, {m};",
            f"prmt.b32 hb, {h2}, {h3}, {m};",
            # 0xFF bytes where the code's bit 3 is set: the sign of each nibble's byte
            # (even nibbles from $4 << 4, odd ones from $4)
            f"prmt.b32 msk, t, $4, 0x{0xD9C8 if q == 0 else 0xFBEA:04X};",
            f"lop3.b32 lo, la, lb, msk, 0x{_SELECT:02X};",
            f"lop3.b32 hi, ha, hb, msk, 0x{_SELECT:02X};",
            f"prmt.b32 ${q}, lo, hi, 0x6240;",  # code 0 of both elements
            f"prmt.b32 ${2 + q}, lo, hi, 0x7351;",  # code 1
        ]
    lines.append("}")
    return "\n".join(lines)


@functools.lru_cache(maxsize=None)
def decode_asm(bits: int, mode: int, bf16: bool) -> str:
    """PTX for ``bits``-wide codes in decode ``mode``: SYMMETRIC, BINARY, ZERO_POINT,
    or a table mode (4-bit codes; the table comes in as operands, see
    ``table_words``).  Cached: kernels are launched with it on every call."""
    if mode not in MODES:
        raise ValueError(f"mode={mode} has no PTX decode; accepted: {MODES}")
    if mode in TABLE_MODES:
        if bits != 4:
            raise ValueError(f"the PTX table decode takes 4-bit codes; got bits={bits}")
        return _table4_asm()
    if bits == 4 and mode != BINARY:
        return _NIBBLES_BF16 if bf16 else _NIBBLES_F16
    c = codes_per_element(bits)
    ftype = "bf16x2" if bf16 else "f16x2"
    magic = 0x43004300 if bf16 else 0x64006400
    one = 0x3F803F80 if bf16 else 0x3C003C00
    # operand numbers
    plane_regs, low, operand = [], 0, 2 * c
    for width in pieces(bits):
        plane_regs.append((width, low, element_bits(width, bits), operand))
        operand += element_bits(width, bits) // 8
        low += width
    bias = operand
    lines = ["{", ".reg .b32 s<%d>, p, acc, one;" % (2 * len(plane_regs)), f"mov.b32 one, 0x{one:08X};"]
    # u8 elements: spread each pair of bytes into the two halves once
    for i, (width, low, ebits, op) in enumerate(plane_regs):
        if ebits == 8 and bits != 8:
            for q in range(2):
                lines.append(f"prmt.b32 s{2 * i + q}, ${op}, 0, 0x{_pair_selector(q):04X};")

    if bits == 8 and bf16:
        # 128 + low 7 bits, minus 128, plus bit 7 as 128 (0x4300 under a sign-replicated byte mask)
        lines += [".reg .b32 h, minus128;", "mov.b32 minus128, 0xC300C300;"]
        for q in range(2):
            sign = 0x8888 | (2 * q + 1) << 12 | (2 * q + 1) << 8 | (2 * q) << 4 | 2 * q
            lines += [
                f"prmt.b32 acc, ${plane_regs[0][3]}, 0, 0x{_pair_selector(q):04X};",
                f"lop3.b32 acc, acc, 0x007F007F, 0x{magic:08X}, 0x{_AND_OR:02X};",
                f"fma.rn.{ftype} acc, acc, one, minus128;",
                f"prmt.b32 h, ${plane_regs[0][3]}, 0, 0x{sign:04X};",
                "and.b32 h, h, 0x43004300;",
                f"fma.rn.{ftype} acc, h, one, acc;",
                f"fma.rn.{ftype} ${q}, acc, one, ${bias + q};",
            ]
        lines.append("}")
        return "\n".join(lines)

    if bits == 8:
        # the byte goes straight into the mantissa of 1024 + c (the magic's exponent bytes from b)
        for q in range(2):
            lines.append(f"prmt.b32 acc, ${plane_regs[0][3]}, 0x{(magic >> 24) * 0x01010101:08X}, 0x{_pair_selector(q):04X};")
            lines.append(f"fma.rn.{ftype} ${q}, acc, one, ${bias + q};")
        lines.append("}")
        return "\n".join(lines)

    for j in range(c):
        for q in range(2):
            out = f"${2 * j + q}"
            first = True
            for i, (width, low, ebits, op) in enumerate(plane_regs):
                if ebits == 8:
                    src, pos = f"s{2 * i + q}", width * j
                elif ebits == 16:
                    src, pos = f"${op + q}", width * j
                else:  # u32: pick the byte holding code j from each element
                    byte = width * j // 8
                    sel = (4 + byte) << 12 | (4 + byte) << 8 | byte << 4 | byte
                    lines.append(f"prmt.b32 p, ${op + 2 * q}, ${op + 2 * q + 1}, 0x{sel:04X};")
                    src, pos = "p", width * j - 8 * byte
                target = 15 if mode == BINARY else low
                if pos > target:
                    lines.append(f"shr.b32 p, {src}, {pos - target};")
                    src = "p"
                elif pos < target:
                    lines.append(f"shl.b32 p, {src}, {target - pos};")
                    src = "p"
                if mode == BINARY:
                    minus_one = 0xBF80BF80 if bf16 else 0xBC00BC00
                    lines.append(f"lop3.b32 {out}, {src}, 0x80008000, 0x{minus_one:08X}, 0x{_AND_XOR:02X};")
                    continue
                mask = ((1 << width) - 1) << low
                mask |= mask << 16
                into = f"0x{magic:08X}" if first else "acc"
                lines.append(f"lop3.b32 acc, {src}, 0x{mask:08X}, {into}, 0x{_AND_OR:02X};")
                first = False
            if mode != BINARY:
                lines.append(f"fma.rn.{ftype} {out}, acc, one, ${bias + q};")
    lines.append("}")
    return "\n".join(lines)
