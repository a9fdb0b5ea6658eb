"""A decode of 4-bit codes stored chunk-permuted, for ws_diagnostics' copy that measures what
the warp-specialized kernel's consumers would cost with such a layout (not the library's: its
pair-transposed layout, ``anybit.packing``, puts the same 8 codes in each word but keeps each
pair in one byte, so the decode needs a prmt per pair; on it this decode gives wrong weights,
which is what the diagnostic accepts).

Chunk-permuted layout: each row's codes in chunks of 32 (four int32 words); word s of chunk q
holds the 8 codes that lane c = s of a row's quad feeds to wgmma's register operand, the
codes k = 32q + 8i + 2s + h (i < 4, h < 2) at nibble i + 4h::

    word (q, s) = | k+25 k+17 k+9 k+1 | k+24 k+16 k+8 k+0 |     k = 32q + 2s (bits 31..0)

so pair i of the thread's operand (codes k + 8i, k + 8i + 1) is one lop3 away: nibbles i and
i + 4 under fp16's 1024 (i = 0, 2: mask 0x000f000f of the word or the word >> 8) or 1024 + 16 x
(i = 1, 3: mask 0x00f000f0), then one add (or fma by 1/16) of the bias, exact, and the
scale: 13 instructions for 8 weights where the byte-per-lane decode takes 16, and one word
read per 8 codes instead of four."""

from __future__ import annotations

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from anybit._matmul.gemm_gluon import _pair_words

#: word -> 8 fp16 (pair i: $2i, $2i+1): (code - zero) * scale, one rounding each.
#: $8 word, $9 {-(1024 + z)} x 2, $10 {-(64 + z)} x 2, $11 scale x 2, $12 {1/16} x 2
_CHUNK_ASM = gl.constexpr("""{
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

#: {1/16, 1/16}
SIXTEENTH = gl.constexpr(0x2C002C00)


@triton.constexpr_function
def chunk_word_layout(operand):
    """The layout of the code words [R, K / 8] in which each thread holds the words of the
    chunk-permuted layout its part of ``operand`` (wgmma's register operand [R, K], a
    DistributedLinearLayout) needs: k's bits 1, 8 and 16 (h, i) lie inside a word, bits 2
    and 4 pick the word of a chunk (s), bits from 32 on the chunk."""
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
def decode_chunks(words, bias_lo, bias_hi, scale, mul, ROWS: gl.constexpr, BLOCK_K: gl.constexpr,
                  a_layout: gl.constexpr):
    """Words [ROWS, BLOCK_K / 8] (``chunk_word_layout``) -> the register operand [ROWS, BLOCK_K]
    fp16 (``a_layout``); per row: bias words {-(1024 + z)} x 2 and {-(64 + z)} x 2, scale x 2 (int32
    [ROWS]); ``mul``: ``SIXTEENTH`` as a runtime value."""
    w3 = gl.reshape(words, [ROWS, BLOCK_K // 32, 4])
    row_layout: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(2, w3.type.layout))
    bias_lo = gl.convert_layout(bias_lo, row_layout)
    bias_hi = gl.convert_layout(bias_hi, row_layout)
    scale = gl.convert_layout(scale, row_layout)
    lo3 = gl.broadcast(w3, gl.expand_dims(gl.expand_dims(bias_lo, 1), 2))[1]
    hi3 = gl.broadcast(w3, gl.expand_dims(gl.expand_dims(bias_hi, 1), 2))[1]
    sc3 = gl.broadcast(w3, gl.expand_dims(gl.expand_dims(scale, 1), 2))[1]
    mul3 = w3 * 0 + mul
    o00, o01, o10, o11, o20, o21, o30, o31 = gl.inline_asm_elementwise(
        _CHUNK_ASM, "=h,=h,=h,=h,=h,=h,=h,=h,r,r,r,r,r", [w3, lo3, hi3, sc3, mul3],
        dtype=(gl.float16,) * 8, is_pure=True, pack=1)
    t0 = gl.join(gl.join(o00, o10), gl.join(o20, o30))  # [R, Q, S, i0, i1], h = 0
    t1 = gl.join(gl.join(o01, o11), gl.join(o21, o31))
    c = gl.join(t0, t1)  # [R, Q, S, i0, i1, h]
    c = gl.permute(c, (0, 1, 4, 3, 2, 5))  # [R, Q, i1, i0, S, h]: k = 32q + 16 i1 + 8 i0 + 2s + h
    return gl.convert_layout(gl.reshape(c, [ROWS, BLOCK_K]), a_layout)


@gluon.jit
def chunk_words(scale, zero):
    """``decode_chunks``' per-row words from ``gemm_gluon.group_params``' values: ({-(1024 + z)} x 2,
    {-(64 + z)} x 2, scale x 2), int32 [R]."""
    lo = (-1024.0 - zero).to(gl.float16)
    hi = (-64.0 - zero).to(gl.float16)
    return _pair_words(lo, lo), _pair_words(hi, hi), _pair_words(scale, scale)
