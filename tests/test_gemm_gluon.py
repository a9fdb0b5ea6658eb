"""The Gluon GEMM kernel's parts that run without a GPU: the decode's PTX on the
emulator for every byte, zero point and a range of scales; the register-operand
layout it decodes into; the launch rules and the tuner's candidates.  The kernel
itself is checked on a Hopper GPU (tests/test_gemm_gluon_cuda.py): Gluon kernels
do not run in Triton's interpreter."""

import itertools

import numpy as np
import ptx_emulator as emu
import pytest
import torch

from anybit import packing
from anybit._matmul import candidates as cand
from anybit._matmul import decode_ptx
from anybit._matmul import gemm as gm
from anybit._matmul import gemm_gluon as gg
from anybit._matmul import gemv as gv
from anybit.formats._base import Decode


def _asm_text() -> str:
    return gg._NIBBLE_PAIR_ASM.value


@pytest.mark.parametrize("zero", [0, 3, 8, 15])
def test_nibble_pair_decode_matches_the_exact_weights(zero):
    """Byte c of a word -> ((low nibble - zero) * s, (high nibble - zero) * s), each rounded
    once to fp16, for every byte value and position and scales across fp16's range."""
    bias = emu.pair(-1024.0 - zero, -64.0 - zero, bf16=False)
    scales = [2.0**-14, 1.5e-3, 0.0137, 1.0, 3.3, 900.0]
    rng = np.random.default_rng(zero)
    for byte, position in itertools.product(range(256), range(4)):
        word = int(rng.integers(0, 2**32)) & ~(0xFF << 8 * position) | byte << 8 * position
        select = 0x4040 | position * 0x101
        for s in scales:
            scale = emu.pair(s, s, bf16=False)
            lo, hi = emu.run(_asm_text(), [word, select, bias, scale, gg.NIBBLE_MUL.value], outputs=2)
            for got, code in ((lo, byte & 15), (hi, byte >> 4)):
                want = np.float16(np.float64(code - zero) * np.float64(np.float16(s)))
                assert np.array([got], dtype=np.uint16).view(np.float16)[0] == want, (byte, position, s)


@pytest.mark.parametrize("zero", [0, 128, 200])
def test_byte_pair_decode_matches_the_exact_weights(zero):
    """Half h of a word of 8-bit codes -> ((byte 2h - zero) * s, (byte 2h + 1 - zero) * s),
    each rounded once to fp16, for every byte value in each position and scales across
    fp16's range (symmetric int8 is offset-binary, zero 128)."""
    bias = emu.pair(-1024.0 - zero, -1024.0 - zero, bf16=False)
    scales = [2.0**-14, 1.5e-3, 0.0137, 1.0, 3.3, 900.0]
    rng = np.random.default_rng(zero)
    for byte, position in itertools.product(range(256), range(4)):
        word = int(rng.integers(0, 2**32)) & ~(0xFF << 8 * position) | byte << 8 * position
        half = position // 2
        select = 0x4140 + half * 0x202
        for s in scales:
            scale = emu.pair(s, s, bf16=False)
            lo, hi = emu.run(gg._BYTE_PAIR_ASM.value, [word, select, bias, scale], outputs=2)
            for got, code in ((lo, word >> 16 * half & 0xFF), (hi, word >> 16 * half + 8 & 0xFF)):
                want = np.float16(np.float64(code - zero) * np.float64(np.float16(s)))
                assert np.array([got], dtype=np.uint16).view(np.float16)[0] == want, (byte, position, s)


@pytest.mark.parametrize("bits", [4, 8])
def test_the_bias_word_of_each_zero_point(bits):
    """``group_words``' integer bias word BIAS_BASE + z * BIAS_STEP (int32) is, for every zero
    point of the format's range, the fp16 pair the decode adds: (-(1024 + z), -(64 + z)) for
    4-bit codes, (-(1024 + z), -(1024 + z)) for 8-bit ones."""
    high = 64.0 if bits == 4 else 1024.0
    for z in range(1 << bits):
        word = gg.BIAS_BASE[bits] + z * gg.BIAS_STEP[bits]
        assert -(1 << 31) <= word < 1 << 31  # no int32 overflow in the kernel
        assert word % (1 << 32) == emu.pair(-1024.0 - z, -high - z, bf16=False), z


