"""Group scales and zero points staged in shared memory for the warp-specialized GEMM's consumers.

Why (docs/NOTES-gemm.md v40, v41, v46, v48): with each K-block's scales loaded from global
memory (two 2-byte loads a thread, their addresses, masks and a window of three blocks held in
registers), the scale path was ~8% of the 64 x 256 x 128 tiles' time at M = 64.  Here each
consumer warpgroup copies its rows' scales (and zero points) for the K-blocks it will take
into shared memory once, by ``cp.async`` before its first block, and each block reads its
two or four values by one ``ld.shared`` a row: no global load, mask or window in the loop.

Layout of a row set's region (``WG_ROWS`` rows of W; its warpgroups sharing K copy the same
bytes into it)::

    scales  [WG_ROWS, 8 * chunks] fp16    row r at r * srow bytes, group g at 2 (g - g0)
    zeros   [WG_ROWS, 8 * chunks] uint8   after the scales, row r at r * zrow, group g at g - g0

where g0 is the first group of the program's K range rounded down to a multiple of 8 and
``chunks`` the 8-group chunks (16 bytes of scales, 8 of zero points a row) up to its last
group.  A chunk is copied whole from a row of the scales (N, G) fp16 and zero points (N, G)
uint8, so G must be a multiple of 8 and each row 16-byte aligned (``gemm.ws_staged``).

Who copies: in wgmma's accumulator layout lane 4 l + q of warp w holds rows 16 w + l and
16 w + l + 8 (and 64 further at 128 rows a warpgroup); the four lanes q of a quad copy chunks
q, q + 4, ... of their two (four) rows, then wait for their copies (``cp.async.wait_all``)
and meet (``bar.warp.sync``), after which each lane reads any chunk of its rows.

The regions lie in the launch's shared-memory tail (``cluster.launch_clustered``), before
the cluster sum's buffer when there is one: ``staged_base`` finds them."""

from __future__ import annotations

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from .cluster import tail_at

#: Groups a chunk holds: 16 bytes of fp16 scales (one cp.async.cg), 8 bytes of zero points.
CHUNK_GROUPS = 8
_CHUNK = gl.constexpr(CHUNK_GROUPS)  # (for the kernels)


