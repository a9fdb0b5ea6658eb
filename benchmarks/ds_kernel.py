"""A measurement prototype (not used by the dispatcher; docs/NOTES-gemm.md v21): a
warp-specialized Gluon kernel for y = x @ W^T on Hopper with W decoded into shared memory
by warpgroups of their own ("ds": decoded in shared), 4- or 8-bit integer codes, fp16.
Timed by ``ds_probe.py``; measured slower than the shipped kernels at M = 64-256 (v21).

Why (docs/NOTES-gemm.md v15-v20): in ``gemm_gluon_ws`` each consumer warpgroup decodes
its rows of W into the MMA's register operand and then waits for that MMA; the decode
(~0.25 us per 64 x 256 x 64 block) and the MMAs (~0.34 us) run in series, and the
registers of four warpgroups do not hold a second operand to overlap them.  Here the
decode and the MMAs are done by different warps, so they run at the same time:

* the loader partition (the kernel's 4 warps, one thread issuing) copies each K-block's
  x tile [BLOCK_M, BLOCK_K] fp16 and code words [BLOCK_N, BLOCK_K * BITS / 32] int32 by
  TMA into stage ``u % STAGES`` of a ring (``gemm_gluon_ws._load_blocks``);
* NUM_DEC (1 or 2) decoder warpgroups each read their BLOCK_N / NUM_DEC rows of words, free the
  codes' part of the stage, decode the words (the same PTX and the one rounding per weight
  of ``gemm_gluon``) and store the fp16 rows into slot ``u % SLOTS`` of a second ring of
  decoded tiles [BLOCK_N, BLOCK_K] (128-byte swizzle, the layout wgmma reads);
* BLOCK_M / 64 MMA warpgroups each multiply their 64 rows of x (A, shared memory) by the
  decoded tile (B = tile^T, shared memory): wgmma m64nBLOCK_Nk16, y's orientation (the
  weight is the MMA's N side, x its M side), one MMA in flight while the next block's
  barriers are waited for.

Rings and barriers::

    x_bufs[s] [BLOCK_M, BLOCK_K] fp16, c_bufs[s] [BLOCK_N, words] i32   ready[s] (TMA bytes)
        empty[s]: NUM_DEC decoder + NUM_MMA MMA arrivals free stage s
    w_bufs[d] [BLOCK_N, BLOCK_K] fp16                                  wready[d] (NUM_DEC arrivals)
        wempty[d]: NUM_MMA arrivals once the MMA reading slot d is done

Shared memory per K-block of a 64 x 256 x 64 tile: TMA writes 16 KB, the decoders read 8 KB
of codes and write 32 KB, the MMA reads 8 KB of x and 32 KB of W: ~96 KB against the SM's
128 bytes a clock, so ~750 clocks a block where the MMAs alone take 512 (at 128 rows of x
the decoded tile serves two MMA warpgroups: ~1150 clocks against 1024).

Programs are persistent (one per SM at most), taking tiles pid, pid + programs, ...

Registers: ptxas checks each wgmma against the launch's register limit (65536 over the
CTA's threads), not the partition's ``setmaxnreg``: m64n256k16 needs ~154, so with 16
warps (limit 128) it does not compile, and ``MMA_SPLIT`` issues two m64n128 instead
(each then reads its x rows again).  Compiled for sm_90 without spills: 1 decoder + 1 MMA
warpgroup (12 warps; the decoder at 200), 2 + 1 with MMA_SPLIT (16), 1 + 2 with MMA_SPLIT at
128 rows of x (decoder 152, MMA 168), the combinations the kernel takes; 4 decoders (24 warps,
limit 80) do not compile (m64n128 needs 90), nor 2 + 2 without spills.

Limits: sm_90, 4- or 8-bit symmetric or zero-point codes, fp16 x and scales, K-blocks
inside one group, K a multiple of 8, no split-K.
"""

from __future__ import annotations

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared, mbarrier, warpgroup_mma, warpgroup_mma_wait,
)

from anybit._matmul.gemm_gluon import (
    _BYTE_PAIR_ASM, _NIBBLE_PAIR_ASM, group_params, group_words, nibble_multiplier, pair_select,
)
from anybit._matmul.gemm_gluon_ws import _load_blocks
from anybit._matmul.ws_schedule import tile_origin

