"""Probe: how fast does one warpgroup's chain of wgmma instructions run, with the A operand
in registers (as the warp-specialized GEMM's consumers issue them), by the N of the
instruction and the number of independent accumulators the chain is spread over?

Why (docs/NOTES-gemm.md v46): at M = 64 the GEMM's consumers issue, per K-block of 128, eight
m64n64k16 wgmmas into one accumulator.  v20 found two warpgroups' MMAs alone take nearly as
long as four warpgroups' (so the tensor cores were not the limit), and v40's "no decode"
diagnostic left the large layers at about half the tensor rate.  If each wgmma must wait for
the one before it that writes the same accumulator, a chain of N = 64 instructions (32
cycles of tensor work each at 2048 FMA a cycle an SM) is bound by that latency, and spreading
a block's steps over several accumulators (k-steps taken round robin) would run them closer
to the tensor rate.

Each CTA is one warpgroup; CTAS_PER_SM of them share each SM (the grid is SMs x that).  Each
iteration issues STEPS m64nNk16 wgmmas (A [64, 16] fp16 in registers, B [16, N] from shared
memory), step j into accumulator j % CHAINS, then waits for all of them (as the GEMM waits
once a block).  Printed: us per launch, FMA a cycle an SM at the SM clock given, and that as a
fraction of 2048.

Usage: python benchmarks/mma_chain_probe.py [--clock-mhz 1980] [--iters 4000]
"""

from __future__ import annotations

import argparse

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma, warpgroup_mma_wait

from anybit import bench


@gluon.jit
def _mma_chain(out_ptr, iters, N: gl.constexpr, CHAINS: gl.constexpr, STEPS: gl.constexpr, SS: gl.constexpr,
               GROUPED: gl.constexpr):
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, N, 16])
    # GROUPED: one wgmma call a chain (K = 16 STEPS / CHAINS, the GEMM's form: one call a
    # K-block); else one call a k-step (K = 16), the chains taken round robin
    KC: gl.constexpr = 16 * STEPS // CHAINS if GROUPED else 16
    CALLS: gl.constexpr = CHAINS if GROUPED else STEPS
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
    b_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([N, KC], gl.float16)
    a_smem_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([64, KC], gl.float16)
    fill: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [4, 1], [1, 0])
    b = gl.allocate_shared_memory(gl.float16, [CALLS, N, KC], b_layout)
    rows = gl.arange(0, N, layout=gl.SliceLayout(1, fill))
    cols = gl.arange(0, KC, layout=gl.SliceLayout(0, fill))
    tile = ((rows[:, None] * KC + cols[None, :]) % 7).to(gl.float16) * 0.001
    for j in gl.static_range(CALLS):
        b.index(j).store(tile)
    a_val = gl.full([64, KC], 0.5, gl.float16, a_layout)
    a_s = gl.allocate_shared_memory(gl.float16, [64, KC], a_smem_layout)
    a_s.store(gl.full([64, KC], 0.5, gl.float16, fill))
    fence_async_shared()
    acc0 = gl.zeros([64, N], gl.float32, acc_layout)
    acc1 = gl.zeros([64, N], gl.float32, acc_layout)
    acc2 = gl.zeros([64, N], gl.float32, acc_layout)
    acc3 = gl.zeros([64, N], gl.float32, acc_layout)
    for _ in range(iters):
        for j in gl.static_range(CALLS):
            bj = b.index(j).permute((1, 0))
            if SS:
                a = a_s
            else:
                a = a_val
            if j % CHAINS == 0:
                acc0 = warpgroup_mma(a, bj, acc0, is_async=True)
            elif j % CHAINS == 1:
                acc1 = warpgroup_mma(a, bj, acc1, is_async=True)
            elif j % CHAINS == 2:
                acc2 = warpgroup_mma(a, bj, acc2, is_async=True)
            else:
                acc3 = warpgroup_mma(a, bj, acc3, is_async=True)
        acc0, acc1, acc2, acc3 = warpgroup_mma_wait(num_outstanding=0, deps=(acc0, acc1, acc2, acc3))
    total = acc0 + acc1 + acc2 + acc3
    r = gl.arange(0, 64, layout=gl.SliceLayout(1, acc_layout))
    c = gl.arange(0, N, layout=gl.SliceLayout(0, acc_layout))
    gl.store(out_ptr + gl.program_id(0) * 64 * N + r[:, None] * N + c[None, :], total)


def run(n: int, chains: int, ctas_per_sm: int, ss: bool, iters: int, steps: int, clock_mhz: float,
        grouped: bool) -> dict:
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    grid = sms * ctas_per_sm
    out = torch.empty(grid, 64, n, device="cuda", dtype=torch.float32)

    def launch(k):
        return _mma_chain[(grid,)](out, k, N=n, CHAINS=chains, STEPS=steps, SS=ss, GROUPED=grouped, num_warps=4)

    regs = launch(1).n_regs
    torch.cuda.synchronize()
    expect = 0.5 * 16 * iters * steps  # rough magnitude only: the check is finiteness
    launch(iters)
    torch.cuda.synchronize()
    if not torch.isfinite(out).all() or out.abs().max() > expect:
        raise SystemExit(f"N={n} chains={chains}: wrong sums")
    us = bench._eager_us(lambda: launch(iters), repeats=5)
    fma = grid * iters * steps * 64 * n * 16
    per_cycle = fma / sms / (us * 1e-6 * clock_mhz * 1e6)
    return dict(N=n, chains=chains, ctas_per_sm=ctas_per_sm, ss=ss, grouped=grouped, us=us, fma_per_cycle_sm=per_cycle,
                of_peak=per_cycle / 2048, regs=regs, resident=ctas_per_sm * 128 * regs <= 65536)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clock-mhz", type=float, default=1980.0)
    p.add_argument("--iters", type=int, default=4000)
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args()
    print(f"# {torch.cuda.get_device_name()}, STEPS={args.steps} k-steps a wait, {args.iters} iterations")
    for ss, grouped in ((False, True), (False, False), (True, True)):
        for n in (32, 64, 128, 256):
            for ctas in (1, 2, 4):
                for chains in (1, 2, 4):
                    if n * chains > 256 or (ss and chains > 1):
                        continue
                    r = run(n, chains, ctas, ss, args.iters, args.steps, args.clock_mhz, grouped)
                    if not r["resident"]:
                        continue  # not all CTAs fit an SM at once (registers)
                    print(f"{'SS' if ss else 'RS'} {'one call a chain' if grouped else 'one call a step  '} "
                          f"N={n:3d} warpgroups/SM={ctas} chains={chains}: {r['us']:8.1f} us "
                          f"{r['fma_per_cycle_sm']:6.0f} FMA/cycle/SM ({r['of_peak']:.2f} of 2048; {r['regs']} regs)",
                          flush=True)


if __name__ == "__main__":
    main()
