"""Physical storage of K-bit codes: split power-of-two planes, exactly K bits each.

A K-bit code is split into pieces whose widths are the binary digits of K,
widest first, each piece holding the next-higher bits of the code::

    K = 7 = 4 + 2 + 1     code bits  6 | 5 4 | 3 2 1 0
                                    p1 |  p2 |   p4

    K=1 (1)  K=2 (2)  K=3 (2,1)  K=4 (4)  K=5 (4,1)  K=6 (4,2)  K=7 (4,2,1)  K=8 (8)

Each piece of width ``w`` is packed on its own, ``32 / w`` values per int32
word, value ``i`` of a word at bits ``[w*i, w*i + w)`` (little-endian within
the word).  A row of ``K_in`` codes is padded with zero codes to
``K_pad = ceil(K_in / 32) * 32`` so every piece fills whole words; the
pieces of a row are laid end to end, widest first::

    packed[n] = [ piece w1: K_pad*w1/32 words | piece w2: ... | ... ]

so ``packed`` is int32 of shape (N, K_pad * K / 32): exactly K bits per
weight when ``K_in`` is a multiple of 32.  Every piece is a whole number of
aligned words, so a kernel decodes a piece with one shift and one mask per
value and recombines pieces with shifts and ORs.

4-bit codes (K = 4, one piece) are stored in *pair-transposed* order: each
chunk of 32 codes (four words, 16 bytes) holds its 16 code pairs (codes 2p,
2p + 1, low nibble first) as a 4 x 4 byte matrix transposed, pair p in byte
p // 4 of word p % 4::

    natural   word s = | pair 4s+3 | pair 4s+2 | pair 4s+1 | pair 4s |
    stored    word s = | pair s+12 | pair s+8  | pair s+4  | pair s   |   (bits 31..0)

so word s holds codes 2s, 2s + 1, 2s + 8, 2s + 9, 2s + 16, 2s + 17, 2s + 24,
2s + 25: exactly the codes that lane s of a quad holds in the register operand
of Hopper's warpgroup MMA (k = 2c, 2c + 1 of every 8, c = lane % 4), so a GEMM
thread reads one word per chunk and uses all of it instead of one byte of each
of four.  The transpose is its own inverse (``transpose_pairs``); kernels that
decode in k order swap bits 1-2 and 3-4 of a code's position in its chunk
(``pair_position``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

ALIGN = 32
WORD_BITS = 32


def pieces(bits: int) -> tuple[int, ...]:
    """Piece widths of a ``bits``-wide code, widest first (7 -> (4, 2, 1))."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits={bits} is not supported; accepted: 1..8")
    return tuple(w for w in (8, 4, 2, 1) if bits & w)


def padded_len(in_features: int) -> int:
    return math.ceil(in_features / ALIGN) * ALIGN


def packed_words(bits: int, in_features: int) -> int:
    """int32 words per row for ``in_features`` codes of ``bits`` bits."""
    return padded_len(in_features) * bits // WORD_BITS


def pairs_transposed(bits: int) -> bool:
    """Whether ``bits``-wide codes are stored pair-transposed (4 bits: see the module docstring)."""
    return bits == 4


def pair_position(k: Tensor) -> Tensor:
    """Where code k of a row sits in the pair-transposed layout, counted in codes as if
    unpacked word by word (an involution: bits 1-2 and 3-4 of k swapped)::

        k = | ... chunk | i1 i0 | s1 s0 | h |   ->   | ... chunk | s1 s0 | i1 i0 | h |
    """
    return (k & ~0x1E) | ((k >> 2) & 0x6) | ((k & 0x6) << 2)


def transpose_pairs(words: Tensor) -> Tensor:
    """The 4 x 4 byte transpose of each 16-byte chunk of int32 words (N, W), W a multiple
    of 4: natural 4-bit words to pair-transposed ones and back.  Returns a new tensor."""
    if words.dim() != 2 or words.dtype != torch.int32 or words.shape[1] % 4:
        raise ValueError(f"words must be int32 (N, W) with W a multiple of 4, got {words.dtype} "
                         f"{tuple(words.shape)}")
    n, w = words.shape
    as_bytes = words.contiguous().view(torch.uint8).reshape(n, w // 4, 4, 4)
    return as_bytes.transpose(2, 3).contiguous().reshape(n, w * 4).view(torch.int32)


def pack(codes: Tensor, bits: int) -> Tensor:
    """Pack uint8 codes (N, K_in), each < 2**bits, into int32 (N, packed_words)."""
    if codes.dim() != 2:
        raise ValueError(f"codes must be 2-D (N, K_in), got shape {tuple(codes.shape)}")
    n, k = codes.shape
    widened = torch.zeros(n, padded_len(k), dtype=torch.int64, device=codes.device)
    widened[:, :k] = codes
    out = []
    offset = 0
    for width in pieces(bits):
        per_word = WORD_BITS // width
        part = (widened >> offset) & (2**width - 1)
        shifts = torch.arange(per_word, device=codes.device, dtype=torch.int64) * width
        words = (part.reshape(n, -1, per_word) << shifts).sum(-1)
        out.append(words)
        offset += width
    words = torch.cat(out, dim=1)
    # Reinterpret the unsigned 32-bit words as int32 (two's complement).
    packed = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return transpose_pairs(packed) if pairs_transposed(bits) else packed


def unpack(packed: Tensor, bits: int, in_features: int) -> Tensor:
    """Inverse of :func:`pack`: int32 (N, packed_words) -> uint8 codes (N, in_features)."""
    n = packed.shape[0]
    expected = packed_words(bits, in_features)
    if packed.dim() != 2 or packed.shape[1] != expected:
        raise ValueError(
            f"packed has shape {tuple(packed.shape)}; {bits}-bit codes of {in_features} "
            f"input features need (N, {expected})"
        )
    k_pad = padded_len(in_features)
    if pairs_transposed(bits):
        packed = transpose_pairs(packed)
    words = packed.to(torch.int64) & 0xFFFFFFFF
    codes = torch.zeros(n, k_pad, dtype=torch.int64, device=packed.device)
    offset = 0
    start = 0
    for width in pieces(bits):
        per_word = WORD_BITS // width
        count = k_pad // per_word
        shifts = torch.arange(per_word, device=packed.device, dtype=torch.int64) * width
        part = (words[:, start : start + count, None] >> shifts) & (2**width - 1)
        codes |= part.reshape(n, k_pad) << offset
        start += count
        offset += width
    return codes[:, :in_features].to(torch.uint8)