def _table_pair_operands(position: int) -> list[int]:
    """``gemm_gluon.table_pair_operands`` of byte ``position``'s selector, in Python: (shift, sign
    selector, pair selector)."""
    half = position // 2
    return [16 * half, gg.TABLE_SIGNS[half], gg.TABLE_PAIRS[position % 2]]


#: NF4's levels, a table of random levels and one of levels at fp16's extremes and signed zeros
TABLES = [list(__import__("anybit").formats.table.NF4_LEVELS),
          list(np.random.default_rng(0).normal(size=16)),
          [65504.0, -65504.0, 6e-8, -6e-8, 0.0, -0.0, 1.0, -1.0, 0.1, 2.0**-14, 3.0, -7.5, 1e4, -1e-3, 0.5, 0.33]]


@pytest.mark.parametrize("levels", TABLES, ids=["nf4", "random", "extremes"])
@pytest.mark.parametrize("scaled", [True, False])
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_table_pair_decode_matches_the_table(levels, scaled):
    """Byte c of a word -> (T[low nibble] * s, T[high nibble] * s) for the table T rounded to
    fp16 and then the product rounded once (as the Triton kernels round a table and its scale),
    for every byte value and position; unscaled, T's entries themselves."""
    asm = (gg._TABLE_PAIR_ASM if scaled else gg._TABLE_PAIR_UNSCALED_ASM).value
    assert ("mul" in asm) == scaled
    words = decode_ptx.table_words(levels, bf16=False)
    table = np.array(levels, dtype=np.float16)
    rng = np.random.default_rng(len(levels))
    for byte, position in itertools.product(range(256), range(4)):
        word = int(rng.integers(0, 2**32)) & ~(0xFF << 8 * position) | byte << 8 * position
        for s in [1.0, 0.0137, 900.0] if scaled else [float("nan")]:  # 900 x 65504: inf, as on the GPU
            scale = emu.pair(s, s, bf16=False) if scaled else int(rng.integers(0, 2**32))
            shift, signs, place = _table_pair_operands(position)
            got = emu.run(asm, [word, shift, signs, scale, place, *words], outputs=2)
            for value, code in zip(got, (byte & 15, byte >> 4)):
                want = np.float16(np.float64(table[code]) * np.float64(np.float16(s))) if scaled else table[code]
                got16 = np.array([value], dtype=np.uint16).view(np.float16)[0]
                assert got16.tobytes() == np.float16(want).tobytes(), (byte, position, s, code)


@pytest.mark.parametrize("bits, zero", [(4, 0), (4, 8), (4, 15), (8, 0), (8, 128), (8, 200)])
def test_unscaled_pair_decode_gives_the_exact_codes_less_the_zero(bits, zero):
    """The decode for one scale per row (``decode_operand`` without SCALED): code - zero,
    exact in fp16, for every byte value in each position; the scale operand is not read."""
    high = 64.0 if bits == 4 else 1024.0
    bias = emu.pair(-1024.0 - zero, -high - zero, bf16=False)
    asm = gg._NIBBLE_PAIR_UNSCALED_ASM.value if bits == 4 else gg._BYTE_PAIR_UNSCALED_ASM.value
    assert "mul" not in asm
    rng = np.random.default_rng(bits + zero)
    for byte, position in itertools.product(range(256), range(4)):
        word = int(rng.integers(0, 2**32)) & ~(0xFF << 8 * position) | byte << 8 * position
        scale = int(rng.integers(0, 2**32))  # any bits: unused
        if bits == 4:
            lo, hi = emu.run(asm, [word, 0x4040 | position * 0x101, bias, scale, gg.NIBBLE_MUL.value], outputs=2)
            codes = (byte & 15, byte >> 4)
        else:
            half = position // 2
            lo, hi = emu.run(asm, [word, 0x4140 + half * 0x202, bias, scale], outputs=2)
            codes = (word >> 16 * half & 0xFF, word >> 16 * half + 8 & 0xFF)
        for got, code in zip((lo, hi), codes):
            assert np.array([got], dtype=np.uint16).view(np.float16)[0] == code - zero, (byte, position)