@triton.constexpr_function
def first_chunks(block_k, group, wg_k):
    """Chunks a consumer waits for before its first K-block (``stage_params``): the groups of
    the first K-blocks it reads before ``staged_wait`` (its first block alone and its first
    pair: blocks kj, kj + wg_k and kj + 2 wg_k of the region's, kj < wg_k, where wg_k
    warpgroups share K), from a first group anywhere in its chunk: 2 for a K-block of at
    most a group and one or two warpgroups a row set, up to 7 for four groups a K-block and
    four warpgroups."""
    per_block = max(1, block_k // group)
    return -(-(3 * wg_k * per_block + CHUNK_GROUPS - 1) // CHUNK_GROUPS)


def staged_row_bytes(chunks: int, zero_points: bool) -> tuple[int, int]:
    """(srow, zrow): bytes a row of W takes in a region for ``chunks`` chunks, for the scales and
    for the zero points (0 without them)."""
    return 2 * CHUNK_GROUPS * chunks, CHUNK_GROUPS * chunks if zero_points else 0


def staged_bytes(block_n: int, chunks: int, zero_points: bool) -> int:
    """Shared memory of the regions of a tile of ``block_n`` rows of W (``block_n / WG_ROWS`` row
    sets), 16-byte aligned."""
    srow, zrow = staged_row_bytes(chunks, zero_points)
    return -(-block_n * (srow + zrow) // 16) * 16


def staged_chunks(first_block: int, blocks: int, block_k: int, group: int) -> int:
    """Chunks of the groups that K-blocks first_block .. first_block + blocks - 1 touch."""
    g0 = first_block * block_k // group
    g1 = ((first_block + blocks) * block_k - 1) // group
    return g1 // CHUNK_GROUPS - g0 // CHUNK_GROUPS + 1


@gluon.jit
def region_row_bytes(srow, ZERO_POINT: gl.constexpr):
    """In a kernel: bytes a row of W takes in a region, ``srow`` of scales and half that of zero
    points (``staged_row_bytes``)."""
    if ZERO_POINT:
        srow = srow + srow // 2
    return srow


@gluon.jit
def staged_base(tail_bytes, CLUSTER_BYTES: gl.constexpr):
    """The shared address of the staged regions: ``tail_bytes`` (runtime) before the cluster
    sum's buffer of CLUSTER_BYTES at the end of the launch's dynamic shared memory."""
    return tail_at(tail_bytes + CLUSTER_BYTES)


@triton.constexpr_function
def _copy_layout(wg_rows):
    """[WG_ROWS, 4]: row r of a warpgroup's rows (wgmma's accumulator order: r = 64 s + 16 w +
    8 h + l in warp w, lane 4 l + q) by lane q of its quad, one element a thread."""
    reg = [[8, 0]] + ([[64, 0]] if wg_rows == 128 else [])
    return gl.DistributedLinearLayout(reg, [[0, 1], [0, 2], [1, 0], [2, 0], [4, 0]], [[16, 0], [32, 0]], [],
                                      [wg_rows, 4])


@gluon.jit
def _copy_chunks(dst, src, ok, SIZE: gl.constexpr):
    """cp.async of SIZE (16 or 8) bytes from global address ``src`` (int64) to shared ``dst``
    where ``ok``; [WG_ROWS, 4] each."""
    if SIZE == 16:
        text: gl.constexpr = ("{\n\t.reg .pred p;\n\tsetp.ne.u32 p, $3, 0;\n\t"
                              "@p cp.async.cg.shared.global [$1], [$2], 16;\n\t}\n\tmov.u32 $0, 0;")
    else:
        text: gl.constexpr = ("{\n\t.reg .pred p;\n\tsetp.ne.u32 p, $3, 0;\n\t"
                              "@p cp.async.ca.shared.global [$1], [$2], 8;\n\t}\n\tmov.u32 $0, 0;")
    gl.inline_asm_elementwise(text, "=r,r,l,r", [dst, src, ok.to(gl.int32)], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def stage_params(scales_ptr, zeros_ptr, region, row0, N, kb0, n_blocks, srow, stride_sn, stride_zn,
                 BLOCK_K: gl.constexpr, GROUP: gl.constexpr, WG_ROWS: gl.constexpr, ZERO_POINT: gl.constexpr,
                 WG_K: gl.constexpr):
    """Copy rows row0 .. row0 + WG_ROWS - 1 of W's scales (and zero points) for the groups of
    K-blocks kb0 .. kb0 + n_blocks - 1 (the chunks ``staged_chunks`` counts) into the region at
    shared address ``region`` (``srow`` bytes of scales a row; rows past N take row N - 1's),
    then wait for the first ``first_chunks`` chunks (WG_K: warpgroups sharing K): every lane of
    the warpgroup may read its rows' values of those after it, of the others after
    ``staged_wait``.  The scales' and zero points' rows 16-byte and 8-byte aligned.  Returns
    g0, the region's first group (a multiple of 8), for ``staged_block_params``."""
    g_first = (kb0 * BLOCK_K) // GROUP
    chunks = (((kb0 + n_blocks) * BLOCK_K - 1) // GROUP) // _CHUNK - g_first // _CHUNK + 1
    g0 = g_first // _CHUNK * _CHUNK
    zrow = srow // 2
    layout: gl.constexpr = _copy_layout(WG_ROWS)
    r = gl.arange(0, WG_ROWS, layout=gl.SliceLayout(1, layout))[:, None]
    q = gl.arange(0, 4, layout=gl.SliceLayout(0, layout))[None, :]
    row = gl.minimum(row0 + r, N - 1).to(gl.int64)
    # the first chunks as one commit group, waited for here; the rest as another, waited for
    # by ``staged_wait`` once the first blocks are under way
    FIRST: gl.constexpr = first_chunks(BLOCK_K, GROUP, WG_K)
    for i in gl.static_range(0, FIRST, 4):
        _copy_row_chunks(scales_ptr, zeros_ptr, region, row, r, g0, i + q, i + q < gl.minimum(chunks, FIRST), srow,
                         zrow, stride_sn, stride_zn, WG_ROWS, ZERO_POINT)
    _commit()
    for i in range(FIRST // 4 * 4, chunks, 4):
        _copy_row_chunks(scales_ptr, zeros_ptr, region, row, r, g0, i + q, (i + q >= FIRST) & (i + q < chunks), srow,
                         zrow, stride_sn, stride_zn, WG_ROWS, ZERO_POINT)
    _commit()
    gl.inline_asm_elementwise("cp.async.wait_group 1;\n\tbar.warp.sync -1;\n\tmov.u32 $0, 0;", "=r", [],
                              dtype=gl.int32, is_pure=False, pack=1)
    return g0


@gluon.jit
def _copy_row_chunks(scales_ptr, zeros_ptr, region, row, r, g0, c, ok, srow, zrow, stride_sn, stride_zn,
                     WG_ROWS: gl.constexpr, ZERO_POINT: gl.constexpr):
    """Chunk c [WG_ROWS, 4] of rows ``row`` (their places r in the region) where ``ok``."""
    group = g0 + c * _CHUNK
    _copy_chunks(region + r * srow + c * (2 * _CHUNK),
                 (scales_ptr + row * stride_sn + group).to(gl.int64, bitcast=True), ok, 2 * _CHUNK)
    if ZERO_POINT:
        _copy_chunks(region + WG_ROWS * srow + r * zrow + c * _CHUNK,
                     (zeros_ptr + row * stride_zn + group).to(gl.int64, bitcast=True), ok, _CHUNK)


@gluon.jit
def _commit():
    gl.inline_asm_elementwise("cp.async.commit_group;\n\tmov.u32 $0, 0;", "=r", [], dtype=gl.int32, is_pure=False,
                              pack=1)


@gluon.jit
def staged_wait():
    """Wait for the rest of ``stage_params``' copies and meet the quad's other lanes: after it
    every chunk of the region is readable.  Cheap once they have landed (a consumer calls it
    every pair of K-blocks, branch-free)."""
    gl.inline_asm_elementwise("cp.async.wait_group 0;\n\tbar.warp.sync -1;\n\tmov.u32 $0, 0;", "=r", [],
                              dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def staged_block_params(region, rows, group, srow, WG_ROWS: gl.constexpr, ZERO_POINT: gl.constexpr,
                        BITS: gl.constexpr):
    """Group ``group`` (relative to the region's g0) of each row: (scale fp16 [R], zero point
    int32 [R], 2^(BITS-1) when symmetric), ``rows`` [R] the rows' places 0 .. WG_ROWS - 1 in the
    region, in the caller's layout; ``srow`` as ``stage_params``'.  ``rows`` and ``group`` may
    instead be tensors that broadcast together ([R, 1, 1] and [1, G, 1]: several groups a
    K-block), the values then of their shape (symmetric zero points of ``rows``')."""
    scale = gl.inline_asm_elementwise("ld.shared.b16 $0, [$1];", "=h,r", [region + rows * srow + group * 2],
                                      dtype=gl.float16, is_pure=False, pack=1)
    if ZERO_POINT:
        zero = gl.inline_asm_elementwise("ld.shared.u8 $0, [$1];", "=r,r",
                                         [region + WG_ROWS * srow + rows * (srow // 2) + group], dtype=gl.int32,
                                         is_pure=False, pack=1)
    else:
        zero = rows * 0 + (1 << (BITS - 1))
    return scale, zero
