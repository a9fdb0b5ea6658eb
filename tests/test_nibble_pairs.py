"""The warp-specialized GEMM's 4-bit decode by nibble pairs (``_matmul.nibble_pairs``) without a
GPU: its PTX on the emulator for every nibble value in every position, zero points and a
range of scales; the operand order its joins and permutes give, against the stored
(pair-transposed) codes; the x permutation that matches it, the product unchanged; the word
layout each thread reads and the loader's half-chunk layouts.  The kernel itself runs in
tests/test_gemm_gluon_ws_cuda.py (Gluon kernels do not run in Triton's interpreter)."""

import itertools

import numpy as np
import ptx_emulator as emu
import pytest
import torch
from test_gemm_gluon import WGMMA_A_64X64, _coordinates

from anybit import packing
from anybit._matmul import nibble_pairs as npairs

SCALES = [2.0**-14, 1.5e-3, 0.0137, 1.0, 3.3, 900.0]


def _words_with_every_nibble(seed: int):
    """(word, position, value): each of the 16 values at each of the 8 nibbles, the other
    nibbles random."""
    rng = np.random.default_rng(seed)
    for value, position in itertools.product(range(16), range(8)):
        word = int(rng.integers(0, 2**32)) & ~(0xF << 4 * position) | value << 4 * position
        yield word, position, value


def _outputs(asm: str, word: int, zero: int, scale: float) -> list[int]:
    even, odd = (npairs.EVEN_BIAS_BASE.value + zero * npairs.EVEN_BIAS_STEP.value,
                 npairs.ODD_BIAS_BASE.value + zero * npairs.ODD_BIAS_STEP.value)
    return emu.run(asm, [word, even, odd, emu.pair(scale, scale, bf16=False), npairs.SIXTEENTH.value], outputs=8)


def _half(bits: int) -> np.float16:
    return np.array([bits], dtype=np.uint16).view(np.float16)[0]


@pytest.mark.parametrize("zero", [0, 3, 8, 15])
def test_pair_word_decode_matches_the_exact_weights(zero):
    """Output 2 j + e of a word is (nibble j + 4 e - zero) * s, rounded once to fp16, for every
    nibble value in every position and scales across fp16's range."""
    for word, position, value in _words_with_every_nibble(zero):
        j, e = position % 4, position // 4
        for s in SCALES:
            got = _outputs(npairs._PAIR_WORD_ASM.value, word, zero, s)[2 * j + e]
            assert _half(got) == np.float16(np.float64(value - zero) * np.float64(np.float16(s))), (word, s)


