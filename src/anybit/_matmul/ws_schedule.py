"""Where each program of the warp-specialized kernel (``gemm_gluon_ws``) works: its output
tile's origin (in ``gemm_triton.tile_position``'s order, or a launch with tail rows), and the
stream-K schedule, each program's whole tiles and its share of the last tiles' K-blocks."""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from .gemm_triton import tile_position


@gluon.jit
def tile_origin(tile, M, N, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, SWIZZLE: gl.constexpr):
    """(first row of x, first row of W) of output tile ``tile``, in ``tile_position``'s order."""
    pid_n, pid_m = tile_position(tile, M, N, BLOCK_M, BLOCK_N, SWIZZLE)
    return pid_m * BLOCK_M, pid_n * BLOCK_N


@gluon.jit
def tail_origin(tile, M, full, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, SET_ROWS: gl.constexpr,
                 TAIL_SETS: gl.constexpr):
    """(first row of x, first row of W, row sets of SET_ROWS rows at work) of program ``tile``
    of a launch with tail rows (``ws_tail_layout``): programs below ``full`` x (x's tiles) take
    whole tiles of BLOCK_N rows, the rest tiles of TAIL_SETS row sets after them; x's tile
    fastest in both."""
    m_tiles = gl.cdiv(M, BLOCK_M)
    is_tail = (tile >= full * m_tiles).to(gl.int32)
    q = tile - is_tail * full * m_tiles
    rows = BLOCK_N - is_tail * (BLOCK_N - TAIL_SETS * SET_ROWS)
    n0 = is_tail * full * BLOCK_N + (q // m_tiles) * rows
    return (q % m_tiles) * BLOCK_M, n0, BLOCK_N // SET_ROWS - is_tail * (BLOCK_N // SET_ROWS - TAIL_SETS)


@gluon.jit
def stream_k_work(M, N, k_blocks, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr):
    """This program's share of a stream-K launch (``stream_k_items`` draws it): the
    tiles of the full waves (tile ``wave * programs + pid``, each whole), then an equal
    share of the K-blocks of the last ``tiles % programs`` tiles (the shared tiles), their
    K-blocks numbered tile by tile and cut among the first ``sharers`` = min(programs,
    those K-blocks) programs, so that no share is empty.
    Returns (pid, programs, waves, lo, hi, sk_blocks, sharers, k_blocks): K-blocks lo .. hi
    of the shared tiles' sk_blocks are this program's."""
    pid = gl.program_id(0)
    programs = gl.num_programs(0)
    tiles = gl.cdiv(M, BLOCK_M) * gl.cdiv(N, BLOCK_N)
    waves = tiles // programs
    sk_blocks = (tiles - waves * programs) * k_blocks
    sharers = gl.maximum(gl.minimum(programs, sk_blocks), 1)
    lo = gl.where(pid < sharers, (pid * sk_blocks) // sharers, 0)
    hi = gl.where(pid < sharers, ((pid + 1) * sk_blocks) // sharers, 0)
    return pid, programs, waves, lo, hi, sk_blocks, sharers, k_blocks


@gluon.jit
def work_items(work):
    """Work items of this stream-K program: its whole tiles, then the tiles its share touches."""
    _, _, waves, lo, hi, _, _, k_blocks = work
    shared = gl.where(hi > lo, (hi - 1) // k_blocks - lo // k_blocks + 1, 0)
    return waves + shared


@gluon.jit
def work_item(work, j):
    """Work item j of this stream-K program: (tile, first K-block, K-blocks, slot, shared),
    slot 0 or 1 being the item's place among the program's shared ones (its partial's
    place in the workspace) and ``shared`` whether other programs add to the tile (the
    item holds fewer than all its K-blocks)."""
    pid, programs, waves, lo, hi, _, _, k_blocks = work
    whole = j < waves
    slot = j - waves
    local = lo // k_blocks + slot  # among the shared tiles
    start = gl.maximum(lo, local * k_blocks)
    end = gl.minimum(hi, (local + 1) * k_blocks)
    tile = gl.where(whole, j * programs + pid, waves * programs + local)
    kb0 = gl.where(whole, 0, start - local * k_blocks)
    n_blocks = gl.where(whole, k_blocks, end - start)
    return tile, kb0, n_blocks, slot, n_blocks < k_blocks


@gluon.jit
def share_owner(block, sk_blocks, sharers):
    """The stream-K program whose share holds shared K-block ``block``."""
    return ((block + 1) * sharers - 1) // sk_blocks
