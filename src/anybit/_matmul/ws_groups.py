"""Several groups in one K-block of the warp-specialized GEMM (``gemm_gluon_ws``).

A K-block of 64 or 128 codes may hold two or four whole groups of 32 or 64 codes (int4-g32,
int3-g64, ...; ``gemm.WS_MIN_SUBGROUP``).  The decode then needs a scale (and zero point)
per row and group instead of per row.  The words of codes a consumer decodes first
([rows, W]: of 4- or 8-bit codes, or of a wider code's piece 0) each lie in one group, so
the K-block's G groups split the word axis into G runs of W / G words::

    word    | 0 .. W/G - 1 | W/G .. 2W/G - 1 | ... |      4 bits, K-block 128, groups of 32:
    group   |      0       |        1        | ... |      W = 16 words of 8 codes, 4 a group

The values are loaded once a row and group, as [rows, G, 1] in the layout of the words
split by group ([rows, G, W / G]), and only broadcast to the words and reshaped back to
[rows, W]: the same registers, no data moved.  Loaded once a word (16 values a row for
8-bit codes), the scales and zero points of 64 x 256 x 128 tiles spilled 6 KB a thread.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from .ws_pieces import codes_per_word


@gluon.jit
def word_groups(word_layout: gl.constexpr, WG_ROWS: gl.constexpr, BLOCK_K: gl.constexpr, GROUP: gl.constexpr,
                BITS: gl.constexpr):
    """Where a K-block holds several groups (of a multiple of 32 codes, ``gemm.WS_MIN_SUBGROUP``):
    a [WG_ROWS, G, W / G] tensor (G groups a block) whose layout is ``word_layout``'s (the
    words [WG_ROWS, W] the decode reads first: of 4- or 8-bit codes, or of piece 0) with the
    words split by group, else 0.  Word w holds codes from w * codes_per_word on
    (``codes_per_word``), all in group w // (W / G): 8-code words of a 32-code chunk (4 bits,
    pairs transposed), 4-code words of a 16-code chunk (8 bits), 8, 16 or 32 codes in k order
    (pieces of 4, 2, 1 bits)."""
    if BLOCK_K > GROUP:
        G: gl.constexpr = BLOCK_K // GROUP
        W: gl.constexpr = BLOCK_K // codes_per_word(BITS)
        groups = gl.reshape(gl.full([WG_ROWS, W], 0, gl.int32, word_layout), [WG_ROWS, G, W // G])
    else:
        groups = 0
    return groups


@gluon.jit
def group_rows(rows, groups, first):
    """``rows`` [R] as [R, 1, 1] and the K-block's groups ``first`` + [0, G) as [1, G, 1], in the
    layout of ``groups`` (``word_groups``)."""
    L: gl.constexpr = groups.type.layout
    rows = gl.expand_dims(gl.expand_dims(gl.convert_layout(rows, gl.SliceLayout(1, gl.SliceLayout(2, L))), 1), 2)
    g = gl.arange(0, groups.shape[1], layout=gl.SliceLayout(0, gl.SliceLayout(2, L)))
    return rows, first + gl.expand_dims(gl.expand_dims(g, 0), 2)


@gluon.jit
def per_word(values, groups, word_layout: gl.constexpr):
    """A block's values per row and group [R, G, 1] (``gemm_gluon_ws._block_params``) -> per
    row and word [R, W] in ``word_layout``: a broadcast and a reshape, no data moved; values
    per row [R] as they are."""
    if len(values.shape) == 3:
        values = gl.reshape(gl.broadcast(values, groups)[0], [groups.shape[0], groups.shape[1] * groups.shape[2]])
        values = gl.convert_layout(values, word_layout)
    return values
