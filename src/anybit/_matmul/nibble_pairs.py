"""The warp-specialized GEMM's 4-bit decode by nibble pairs, and the order of x it needs.

The stored 4-bit layout (``anybit.packing``, pair-transposed) puts in word s of each chunk
of 32 codes the codes c = 8 i + 2 s + h at nibble 2 i + h (pair 4 i + s in byte i).  wgmma's
register operand gives lane quad s of a row exactly that word per chunk (``gemm_gluon``).
``gemm_gluon.decode_operand`` turns each byte into the register (code 2p, code 2p + 1),
which takes a prmt per byte.  Here each register is made from nibbles n and n + 4 of the
word instead, one lop3 under fp16's 1024 and no prmt (13 instructions for 8 weights
instead of 16; docs/NOTES-gemm.md v41, v44)::

    word s = | n7  n6  n5  n4 | n3  n2  n1  n0 |        nibble n = 2 i + h: code 8 i + 2 s + h
    t_j    = (nibble j, nibble j + 4), j < 4:
        j = 0, 2: (word >> 4 j') & 0x000f000f | 0x6400 6400   -> 1024 + c     (j' = 0 or 2)
        j = 1, 3: (word >> 4 j') & 0x00f000f0 | 0x6400 6400   -> 1024 + 16 c  (then times 1/16)
    t_j    = (code 16 * 0 + 8 (j >> 1) + 2 s + (j & 1), the same + 16)

Register t_j sits where the operand wants pair j of lane quad s, i.e. at k' = 8 j + 2 s + e
(e: its half), so the operand's k' of each chunk holds code ``operand_code(k')``::

    k' = | a | b | s1 s0 | e |   (bits 4..0)   ->   code = | e | a | s1 s0 | b |

The product sums over k in any order as long as W and x agree, so the x tile in shared
memory is permuted the same way before the MMAs read it (``permute_x``: the loader
partition, in place, after the tile's TMA copy landed).  W's layout in memory is unchanged.
"""

from __future__ import annotations

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

#: word -> 8 fp16, t_j's halves as $2j, $2j + 1: (code - zero) * scale, each rounded once.
#: $8 the word, $9 {-(1024 + z)} x 2, $10 {-(64 + z)} x 2, $11 scale x 2, $12 {1/16} x 2
#: (``SIXTEENTH`` as a runtime value: ptxas would otherwise move it into a register before
#: every fma whose immediate slot holds the bias).
_PAIR_WORD_ASM = gl.constexpr("""{
.reg .b32 w, t0, t1, t2, t3;
shr.b32 w, $8, 8;
lop3.b32 t0, $8, 0x000f000f, 0x64006400, 0xea;
lop3.b32 t1, $8, 0x00f000f0, 0x64006400, 0xea;
lop3.b32 t2, w, 0x000f000f, 0x64006400, 0xea;
lop3.b32 t3, w, 0x00f000f0, 0x64006400, 0xea;
add.rn.f16x2 t0, t0, $9;
fma.rn.f16x2 t1, t1, $12, $10;
add.rn.f16x2 t2, t2, $9;
fma.rn.f16x2 t3, t3, $12, $10;
mul.rn.f16x2 t0, t0, $11;
mul.rn.f16x2 t1, t1, $11;
mul.rn.f16x2 t2, t2, $11;
mul.rn.f16x2 t3, t3, $11;
mov.b32 {$0, $1}, t0;
mov.b32 {$2, $3}, t1;
mov.b32 {$4, $5}, t2;
mov.b32 {$6, $7}, t3;
}""")

#: ``_PAIR_WORD_ASM`` without the scale: the exact code - zero, for one scale per row
#: (applied to the fp32 sum; ``$11`` unused).
_PAIR_WORD_UNSCALED_ASM = gl.constexpr("\n".join(line for line in _PAIR_WORD_ASM.value.splitlines()
                                                 if not line.startswith("mul.rn.f16x2")))

