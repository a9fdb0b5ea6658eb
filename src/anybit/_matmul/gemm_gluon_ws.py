"""Warp-specialized Gluon kernel for y = x @ W^T at larger M on Hopper, integer codes of 1 to 8
bits (``BITS``; 4 and 8 a word at a time, the others piece by piece: ``ws_pieces``) or 4-bit
table codes, fp16: a loader partition feeds a ring by TMA, each consumer warpgroup decodes its
64 or 128 rows of W into the MMA's register operand and multiplies.

Why (docs/NOTES-gemm.md v13, v14): with 64 rows of W per program, x is read from L2
once per 64 rows of W, which at M = 64 moves about 4x the bytes of the codes; and
the single-program kernels (``gemm_gluon``, ``gemm_triton``) wait on a CTA-wide
barrier every K-block, so their warpgroups decode and multiply in lockstep.  Here

* a program covers ``BLOCK_N`` = WG_ROWS x NUM_WG rows of W (NUM_WG = 1 to 4 consumer
  warpgroups of WG_ROWS = 64 or 128 rows; 128 rows are two m64 MMAs per K-step) against ``BLOCK_M``
  rows of x, so one x tile serves up to 256 rows of W;
* the loader partition (the kernel's 4 warps, one thread issuing) copies each K-block's
  x tile [BLOCK_M, BLOCK_K] (fp16) and code words [BLOCK_N, BLOCK_K * BITS / 32] (int32) by TMA
  into stage ``i % STAGES`` of a ring and
  signals ``ready[stage]`` (mbarrier with the byte count); TMA reads past the end of
  x, W or K as zeros;
* consumer warpgroup g waits on ``ready``, reads its rows' words from shared memory,
  decodes them straight into wgmma's register operand (``gemm_gluon._byte_layout``,
  the same PTX and the same single rounding per weight; 8-bit codes: each half word's two
  bytes put under fp16's exponent of 1024 by one prmt, ``_BYTE_PAIR_ASM``), multiplies with the x tile
  from shared memory and arrives on ``empty[stage]`` once that MMA is done (NUM_WG
  arrivals free a stage).  It takes the K-blocks in pairs with two register operands;
  ``OVERLAP`` (``gemm.WsOverlap``, by tile: ``gemm.ws_overlap``) says whether an MMA
  still runs while the next block is decoded (never into the registers it reads).

Ring, per stage::

    x_bufs[s]  [BLOCK_M, BLOCK_K] fp16   <- TMA x[m0:m0+BLOCK_M, k0:k0+BLOCK_K]
    c_bufs[s]  [BLOCK_N, BLOCK_K*BITS/32] i32  <- TMA codes[n0:n0+BLOCK_N, k0*BITS/32:(k0+BLOCK_K)*BITS/32]
    ready[s]   loader: expect(bytes) + TMA -> consumers wait (phase i // STAGES)
    empty[s]   each consumer warpgroup arrives once -> loader waits before refilling

Split-K: each warpgroup stores its fp32 partial [WG_ROWS, BLOCK_M] in the order of its
registers (``_vectors``: 16-byte vectors, 512 contiguous bytes a warp; a workspace of
``split_k * tiles * BLOCK_N * BLOCK_M`` floats, ``ws_workspace_size``) and counts in on its
own counter (``tile * NUM_WG + g``); the last split sums the partials in split order, its own
from its registers (loaded back with VECTOR_STORE), the others' loads unrolled.  (Stored
row-major, 8 bytes a thread, the fix-up took 7 of 25 us of 4096 x 4096 at M = 256 with two
splits: docs/NOTES-gemm.md v23.)

Stream-K (``STREAM_K``, grid: one program per SM): the tiles of the full waves are taken
whole, the K-blocks of the last ``tiles % programs`` tiles are cut into equal shares
(``stream_k_items``).  A shared tile's warpgroups store their partials in the program's
two workspace slots and count in on the tile's counter; the last to arrive adds the
owners' partials in program order (the same bits on every launch), writes y and resets
the counter for the next launch.

Cost (measured per program, docs/NOTES-gemm.md v15, v16): one program fits an SM (20 warps
at 256 rows of W).  A 64 x 256 x 64 K-block takes ~0.6 us, of which the MMAs alone take
~0.34 us; the two register operands of an overlap fit only up to 128 rows of W (CARRY:
a 64 x 128 x 64 block 0.42 -> 0.37 us), and PAIRS at 256 rows measured no faster than NONE.
Two warpgroups of 128 rows (240 registers, PAIRS) measured the same as four of 64 (v17),
where removing the MMA, the decode or the scale loads each saves 15-35%: none hides behind
the others.  The tuned table picks the kernel only where it measured fastest (mostly the
large layers at M = 64-256).

Limits (``gemm.gluon_ws_supported``): sm_90, symmetric or zero-point codes of 1 to 8 bits or
4-bit table codes (MODE TABLE: NF4's levels; ROW_TABLE: a table per row of W), fp16 x and
scales, K-blocks of 64 or 128 (128 where a code has a 1-bit piece) inside one group or
holding whole groups of a multiple of 32 codes (a scale and zero point per row and word of
codes then, ``ws_groups``), K a multiple of 8 and rows of codes a multiple of 16 bytes
(TMA row strides), a ring that fits shared memory (``gemm.ws_fits``).
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait,
)

from .cache_keys import settle_cache_keys
from .cluster import (
    buffer_bytes, cluster_arrive, cluster_bar, cluster_sum, cluster_wait, init_byte_barrier,
    init_count_barrier, tail_buffer,
)
from .gemm_gluon import (
    NIBBLE_MUL, ROW_TABLE, ZERO_POINT, bias_word, cta_barrier, decode_operand, group_params, nibble_multiplier,
    pair_select, table_mode, table_words,
)
from .gemv_triton import PDL_EARLY, PDL_LATE, PDL_OFF, pdl_trigger, pdl_wait
from .staged_params import region_row_bytes, stage_params, staged_base, staged_block_params, staged_wait
from .ws_groups import group_rows, per_word, word_groups
from .ws_pieces import decode_pieces, piece_count, piece_offset, piece_path, piece_width, ws_byte_layout
from .ws_schedule import share_owner, stream_k_work, tail_origin, tile_origin, work_item, work_items

#: TMA global -> shared copy: ``async_load`` from Triton 3.7 on, which removed the older name
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared

#: The kernel's OVERLAP, ``gemm.WsOverlap``'s values (tests/test_gemm_gluon_ws.py checks them).
NO_OVERLAP, PAIRS, CARRY = gl.constexpr(0), gl.constexpr(1), gl.constexpr(2)


@gluon.jit
def _load_blocks(x_desc, code_src, x_bufs, codes, ready, empty, m0, n0, kb0, n_blocks, base,
                 BLOCK_K: gl.constexpr, STAGES: gl.constexpr, BITS: gl.constexpr, sets=0, TAIL_SETS: gl.constexpr = 0,
                 AHEAD: gl.constexpr = 0):
    """K-blocks kb0 .. kb0 + n_blocks of one tile into the ring, as its uses base .. base + n_blocks.
    With TAIL_SETS (a plan with tail rows; a copy of codes per row set): the first ``sets`` row
    sets' codes only, and where that is TAIL_SETS the idle row sets' releases of each stage
    are arrived for here, as the stage is filled (the ring's phases stay those of every row set).
    AHEAD (``GemmConfig.loads_ahead``, 0: off, else below STAGES): use u's copies are issued
    only once those of use u - AHEAD have landed, so at most AHEAD K-blocks are in flight.
    (The wait's parity is that of use u - AHEAD's phase: the stage's next use, u - AHEAD +
    STAGES > u, is not issued yet, so its barrier cannot be a phase further on.)"""
    BOXES: gl.constexpr = codes[0].shape[0] // STAGES  # copies of codes a stage takes (``_stage_codes``)
    X_BYTES: gl.constexpr = x_desc.block_type.nbytes
    # a copy of every piece's codes (their boxes' bytes in proportion to their widths)
    C_BYTES: gl.constexpr = code_src[0].block_type.nbytes * BITS // piece_width(BITS, 0)
    CODE_ROWS: gl.constexpr = code_src[0].block_type.shape[0]
    gl.static_assert(AHEAD < STAGES, "loads_ahead: below the ring's stages")
    for i in range(n_blocks):
        s = (base + i) % STAGES
        if AHEAD > 0:
            if base + i >= AHEAD:
                landed = base + i - AHEAD
                mbarrier.wait(ready.index(landed % STAGES), (landed // STAGES) & 1)
        mbarrier.wait(empty.index(s), (((base + i) // STAGES) & 1) ^ 1)  # a fresh barrier passes phase 1
        if TAIL_SETS > 0:
            mbarrier.expect(ready.index(s), X_BYTES + BOXES * C_BYTES, pred=sets == BOXES)
            mbarrier.expect(ready.index(s), X_BYTES + TAIL_SETS * C_BYTES, pred=sets < BOXES)
        else:
            mbarrier.expect(ready.index(s), X_BYTES + BOXES * C_BYTES)
        k = (kb0 + i) * BLOCK_K
        _tma_load(x_desc, [m0, k], ready.index(s), x_bufs.index(s))
        for b in gl.static_range(BOXES):
            for p in gl.static_range(piece_count(BITS)):  # piece p's words start at kpad_words x its offset
                _tma_load(code_src[p], [n0 + b * CODE_ROWS, code_src[3] * piece_offset(BITS, p)
                                        + k * piece_width(BITS, p) // 32], ready.index(s),
                          codes[p].index(s * BOXES + b), pred=b < sets if TAIL_SETS > 0 else True)
        if TAIL_SETS > 0:
            mbarrier.arrive(empty.index(s), count=BOXES - TAIL_SETS, pred=sets < BOXES)


@gluon.jit
def _stage_codes(c_bufs, s, RW: gl.constexpr, WG_ROWS: gl.constexpr, STAGES: gl.constexpr):
    """Row set RW's WG_ROWS rows of code words in stage s of the ring.  ``c_bufs``: [STAGES x
    BOXES, BOX, words] int32, a stage's BLOCK_N rows in BOXES copies of BOX rows
    (``gemm.ws_code_rows``: one copy of BLOCK_N rows where it is a power of two, else copies
    of WG_ROWS, which Triton's shared memory then takes as one buffer each)."""
    BOXES: gl.constexpr = c_bufs.shape[0] // STAGES
    if BOXES == 1:
        codes = c_bufs.index(s).slice(RW * WG_ROWS, WG_ROWS, dim=0)
    else:
        gl.static_assert(c_bufs.shape[1] == WG_ROWS, "copies of more rows than a warpgroup's: one copy a stage")
        codes = c_bufs.index(s * BOXES + RW)
    return codes


@gluon.jit
def _loader(x_desc, code_src, ring, work, M, N,
            BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, SWIZZLE: gl.constexpr,
            STAGES: gl.constexpr, STREAM_K: gl.constexpr, BITS: gl.constexpr, PDL: gl.constexpr,
            CLUSTER: gl.constexpr, full=0, TAIL_SETS: gl.constexpr = 0, AHEAD: gl.constexpr = 0):
    """The loader warp: the program's K-blocks into the ring, STAGES ahead (with
    ``STREAM_K``, those of each of its work items in turn, ``work_item``).  As a programmatic
    dependent (PDL) it first waits for the kernel before it, and lets the next one launch
    right after that wait (PDL_EARLY) or once it has issued its last copy (PDL_LATE).  With
    CLUSTER it arrives at the cluster barrier at its start and waits for it after its last copy
    (each partition passes it once; the consumers wait before their first push).  TAIL_SETS:
    a launch with tail rows (``tail_origin``, ``full`` whole tiles of W per tile of x).  AHEAD:
    at most this many K-blocks' copies in flight (``_load_blocks``; 0: as many as the ring holds)."""
    if CLUSTER:
        cluster_arrive()
    pdl_wait(PDL)
    pdl_trigger(PDL, PDL_EARLY)
    x_bufs, codes, ready, empty = ring
    if STREAM_K:
        base = 0
        for j in range(work_items(work)):
            tile, kb0, n_blocks, _, _ = work_item(work, j)
            m0, n0 = tile_origin(tile, M, N, BLOCK_M, BLOCK_N, SWIZZLE)
            _load_blocks(x_desc, code_src, x_bufs, codes, ready, empty, m0, n0, kb0, n_blocks, base, BLOCK_K, STAGES,
                         BITS, 0, 0, AHEAD)
            base += n_blocks
    else:
        tile, kb0, n_blocks, _ = work
        if TAIL_SETS > 0:
            m0, n0, sets = tail_origin(tile, M, full, BLOCK_M, BLOCK_N, code_src[0].block_type.shape[0], TAIL_SETS)
        else:
            m0, n0 = tile_origin(tile, M, N, BLOCK_M, BLOCK_N, SWIZZLE)
            sets = 0  # unused
        _load_blocks(x_desc, code_src, x_bufs, codes, ready, empty, m0, n0, kb0, n_blocks, 0, BLOCK_K, STAGES, BITS,
                     sets, TAIL_SETS, AHEAD)
    pdl_trigger(PDL, PDL_LATE)
    if CLUSTER:
        cluster_wait()


@gluon.jit
def _block_params(params, kb, groups, BLOCK_K: gl.constexpr, GROUP: gl.constexpr, MODE: gl.constexpr,
                  BITS: gl.constexpr):
    """The loads of K-block kb's scales and zero points ([WG_ROWS] each, ``group_params``; where
    the block holds several groups, [WG_ROWS, G, 1] each: ``groups``, ``ws_groups.word_groups``')."""
    scales_ptr, zeros_ptr, rows, num_groups, stride_sn, stride_sg, stride_zn, stride_zg = params
    group = (kb * BLOCK_K) // GROUP
    if BLOCK_K > GROUP:
        rows, group = group_rows(rows, groups, group)
    return group_params(scales_ptr, zeros_ptr, rows, group, num_groups, stride_sn, stride_sg, stride_zn, stride_zg,
                        MODE, BITS)


@gluon.jit
def _stage(scales_ptr, zeros_ptr, sbase, RS: gl.constexpr, row0, N, kb0, n_blocks, srow, stride_sn, stride_zn,
           rows, BLOCK_K: gl.constexpr, GROUP: gl.constexpr, WG_ROWS: gl.constexpr, MODE: gl.constexpr,
           WG_K: gl.constexpr):
    """Stage the scales (and zero points) of K-blocks kb0 .. kb0 + n_blocks - 1 of rows row0 ..
    in row set RS's region of those at ``sbase`` (``staged_params``); returns what
    ``_staged_params`` reads them by (``rows``: their places in the region)."""
    region = sbase + RS * WG_ROWS * region_row_bytes(srow, MODE == ZERO_POINT)
    g0 = stage_params(scales_ptr, zeros_ptr, region, row0, N, kb0, n_blocks, srow, stride_sn, stride_zn, BLOCK_K,
                      GROUP, WG_ROWS, MODE == ZERO_POINT, WG_K)
    return region, rows, g0, srow


@gluon.jit
def _staged_params(staged, kb, groups, BLOCK_K: gl.constexpr, GROUP: gl.constexpr, MODE: gl.constexpr,
                   BITS: gl.constexpr, WG_ROWS: gl.constexpr):
    """K-block kb's scales and zero points ([WG_ROWS] each, or per group: ``_block_params``) from
    the row set's region (``_stage``)."""
    region, rows, g0, srow = staged
    group = (kb * BLOCK_K) // GROUP - g0
    if BLOCK_K > GROUP:
        rows, group = group_rows(rows, groups, group)
    return staged_block_params(region, rows, group, srow, WG_ROWS, MODE == ZERO_POINT, BITS)


@gluon.jit
def _block_scales(staged, window, kb, groups, BLOCK_K: gl.constexpr, GROUP: gl.constexpr, MODE: gl.constexpr,
                  BITS: gl.constexpr, WG_ROWS: gl.constexpr, STAGED: gl.constexpr):
    """K-block kb's scales and zero points: from the staged region (STAGED, ``_staged_params``),
    else the window's first (``_advance`` keeps it at kb)."""
    if STAGED:
        sc, zc = _staged_params(staged, kb, groups, BLOCK_K, GROUP, MODE, BITS, WG_ROWS)
    else:
        sc, zc = window[0], window[1]
    return sc, zc


@gluon.jit
def _advance(params, window, kb, groups, BLOCK_K: gl.constexpr, GROUP: gl.constexpr, MODE: gl.constexpr,
             BITS: gl.constexpr, STEP: gl.constexpr):
    """The window (scale, zero of three consecutive K-blocks) one block on: the first
    block's dropped, block kb's loads issued.  Where a K-block holds several groups (2-4
    values a row), a window of two blocks (the third entry the second's values): block
    kb - STEP's loads issued instead (with three blocks' held, zero-point codes spilled 0.8-2
    KB a thread on 256-row tiles, with two 0.1-1.2 KB; staged, nothing: ptxas_report.py)."""
    if BLOCK_K > GROUP:
        _, _, s2, z2, _, _ = window
        s3, z3 = _block_params(params, kb - STEP, groups, BLOCK_K, GROUP, MODE, BITS)
        return s2, z2, s3, z3, s3, z3
    else:
        _, _, s2, z2, s3, z3 = window
        s4, z4 = _block_params(params, kb, groups, BLOCK_K, GROUP, MODE, BITS)
        return s2, z2, s3, z3, s4, z4


@gluon.jit
def _decode(codes, ready, u, WG: gl.constexpr, WG_ROWS: gl.constexpr, word_layout: gl.constexpr, select, mul,
            scale, zero, groups, BLOCK_K: gl.constexpr, STAGES: gl.constexpr, a_layout: gl.constexpr,
            BITS: gl.constexpr, SCALE_AFTER: gl.constexpr, table, MODE: gl.constexpr):
    """The operand of the ring's u-th block for consumer warpgroup WG: wait for its stage,
    read the warpgroup's WG_ROWS rows of code words, decode them with the group's ``scale``
    and ``zero`` [WG_ROWS] (or per word, ``_block_params``; ``mul``: ``decode_operand``'s;
    SCALE_AFTER: without the scale), or in the rows' ``table`` (``table_words``'; MODE TABLE
    or ROW_TABLE); codes of other widths than 4 and 8 bits from each piece's words
    (``ws_pieces``; ``codes``: the ring's buffer of each)."""
    s = u % STAGES
    mbarrier.wait(ready.index(s), (u // STAGES) & 1)
    scale = per_word(scale, groups, word_layout)
    zero = per_word(zero, groups, word_layout)
    if piece_path(BITS):
        stage = (_stage_codes(codes[0], s, WG, WG_ROWS, STAGES), _stage_codes(codes[1], s, WG, WG_ROWS, STAGES),
                 _stage_codes(codes[2], s, WG, WG_ROWS, STAGES))
        # mul - NIBBLE_MUL: 0, unknown to the compiler (``nibble_multiplier``)
        a = decode_pieces(stage, zero, scale, mul - NIBBLE_MUL, gl.to_linear_layout(a_layout, [WG_ROWS, BLOCK_K]),
                          a_layout, WG_ROWS, BLOCK_K, BITS, not SCALE_AFTER)
    else:
        words = _stage_codes(codes[0], s, WG, WG_ROWS, STAGES).load(word_layout)
        # the fp16 scale itself: its pair is made in the decode's asm (``decode_operand``)
        a = decode_operand(words, select, bias_word(zero, BITS), scale, mul, WG_ROWS, BLOCK_K, a_layout, BITS,
                           not SCALE_AFTER, table, table_mode(MODE))
    return a


@gluon.jit
def _mma_blocks(ring, params, kb0, n_blocks, base, WG: gl.constexpr, WG_ROWS: gl.constexpr, select, table,
                GROUP: gl.constexpr, MODE: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_K: gl.constexpr,
                STAGES: gl.constexpr, OVERLAP: gl.constexpr, BITS: gl.constexpr, SCALE_AFTER: gl.constexpr,
                STEP: gl.constexpr = 1, staged=None, STAGED: gl.constexpr = False):
    """A consumer warpgroup's product over n_blocks K-blocks kb0, kb0 + STEP, ... of one tile,
    the ring's blocks base, base + STEP, ...: rows WG * WG_ROWS .. of the stage's codes (W's
    rows ``params``' rows) against the x tile, fp32 [WG_ROWS, BLOCK_M] in the MMA's layout.
    Every block's stage is released (STEP 2: the warpgroups sharing K take every other
    block).  SCALE_AFTER (one scale per row): the weights enter the MMA unscaled (code - zero,
    exact) and the sum is not yet scaled (``_scaled``).  STAGED: each block's scales and zero
    points are read from shared memory (``staged``: ``_stage``'s) as the block is decoded, not
    loaded from global memory ahead (the window)."""
    x_bufs, codes, ready, empty = ring
    mul = nibble_multiplier(params[3])  # num_groups
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, BLOCK_M, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
    word_layout: gl.constexpr = gl.SliceLayout(2, ws_byte_layout(gl.to_linear_layout(a_layout, [WG_ROWS, BLOCK_K]),
                                                                 BITS))
    groups = word_groups(word_layout, WG_ROWS, BLOCK_K, GROUP, BITS)  # K-blocks of several groups
    # each K-block's scales (and zero points) are loaded three K-blocks ahead (one block
    # ahead measured the same, docs/NOTES-gemm.md v14b: the rotation of the loaded values
    # waits for each load, v15b)
    if STAGED:
        window = (0, 0, 0, 0, 0, 0)  # unused
    else:
        s1, z1 = _block_params(params, kb0, groups, BLOCK_K, GROUP, MODE, BITS)
        s2, z2 = _block_params(params, kb0 + STEP, groups, BLOCK_K, GROUP, MODE, BITS)
        if BLOCK_K > GROUP:  # a window of two blocks (``_advance``)
            s3, z3 = s2, z2
        else:
            s3, z3 = _block_params(params, kb0 + 2 * STEP, groups, BLOCK_K, GROUP, MODE, BITS)
        window = (s1, z1, s2, z2, s3, z3)
    # The K-blocks in pairs, a1 holding the first block's register operand and a0 the
    # second's.  OVERLAP (``gemm.WsOverlap``) says which MMA may still run while the next
    # block is decoded:
    #   NONE   each MMA is waited for at once;
    #   PAIRS  the second block is decoded while the first's MMA runs;
    #   CARRY  also the next pair's first block while the second's MMA runs.
    # An operand stays in the deps of the wait that retires its MMA, so no decode lands in
    # the registers of an MMA in flight; where they do not fit, ptxas serializes every
    # wgmma of the kernel (what the tile table's modes are checked against).  An odd block
    # count starts with block 0 alone, waited for at once: no MMA is in flight across a
    # branch (ptxas serializes then too).
    acc = gl.zeros([WG_ROWS, BLOCK_M], dtype=gl.float32, layout=acc_layout)
    first = n_blocks % 2
    if first == 1:
        sc, zc = _block_scales(staged, window, kb0, groups, BLOCK_K, GROUP, MODE, BITS, WG_ROWS, STAGED)
        a = _decode(codes, ready, base, WG, WG_ROWS, word_layout, select, mul, sc, zc, groups, BLOCK_K, STAGES,
                    a_layout, BITS, SCALE_AFTER, table, MODE)
        acc = warpgroup_mma(a, x_bufs.index(base % STAGES).permute((1, 0)), acc)
        mbarrier.arrive(empty.index(base % STAGES), count=1)
        if not STAGED:
            window = _advance(params, window, kb0 + 3 * STEP, groups, BLOCK_K, GROUP, MODE, BITS, STEP)
    a0 = gl.zeros([WG_ROWS, BLOCK_K], dtype=gl.float16, layout=a_layout)  # no MMA in flight yet
    for i in range(first, n_blocks, 2):
        u = base + i * STEP
        sc, zc = _block_scales(staged, window, kb0 + i * STEP, groups, BLOCK_K, GROUP, MODE, BITS, WG_ROWS, STAGED)
        a1 = _decode(codes, ready, u, WG, WG_ROWS, word_layout, select, mul, sc, zc, groups, BLOCK_K, STAGES,
                     a_layout, BITS, SCALE_AFTER, table, MODE)
        acc = warpgroup_mma(a1, x_bufs.index(u % STAGES).permute((1, 0)), acc, is_async=True)
        if OVERLAP == NO_OVERLAP:
            acc, a1 = warpgroup_mma_wait(num_outstanding=0, deps=(acc, a1))
            mbarrier.arrive(empty.index(u % STAGES), count=1)
        elif OVERLAP == CARRY:  # MMA u - 1 (the last pair's second) done
            acc, a0 = warpgroup_mma_wait(num_outstanding=1, deps=(acc, a0))
            mbarrier.arrive(empty.index((u + STAGES * STEP - STEP) % STAGES), count=1, pred=i > first)
        if not STAGED:
            window = _advance(params, window, kb0 + (i + 3) * STEP, groups, BLOCK_K, GROUP, MODE, BITS, STEP)
        sc, zc = _block_scales(staged, window, kb0 + (i + 1) * STEP, groups, BLOCK_K, GROUP, MODE, BITS, WG_ROWS,
                               STAGED)
        a0 = _decode(codes, ready, u + STEP, WG, WG_ROWS, word_layout, select, mul, sc, zc, groups, BLOCK_K,
                     STAGES, a_layout, BITS, SCALE_AFTER, table, MODE)
        acc = warpgroup_mma(a0, x_bufs.index((u + STEP) % STAGES).permute((1, 0)), acc, is_async=True)
        if OVERLAP == NO_OVERLAP:
            acc, a0 = warpgroup_mma_wait(num_outstanding=0, deps=(acc, a0))
            mbarrier.arrive(empty.index((u + STEP) % STAGES), count=1)
        elif OVERLAP == PAIRS:
            acc, a1, a0 = warpgroup_mma_wait(num_outstanding=0, deps=(acc, a1, a0))
            mbarrier.arrive(empty.index(u % STAGES), count=1)
            mbarrier.arrive(empty.index((u + STEP) % STAGES), count=1)
        else:  # MMA u done, u + 1 in flight
            acc, a1 = warpgroup_mma_wait(num_outstanding=1, deps=(acc, a1))
            mbarrier.arrive(empty.index(u % STAGES), count=1)
        if STAGED:
            staged_wait()  # the rest of the staged chunks (they landed long ago but on the first pairs)
        else:
            window = _advance(params, window, kb0 + (i + 4) * STEP, groups, BLOCK_K, GROUP, MODE, BITS, STEP)
    acc, a0 = warpgroup_mma_wait(num_outstanding=0, deps=(acc, a0))
    if OVERLAP == CARRY:  # the last block's MMA is only now done
        mbarrier.arrive(empty.index((base + (n_blocks - 1) * STEP) % STAGES), count=1, pred=n_blocks > first)
    return acc


@gluon.jit
def _scaled(acc, scales_ptr, rows, N, stride_sn, SCALE_AFTER: gl.constexpr):
    """With SCALE_AFTER, the unscaled sum ``acc`` [WG_ROWS, BLOCK_M] fp32 times each row's one
    scale (``rows``: the rows of W, ``acc``'s row layout), in fp32: y = s * sum_k (q - z) x,
    where the per-weight scale gives sum_k fp16(s (q - z)) x (one rounding fewer)."""
    if SCALE_AFTER:
        acc = acc * gl.load(scales_ptr + rows * stride_sn, mask=rows < N, other=0).to(gl.float32)[:, None]
    return acc


@gluon.jit
def _rows_table(table_ptr, rows, MODE: gl.constexpr):
    """The decode's table words of ``rows`` (``table_words``) for the table modes, else nothing."""
    if table_mode(MODE):
        table = table_words(table_ptr, rows, MODE == ROW_TABLE)
    else:
        table = rows
    return table


@gluon.jit
def _vectors(acc, WG_ROWS: gl.constexpr, BLOCK_M: gl.constexpr):
    """A warpgroup's accumulator [WG_ROWS, BLOCK_M] fp32 (wgmma's layout) as [WG_ROWS * BLOCK_M / 4, 4],
    the same registers, and the element offsets to store it at (row-major): row v of the result
    is one thread's four registers (a 16-byte vector), and the rows of a warp's 32 threads follow
    each other, so a warp writes 512 contiguous bytes.

    wgmma's element (r, c) of a 64-row slab s lies in warp w, lane 4 l + q, register (c // 8, h, e)
    for r = 64 s + 16 w + 8 h + l, c = 8 j + 2 q + e; the result orders them [s, j, w, l, q | h, e]."""
    t = gl.reshape(acc, [WG_ROWS // 64, 4, 2, 8, BLOCK_M // 8, 4, 2])  # [s, w, h, l, j, q, e]
    t = gl.permute(t, (0, 4, 1, 3, 5, 2, 6))  # [s, j, w, l, q, h, e]
    v = gl.reshape(t, [WG_ROWS * BLOCK_M // 4, 4])
    layout: gl.constexpr = v.type.layout
    offsets = (gl.arange(0, WG_ROWS * BLOCK_M // 4, layout=gl.SliceLayout(1, layout))[:, None] * 4
               + gl.arange(0, 4, layout=gl.SliceLayout(0, layout))[None, :])
    return v, offsets


@gluon.jit
def _from_vectors(v, WG_ROWS: gl.constexpr, BLOCK_M: gl.constexpr, acc_layout: gl.constexpr):
    """The inverse of ``_vectors``: [WG_ROWS * BLOCK_M / 4, 4] -> [WG_ROWS, BLOCK_M] in ``acc_layout``
    (no data moves)."""
    t = gl.reshape(v, [WG_ROWS // 64, BLOCK_M // 8, 4, 8, 4, 2, 2])  # [s, j, w, l, q, h, e]
    t = gl.permute(t, (0, 2, 5, 3, 1, 4, 6))  # [s, w, h, l, j, q, e]
    return gl.convert_layout(gl.reshape(t, [WG_ROWS, BLOCK_M]), acc_layout)


@gluon.jit
def _split_partial(mine, own, part, pid_k, split_stride, RELOAD: gl.constexpr):
    """Split ``part``'s partial (``_vectors``' order) for the split-K sum of split ``pid_k``,
    loaded from ``own + part * split_stride``; its own from its registers unless RELOAD
    (with the 16-byte output stores: ``mine`` held through the loads and the conversion after
    them made ptxas spill, docs/NOTES-gemm.md v25)."""
    if RELOAD:
        value = gl.load(own + part * split_stride, cache_modifier=".cg")
    else:
        value = gl.where(pid_k == part, mine, gl.load(own + part * split_stride, mask=pid_k != part,
                                                      cache_modifier=".cg"))
    return value


@gluon.jit
def _store(acc, out, bias_ptr, rows, offs_m, M, N, HAS_BIAS: gl.constexpr, VECTOR: gl.constexpr):
    """y[offs_m, rows] = acc (+ bias[rows]) as fp16; acc [WG_ROWS, BLOCK_M] fp32; ``out``: y's pointer
    and its row stride (elements).

    VECTOR: the tile is first moved (through shared memory) to a layout in which each thread
    holds 8 consecutive rows of W at one row of x, so that y is written in 16-byte vectors
    (where N is a multiple of 8); else straight from wgmma's layout, where a thread's
    neighbours along y's rows lie in other threads: 2-byte stores.  The same values either way."""
    if HAS_BIAS:
        acc += gl.load(bias_ptr + rows, mask=rows < N, other=0.0).to(gl.float32)[:, None]
    y = acc.to(gl.float16)
    if VECTOR:
        WG_ROWS: gl.constexpr = acc.shape[0]
        layout: gl.constexpr = gl.BlockedLayout([8, 1], [WG_ROWS // 8, 256 // WG_ROWS], [1, 4], [0, 1])
        y = gl.convert_layout(y, layout)
        rows = gl.convert_layout(rows, gl.SliceLayout(1, layout))
        offs_m = gl.convert_layout(offs_m, gl.SliceLayout(0, layout))
    out_mask = (rows < N)[:, None] & (offs_m < M)[None, :]
    out_ptr, stride_ym = out
    gl.store(out_ptr + offs_m[None, :] * stride_ym + rows[:, None], y, mask=out_mask)


@gluon.jit
def _consumer(ops, WG: gl.constexpr, NUM_WG: gl.constexpr, WG_ROWS: gl.constexpr, GROUP: gl.constexpr,
              MODE: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_K: gl.constexpr, STAGES: gl.constexpr,
              SPLIT_K: gl.constexpr, HAS_BIAS: gl.constexpr, OVERLAP: gl.constexpr, BITS: gl.constexpr,
              SWIZZLE: gl.constexpr, STREAM_K: gl.constexpr, VECTOR_STORE: gl.constexpr, PDL: gl.constexpr,
              base, CLUSTER: gl.constexpr, SCALE_AFTER: gl.constexpr, WG_K: gl.constexpr, sbase, srow,
              STAGED: gl.constexpr, full=0, TAIL_SETS: gl.constexpr = 0):
    """Consumer warpgroup WG = kj * R + rw (R = NUM_WG / WG_K row sets): for each of the
    program's tiles, rows pid_n * BLOCK_N + rw * WG_ROWS .. + WG_ROWS of W against the tile's
    x rows, over every WG_K-th K-block from kj on; writes its rows of y (or its partial).
    ``ops``: the ring and the operands, as the kernel builds them.  As a programmatic
    dependent (PDL) it first waits for the kernel before it.  With CLUSTER the splits' and
    the warpgroups' partials are summed through shared memory at ``base`` (``cluster.cluster_sum``).
    STAGED: the scales (and zero points) of each work item are first copied into the row set's
    region at ``sbase`` (``srow`` bytes of scales a row, ``staged_params``).  TAIL_SETS: a launch
    with tail rows (``tail_origin``), where a tail program's row sets past TAIL_SETS do nothing
    (the loader releases their stages)."""
    IN_CLUSTER: gl.constexpr = CLUSTER and SPLIT_K > 1  # launched as clusters (else as CTAs alone)
    if IN_CLUSTER:
        cluster_arrive()  # waited for in cluster_sum, before the first push
    pdl_wait(PDL)
    (ring, scales_ptr, zeros_ptr, bias_ptr, out, ws_ptr, counter_ptr,
     M, N, num_groups, stride_sn, stride_sg, stride_zn, stride_zg, work, table_ptr) = ops
    R: gl.constexpr = NUM_WG // WG_K
    RW: gl.constexpr = WG % R  # the warpgroup's row set
    KJ: gl.constexpr = WG // R  # its first K-block of the split's
    BLOCK_N: gl.constexpr = WG_ROWS * R
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, BLOCK_M, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
    byte_layout: gl.constexpr = ws_byte_layout(gl.to_linear_layout(a_layout, [WG_ROWS, BLOCK_K]), BITS)
    row_layout: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(2, byte_layout))
    pair = gl.arange(0, 16 // piece_width(BITS, 0), layout=gl.SliceLayout(0, gl.SliceLayout(0, byte_layout)))
    select = gl.expand_dims(gl.expand_dims(pair_select(pair, BITS), 0), 0)  # prmt: a word's code pair
    tile_row = gl.arange(0, WG_ROWS, layout=gl.SliceLayout(1, acc_layout))
    tile_col = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, acc_layout))
    PART: gl.constexpr = WG_ROWS * BLOCK_M

    if STREAM_K:
        base = 0
        for j in range(work_items(work)):
            tile, kb0, n_blocks, _, _ = work_item(work, j)
            _, n0 = tile_origin(tile, M, N, BLOCK_M, BLOCK_N, SWIZZLE)
            row0 = n0 + WG * WG_ROWS
            w_rows = gl.minimum(row0 + gl.arange(0, WG_ROWS, layout=row_layout), N - 1)
            params = (scales_ptr, zeros_ptr, w_rows, num_groups, stride_sn, stride_sg, stride_zn, stride_zg)
            table = _rows_table(table_ptr, w_rows, MODE)
            staged = None
            if STAGED:
                staged = _stage(scales_ptr, zeros_ptr, sbase, WG, row0, N, kb0, n_blocks, srow, stride_sn, stride_zn,
                                gl.arange(0, WG_ROWS, layout=row_layout), BLOCK_K, GROUP, WG_ROWS, MODE, 1)
            acc = _mma_blocks(ring, params, kb0, n_blocks, base, WG, WG_ROWS, select, table, GROUP, MODE, BLOCK_M,
                              BLOCK_K, STAGES, OVERLAP, BITS, SCALE_AFTER, 1, staged, STAGED)
            base += n_blocks
            # the schedule again, not held in registers through the MMAs
            work = stream_k_work(M, N, work[7], BLOCK_M, BLOCK_N)
            pid, _, waves, _, _, sk_blocks, sharers, k_blocks = work
            tile, _, _, slot, shared = work_item(work, j)
            m0, n0 = tile_origin(tile, M, N, BLOCK_M, BLOCK_N, SWIZZLE)
            row0 = n0 + WG * WG_ROWS
            acc = _scaled(acc, scales_ptr, row0 + tile_row, N, stride_sn, SCALE_AFTER)
            done = ~shared  # a whole tile is stored at once
            if shared:
                # the partials of a shared tile, one per program and slot: [programs, 2,
                # NUM_WG, WG_ROWS, BLOCK_M]; the last to count in sums them in program order
                # (the same sum in every launch on one GPU), so the order of arrival does not matter
                mine, vectors = _vectors(acc, WG_ROWS, BLOCK_M)
                gl.store(ws_ptr + ((pid * 2 + slot) * NUM_WG + WG) * PART + vectors, mine)
                cta_barrier()
                local = tile - waves * gl.num_programs(0)
                owner0 = share_owner(local * k_blocks, sk_blocks, sharers)
                owner1 = share_owner((local + 1) * k_blocks - 1, sk_blocks, sharers)
                counter = counter_ptr + local * NUM_WG + WG
                arrived = gl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
                done = arrived == owner1 - owner0
                if done:
                    total = gl.zeros_like(mine)
                    for q in range(owner0, owner1 + 1):
                        # the tile is the first of q's shared items unless q's share began in the tile before
                        q_slot = gl.where(((q * sk_blocks) // sharers) // k_blocks == local, 0, 1)
                        total += gl.load(ws_ptr + ((q * 2 + q_slot) * NUM_WG + WG) * PART + vectors,
                                         cache_modifier=".cg")
                    acc = _from_vectors(total, WG_ROWS, BLOCK_M, acc_layout)
                    gl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")
            if done:
                _store(acc, out, bias_ptr, row0 + tile_row, m0 + tile_col, M, N, HAS_BIAS, VECTOR_STORE)
    else:
        tile, kb0, n_blocks, pid_k = work
        if TAIL_SETS > 0:
            m0, n0, sets = tail_origin(tile, M, full, BLOCK_M, BLOCK_N, WG_ROWS, TAIL_SETS)
            working = RW < sets
        else:
            m0, n0 = tile_origin(tile, M, N, BLOCK_M, BLOCK_N, SWIZZLE)
            working = True
        if working:
            row0 = n0 + RW * WG_ROWS
            w_rows = gl.minimum(row0 + gl.arange(0, WG_ROWS, layout=row_layout), N - 1)
            params = (scales_ptr, zeros_ptr, w_rows, num_groups, stride_sn, stride_sg, stride_zn, stride_zg)
            table = _rows_table(table_ptr, w_rows, MODE)
            staged = None
            if STAGED:  # the row set's warpgroups sharing K copy the same bytes: all the split's groups
                staged = _stage(scales_ptr, zeros_ptr, sbase, RW, row0, N, kb0, n_blocks, srow, stride_sn, stride_zn,
                                gl.arange(0, WG_ROWS, layout=row_layout), BLOCK_K, GROUP, WG_ROWS, MODE, WG_K)
            acc = _mma_blocks(ring, params, kb0 + KJ, (n_blocks - KJ + WG_K - 1) // WG_K, KJ, RW, WG_ROWS, select,
                              table, GROUP, MODE, BLOCK_M, BLOCK_K, STAGES, OVERLAP, BITS,
                              SCALE_AFTER, WG_K, staged, STAGED)
            acc = _scaled(acc, scales_ptr, row0 + tile_row, N, stride_sn, SCALE_AFTER)
            last = True
            rows_of_x = M
            if CLUSTER:
                cluster_sum(acc, base, pid_k, out, bias_ptr, tile_row[:, None], tile_col[None, :], row0, m0, M, N, WG,
                            NUM_WG, WG_ROWS, BLOCK_M, SPLIT_K, HAS_BIAS, WG_K)
                # y is stored; the tile's own store below stays in the code, with no row of x: without it
                # Triton 3.6 fails to lower the partition (an assertion in ConvertTritonGPUToLLVM)
                rows_of_x = gl.minimum(M, 0)
            elif SPLIT_K > 1:
                # each split's partial per (split, tile, warpgroup); the last split sums them in order
                split_stride = gl.num_programs(0) * NUM_WG * PART
                mine, vectors = _vectors(acc, WG_ROWS, BLOCK_M)
                own = ws_ptr + (tile * NUM_WG + WG) * PART + vectors
                counter = counter_ptr + tile * NUM_WG + WG
                gl.store(own + pid_k * split_stride, mine)
                cta_barrier()
                arrived = gl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
                last = arrived == SPLIT_K - 1
                if last:
                    # the sum in split order whichever split is last, the loads unrolled so
                    # that they are in flight at once
                    total = _split_partial(mine, own, 0, pid_k, split_stride, VECTOR_STORE)
                    for part in gl.static_range(1, SPLIT_K):
                        total += _split_partial(mine, own, part, pid_k, split_stride, VECTOR_STORE)
                    acc = _from_vectors(total, WG_ROWS, BLOCK_M, acc_layout)
                    gl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")
            if last:
                _store(acc, out, bias_ptr, row0 + tile_row, m0 + tile_col, rows_of_x, N, HAS_BIAS, VECTOR_STORE)


@gluon.jit
def gemm_gluon_ws_kernel(
    x_desc, c_desc, scales_ptr, zeros_ptr, bias_ptr, out_ptr, ws_ptr, counter_ptr, table_ptr,
    M, N, num_groups, k_blocks, stride_sn, stride_sg, stride_zn, stride_zg, srow, stride_ym, full_tiles,
    kpad_words, c_desc1, c_desc2, GROUP: gl.constexpr, MODE: gl.constexpr,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, SWIZZLE: gl.constexpr,
    SPLIT_K: gl.constexpr, BLOCKS_PER_SPLIT: gl.constexpr, STAGES: gl.constexpr, HAS_BIAS: gl.constexpr,
    CONSUMER_REGS: gl.constexpr, OVERLAP: gl.constexpr, WG_ROWS: gl.constexpr, num_warps: gl.constexpr,
    BITS: gl.constexpr = 4, STREAM_K: gl.constexpr = False, VECTOR_STORE: gl.constexpr = False,
    PDL: gl.constexpr = PDL_OFF, CLUSTER: gl.constexpr = False, SCALE_AFTER: gl.constexpr = False,
    WG_K: gl.constexpr = 1, STAGED: gl.constexpr = False, TAIL_SETS: gl.constexpr = 0, LOADS_AHEAD: gl.constexpr = 0,
):
    """out (M, N) fp16 = x (M, K) fp16 @ W^T (+ bias).

    x_desc: TMA descriptor of x (M, K) fp16, block [BLOCK_M, BLOCK_K]; c_desc: of the
    codes (N, words_per_row) int32, block [``gemm.ws_code_rows(BLOCK_N)``, BLOCK_K * BITS / 32]
    (BITS: 4 or 8; TMA boxes are powers of two: 192 rows are three copies of 64); for other
    widths, c_desc, c_desc1 and c_desc2 are of the same codes with the blocks of the code's
    pieces (``ws_pieces``: [rows, BLOCK_K * w / 32]; c_desc repeated for pieces a code lacks),
    piece p's words of a row starting at ``kpad_words`` x ``piece_offset`` (``kpad_words``:
    K rounded up to 32, over 32; unused for 4 and 8 bits).
    ``table_ptr``: the table modes' entries (16, or (N, 16) for ROW_TABLE; any float dtype, rounded
    to fp16 once; ``decode_operand``).  Other operands as ``gemm_gluon_kernel``'s, but y's rows
    lie ``stride_ym`` >= N elements apart (a slice of a wider y's columns); ``counter`` holds
    tiles * NUM_WG int32 zeros.
    Grid: (tiles, SPLIT_K), or with STREAM_K (SPLIT_K 1) (programs,), one per SM, each
    taking its share (``stream_k_work``), ``ws`` holding programs x 2 x BLOCK_N x BLOCK_M
    floats and ``counter`` (tiles % programs) * NUM_WG zeros.  Split s runs K-blocks
    s * BLOCKS_PER_SPLIT on, at most that many (BLOCKS_PER_SPLIT = ceil(k_blocks / SPLIT_K)
    as a constexpr: taken from the runtime k_blocks instead, the large layers ran 2-8%
    slower, docs/NOTES-gemm.md v31); with STREAM_K it is unused (0) and the K-blocks are
    shared out at run time, so a stream-K plan compiles once for every K.
    num_warps = 4 (the loader's; the consumer warpgroups are added by the warp
    specialization).  VECTOR_STORE: y in 16-byte stores (``_store``, where
    ``gemm.ws_vector_store``).  PDL (``gemv.Trigger``'s ids): launched as a programmatic
    dependent, every partition waits for the kernel before it first (nothing before the
    partitions touches global memory), and the loader lets the next kernel launch after
    that wait (PDL_EARLY) or after its last copy (PDL_LATE).  CLUSTER (split-K only): launched
    as clusters of SPLIT_K CTAs (``cluster.launch_clustered``, grid (tiles,): program p is
    split p % SPLIT_K of tile p // SPLIT_K), the splits summed through the cluster's shared
    memory (``cluster.cluster_sum``; no workspace or counters).  SCALE_AFTER (only where each row of
    W has one scale, ``gemm.ws_scale_after``): the MMA takes the exact code - zero and each
    row's sum is scaled once in fp32 (``_scaled``), a third of the 8-bit decode's instructions
    fewer; the weights are then not rounded to fp16 one by one (y is closer to the exact
    product with s (q - z) than to the product with fp16(s (q - z))).  WG_K (``GemmConfig.
    k_warpgroups``, with CLUSTER): WG_K consumer warpgroups per WG_ROWS rows of W, each taking
    every WG_K-th K-block of the program's; their partials summed with the splits' (launched
    as clusters of SPLIT_K CTAs, 1 where SPLIT_K is 1).  STAGED (``gemm.ws_staged``): each consumer
    copies its rows' scales (and zero points) into shared memory before its K-blocks and reads
    them from there (``staged_params``): ``srow`` bytes of scales a row of W, a tail of
    ``gemm.ws_staged_bytes`` before the cluster sum's (launched by ``cluster.launch_clustered``);
    ``srow`` is unused (0) without it.  TAIL_SETS (``GemmConfig.tail_rows`` over WG_ROWS; 0: off):
    grid (``ws_tail_layout``'s programs,), the first ``full_tiles`` x (x's tiles) whole tiles,
    the rest tiles of TAIL_SETS row sets after them (``tail_origin``); c_desc's block is then
    WG_ROWS rows, one copy per row set; ``full_tiles`` is unused (0) without it.  LOADS_AHEAD
    (``GemmConfig.loads_ahead``; 0: off): at most this many K-blocks' copies in flight (``_load_blocks``)."""
    NUM_WG: gl.constexpr = BLOCK_N // WG_ROWS * WG_K
    x_bufs = gl.allocate_shared_memory(gl.float16, [STAGES, BLOCK_M, BLOCK_K], x_desc.layout)
    CODE_ROWS: gl.constexpr = c_desc.block_type.shape[0]  # a copy's (``gemm.ws_code_rows``)
    c_bufs = gl.allocate_shared_memory(gl.int32, [STAGES * (BLOCK_N // CODE_ROWS), CODE_ROWS,
                                                  BLOCK_K * piece_width(BITS, 0) // 32], c_desc.layout)
    c_bufs1 = c_bufs  # the other pieces' (``ws_pieces``), where the codes have them
    c_bufs2 = c_bufs
    if piece_count(BITS) > 1:
        c_bufs1 = gl.allocate_shared_memory(gl.int32, [STAGES * (BLOCK_N // CODE_ROWS), CODE_ROWS,
                                                       BLOCK_K * piece_width(BITS, 1) // 32], c_desc1.layout)
    if piece_count(BITS) > 2:
        c_bufs2 = gl.allocate_shared_memory(gl.int32, [STAGES * (BLOCK_N // CODE_ROWS), CODE_ROWS,
                                                       BLOCK_K * piece_width(BITS, 2) // 32], c_desc2.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=NUM_WG // WG_K)  # each row set's warpgroup taking the block
    fence_async_shared()

    base = 0
    sbase = 0
    CLUSTER_BYTES: gl.constexpr = buffer_bytes(NUM_WG * WG_ROWS * BLOCK_M * 4, NUM_WG) if CLUSTER else 0
    if STAGED:
        gl.static_assert(not SCALE_AFTER, "one scale per row is applied to the sum, not staged")
        sbase = staged_base(BLOCK_N * region_row_bytes(srow, MODE == ZERO_POINT), CLUSTER_BYTES)
    if CLUSTER:
        # each consumer warpgroup's [SPLIT_K, slice, 4] fp32 receiving buffer, then its barrier
        gl.static_assert((SPLIT_K > 1 or WG_K > 1) and not STREAM_K,
                         "the cluster sums split-K or warpgroups' partials: SPLIT_K or WG_K > 1, no stream-K")
        base = tail_buffer(CLUSTER_BYTES)
        for g in gl.static_range(NUM_WG):
            if SPLIT_K > 1:  # the bytes of st.async from the cluster's CTAs
                init_byte_barrier(cluster_bar(base, g, NUM_WG, WG_ROWS, BLOCK_M), gl.to_tensor(WG_ROWS * BLOCK_M * 4))
            else:  # one arrival per thread of the WG_K warpgroups of its row set (one CTA, no cluster)
                init_count_barrier(cluster_bar(base, g, NUM_WG, WG_ROWS, BLOCK_M), gl.to_tensor(WG_K * 128))
    gl.static_assert(WG_K == 1 or CLUSTER, "warpgroups sharing K sum their partials through shared memory: CLUSTER")
    # each warpgroup sharing K keeps to its own stages: were a stage's uses to alternate between
    # them, its ready barrier could still be a phase behind (the other's block in flight) when a
    # warpgroup waits, and the parity of that wait would pass on the stale stage
    gl.static_assert(STAGES % WG_K == 0, "STAGES a multiple of WG_K")
    gl.static_assert(TAIL_SETS == 0 or (SPLIT_K == 1 and WG_K == 1 and not STREAM_K and not CLUSTER
                                        and TAIL_SETS < BLOCK_N // WG_ROWS and CODE_ROWS == WG_ROWS),
                     "tail rows: SPLIT_K 1, WG_K 1, no stream-K or cluster, fewer row sets, a copy per row set")
    if STREAM_K:
        gl.static_assert(SPLIT_K == 1, "stream-K shares K-blocks itself: SPLIT_K 1")
        work = stream_k_work(M, N, k_blocks, BLOCK_M, BLOCK_N)
    else:
        pid_k = gl.program_id(0) % SPLIT_K if CLUSTER else gl.program_id(1)
        kb0 = pid_k * BLOCKS_PER_SPLIT
        tile = gl.program_id(0) // SPLIT_K if CLUSTER else gl.program_id(0)
        work = (tile, kb0, gl.minimum(k_blocks - kb0, BLOCKS_PER_SPLIT), pid_k)
    IN_CLUSTER: gl.constexpr = CLUSTER and SPLIT_K > 1  # launched as clusters (else as CTAs alone)
    ring = (x_bufs, (c_bufs, c_bufs1, c_bufs2), ready, empty)
    code_src = (c_desc, c_desc1, c_desc2, kpad_words)
    ops = (ring, scales_ptr, zeros_ptr, bias_ptr, (out_ptr, stride_ym), ws_ptr, counter_ptr,
           M, N, num_groups, stride_sn, stride_sg, stride_zn, stride_zg, work, table_ptr)
    # the loader is the default partition (the kernel's 4 warps; one issues the copies), so
    # each consumer warpgroup starts on a warpgroup boundary and gets CONSUMER_REGS registers.
    # (The partitions' arguments are written out in the call: a tuple assigned to a name
    # turns its constexprs into runtime values.)
    if NUM_WG == 1:
        gl.warp_specialize([
            (_loader, (x_desc, code_src, ring, work, M, N, BLOCK_M, BLOCK_N, BLOCK_K, SWIZZLE, STAGES, STREAM_K, BITS,
                       PDL, IN_CLUSTER, full_tiles, TAIL_SETS, LOADS_AHEAD)),
            (_consumer, (ops, 0, NUM_WG, WG_ROWS, GROUP, MODE, BLOCK_M, BLOCK_K, STAGES, SPLIT_K, HAS_BIAS, OVERLAP,
                         BITS, SWIZZLE, STREAM_K, VECTOR_STORE, PDL, base, CLUSTER, SCALE_AFTER, WG_K, sbase, srow,
                         STAGED, full_tiles, TAIL_SETS))],
            [4], [CONSUMER_REGS])
    elif NUM_WG == 2:
        gl.warp_specialize([
            (_loader, (x_desc, code_src, ring, work, M, N, BLOCK_M, BLOCK_N, BLOCK_K, SWIZZLE, STAGES, STREAM_K, BITS,
                       PDL, IN_CLUSTER, full_tiles, TAIL_SETS, LOADS_AHEAD)),
            (_consumer, (ops, 0, NUM_WG, WG_ROWS, GROUP, MODE, BLOCK_M, BLOCK_K, STAGES, SPLIT_K, HAS_BIAS, OVERLAP,
                         BITS, SWIZZLE, STREAM_K, VECTOR_STORE, PDL, base, CLUSTER, SCALE_AFTER, WG_K, sbase, srow,
                         STAGED, full_tiles, TAIL_SETS)),
            (_consumer, (ops, 1, NUM_WG, WG_ROWS, GROUP, MODE, BLOCK_M, BLOCK_K, STAGES, SPLIT_K, HAS_BIAS, OVERLAP,
                         BITS, SWIZZLE, STREAM_K, VECTOR_STORE, PDL, base, CLUSTER, SCALE_AFTER, WG_K, sbase, srow,
                         STAGED, full_tiles, TAIL_SETS))],
            [4, 4], [CONSUMER_REGS, CONSUMER_REGS])
    elif NUM_WG == 3:
        gl.warp_specialize([
            (_loader, (x_desc, code_src, ring, work, M, N, BLOCK_M, BLOCK_N, BLOCK_K, SWIZZLE, STAGES, STREAM_K, BITS,
                       PDL, IN_CLUSTER, full_tiles, TAIL_SETS, LOADS_AHEAD)),
            (_consumer, (ops, 0, NUM_WG, WG_ROWS, GROUP, MODE, BLOCK_M, BLOCK_K, STAGES, SPLIT_K, HAS_BIAS, OVERLAP,
                         BITS, SWIZZLE, STREAM_K, VECTOR_STORE, PDL, base, CLUSTER, SCALE_AFTER, WG_K, sbase, srow,
                         STAGED, full_tiles, TAIL_SETS)),
            (_consumer, (ops, 1, NUM_WG, WG_ROWS, GROUP, MODE, BLOCK_M, BLOCK_K, STAGES, SPLIT_K, HAS_BIAS, OVERLAP,
                         BITS, SWIZZLE, STREAM_K, VECTOR_STORE, PDL, base, CLUSTER, SCALE_AFTER, WG_K, sbase, srow,
                         STAGED, full_tiles, TAIL_SETS)),
            (_consumer, (ops, 2, NUM_WG, WG_ROWS, GROUP, MODE, BLOCK_M, BLOCK_K, STAGES, SPLIT_K, HAS_BIAS, OVERLAP,
                         BITS, SWIZZLE, STREAM_K, VECTOR_STORE, PDL, base, CLUSTER, SCALE_AFTER, WG_K, sbase, srow,
                         STAGED, full_tiles, TAIL_SETS))],
            [4, 4, 4], [CONSUMER_REGS, CONSUMER_REGS, CONSUMER_REGS])
    else:
        gl.static_assert(NUM_WG == 4, "BLOCK_N // WG_ROWS: 1 to 4 consumer warpgroups")
        gl.warp_specialize([
            (_loader, (x_desc, code_src, ring, work, M, N, BLOCK_M, BLOCK_N, BLOCK_K, SWIZZLE, STAGES, STREAM_K, BITS,
                       PDL, IN_CLUSTER, full_tiles, TAIL_SETS, LOADS_AHEAD)),
            (_consumer, (ops, 0, NUM_WG, WG_ROWS, GROUP, MODE, BLOCK_M, BLOCK_K, STAGES, SPLIT_K, HAS_BIAS, OVERLAP,
                         BITS, SWIZZLE, STREAM_K, VECTOR_STORE, PDL, base, CLUSTER, SCALE_AFTER, WG_K, sbase, srow,
                         STAGED, full_tiles, TAIL_SETS)),
            (_consumer, (ops, 1, NUM_WG, WG_ROWS, GROUP, MODE, BLOCK_M, BLOCK_K, STAGES, SPLIT_K, HAS_BIAS, OVERLAP,
                         BITS, SWIZZLE, STREAM_K, VECTOR_STORE, PDL, base, CLUSTER, SCALE_AFTER, WG_K, sbase, srow,
                         STAGED, full_tiles, TAIL_SETS)),
            (_consumer, (ops, 2, NUM_WG, WG_ROWS, GROUP, MODE, BLOCK_M, BLOCK_K, STAGES, SPLIT_K, HAS_BIAS, OVERLAP,
                         BITS, SWIZZLE, STREAM_K, VECTOR_STORE, PDL, base, CLUSTER, SCALE_AFTER, WG_K, sbase, srow,
                         STAGED, full_tiles, TAIL_SETS)),
            (_consumer, (ops, 3, NUM_WG, WG_ROWS, GROUP, MODE, BLOCK_M, BLOCK_K, STAGES, SPLIT_K, HAS_BIAS, OVERLAP,
                         BITS, SWIZZLE, STREAM_K, VECTOR_STORE, PDL, base, CLUSTER, SCALE_AFTER, WG_K, sbase, srow,
                         STAGED, full_tiles, TAIL_SETS))],
            [4, 4, 4, 4], [CONSUMER_REGS, CONSUMER_REGS, CONSUMER_REGS, CONSUMER_REGS])


settle_cache_keys(gemm_gluon_ws_kernel)  # the same keys in every process (cache_keys.py)
