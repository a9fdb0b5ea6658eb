"""The fast decode's generated PTX, run through an emulator on the real packed layout.

Compiled kernels run this PTX; the interpreter cannot, so here every bit
width, mode and dtype is checked exactly against the codes it came from.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch

from anybit import packing
from anybit._matmul import decode_ptx as dp

import ptx_emulator as emu


@dataclass(frozen=True)
class Case:
    bits: int
    mode: int
    bf16: bool

    def __str__(self) -> str:
        name = {dp.SYMMETRIC: "sym", dp.BINARY: "bin", dp.ZERO_POINT: "zp"}[self.mode]
        return f"{self.bits}bit-{name}-{'bf16' if self.bf16 else 'fp16'}"


CASES = [
    Case(bits, mode, bf16)
    for bits in range(1, 9)
    for mode in ((dp.BINARY, dp.ZERO_POINT) if bits == 1 else (dp.SYMMETRIC, dp.ZERO_POINT))
    for bf16 in (False, True)
]


def _elements(codes: torch.Tensor, bits: int) -> list[int]:
    """The input registers of one asm call: each piece's 4 elements, from ``packing.pack``."""
    words = packing.pack(codes[None, :], bits)[0].tolist()
    kpad_words = packing.padded_len(codes.numel()) // 32
    regs, low = [], 0
    for width in packing.pieces(bits):
        piece = b"".join((w & 0xFFFFFFFF).to_bytes(4, "little") for w in words[kpad_words * low:][:kpad_words * width])
        nbytes = dp.element_bits(width, bits) // 8
        elements = [int.from_bytes(piece[e * nbytes:(e + 1) * nbytes], "little") for e in range(4)]
        if nbytes == 1:
            regs.append(sum(v << 8 * e for e, v in enumerate(elements)))
        elif nbytes == 2:
            regs += [elements[0] | elements[1] << 16, elements[2] | elements[3] << 16]
        else:
            regs += elements
        low += width
    return regs


def _code_at(codes: torch.Tensor, bits: int, position: int) -> int:
    """The code at ``position`` of the stored order (element e's code j at C * e + j): 4-bit
    pairs are stored transposed (``packing.pair_position``)."""
    if packing.pairs_transposed(bits):
        position = int(packing.pair_position(torch.tensor(position)))
    return int(codes[position])


@pytest.mark.parametrize("case", CASES, ids=str)
def test_decode_ptx_values(case: Case):
    rng = random.Random(case.bits * 10 + case.mode)
    c = dp.codes_per_element(case.bits)
    asm = dp.decode_asm(case.bits, case.mode, case.bf16)
    n_outputs = dp.constraints(case.bits).count("=r")
    assert n_outputs == 2 * c
    for _ in range(20):
        codes = torch.tensor([rng.randrange(2**case.bits) for _ in range(32)], dtype=torch.uint8)
        if case.mode == dp.ZERO_POINT:
            zeros = [rng.randrange(2**case.bits) for _ in range(4)]
        else:
            zeros = [2 ** (case.bits - 1)] * 4
        offset = dp.bias_offset(case.bits, case.bf16)
        bias = [emu.pair(-(offset + zeros[0]), -(offset + zeros[1]), case.bf16),
                emu.pair(-(offset + zeros[2]), -(offset + zeros[3]), case.bf16)]
        high = [emu.pair(-(64 + zeros[0]), -(64 + zeros[1]), False), emu.pair(-(64 + zeros[2]), -(64 + zeros[3]), False)]
        operands = _elements(codes, case.bits) + bias + (bias if case.bf16 else high)
        assert len(operands) == dp.constraints(case.bits).count(",") + 1 - n_outputs
        out = emu.run(asm, operands, n_outputs)
        for j in range(c):
            for q in range(2):
                got = emu.halves(out[2 * j + q], case.bf16)
                for half in range(2):
                    e = 2 * q + half
                    code = _code_at(codes, case.bits, c * e + j)
                    want = 2 * code - 1 if case.mode == dp.BINARY else code - zeros[e]
                    assert got[half] == want, (j, e, code, zeros[e], got)


@pytest.mark.parametrize("table", ["nf4", "learned"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp16", "bf16"])
def test_decode_ptx_table(bf16, table):
    """4-bit codes looked up by prmt in a table passed as eight words: each code gives
    its level rounded once to x's dtype (NF4's fixed levels; a learned row's levels)."""
    from anybit.formats.table import NF4_LEVELS

    dtype = torch.bfloat16 if bf16 else torch.float16
    rng = random.Random(4)
    if table == "nf4":
        levels = list(NF4_LEVELS)
    else:
        levels = sorted(rng.uniform(-3.0, 3.0) for _ in range(16))
    words = dp.table_words(levels, bf16)
    assert len(words) == 8
    for mode in dp.TABLE_MODES:
        asm = dp.decode_asm(4, mode, bf16)
        assert dp.constraints(4, mode).count("r") == 4 + 1 + 8 * dp.TABLE_WORD_REGS
        for _ in range(50):
            codes = torch.tensor([rng.randrange(16) for _ in range(32)], dtype=torch.uint8)
            table_regs = [w for w in words for _ in range(dp.TABLE_WORD_REGS)]
            out = emu.run(asm, _elements(codes, 4) + table_regs, 4)
            for j in range(2):
                for q in range(2):
                    got = emu.halves(out[2 * j + q], bf16)
                    for half in range(2):
                        code = _code_at(codes, 4, 2 * (2 * q + half) + j)
                        assert got[half] == torch.tensor(levels[code], dtype=torch.float64).to(dtype).item()


def test_decode_ptx_rejects_what_it_cannot_decode():
    with pytest.raises(ValueError, match="mode=5"):
        dp.decode_asm(4, 5, False)
    with pytest.raises(ValueError, match="bits=3"):
        dp.decode_asm(3, dp.TABLE, False)
    with pytest.raises(ValueError, match="16 levels"):
        dp.table_words([0.0] * 8, False)