#: The fp16 pair {1/16, 1/16} the odd registers' fma multiplies by.
SIXTEENTH = gl.constexpr(0x2C002C00)

#: The bias words {-(1024 + z)} x 2 and {-(64 + z)} x 2 of zero point z as BASE + z * STEP
#: (fp16's ulp is 1 at 1024 and 1/16 at 64), int32 (top bit set: negative).
EVEN_BIAS_BASE, EVEN_BIAS_STEP = gl.constexpr(0xE400E400 - (1 << 32)), gl.constexpr(0x00010001)
ODD_BIAS_BASE, ODD_BIAS_STEP = gl.constexpr(0xD400D400 - (1 << 32)), gl.constexpr(0x00100010)


def operand_code(k: int) -> int:
    """The code (counted from its chunk of 32) that position k' (< 32) of a chunk of the
    decoded operand holds: k' = 16 a + 8 b + 2 s + e -> code 16 e + 8 a + 2 s + b."""
    if not 0 <= k < 32:
        raise ValueError(f"k={k}: a position inside a chunk of 32 codes; accepted: 0 to 31")
    a, b, s, e = k >> 4 & 1, k >> 3 & 1, k >> 1 & 3, k & 1
    return 16 * e + 8 * a + 2 * s + b


@triton.constexpr_function
def pair_word_layout(operand):
    """The layout of the code words [R, K / 8] in which each thread holds the words its part of
    ``operand`` (wgmma's register operand [R, K], a DistributedLinearLayout) decodes from:
    k's bits 0, 3 and 4 (e, j) stay inside a word, bits 1 and 2 pick the word of a chunk (s),
    bits from 5 on the chunk."""
    def word_basis(b):
        n, k = b
        if k in (1, 8, 16):
            return None
        if k in (2, 4):
            return [n, k // 2]
        if k >= 32:
            return [n, k // 8]
        return [n, 0]
    regs = [word_basis(b) for b in operand.reg_bases]
    rows, k = operand.shape
    return gl.DistributedLinearLayout([b for b in regs if b is not None],
                                      [word_basis(b) for b in operand.lane_bases],
                                      [word_basis(b) for b in operand.warp_bases], [], [rows, k // 8])


@gluon.jit
def pair_bias_words(zero):
    """The decode's two bias words of zero points ``zero`` (int32 [R]): ({-(1024 + z)} x 2,
    {-(64 + z)} x 2), one integer multiply-add each."""
    return zero * EVEN_BIAS_STEP + EVEN_BIAS_BASE, zero * ODD_BIAS_STEP + ODD_BIAS_BASE


@gluon.jit
def decode_pairs(words, even_bias, odd_bias, scale, mul, ROWS: gl.constexpr, BLOCK_K: gl.constexpr,
                 a_layout: gl.constexpr, SCALED: gl.constexpr = True):
    """Code words [ROWS, BLOCK_K / 8] (int32, ``pair_word_layout``) -> wgmma's register operand
    [ROWS, BLOCK_K] fp16 (``a_layout``) in the operand order (``operand_code``); per row
    ``pair_bias_words`` and the scale pair (int32 [ROWS]); ``mul``: ``SIXTEENTH`` as a value
    the compiler cannot fold.  Without SCALED the exact code - zero (``scale`` unused)."""
    w3 = gl.reshape(words, [ROWS, BLOCK_K // 32, 4])
    row_layout: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(2, w3.type.layout))
    even3 = gl.broadcast(w3, gl.expand_dims(gl.expand_dims(gl.convert_layout(even_bias, row_layout), 1), 2))[1]
    odd3 = gl.broadcast(w3, gl.expand_dims(gl.expand_dims(gl.convert_layout(odd_bias, row_layout), 1), 2))[1]
    scale3 = gl.broadcast(w3, gl.expand_dims(gl.expand_dims(gl.convert_layout(scale, row_layout), 1), 2))[1]
    mul3 = w3 * 0 + mul
    asm: gl.constexpr = _PAIR_WORD_ASM if SCALED else _PAIR_WORD_UNSCALED_ASM
    o00, o01, o10, o11, o20, o21, o30, o31 = gl.inline_asm_elementwise(
        asm, "=h,=h,=h,=h,=h,=h,=h,=h,r,r,r,r,r", [w3, even3, odd3, scale3, mul3],
        dtype=(gl.float16,) * 8, is_pure=True, pack=1)
    t0 = gl.join(gl.join(o00, o10), gl.join(o20, o30))  # [R, Q, S, b, a], e = 0 (j = 2 a + b)
    t1 = gl.join(gl.join(o01, o11), gl.join(o21, o31))
    c = gl.permute(gl.join(t0, t1), (0, 1, 4, 3, 2, 5))  # [R, Q, a, b, S, e]: k' = 32 q + 16 a + 8 b + 2 s + e
    return gl.convert_layout(gl.reshape(c, [ROWS, BLOCK_K]), a_layout)


@triton.constexpr_function
def _half_chunk_layout(block_k, num_warps, k_bases):
    """A layout of x rows [R, block_k] in which each thread holds 16 of a chunk's 32 codes,
    ``k_bases`` (four k offsets: its register bases), its lanes the other half (k' 8 or 16,
    whichever ``k_bases`` lacks), the chunks and rows, and its warps more rows: R = 2048 /
    block_k rows a pass of ``num_warps`` = 4 warps."""
    other = [[0, 16 if [0, 16] not in k_bases else 8]]
    chunks = [[0, 32 << i] for i in range(block_k.bit_length() - 6)]
    rows = [[1 << i, 0] for i in range(5 - 1 - len(chunks) + num_warps.bit_length() - 1)]
    lanes = other + chunks + rows[:5 - 1 - len(chunks)]
    warps = rows[5 - 1 - len(chunks):]
    return gl.DistributedLinearLayout([list(b) for b in k_bases], lanes, warps, [],
                                      [2048 // block_k * num_warps // 4, block_k])


@gluon.jit
def permute_x(x_buf, BLOCK_M: gl.constexpr, BLOCK_K: gl.constexpr, num_warps: gl.constexpr):
    """In place, the x tile [BLOCK_M, BLOCK_K] fp16 in shared memory from k order to the
    operand order of ``decode_pairs`` (position k' of each chunk of 32 takes x at
    ``operand_code(k')``), by the calling partition's ``num_warps`` warps.  Each thread takes
    the 16 codes of a chunk whose k' share bit 4 (two 16-byte loads of k bits 0-2 and 4, a
    permutation inside its registers, two 16-byte stores of k' bits 0-3): 8 registers in
    and 8 out, which the loader's 24 to 56 registers hold."""
    ROWS: gl.constexpr = 2048 // BLOCK_K * num_warps // 4  # rows a pass covers
    gl.static_assert(BLOCK_M % ROWS == 0, "x tiles of whole passes")
    codes: gl.constexpr = _half_chunk_layout(BLOCK_K, num_warps, [[0, 1], [0, 2], [0, 4], [0, 16]])
    operand: gl.constexpr = _half_chunk_layout(BLOCK_K, num_warps, [[0, 1], [0, 2], [0, 4], [0, 8]])
    for r in gl.static_range(0, BLOCK_M, ROWS):
        part = x_buf.slice(r, ROWS, dim=0)
        x = gl.reshape(part.load(codes), [ROWS, BLOCK_K // 32, 2, 2, 4, 2])  # code = 16 c4 + 8 c3 + 2 s + c0
        x = gl.permute(x, (0, 1, 3, 5, 4, 2))  # [.., c3, c0, s, c4]: k' = 16 a + 8 b + 2 s + e
        part.store(gl.convert_layout(gl.reshape(x, [ROWS, BLOCK_K]), operand))