@pytest.mark.parametrize("zero", [0, 8, 15])
def test_unscaled_pair_word_decode_gives_the_exact_codes_less_the_zero(zero):
    """Without the scale (one scale per row, applied to the sum): code - zero, exact; the
    scale operand is not read."""
    asm = npairs._PAIR_WORD_UNSCALED_ASM.value
    assert "mul" not in asm and asm.count("lop3") == 4
    rng = np.random.default_rng(zero)
    for word, position, value in _words_with_every_nibble(zero + 100):
        scale_bits = int(rng.integers(0, 2**32))
        even = npairs.EVEN_BIAS_BASE.value + zero * npairs.EVEN_BIAS_STEP.value
        odd = npairs.ODD_BIAS_BASE.value + zero * npairs.ODD_BIAS_STEP.value
        got = emu.run(asm, [word, even, odd, scale_bits, npairs.SIXTEENTH.value], outputs=8)
        assert _half(got[2 * (position % 4) + position // 4]) == value - zero, (word, position)


def test_the_bias_words_of_each_zero_point():
    """BASE + z * STEP is the fp16 pair the decode adds, for every 4-bit zero point, in int32."""
    for z in range(16):
        even = npairs.EVEN_BIAS_BASE.value + z * npairs.EVEN_BIAS_STEP.value
        odd = npairs.ODD_BIAS_BASE.value + z * npairs.ODD_BIAS_STEP.value
        assert -(1 << 31) <= min(even, odd) and max(even, odd) < 1 << 31
        assert even % (1 << 32) == emu.pair(-1024.0 - z, -1024.0 - z, bf16=False)
        assert odd % (1 << 32) == emu.pair(-64.0 - z, -64.0 - z, bf16=False)


def test_operand_code_is_a_permutation_of_each_chunk():
    codes = [npairs.operand_code(k) for k in range(32)]
    assert sorted(codes) == list(range(32))
    assert codes[:4] == [0, 16, 2, 18] and codes[8:10] == [1, 17]  # k' = 8 b: code b; its pair: + 16
    with pytest.raises(ValueError, match="k=32"):
        npairs.operand_code(32)


def _decoded_as_the_kernel_arranges(words: np.ndarray) -> np.ndarray:
    """``decode_pairs``' joins and permute on numpy: int32 words [R, K / 8] -> [R, K], the
    unscaled codes (the nibbles j + 4 e of each word as the asm outputs o_je)."""
    rows, n_words = words.shape
    w3 = words.reshape(rows, n_words // 4, 4).astype(np.int64) & 0xFFFFFFFF
    o = {(j, e): (w3 >> 4 * (j + 4 * e)) & 0xF for j in range(4) for e in range(2)}
    join = lambda a, b: np.stack([a, b], axis=-1)  # noqa: E731 (tl.join: a new minor axis)
    t0 = join(join(o[0, 0], o[1, 0]), join(o[2, 0], o[3, 0]))
    t1 = join(join(o[0, 1], o[1, 1]), join(o[2, 1], o[3, 1]))
    return np.transpose(join(t0, t1), (0, 1, 4, 3, 2, 5)).reshape(rows, n_words * 8)


def _x_as_the_loader_permutes(x: np.ndarray) -> np.ndarray:
    """``permute_x``'s reshape and permute on numpy: x [R, K] in k order -> the operand order."""
    rows, k = x.shape
    return np.transpose(x.reshape(rows, k // 32, 2, 2, 4, 2), (0, 1, 3, 5, 4, 2)).reshape(rows, k)


def test_decode_and_x_permutation_agree_with_the_stored_codes():
    """Codes packed as the library stores them (pair-transposed), decoded in the kernel's
    arrangement, hold at k' of each chunk the code ``operand_code(k')``; the loader's x
    permutation puts x's matching entries there, so W x^T is unchanged (exactly, in integers)."""
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (8, 128), generator=gen, dtype=torch.uint8)
    words = packing.pack(codes, 4).numpy()
    decoded = _decoded_as_the_kernel_arranges(words)
    position = np.array([32 * (k // 32) + npairs.operand_code(k % 32) for k in range(128)])
    codes = codes.numpy().astype(np.int64)
    assert (decoded == codes[:, position]).all()
    x = torch.randint(-50, 50, (5, 128), generator=gen).numpy()
    x_perm = _x_as_the_loader_permutes(x)
    assert (x_perm == x[:, position]).all()
    assert (decoded @ x_perm.T == codes @ x.T).all()


def test_each_thread_reads_the_words_its_operand_needs():
    """``pair_word_layout`` of wgmma's A operand (64 x 64): the words a thread holds are those
    of the chunks and quad lane its operand registers cover, each word read by one lane."""
    from triton.experimental.gluon import language as gl

    operand = gl.DistributedLinearLayout(**WGMMA_A_64X64, block_bases=[], shape=[64, 64])
    layout = npairs.pair_word_layout(operand)
    assert layout.shape == [64, 8]
    held = {}
    for (reg, lane, warp), (r, w) in _coordinates(layout, 2).items():
        held.setdefault((lane, warp), set()).add((r, w))
    needed = {}
    for (reg, lane, warp), (r, k) in _coordinates(operand, 2).items():
        needed.setdefault((lane, warp), set()).add((r, 4 * (k // 32) + (k >> 1 & 3)))
    assert held == needed
    readers = {}
    for (reg, lane, warp), word in _coordinates(layout, 2).items():
        readers.setdefault(word, set()).add((lane, warp))
    assert {len(lanes) for lanes in readers.values()} == {1}


@pytest.mark.parametrize("block_k", [64, 128])
def test_the_loaders_layouts_cover_a_pass_once(block_k):
    """``permute_x``'s layouts: each of a pass's rows x block_k codes held by one thread of the
    loader's 4 warps; a thread's 16 codes are one k' half of a chunk before (k bits 0-2 and 4:
    two 16-byte runs) and one 16-byte-aligned run of 16 after."""
    rows = 2048 // block_k
    for bases in ([[0, 1], [0, 2], [0, 4], [0, 16]], [[0, 1], [0, 2], [0, 4], [0, 8]]):
        layout = npairs._half_chunk_layout(block_k, 4, bases)
        assert layout.shape == [rows, block_k]
        coords = _coordinates(layout, 2)
        assert sorted(coords.values()) == [(r, k) for r in range(rows) for k in range(block_k)]
        for lane, warp in itertools.product(range(32), range(4)):
            ks = sorted(coords[(reg, lane, warp)][1] for reg in range(16))
            if bases[-1] == [0, 8]:
                assert ks == list(range(ks[0], ks[0] + 16)) and ks[0] % 16 == 0
            else:
                assert ks[:8] == list(range(ks[0], ks[0] + 8)) and ks[8:] == [k + 16 for k in ks[:8]]