def _coordinates(layout, dims):
    """(register, lane, warp) -> coordinate tuple, for every index of a linear layout
    with single-bit bases (the coordinate is the sum of the bases of the set bits)."""
    out = {}
    for reg, lane, warp in itertools.product(range(1 << len(layout.reg_bases)), range(32),
                                             range(1 << len(layout.warp_bases))):
        coord = [0] * dims
        for bases, index in ((layout.reg_bases, reg), (layout.lane_bases, lane), (layout.warp_bases, warp)):
            for bit, basis in enumerate(bases):
                if index >> bit & 1:
                    coord = [c ^ b for c, b in zip(coord, basis)]
        out[(reg, lane, warp)] = tuple(coord)
    return out


#: wgmma's A operand (fp16, k_width 2) for 64 x 64 on 4 warps, as Triton 3.6 gives it
#: (``gl.to_linear_layout(DotOperandLayout(0, NVMMADistributedLayout v3 [4, 1] 16x64x16, 2))``).
WGMMA_A_64X64 = dict(reg_bases=[[0, 1], [8, 0], [0, 8], [0, 16], [0, 32]],
                     lane_bases=[[0, 2], [0, 4], [1, 0], [2, 0], [4, 0]], warp_bases=[[16, 0], [32, 0]])


@pytest.mark.parametrize("bits", [4, 8])
def test_byte_layout_rebuilds_the_mma_operand(bits):
    """Code pairs [R, K * bits / 32, 16 / bits] in _byte_layout (the bytes of words of 8
    4-bit codes, the halves of words of 4 8-bit codes), two values each (the new fastest
    register bit) at k = codes per word * word + 2 pair + value in the stored order (4
    bits: k's place in the pair-transposed layout, ``packing.pair_position``), land where
    the MMA wants them; each 4-bit word is read by one lane only."""
    from triton.experimental.gluon import language as gl
    operand = gl.DistributedLinearLayout(**WGMMA_A_64X64, block_bases=[], shape=[64, 64])
    pairs_layout = gg._byte_layout(operand, bits)
    per_word = 32 // bits
    assert pairs_layout.shape == [64, 64 // per_word, per_word // 2]
    joined = gl.DistributedLinearLayout([[0, 0, 0, 1]] + [b + [0] for b in pairs_layout.reg_bases],
                                        [b + [0] for b in pairs_layout.lane_bases],
                                        [b + [0] for b in pairs_layout.warp_bases], [],
                                        pairs_layout.shape + [2])
    def k_of(position):
        return int(packing.pair_position(torch.tensor(position))) if bits == 4 else position
    rebuilt = {i: (r, k_of(per_word * w + 2 * p + v)) for i, (r, w, p, v) in _coordinates(joined, 4).items()}
    assert rebuilt == _coordinates(operand, 2)
    readers = {}
    for (reg, lane, warp), (r, w, _) in _coordinates(pairs_layout, 3).items():
        readers.setdefault((r, w), set()).add((lane, warp))
    assert max(len(lanes) for lanes in readers.values()) == (1 if bits == 4 else 2)


def test_byte_layout_refuses_an_operand_that_splits_a_pair():
    from triton.experimental.gluon import language as gl

    bases = dict(WGMMA_A_64X64, reg_bases=[[8, 0], [0, 1], [0, 8], [0, 16], [0, 32]])
    operand = gl.DistributedLinearLayout(**bases, block_bases=[], shape=[64, 64])
    with pytest.raises(ValueError, match="first register basis"):
        gg._byte_layout(operand)


def test_supported_products():
    ok = dict(bits=4, mode=Decode.SYMMETRIC, group=128, block_k=64, dtype=torch.float16, scale_dtype=torch.float16)
    assert gm.gluon_supported(**ok)
    assert gm.gluon_supported(**dict(ok, mode=Decode.ZERO_POINT, group=4096))
    for change in [dict(bits=8), dict(bits=3), dict(mode=Decode.TABLE), dict(dtype=torch.bfloat16),
                   dict(scale_dtype=torch.float32), dict(group=32), dict(block_k=96), dict(group=96)]:
        assert not gm.gluon_supported(**dict(ok, **change)), change  # group 96: K-blocks across groups
    assert not gm.gluon_supported(**ok, device=torch.device("cpu"))
    # the warp-specialized kernel also decodes 8-bit codes (int8), K-blocks of 64 or 128, k a multiple of 8
    ws = dict(ok, k=4096)
    assert gm.gluon_ws_supported(**ws) and gm.gluon_ws_supported(**dict(ws, bits=8, group=gv.ROW_GROUP))
    # any whole number of K-blocks per group, as the Gluon kernel
    assert gm.gluon_ws_supported(**dict(ws, group=192))
    # and 4-bit table codes (NF4, lut4), not 8-bit ones
    assert gm.gluon_ws_supported(**dict(ws, mode=Decode.TABLE))
    assert gm.gluon_ws_supported(**dict(ws, mode=Decode.ROW_TABLE))
    # and K-blocks holding several whole groups of 32 codes or more (a scale per row and group)
    for group, block_k in [(32, 64), (32, 128), (64, 128)]:
        assert gm.gluon_ws_supported(**dict(ws, group=group, block_k=block_k))
        assert not gm.gluon_supported(**dict(ok, group=group, block_k=block_k))
    assert not gm.gluon_ws_supported(**dict(ws, group=16)) and not gm.gluon_ws_supported(**dict(ws, group=48))
    # and integer codes of the other widths, piece by piece (tests/test_ws_pieces.py has the rules)
    assert gm.gluon_ws_supported(**dict(ws, bits=2)) and gm.gluon_ws_supported(**dict(ws, bits=3, block_k=128))
    for change in [dict(bits=3), dict(block_k=256, group=256), dict(k=4100), dict(mode=Decode.BINARY),
                   dict(group=96), dict(mode=Decode.TABLE, bits=8), dict(mode=Decode.ROW_TABLE, bits=3)]:
        assert not gm.gluon_ws_supported(**dict(ws, **change)), change


def test_launch_refuses_what_it_does_not_compute():
    qw = __import__("anybit").quantize(torch.randn(128, 256), "int4-g128")
    x = torch.randn(64, 256, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="Gluon GEMM does not compute"):
        gm.launch_gemm_gluon(x, qw.codes, qw.params["scales"], None, None, 128, 256, 4, 128, Decode.SYMMETRIC,
                             gm.GemmConfig(64, 64, 64, 1, 4, 3))


def test_gluon_plans_need_warps_to_match_their_rows():
    gm.Plan(gm.Kernel.GLUON, gm.GemmConfig(64, 128, 64, 1, 8, 3))
    with pytest.raises(ValueError, match="GemmConfig is required"):
        gm.Plan(gm.Kernel.GLUON)
    with pytest.raises(ValueError, match="num_warps = 4 per 64 rows"):
        gm.Plan(gm.Kernel.GLUON, gm.GemmConfig(64, 64, 64, 1, 8, 3))
    plan = gm.Plan(gm.Kernel.GLUON, gm.GemmConfig(128, 64, 64, 2, 4, 4))
    assert gm.Plan.from_dict(plan.to_dict()) == plan
    assert plan.label() == "gluon 128x64x64 split2 4w4s"


@pytest.mark.parametrize("m", [64, 200])
def test_tuner_candidates(m):
    plain = cand.candidate_plans(m, 4096, 4096, 4, 132)
    both = cand.candidate_plans(m, 4096, 4096, 4, 132, gluon=True)
    assert not any(p.kernel is gm.Kernel.GLUON for p in plain)
    extra = [p for p in both[len(plain):] if p.kernel is not gm.Kernel.GLUON_WS]  # those: test_gemm_gluon_ws
    assert both[:len(plain)] == plain and extra and all(p.kernel is gm.Kernel.GLUON for p in extra)
    assert {p.config.block_m for p in extra} == ({64} if m <= 64 else {64, 128})
    assert {p.config.num_stages for p in extra} == set(cand.GLUON_STAGES)
    assert all(p.config.block_n == 64 and p.config.num_warps == 4 for p in extra)
