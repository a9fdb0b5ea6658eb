import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anybit import packing


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("k", [1, 31, 32, 33, 100, 576])
def test_pack_unpack_bit_exact(bits, k):
    codes = torch.randint(0, 2**bits, (3, k), dtype=torch.uint8)
    packed = packing.pack(codes, bits)
    assert packed.dtype == torch.int32
    assert packed.shape == (3, packing.packed_words(bits, k))
    assert torch.equal(packing.unpack(packed, bits, k), codes)


@pytest.mark.parametrize("bits", range(1, 9))
def test_exactly_bits_per_weight(bits):
    codes = torch.randint(0, 2**bits, (4, 256), dtype=torch.uint8)
    assert packing.pack(codes, bits).nbytes * 8 == bits * codes.numel()


def test_pieces_are_binary_digits_widest_first():
    assert [packing.pieces(b) for b in range(1, 9)] == [
        (1,), (2,), (2, 1), (4,), (4, 1), (4, 2), (4, 2, 1), (8,),
    ]


def test_layout_of_a_3_bit_row():
    # 3 = 2 + 1: the 2-bit piece holds code bits 0-1, 16 per word; the 1-bit
    # piece holds bit 2, 32 per word.  Codes 5 (0b101) at position 0 and
    # 6 (0b110) at position 17.
    codes = torch.zeros(1, 32, dtype=torch.uint8)
    codes[0, 0] = 5
    codes[0, 17] = 6
    packed = packing.pack(codes, 3)
    assert packed.shape == (1, 3)  # 2 words of 2-bit pieces + 1 word of 1-bit pieces
    assert packed[0, 0].item() == 0b01  # position 0, low bits 01
    assert packed[0, 1].item() == 0b10 << 2  # position 17 = slot 1 of word 1, low bits 10
    assert packed[0, 2].item() == (1 << 0) | (1 << 17)  # bit 2 of both codes


def test_high_bit_words_are_valid_int32():
    codes = torch.full((1, 32), 255, dtype=torch.uint8)
    packed = packing.pack(codes, 8)
    assert (packed == -1).all()
    assert torch.equal(packing.unpack(packed, 8, 32), codes)


def test_bad_inputs():
    with pytest.raises(ValueError, match="bits=9"):
        packing.pieces(9)
    with pytest.raises(ValueError, match="2-D"):
        packing.pack(torch.zeros(4, dtype=torch.uint8), 4)
    with pytest.raises(ValueError, match=r"need \(N, 4\)"):
        packing.unpack(torch.zeros(2, 3, dtype=torch.int32), 4, 32)


@settings(max_examples=200, deadline=None)
@given(
    bits=st.integers(1, 8),
    n=st.integers(1, 4),
    k=st.integers(1, 130),
    seed=st.integers(0, 2**31 - 1),
)
def test_pack_unpack_property(bits, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (n, k), dtype=torch.uint8, generator=g)
    packed = packing.pack(codes, bits)
    assert packed.shape == (n, -(-k // 32) * bits)
    assert torch.equal(packing.unpack(packed, bits, k), codes)


def test_4_bit_pairs_are_stored_transposed():
    """Word s of each 16-byte chunk holds the pairs s, s + 4, s + 8, s + 12 (codes 2p, 2p + 1,
    low nibble first) in bytes 0..3: the codes lane s of a quad gives wgmma."""
    codes = (torch.arange(64) % 16).to(torch.uint8)[None]
    codes[0, 32:] = 15 - codes[0, 32:]
    packed = packing.pack(codes, 4)[0].tolist()
    for chunk, s in itertools.product(range(2), range(4)):
        word = packed[4 * chunk + s] & 0xFFFFFFFF
        for i in range(4):
            k = 32 * chunk + 8 * i + 2 * s
            assert word >> 8 * i & 0xFF == int(codes[0, k]) | int(codes[0, k + 1]) << 4, (chunk, s, i)
    assert not packing.pairs_transposed(3) and not packing.pairs_transposed(8)


def test_pair_position_is_the_stored_place_of_each_code():
    codes = torch.randint(0, 16, (2, 96), dtype=torch.uint8)
    words = packing.pack(codes, 4)
    natural = torch.stack([(words >> 4 * i) & 15 for i in range(8)], dim=-1).reshape(2, 96)
    k = torch.arange(96)
    assert torch.equal(natural[:, packing.pair_position(k)], codes.long())
    assert torch.equal(packing.pair_position(packing.pair_position(k)), k)


def test_transpose_pairs_is_an_involution_and_checks_its_input():
    words = torch.randint(-2**31, 2**31 - 1, (3, 8), dtype=torch.int32)
    assert torch.equal(packing.transpose_pairs(packing.transpose_pairs(words)), words)
    with pytest.raises(ValueError, match="multiple of 4"):
        packing.transpose_pairs(torch.zeros(2, 6, dtype=torch.int32))
