"""Probe: do a warpgroup's wgmma instructions (A operand in registers, or in shared memory)
and another warpgroup's ALU work (the decode's kind: lop3, prmt and fp16 fma on registers) on
the same SM run at the same time, or does each slow the other down?

Why (docs/NOTES-gemm.md v46): in the warp-specialized GEMM at M = 64-128 a consumer's decode and
MMAs add up in time, and every way tried to run one warpgroup's decode under another's (or its
own) MMAs gained nothing (v16, v20, v27, v36, v46's turns).  If the two contend for a resource
of the SM sub-partition (register-file bandwidth, issue, the dispatch of the MMA's operands),
time(both) is close to time(MMA) + time(ALU); if not, close to the larger of the two.

One CTA a program (PER_SM of them an SM): the default partition (4 warps) runs ALU_ITERS
rounds of 48 lop3/prmt/fma on 32 registers a thread (or nothing), a worker warpgroup runs
MMA_ITERS blocks of 8 m64nNk16 wgmmas into one accumulator, waited for once a block (or
nothing).  Printed: us per launch for MMA alone, ALU alone, both.

Usage: python benchmarks/mma_alu_probe.py
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma, warpgroup_mma_wait

from anybit import bench


@gluon.jit
def _alu(out_ptr, iters):
    """Decode-like integer and fp16 work on registers, its result stored so it is kept."""
    layout: gl.constexpr = gl.BlockedLayout([1, 16], [32, 1], [4, 1], [1, 0])
    rows = gl.arange(0, 128, layout=gl.SliceLayout(1, layout))
    cols = gl.arange(0, 16, layout=gl.SliceLayout(0, layout))
    w = rows[:, None] * 16 + cols[None, :] + gl.program_id(0)
    acc = gl.zeros([128, 16], gl.int32, layout)
    for i in range(iters):
        v = gl.inline_asm_elementwise(
            "{\n\t.reg .b32 t, u, one, bias;\n\tmov.b32 one, 0x3c003c00;\n\tmov.b32 bias, 0xe408e408;\n\t"
            "prmt.b32 t, $1, 0, 0x4040;\n\t"
            "lop3.b32 t, t, 0x000f000f, 0x64006400, 0xea;\n\t"
            "fma.rn.f16x2 t, t, one, bias;\n\t"
            "mul.rn.f16x2 t, t, $2;\n\t"
            "prmt.b32 u, $1, 0, 0x4141;\n\t"
            "lop3.b32 u, u, 0x000f000f, 0x64006400, 0xea;\n\t"
            "fma.rn.f16x2 u, u, one, bias;\n\t"
            "mul.rn.f16x2 u, u, $2;\n\t"
            "xor.b32 $0, t, u;\n\t}",
            "=r,r,r", [w, w + i], dtype=gl.int32, is_pure=True, pack=1)
        acc = acc ^ v
        w = w + 1
    gl.store(out_ptr + gl.program_id(0) * 2048 + rows[:, None] * 16 + cols[None, :], acc)


@gluon.jit
def _mma(out_ptr, iters, N: gl.constexpr, SS: gl.constexpr):
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, N, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
    b_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([N, 128], gl.float16)
    a_smem_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([64, 128], gl.float16)
    fill: gl.constexpr = gl.BlockedLayout([1, 8], [2, 16], [4, 1], [1, 0])
    b = gl.allocate_shared_memory(gl.float16, [N, 128], b_layout)
    rows = gl.arange(0, N, layout=gl.SliceLayout(1, fill))
    cols = gl.arange(0, 128, layout=gl.SliceLayout(0, fill))
    b.store(((rows[:, None] * 128 + cols[None, :]) % 7).to(gl.float16) * 0.001)
    a_s = gl.allocate_shared_memory(gl.float16, [64, 128], a_smem_layout)
    a_s.store(gl.full([64, 128], 0.5, gl.float16, fill))
    # the register operand loaded (the program's zeroed output + 0.5), so that no constant is rematerialized
    ar = gl.arange(0, 64, layout=gl.SliceLayout(1, a_layout))
    ac = gl.arange(0, 128, layout=gl.SliceLayout(0, a_layout))
    a_val = (gl.load(out_ptr + 4096 * gl.num_programs(0) + gl.program_id(0) * 64 * N + ar[:, None] * 128 + ac[None, :])
             + 0.5).to(gl.float16)
    fence_async_shared()
    acc = gl.zeros([64, N], gl.float32, acc_layout)
    for _ in range(iters):
        if SS:
            acc = warpgroup_mma(a_s, b.permute((1, 0)), acc, is_async=True)
        else:
            acc = warpgroup_mma(a_val, b.permute((1, 0)), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    r = gl.arange(0, 64, layout=gl.SliceLayout(1, acc_layout))
    c = gl.arange(0, N, layout=gl.SliceLayout(0, acc_layout))
    gl.store(out_ptr + 4096 * gl.num_programs(0) + gl.program_id(0) * 64 * N + r[:, None] * N + c[None, :], acc)


@gluon.jit
def _probe(out_ptr, alu_iters, mma_iters, N: gl.constexpr, SS: gl.constexpr):
    gl.warp_specialize([(_alu, (out_ptr, alu_iters)), (_mma, (out_ptr, mma_iters, N, SS))], [4], [232])


def main() -> None:
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"# {torch.cuda.get_device_name()}")
    for per_sm in (1, 2):
        grid = sms * per_sm
        for n in (64, 128):
            for ss in (False, True):
                out = torch.zeros(grid * (4096 + 64 * 128) + 64, device="cuda", dtype=torch.float32)

                def launch(alu, mma):
                    _probe[(grid,)](out, alu, mma, N=n, SS=ss, num_warps=4)

                def timed(alu, mma):
                    return bench._eager_us(lambda: launch(alu, mma), repeats=5)
                mma_iters = 2000
                mma_us = timed(0, mma_iters)
                alu_one = timed(200, 0) / 200
                alu_iters = max(1, round(mma_us / alu_one))  # about as long as the MMAs alone
                alu_us = timed(alu_iters, 0)
                both_us = timed(alu_iters, mma_iters)
                print(f"{per_sm} a SM, N={n:3d} {'SS' if ss else 'RS'}: MMA alone {mma_us:8.1f} us, ALU alone "
                      f"{alu_us:8.1f} us, both {both_us:8.1f} us (sum {mma_us + alu_us:8.1f}, larger "
                      f"{max(mma_us, alu_us):8.1f})", flush=True)


if __name__ == "__main__":
    main()
