"""A tiny emulator for the PTX subset of the decode kernel's inline asm.

It runs one ``tl.inline_asm_elementwise`` call (registers as Python ints) so
the CPU tests can check the generated decode on the real packed layout;
the compiled kernel is checked on the GPU by tests/test_gemv_cuda.py.
Instructions: mov, and, or, shl, shr (.b32), prmt.b32 (default mode, with
sign replication), lop3.b32, fma.rn.{f16x2, bf16x2}, add.rn.f16x2, mul.rn.f16x2 and the
unpacking ``mov.b32 {lo, hi}, r`` (16-bit outputs) and packing ``mov.b32 r, {lo, hi}``.
"""

from __future__ import annotations

import re

import numpy as np
import torch

MASK32 = 0xFFFFFFFF


def _half_to_float(bits: int, bf16: bool) -> float:
    if bf16:
        return float(np.array([bits << 16], dtype=np.uint32).view(np.float32)[0])
    return float(np.array([bits], dtype=np.uint16).view(np.float16)[0])


def _float_to_half(value: float, bf16: bool) -> int:
    if bf16:
        return int(torch.tensor([value], dtype=torch.bfloat16).view(torch.int16).item()) & 0xFFFF
    return int(np.array([value], dtype=np.float16).view(np.uint16)[0])


def _prmt(a: int, b: int, selector: int) -> int:
    pool = [(a >> 8 * i) & 0xFF for i in range(4)] + [(b >> 8 * i) & 0xFF for i in range(4)]
    out = 0
    for i in range(4):
        sel = (selector >> 4 * i) & 0xF
        byte = pool[sel & 7]
        if sel & 8:
            byte = 0xFF if byte & 0x80 else 0
        out |= byte << 8 * i
    return out


def _lop3(a: int, b: int, c: int, lut: int) -> int:
    out = 0
    for i in range(8):
        if lut >> i & 1:
            term = (a if i & 4 else ~a) & (b if i & 2 else ~b) & (c if i & 1 else ~c)
            out |= term
    return out & MASK32


def _fma2(a: int, b: int, c: int, bf16: bool) -> int:
    out = 0
    for half in range(2):
        x, y, z = ((v >> 16 * half) & 0xFFFF for v in (a, b, c))
        value = _half_to_float(x, bf16) * _half_to_float(y, bf16) + _half_to_float(z, bf16)
        out |= _float_to_half(value, bf16) << 16 * half
    return out


def run(asm: str, operands: list[int], outputs: int) -> list[int]:
    """Run ``asm`` with ``operands`` (inputs, after ``outputs`` output slots); returns the outputs."""
    regs: dict[str, int] = {}
    slots = [0] * outputs + [v & MASK32 for v in operands]

    def value(token: str) -> int:
        token = token.strip()
        if token.startswith("$"):
            return slots[int(token[1:])]
        if re.fullmatch(r"0x[0-9a-fA-F]+|\d+", token):
            return int(token, 0)
        return regs[token]

    def store(token: str, v: int) -> None:
        token = token.strip()
        if token.startswith("$"):
            slots[int(token[1:])] = v & MASK32
        else:
            regs[token] = v & MASK32

    for line in asm.splitlines():
        line = line.strip().rstrip(";")
        if not line or line in "{}" or line.startswith(".reg"):
            continue
        unpack = re.fullmatch(r"mov\.b32\s*\{\s*(\S+)\s*,\s*(\S+)\s*\}\s*,\s*(\S+)", line)
        if unpack:
            word = value(unpack.group(3))
            store(unpack.group(1), word & 0xFFFF)
            store(unpack.group(2), word >> 16)
            continue
        packs = re.fullmatch(r"mov\.b32\s+(\S+)\s*,\s*\{\s*(\S+)\s*,\s*(\S+)\s*\}", line)
        if packs:
            store(packs.group(1), value(packs.group(2)) & 0xFFFF | (value(packs.group(3)) & 0xFFFF) << 16)
            continue
        op, rest = line.split(None, 1)
        args = [t.strip() for t in rest.split(",")]
        vals = [value(t) for t in args[1:]]
        if op == "mov.b32":
            store(args[0], vals[0])
        elif op == "and.b32":
            store(args[0], vals[0] & vals[1])
        elif op == "or.b32":
            store(args[0], vals[0] | vals[1])
        elif op == "shl.b32":
            store(args[0], vals[0] << vals[1])
        elif op == "shr.b32":
            store(args[0], vals[0] >> vals[1])
        elif op == "prmt.b32":
            store(args[0], _prmt(*vals))
        elif op == "lop3.b32":
            store(args[0], _lop3(*vals))
        elif op in ("fma.rn.f16x2", "fma.rn.bf16x2"):
            store(args[0], _fma2(*vals, bf16=op.endswith("bf16x2")))
        elif op == "add.rn.f16x2":
            store(args[0], _fma2(vals[0], 0x3C003C00, vals[1], bf16=False))  # a * 1 + b: one rounding
        elif op == "mul.rn.f16x2":
            store(args[0], _fma2(vals[0], vals[1], 0x80008000, bf16=False))  # a * b + (-0): a * b, signed zeros too
        else:
            raise NotImplementedError(f"PTX instruction {op!r} is not emulated")
    return slots[:outputs]


def halves(word: int, bf16: bool) -> tuple[float, float]:
    """The two fp16/bf16 values of a 32-bit register (low half first)."""
    return _half_to_float(word & 0xFFFF, bf16), _half_to_float(word >> 16, bf16)


def pair(a: float, b: float, bf16: bool) -> int:
    """A 32-bit register holding fp16/bf16 values a (low half) and b."""
    return _float_to_half(a, bf16) | _float_to_half(b, bf16) << 16