#: DIAG values: measurement copies that drop one part of the work (wrong results on purpose).
FULL, NO_DECODE, NO_MMA = gl.constexpr(0), gl.constexpr(1), gl.constexpr(2)


@triton.constexpr_function
def _word_layout3(rows, words, pairs):
    """[rows, words, pairs] over one warpgroup: each thread holds all pairs of a word, the
    lanes of a warp run along the words of a row (a row's words are 32 bytes at 4 bits and
    K-blocks of 64), so each thread's 2 * pairs decoded values are consecutive in k."""
    along = min(words, 32)
    return gl.BlockedLayout([1, 1, pairs], [32 // along, along, 1], [4, 1, 1], [2, 1, 0])


@gluon.jit
def _tiles(M, N, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr):
    return gl.cdiv(M, BLOCK_M) * gl.cdiv(N, BLOCK_N)


@gluon.jit
def _ds_loader(x_desc, c_desc, ring, M, N, k_blocks, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
               BLOCK_K: gl.constexpr, SWIZZLE: gl.constexpr, STAGES: gl.constexpr, BITS: gl.constexpr):
    """The program's tiles' K-blocks into the ring, STAGES ahead."""
    x_bufs, c_bufs, ready, empty = ring
    base = 0
    for tile in range(gl.program_id(0), _tiles(M, N, BLOCK_M, BLOCK_N), gl.num_programs(0)):
        m0, n0 = tile_origin(tile, M, N, BLOCK_M, BLOCK_N, SWIZZLE)
        # one piece of codes (4 or 8 bits): the descriptor and buffer repeated where the loader takes three
        _load_blocks(x_desc, (c_desc, c_desc, c_desc, 0), x_bufs, (c_bufs, c_bufs, c_bufs), ready, empty, m0, n0, 0,
                     k_blocks, base, BLOCK_K, STAGES, BITS)
        base += k_blocks


@gluon.jit
def _ds_decoder(ring, wring, scales_ptr, zeros_ptr, M, N, k_blocks, num_groups, stride_sn, stride_sg, stride_zn,
                stride_zg, J: gl.constexpr, NUM_DEC: gl.constexpr, GROUP: gl.constexpr, MODE: gl.constexpr,
                BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, SWIZZLE: gl.constexpr,
                STAGES: gl.constexpr, SLOTS: gl.constexpr, BITS: gl.constexpr, DIAG: gl.constexpr):
    """Decoder warpgroup J: rows J * R .. (J + 1) * R of each K-block's codes (R = BLOCK_N /
    NUM_DEC) into the decoded ring, scaled (and shifted by the zero points) per group."""
    x_bufs, c_bufs, ready, empty = ring
    w_bufs, wready, wempty = wring
    R: gl.constexpr = BLOCK_N // NUM_DEC
    WORDS: gl.constexpr = BLOCK_K * BITS // 32
    PAIRS: gl.constexpr = 16 // BITS
    layout3: gl.constexpr = _word_layout3(R, WORDS, PAIRS)
    word_layout: gl.constexpr = gl.SliceLayout(2, layout3)
    row_layout: gl.constexpr = gl.SliceLayout(1, word_layout)
    pair = gl.arange(0, PAIRS, layout=gl.SliceLayout(0, gl.SliceLayout(0, layout3)))
    select = gl.expand_dims(gl.expand_dims(pair_select(pair, BITS), 0), 0)
    asm: gl.constexpr = _BYTE_PAIR_ASM if BITS == 8 else _NIBBLE_PAIR_ASM
    u = 0
    for tile in range(gl.program_id(0), _tiles(M, N, BLOCK_M, BLOCK_N), gl.num_programs(0)):
        _, n0 = tile_origin(tile, M, N, BLOCK_M, BLOCK_N, SWIZZLE)
        rows = gl.minimum(n0 + J * R + gl.arange(0, R, layout=row_layout), N - 1)
        scale, zero = group_params(scales_ptr, zeros_ptr, rows, 0, num_groups, stride_sn, stride_sg, stride_zn,
                                   stride_zg, MODE, BITS)
        for kb in range(k_blocks):
            s = u % STAGES
            d = u % SLOTS
            # the next block's group parameters, loaded a block ahead
            next_scale, next_zero = group_params(scales_ptr, zeros_ptr, rows, ((kb + 1) * BLOCK_K) // GROUP,
                                                 num_groups, stride_sn, stride_sg, stride_zn, stride_zg, MODE, BITS)
            mbarrier.wait(ready.index(s), (u // STAGES) & 1)
            if DIAG != NO_DECODE:
                words = c_bufs.index(s).slice(J * R, R, dim=0).load(word_layout)
                bias, scale_words = group_words(scale, zero, BITS)
                words3 = gl.broadcast(gl.expand_dims(words, 2), select)[0]
                sel3 = gl.broadcast(words3, select)[1]
                bias3 = gl.broadcast(words3, gl.expand_dims(gl.expand_dims(bias, 1), 2))[1]
                scale3 = gl.broadcast(words3, gl.expand_dims(gl.expand_dims(scale_words, 1), 2))[1]
                mul3 = words3 * 0 + nibble_multiplier(num_groups)  # (unused by the 8-bit decode)
                lo, hi = gl.inline_asm_elementwise(asm, "=h,=h,r,r,r,r,r", [words3, sel3, bias3, scale3, mul3],
                                                   dtype=(gl.float16, gl.float16), is_pure=True, pack=1)
                tile_k = gl.reshape(gl.join(lo, hi), [R, BLOCK_K])
            mbarrier.arrive(empty.index(s), count=1)  # this warpgroup's codes are in registers
            mbarrier.wait(wempty.index(d), ((u // SLOTS) & 1) ^ 1)  # a fresh barrier passes phase 1
            if DIAG != NO_DECODE:
                w_bufs.index(d).slice(J * R, R, dim=0).store(tile_k)
                fence_async_shared()  # the stores, visible to the MMA's reads (async proxy)
            mbarrier.arrive(wready.index(d), count=1)
            scale = next_scale
            zero = next_zero
            u += 1


@gluon.jit
def _ds_mma(ring, wring, bias_ptr, out_ptr, M, N, k_blocks, G: gl.constexpr, BLOCK_M: gl.constexpr,
            BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, SWIZZLE: gl.constexpr, STAGES: gl.constexpr,
            SLOTS: gl.constexpr, HAS_BIAS: gl.constexpr, DIAG: gl.constexpr, MMA_SPLIT: gl.constexpr):
    """MMA warpgroup G: rows G * 64 .. G * 64 + 64 of each tile's x times the decoded tiles,
    fp32 [64, BLOCK_N]; writes y's [64, BLOCK_N] block (+ bias) as fp16."""
    x_bufs, c_bufs, ready, empty = ring
    w_bufs, wready, wempty = wring
    HALF: gl.constexpr = BLOCK_N // 2 if MMA_SPLIT else BLOCK_N
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, HALF, 16])
    u = 0
    for tile in range(gl.program_id(0), _tiles(M, N, BLOCK_M, BLOCK_N), gl.num_programs(0)):
        m0, n0 = tile_origin(tile, M, N, BLOCK_M, BLOCK_N, SWIZZLE)
        acc = gl.zeros([64, HALF], dtype=gl.float32, layout=acc_layout)
        if MMA_SPLIT:
            acc2 = gl.zeros([64, HALF], dtype=gl.float32, layout=acc_layout)
        for kb in range(k_blocks):
            s = u % STAGES
            d = u % SLOTS
            mbarrier.wait(ready.index(s), (u // STAGES) & 1)
            mbarrier.wait(wready.index(d), (u // SLOTS) & 1)
            if DIAG != NO_MMA:
                a = x_bufs.index(s).slice(G * 64, 64, dim=0)
                if MMA_SPLIT:
                    acc = warpgroup_mma(a, w_bufs.index(d).slice(0, HALF, dim=0).permute((1, 0)), acc, is_async=True)
                    acc2 = warpgroup_mma(a, w_bufs.index(d).slice(HALF, HALF, dim=0).permute((1, 0)), acc2,
                                         is_async=True)
                    acc, acc2 = warpgroup_mma_wait(num_outstanding=2, deps=(acc, acc2))
                else:
                    acc = warpgroup_mma(a, w_bufs.index(d).permute((1, 0)), acc, is_async=True)
                    # the previous block's MMA is done: free its stage and slot
                    acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
            mbarrier.arrive(empty.index((u + STAGES - 1) % STAGES), count=1, pred=kb > 0)
            mbarrier.arrive(wempty.index((u + SLOTS - 1) % SLOTS), count=1, pred=kb > 0)
            u += 1
        if MMA_SPLIT:
            acc, acc2 = warpgroup_mma_wait(num_outstanding=0, deps=(acc, acc2))
        else:
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(empty.index((u + STAGES - 1) % STAGES), count=1)
        mbarrier.arrive(wempty.index((u + SLOTS - 1) % SLOTS), count=1)
        rows = m0 + G * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, acc_layout))
        cols = n0 + gl.arange(0, HALF, layout=gl.SliceLayout(0, acc_layout))
        _ds_store(acc, rows, cols, bias_ptr, out_ptr, M, N, HAS_BIAS)
        if MMA_SPLIT:
            _ds_store(acc2, rows, cols + HALF, bias_ptr, out_ptr, M, N, HAS_BIAS)


@gluon.jit
def _ds_store(acc, rows, cols, bias_ptr, out_ptr, M, N, HAS_BIAS: gl.constexpr):
    """y[rows, cols] = acc (+ bias[cols]) as fp16."""
    if HAS_BIAS:
        acc += gl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(gl.float32)[None, :]
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    gl.store(out_ptr + rows[:, None] * N + cols[None, :], acc.to(gl.float16), mask=mask)


@gluon.jit
def gemm_gluon_ds_kernel(
    x_desc, c_desc, scales_ptr, zeros_ptr, bias_ptr, out_ptr,
    M, N, num_groups, k_blocks, stride_sn, stride_sg, stride_zn, stride_zg,
    GROUP: gl.constexpr, MODE: gl.constexpr,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, SWIZZLE: gl.constexpr,
    STAGES: gl.constexpr, SLOTS: gl.constexpr, NUM_DEC: gl.constexpr, HAS_BIAS: gl.constexpr,
    DEC_REGS: gl.constexpr, MMA_REGS: gl.constexpr, num_warps: gl.constexpr,
    BITS: gl.constexpr = 4, DIAG: gl.constexpr = 0, MMA_SPLIT: gl.constexpr = False,
):
    """out (M, N) fp16 = x (M, K) fp16 @ W^T (+ bias).

    x_desc: TMA descriptor of x (M, K) fp16, block [BLOCK_M, BLOCK_K]; c_desc: of the codes
    (N, words_per_row) int32, block [BLOCK_N, BLOCK_K * BITS / 32].  Other operands as
    ``gemm_gluon_kernel``'s.  Grid: (programs,), at most one per tile; num_warps = 4 (the
    loader; the NUM_DEC decoder and BLOCK_M / 64 MMA warpgroups are added by the warp
    specialization)."""
    NUM_MMA: gl.constexpr = BLOCK_M // 64
    WORDS: gl.constexpr = BLOCK_K * BITS // 32
    x_bufs = gl.allocate_shared_memory(gl.float16, [STAGES, BLOCK_M, BLOCK_K], x_desc.layout)
    c_bufs = gl.allocate_shared_memory(gl.int32, [STAGES, BLOCK_N, WORDS], c_desc.layout)
    w_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=min(128, 2 * BLOCK_K), element_bitwidth=16,
                                                  rank=2)
    w_bufs = gl.allocate_shared_memory(gl.float16, [SLOTS, BLOCK_N, BLOCK_K], w_layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    wready = gl.allocate_shared_memory(gl.int64, [SLOTS, 1], mbarrier.MBarrierLayout())
    wempty = gl.allocate_shared_memory(gl.int64, [SLOTS, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=NUM_DEC + NUM_MMA)
    for d in gl.static_range(SLOTS):
        mbarrier.init(wready.index(d), count=NUM_DEC)
        mbarrier.init(wempty.index(d), count=NUM_MMA)
    fence_async_shared()

    ring = (x_bufs, c_bufs, ready, empty)
    wring = (w_bufs, wready, wempty)
    # one call per combination of warpgroups, each partition's arguments written out: a
    # tuple of arguments assigned to a name turns its constexprs into runtime values
    if NUM_DEC == 1 and NUM_MMA == 1:
        gl.warp_specialize([
            (_ds_loader, (x_desc, c_desc, ring, M, N, k_blocks, BLOCK_M, BLOCK_N, BLOCK_K, SWIZZLE, STAGES, BITS)),
            (_ds_decoder, (ring, wring, scales_ptr, zeros_ptr, M, N, k_blocks, num_groups, stride_sn, stride_sg,
                           stride_zn, stride_zg, 0, NUM_DEC, GROUP, MODE, BLOCK_M, BLOCK_N, BLOCK_K, SWIZZLE, STAGES,
                           SLOTS, BITS, DIAG)),
            (_ds_mma, (ring, wring, bias_ptr, out_ptr, M, N, k_blocks, 0, BLOCK_M, BLOCK_N, BLOCK_K, SWIZZLE, STAGES,
                       SLOTS, HAS_BIAS, DIAG, MMA_SPLIT))],
            [4, 4], [DEC_REGS, MMA_REGS])
    elif NUM_DEC == 2 and NUM_MMA == 1:
        gl.warp_specialize([
            (_ds_loader, (x_desc, c_desc, ring, M, N, k_blocks, BLOCK_M, BLOCK_N, BLOCK_K, SWIZZLE, STAGES, BITS)),
            (_ds_decoder, (ring, wring, scales_ptr, zeros_ptr, M, N, k_blocks, num_groups, stride_sn, stride_sg,
                           stride_zn, stride_zg, 0, NUM_DEC, GROUP, MODE, BLOCK_M, BLOCK_N, BLOCK_K, SWIZZLE, STAGES,
                           SLOTS, BITS, DIAG)),
            (_ds_decoder, (ring, wring, scales_ptr, zeros_ptr, M, N, k_blocks, num_groups, stride_sn, stride_sg,
                           stride_zn, stride_zg, 1, NUM_DEC, GROUP, MODE, BLOCK_M, BLOCK_N, BLOCK_K, SWIZZLE, STAGES,
                           SLOTS, BITS, DIAG)),
            (_ds_mma, (ring, wring, bias_ptr, out_ptr, M, N, k_blocks, 0, BLOCK_M, BLOCK_N, BLOCK_K, SWIZZLE, STAGES,
                       SLOTS, HAS_BIAS, DIAG, MMA_SPLIT))],
            [4, 4, 4], [DEC_REGS, DEC_REGS, MMA_REGS])
    else:
        gl.static_assert(NUM_DEC == 1 and NUM_MMA == 2, "decoders, MMA warpgroups: 1, 1; 2, 1; 1, 2 (BLOCK_M 128)")
        gl.warp_specialize([
            (_ds_loader, (x_desc, c_desc, ring, M, N, k_blocks, BLOCK_M, BLOCK_N, BLOCK_K, SWIZZLE, STAGES, BITS)),
            (_ds_decoder, (ring, wring, scales_ptr, zeros_ptr, M, N, k_blocks, num_groups, stride_sn, stride_sg,
                           stride_zn, stride_zg, 0, NUM_DEC, GROUP, MODE, BLOCK_M, BLOCK_N, BLOCK_K, SWIZZLE, STAGES,
                           SLOTS, BITS, DIAG)),
            (_ds_mma, (ring, wring, bias_ptr, out_ptr, M, N, k_blocks, 0, BLOCK_M, BLOCK_N, BLOCK_K, SWIZZLE, STAGES,
                       SLOTS, HAS_BIAS, DIAG, MMA_SPLIT)),
            (_ds_mma, (ring, wring, bias_ptr, out_ptr, M, N, k_blocks, 1, BLOCK_M, BLOCK_N, BLOCK_K, SWIZZLE, STAGES,
                       SLOTS, HAS_BIAS, DIAG, MMA_SPLIT))],
            [4, 4, 4], [DEC_REGS, MMA_REGS, MMA_REGS])
