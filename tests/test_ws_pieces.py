"""Codes of 1, 2, 3, 5, 6 and 7 bits in the warp-specialized kernel (``ws_pieces``), without a
GPU: the decode's PTX on the emulator, fed the words and selectors a lane computes, against
the exact weights for every code of a row; the layouts each piece is read in; the launch rules
and the tuner's candidates.  The kernel itself runs on a Hopper GPU in
tests/test_ws_pieces_cuda.py."""

import itertools

import numpy as np
import ptx_emulator as emu
import pytest
import torch
from test_gemm_gluon import WGMMA_A_64X64, _coordinates

from anybit import packing
from anybit._matmul import candidates as cand
from anybit._matmul import gemm as gm
from anybit._matmul import ws_pieces as wp
from anybit.formats._base import Decode

PIECE_BITS = [1, 2, 3, 5, 6, 7]


def _lane_pair(packed: torch.Tensor, bits: int, row: int, k: int, zero: int, scale: float, scaled: bool):
    """The decode of codes k, k + 1 of a row as the lane that holds them runs it: each piece's
    word shifted by 2wc (c = its pair's place % 4), the selector of byte w (pair // 4), the
    piece's constants and the zero point's bias (``_zero_bias``)."""
    widths = packing.pieces(bits)
    kpad = packing.padded_len(packed.shape[1] * 32 // bits)
    operands = []
    for i, w in enumerate(widths):
        word = int(packed[row, kpad * sum(widths[:i]) // 32 + k * w // 32]) & 0xFFFFFFFF
        pair = (k // 2) % (16 // w)
        mask, mul, bias, place = wp.piece_words(bits, i)
        if i == 0:
            bias = zero * wp.piece_bias(bits, "step") + wp.piece_bias(bits, "base")
            if 2**bits > 2 ** (10 - w):  # the converted high half
                bias = bias & 0xFFFF | emu.pair(0.0, -(zero + 2.0 ** (10 - w)), bf16=False) & 0xFFFF0000
        operands += [word >> 2 * w * (pair % 4), 0x4040 | w * (pair // 4) * 0x101, mul, bias, place]
    operands.append(emu.pair(scale, 0.0, bf16=False) & 0xFFFF)
    return emu.run(wp.piece_asm(bits, scaled), operands, outputs=2)


@pytest.mark.parametrize("bits", PIECE_BITS)
@pytest.mark.parametrize("scaled", [True, False])
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_piece_decode_matches_the_exact_weights(bits, scaled):
    """Every code pair of rows of random codes (and rows of all-zero and all-one codes) ->
    (q - z) * s rounded once to fp16 (scaled), or the exact q - z, for zero points 0, the
    symmetric one and the largest, and scales across fp16's range (127 x 900 is inf, as on
    the GPU)."""
    codes = torch.randint(0, 2**bits, (4, 256), generator=torch.Generator().manual_seed(bits), dtype=torch.int32)
    codes[2], codes[3] = 0, 2**bits - 1
    packed = packing.pack(codes, bits)
    asm = wp.piece_asm(bits, scaled)
    assert ("mul.rn" in asm) == scaled
    for zero, s, row in itertools.product((0, 2 ** (bits - 1), 2**bits - 1), (2.0**-14, 0.0137, 1.0, 900.0), range(4)):
        for k in range(0, 256, 2):
            got = _lane_pair(packed, bits, row, k, zero, s if scaled else float("nan"), scaled)
            for h in (0, 1):
                exact = np.float64(int(codes[row, k + h]) - zero)
                want = np.float16(exact * np.float64(np.float16(s))) if scaled else np.float16(exact)
                value = np.array([got[h]], dtype=np.uint16).view(np.float16)[0]
                assert value.tobytes() == want.tobytes(), (bits, zero, s, row, k + h)


def test_piece_constants():
    """Each piece's mask takes its two w-bit fields (the second w bits up in the high half);
    its multiplier and bias turn the magic 1024 + field back into the codes; the place is
    2^(bits below it)."""
    for bits in PIECE_BITS:
        assert wp.pieces(bits) == packing.pieces(bits)
        for i, w in enumerate(packing.pieces(bits)):
            mask, mul, bias, place = wp.piece_words(bits, i)
            assert mask == (2**w - 1) * (1 + 2 ** (16 + w))
            assert emu.halves(mul, bf16=False) == (1.0, 2.0**-w)
            assert emu.halves(bias & 0xFFFFFFFF, bf16=False) == (-1024.0, -(2.0 ** (10 - w)))
            assert emu.halves(place, bf16=False) == (2.0 ** sum(packing.pieces(bits)[:i]),) * 2
            assert wp.piece_offset(bits, i) == sum(packing.pieces(bits)[:i])


def test_piece_offsets_follow_the_packing():
    """The pieces' places in a row, as the kernel adds them to its copies' coordinates."""
    for bits in (3, 5, 6, 7):
        widths = packing.pieces(bits)
        kpad = packing.padded_len(4200)
        for i in range(len(widths)):
            assert kpad // 32 * wp.piece_offset(bits, i) == kpad * sum(widths[:i]) // 32


@pytest.mark.parametrize("bits", PIECE_BITS)
def test_piece_layouts_rebuild_the_mma_operand(bits):
    """Each piece's words [R, K * w / 32, 16 / w] in k order (``piece_layout``): pair p of
    word q, two values each, lands at k = (32 / w) q + 2p + v where the MMA wants it; the
    layout a piece is read in reshaped to piece 0's shape is piece 0's layout (the kernel's
    conversions between them move no data); a lane's pairs of one word are 4j + c (c: the
    lane's place in its quad), the shift and selector ``_piece_words`` computes."""
    from triton.experimental.gluon import language as gl

    operand = gl.DistributedLinearLayout(**WGMMA_A_64X64, block_bases=[], shape=[64, 64])
    flat = None
    for i, w in enumerate(packing.pieces(bits)):
        layout = wp.piece_layout(operand, bits, i)
        per_word = 32 // w
        assert layout.shape == [64, 64 // per_word, per_word // 2]
        coords = _coordinates(layout, 3)
        joined = gl.DistributedLinearLayout([[0, 0, 0, 1]] + [b + [0] for b in layout.reg_bases],
                                            [b + [0] for b in layout.lane_bases],
                                            [b + [0] for b in layout.warp_bases], [], layout.shape + [2])
        rebuilt = {key: (r, per_word * q + 2 * p + v) for key, (r, q, p, v) in _coordinates(joined, 4).items()}
        assert rebuilt == _coordinates(operand, 2)
        pairs = {key: (r, (per_word // 2) * q + p) for key, (r, q, p) in coords.items()}  # [R, K / 2]
        flat = pairs if flat is None else flat
        assert pairs == flat
        for (reg, lane, warp), (_, _, p) in coords.items():
            assert p % 4 == lane % 4


def test_supported_products():
    """Odd widths need K-blocks of 128 (a 1-bit piece's box is then 16 bytes) and rows of codes
    a multiple of 16 bytes; 2 and 6 bits also take K-blocks of 64; the 1-bit format of
    signs (BINARY) is not integer codes."""
    ok = dict(mode=Decode.SYMMETRIC, group=128, block_k=128, k=4096, dtype=torch.float16, scale_dtype=torch.float16)
    for bits in PIECE_BITS:
        assert gm.gluon_ws_supported(bits, **ok)
        assert gm.gluon_ws_supported(bits, **dict(ok, mode=Decode.ZERO_POINT))
        assert gm.gluon_ws_supported(bits, **dict(ok, block_k=64)) == (bits in (2, 6))
    assert not gm.gluon_ws_supported(1, **dict(ok, mode=Decode.BINARY))
    assert gm.gluon_ws_supported(3, **dict(ok, k=4200))  # K rounded up to 32: 4224 = 33 x 128
    assert not gm.gluon_ws_supported(3, **dict(ok, k=4160))  # 4160 x 3 / 8 bytes: not a multiple of 16
    assert gm.gluon_ws_supported(6, **dict(ok, k=4160)) and not gm.gluon_ws_supported(6, **dict(ok, k=4128))


def test_launch_refuses_k_blocks_a_piece_cannot_be_copied_in():
    qw = __import__("anybit").quantize(torch.randn(128, 256), "int3-g128")
    x = torch.randn(64, 256).half()
    with pytest.raises(ValueError, match="128 for odd widths"):
        gm.on_weight(gm.launch_gemm_gluon_ws, x, qw, None, gm.ws_config(64, 128, 64, 1, 4))


@pytest.mark.parametrize("spec, block_ks", [("int3-g128", {128}), ("uint5-g128", {128}), ("int2-g128", {64, 128}),
                                            ("uint6-g64", {64, 128}), ("int7-gc", {128}), ("int3-g32", {128}),
                                            ("int3-g64", {128}), ("int4-g32", {64, 128}), ("uint8-g32", {64, 128}),
                                            ("nf4-g64", {64, 128}), ("uint4-g16", set())])
def test_the_tuner_measures_warp_specialized_plans_for_piece_codes(spec, block_ks):
    """``format_plans`` on a Hopper GPU offers warp-specialized plans for these widths, with
    only the K-blocks each can copy and that fit its groups: inside a group, or holding whole
    groups of 32 codes or more (none for groups of 16)."""
    _, plans = cand.format_plans(spec, 256, 4096, 4096, 132, hopper=True)
    ws = {p.config.block_k for p in plans if p.kernel is gm.Kernel.GLUON_WS}
    assert ws == block_ks
    _, plans = cand.format_plans(spec, 256, 4096, 4096, 132, hopper=False)
    assert not any(p.kernel is gm.Kernel.GLUON_WS for p in plans)


@pytest.mark.parametrize("bits", range(1, 9))
def test_each_word_the_kernel_decodes_lies_in_one_group(bits):
    """Where a K-block holds several groups (of ``gemm.WS_MIN_SUBGROUP`` = 32 codes or more),
    the kernel loads a scale per row and group and broadcasts it to the words it decodes first
    ([R, W]: of 4- or 8-bit codes, or of piece 0; ``ws_groups``): every code of
    word w must lie in group w // (W / G), G groups a K-block of 128 (4 bits: the pairs of a
    32-code chunk stored transposed, ``packing.pair_position``)."""
    from triton.experimental.gluon import language as gl

    bases = dict(WGMMA_A_64X64, reg_bases=WGMMA_A_64X64["reg_bases"] + [[0, 64]])
    operand = gl.DistributedLinearLayout(**bases, block_bases=[], shape=[64, 128])
    layout = wp.ws_byte_layout(operand, bits)
    per_word = wp.codes_per_word(bits)
    words = 128 // per_word
    assert layout.shape[1] == words
    joined = gl.DistributedLinearLayout([[0, 0, 0, 1]] + [b + [0] for b in layout.reg_bases],
                                        [b + [0] for b in layout.lane_bases],
                                        [b + [0] for b in layout.warp_bases], [], layout.shape + [2])
    for group in (32, 64, 128):
        per_group = words // (128 // group)
        for _, (_, w, p, v) in _coordinates(joined, 4).items():
            position = per_word * w + 2 * p + v
            k = int(packing.pair_position(torch.tensor(position))) if bits == 4 else position
            assert k // group == w // per_group, (group, w, p, v, k)
    assert gm.WS_MIN_SUBGROUP == 32 and all(wp.codes_per_word(b) <= 32 for b in range(1, 9))
