"""The warp-specialized Gluon GEMM's settings as functions of a ``GemmConfig``: its warps and
warpgroups, the overlap of decode and MMA its registers allow, the shared memory its ring and
its partial sums take, and the checks of a config (the kernel: ``gemm_gluon_ws``; its launcher
and the other GEMM paths: ``gemm``, which re-exports these names)."""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..packing import padded_len, pieces

if TYPE_CHECKING:
    from .gemm import GemmConfig


#: Rows of W per consumer warpgroup of the warp-specialized Gluon kernel (the MMA's M is
#: 64 per instruction; 128 rows are two MMAs per K-step of one warpgroup).
WS_WG_ROWS = (64, 128)


def ws_warps(block_n: int, wg_rows: int = 64, k_warpgroups: int = 1) -> int:
    """Warps of the warp-specialized Gluon kernel: 4 loader warps and 4 per consumer
    warpgroup, ``k_warpgroups`` per ``wg_rows`` rows of W."""
    return 4 + 4 * (block_n // wg_rows) * k_warpgroups


def ws_config(block_m: int, block_n: int, block_k: int, split_k: int, stages: int, wg_rows: int = 64,
              k_warpgroups: int = 1, *, swizzle: int = 8, stream_k: bool = False,
              cluster_sum: bool = False, tail_rows: int = 0, loads_ahead: int = 0) -> GemmConfig:
    """A GemmConfig for the warp-specialized Gluon kernel, its warps from ``wg_rows`` rows
    of W per consumer warpgroup and ``k_warpgroups`` warpgroups per row set (``ws_warps``)."""
    from .gemm import GemmConfig  # (it imports this module)

    return GemmConfig(block_m, block_n, block_k, split_k, ws_warps(block_n, wg_rows, k_warpgroups), stages, swizzle,
                      stream_k=stream_k, cluster_sum=cluster_sum, k_warpgroups=k_warpgroups, tail_rows=tail_rows,
                      loads_ahead=loads_ahead)


def ws_wg_rows(config: GemmConfig) -> int:
    """Rows of W per consumer warpgroup of a (checked) warp-specialized config: read off
    its warps, ``ws_warps``."""
    return 4 * config.block_n * config.k_warpgroups // (config.num_warps - 4)


def ws_consumer_groups(config: GemmConfig) -> int:
    """Consumer warpgroups of a (checked) warp-specialized config: its warps less the loader's 4,
    4 a warpgroup (``ws_warps``)."""
    return (config.num_warps - 4) // 4


def ws_push_sum(config: GemmConfig) -> bool:
    """Whether the warp-specialized kernel sums partials through shared memory (its CLUSTER):
    the splits of a cluster (``cluster_sum``) or the warpgroups sharing K (``k_warpgroups``),
    launched as clusters of split_k CTAs (1 without ``cluster_sum``)."""
    return config.cluster_sum or config.k_warpgroups > 1


class WsOverlap(enum.IntEnum):
    """How far each consumer warpgroup of the warp-specialized kernel overlaps its decode
    with its MMAs (the kernel's ``OVERLAP``; K-blocks taken in pairs)."""

    NONE = 0  #: each MMA waited for before the next decode
    PAIRS = 1  #: a pair's second block decoded while its first block's MMA runs
    CARRY = 2  #: every block decoded while the previous block's MMA runs


def ws_consumer_regs(config: GemmConfig) -> int:
    """Registers per consumer thread of the warp-specialized kernel with 1, 2, 3 and 4
    consumer warpgroups: 232, 160 (240 at 128 rows of W per warpgroup or more than 64 rows
    of x), 160 and 112.  Triton's split of 64K registers with 4 loader warps (at least 24
    registers) allows up to 256, 240, 160 and 112; 160 is what CARRY was compiled and measured
    with at 2 x 64 rows of W and 64 of x; a 64 x 256 accumulator alone takes 128."""
    groups = ws_consumer_groups(config)
    if groups == 2 and (ws_wg_rows(config) == 128 or config.block_m > 64):
        return 240
    return {1: 232, 2: 160, 3: 160}.get(groups, 112)


def ws_code_rows(block_n: int, wg_rows: int | None = None) -> int:
    """Rows of codes one TMA copy of the warp-specialized kernel's ring takes: TMA boxes are
    powers of two, so a tile of 192 rows of W (three consumer warpgroups) is three copies of
    64; others one copy of block_n.  With ``wg_rows`` (a plan with tail rows, whose tail
    programs copy only their working warpgroups' rows): one copy per warpgroup's rows."""
    if wg_rows:
        return wg_rows
    return block_n if block_n & (block_n - 1) == 0 else 64


def ws_tail_layout(config: GemmConfig, m: int, n: int, sms: int) -> tuple[int, int]:
    """(full, programs) of a warp-specialized launch with ``tail_rows``: ``full`` tiles of
    block_n rows of W per tile of x's rows (all of W's tiles if no wave is left partial or they
    do not fill one wave, else the most that fill whole waves of ``sms`` programs), then tiles
    of tail_rows for the rest of W's rows; ``programs`` of both for every tile of x.  Programs
    0 .. full x m_tiles - 1 take the whole tiles, x's tile fastest, the rest the tail tiles
    in the same order (the kernel's ``_tail_origin``)."""
    m_tiles, w_tiles = -(-m // config.block_m), -(-n // config.block_n)
    per_wave = max(1, sms // m_tiles)  # whole tiles of W of one wave, every tile of x each
    full = w_tiles if w_tiles % per_wave == 0 or w_tiles < per_wave else w_tiles // per_wave * per_wave
    tail = -(-(n - full * config.block_n) // config.tail_rows) if full < w_tiles else 0
    return full, (full + tail) * m_tiles


def ws_tail_tiles(config: GemmConfig, m: int, n: int, sms: int) -> list[tuple[int, int, int]]:
    """(first row of x, first row of W, rows of W) of each program of a launch with tail rows,
    as the kernel's ``_tail_origin`` computes them from ``ws_tail_layout``'s ``full``::

        programs 0 .. full*T-1:   whole tiles    W rows  j*bn .. +bn,                    x tile p % T
        the rest (q = p - full*T): tail tiles     W rows  full*bn + j*tail .. +tail,      x tile q % T

    (T = x's tiles, j = p // T or q // T); rows past n are read as zeros and not stored."""
    full, programs = ws_tail_layout(config, m, n, sms)
    m_tiles = -(-m // config.block_m)
    tiles = []
    for p in range(programs):
        tail = p >= full * m_tiles
        q = p - full * m_tiles if tail else p
        rows = config.tail_rows if tail else config.block_n
        tiles.append(((q % m_tiles) * config.block_m, full * config.block_n * tail + (q // m_tiles) * rows, rows))
    return tiles

#: Triton versions (major.minor) whose compile of CARRY keeps the MMAs asynchronous; under
#: Triton 3.9 ptxas serializes it (note C7515: other instructions write the accumulator
#: between the wgmma), so ``ws_overlap`` stops at PAIRS there.
CARRY_TRITON = ("3.6",)


def ws_overlap(config: GemmConfig) -> WsOverlap:
    """The deepest overlap of ``config`` whose two register operands fit the consumer's
    registers (``ws_consumer_regs``).  Where they do not, ptxas serializes every wgmma
    of the kernel (its note C7512), so this is read off compiled kernels (the tests check
    the overlapped tiles of GLUON_WS_TILES and 64 x 64 x 64).  At 64 rows of W per
    warpgroup: CARRY for 64 x 64 and 64 x 128 x 64 tiles (PAIRS outside CARRY_TRITON),
    PAIRS for 64 x 256 x 64 and for 128 or 256 rows of x against 128 of W (two warpgroups at
    240 registers; CARRY serializes there), NONE for 128 rows of x against 256 of W.  At
    K-blocks of 128 PAIRS for two warpgroups against 64 rows of x only (64 x 128, or 64 x 64
    with ``k_warpgroups`` 2; 160 registers; CARRY serializes), NONE for the others: PAIRS
    compiles clean at 128 x 128 x 128 and 256 x 128 x 128 too but measured 3-13% slower
    there, while 64 x 128 x 128 with PAIRS ran 4-9% faster than 64 x 128 x 64 with CARRY
    (H100, docs/NOTES-gemm.md v36).  At 128 rows per
    warpgroup: CARRY for one warpgroup (64 x 128 x 64; PAIRS outside CARRY_TRITON), PAIRS
    for two (64 or 128 rows of x), NONE for K-blocks of 128."""
    from . import tuning  # (it imports this module)

    carry = tuning.installed_triton() in CARRY_TRITON
    if ws_wg_rows(config) == 128:
        if config.block_k != 64:
            return WsOverlap.NONE
        return WsOverlap.CARRY if carry and config.block_n == 128 else WsOverlap.PAIRS
    if config.block_k != 64:  # PAIRS where two or three warpgroups of 64 rows meet 64 rows of x
        return WsOverlap.PAIRS if config.block_m == 64 and ws_consumer_groups(config) in (2, 3) else WsOverlap.NONE
    if config.block_m != 64 and config.block_n != 128:
        return WsOverlap.NONE
    if config.block_m != 64:
        return WsOverlap.PAIRS
    return WsOverlap.CARRY if carry and config.block_n <= 128 else WsOverlap.PAIRS


def check_gluon_ws_config(config: GemmConfig) -> None:
    """ValueError unless the warp-specialized Gluon kernel runs ``config``: block_n 64, 128,
    192 or 256, block_k 64 or 128, num_warps ``ws_warps(block_n, rows)`` for 64 or 128 rows
    of W per consumer warpgroup (1 to 4 warpgroups; 192 rows as three of 64), a ring of at
    least 2 stages."""
    k_wg = config.k_warpgroups
    warps = {ws_warps(config.block_n, rows, k_wg) for rows in WS_WG_ROWS
             if config.block_n % rows == 0 and config.block_n // rows * k_wg in (1, 2, 3, 4)}
    if (config.block_n not in (64, 128, 192, 256) or config.block_k not in WS_BLOCK_KS or config.num_stages < 2
            or config.num_warps not in warps):
        raise ValueError(f"GemmConfig for the warp-specialized Gluon GEMM: {config}: accepted: block_n 64, 128, "
                         f"192 or 256, block_k 64 or 128, num_warps = 4 + 4 x k_warpgroups per 64 or 128 rows of W "
                         f"(1 to 4 consumer warpgroups), num_stages >= 2")
    if config.tail_rows % ws_wg_rows(config):
        raise ValueError(f"GemmConfig for the warp-specialized Gluon GEMM: tail_rows={config.tail_rows} with "
                         f"{ws_wg_rows(config)} rows of W per consumer warpgroup: accepted: a multiple of "
                         f"{ws_wg_rows(config)}")


#: K-blocks the warp-specialized Gluon kernel takes (its BLOCK_K).
WS_BLOCK_KS = (64, 128)

#: Code widths the warp-specialized Gluon kernel decodes (its BITS): 4 and 8 a word at a time,
#: the others piece by piece (``ws_pieces``).
GLUON_WS_BITS = (1, 2, 3, 4, 5, 6, 7, 8)


def decode_cost(bits: int) -> float:
    """Decode instructions per weight of ``bits``-bit integer codes relative to 4-bit ones, as
    the performance model scales its per-weight term: 1 for 4 and 8 bits (what it was fitted
    on), else ``ws_pieces``' count per pair of codes over the 4-bit decode's 4 (prmt, lop3, fma
    and the lane's shift of a word of 32 / w codes, 3 + w / 4, per piece; a fma per piece above
    the first and the scale's multiply): 3 bits 2.19, 2 bits 1.12, 7 bits 3.44."""
    if bits in (4, 8):
        return 1.0
    widths = pieces(bits)
    return (sum(3 + w / 4 for w in widths) + len(widths)) / 4


def ws_code_boxes(bits: int, rows: int, block_k: int) -> list[list[int]]:
    """The TMA boxes [rows, words] of the kernel's three code descriptors (c_desc, c_desc1,
    c_desc2) for ``bits``-bit codes: one per piece of the code (``anybit.packing.pieces``,
    [rows, block_k * w / 32]), the first repeated for the pieces a code lacks."""
    boxes = [[rows, block_k * width // 32] for width in pieces(bits)]
    return boxes + boxes[:1] * (3 - len(boxes))


def ws_pieces_readable(bits: int, block_k: int, k: int) -> bool:
    """Whether TMA copies each piece of ``bits``-bit codes (``anybit.packing.pieces``) of a
    K-block of ``block_k``: every piece's box at least 16 bytes (a 1-bit piece: K-blocks of 128),
    and rows of codes a multiple of 16 bytes (K rounded up to 32, times bits, a multiple of 128)."""
    return min(pieces(bits)) * block_k >= 128 and padded_len(k) * bits % 128 == 0

#: Shared memory one program may use on Hopper (227 KB, the opt-in maximum), and what the
#: warp-specialized kernel needs besides its ring (barriers, alignment; measured 192 bytes).
HOPPER_SMEM_BYTES = 232448
WS_SMEM_EXTRA = 1024
#: Shared memory the vectorized output store's layout conversion may take per 64 rows of W
#: (sm_90, Triton 3.6: 2.1-2.6 KB compiled on the tuner's tiles).
WS_STORE_SCRATCH = 3072


def ws_cluster_bytes(config: GemmConfig) -> int:
    """Shared memory of the sum through shared memory (``ws_push_sum``), a tail after Triton's
    (``cluster.launch_clustered``): each consumer warpgroup receives its slice of every
    partial of its rows (the splits' and the warpgroups' sharing K), block_n x block_m fp32 per
    warpgroup sharing K, and one mbarrier per consumer warpgroup; 0 without it."""
    from .cluster import buffer_bytes

    return buffer_bytes(config.block_n * config.k_warpgroups * config.block_m * 4, ws_consumer_groups(config)) \
        if ws_push_sum(config) else 0


def ws_ring_bytes(config: GemmConfig, bits: int) -> int:
    """Shared memory of the warp-specialized kernel's ring: per stage an x tile
    [block_m, block_k] fp16 and a code tile [block_n, block_k] of ``bits``-bit codes."""
    return config.num_stages * (config.block_m * config.block_k * 2 + config.block_n * config.block_k * bits // 8)


def ws_fits(config: GemmConfig, bits: int, scratch: int = 0) -> bool:
    """Whether the ring of ``config`` for ``bits``-bit codes (and ``scratch`` bytes besides)
    fits one program's shared memory."""
    return ws_ring_bytes(config, bits) + WS_SMEM_EXTRA + scratch <= HOPPER_SMEM_BYTES


def ws_fit_stages(config: GemmConfig, bits: int) -> int | None:
    """The most stages, at most ``config``'s and at least 2 (a multiple of its ``k_warpgroups``),
    whose ring fits for ``bits``-bit codes (None: not even 2): 256 x 128 x 128 fits 3 at 4 bits,
    2 at 8 (docs/NOTES-gemm.md v25)."""
    step = config.k_warpgroups
    for stages in range(config.num_stages // step * step, 1, -step):
        if ws_fits(replace(config, num_stages=stages, loads_ahead=0), bits, ws_cluster_bytes(config)):
            return stages
    return None


@functools.lru_cache(maxsize=1024)
def ws_staged_chunks(config: GemmConfig, k_blocks: int, group: int) -> int:
    """The most 8-group chunks of scales one work item of the warp-specialized kernel stages
    (``staged_params``): the split's K-blocks (their first group rounded down to a chunk), or a
    whole tile's for stream-K, whose items are parts of one tile.  Cached: every launch asks
    it three times (``ws_staged``'s room, then the kernel's row bytes and tail)."""
    from .staged_params import staged_chunks

    if config.stream_k or config.split_k == 1:
        return staged_chunks(0, k_blocks, config.block_k, group)
    share = ws_blocks_per_split(config, k_blocks)
    return max(staged_chunks(s * share, min(share, k_blocks - s * share), config.block_k, group)
               for s in range(config.split_k) if s * share < k_blocks)


def ws_staged_bytes(config: GemmConfig, k_blocks: int, group: int, zero_points: bool) -> int:
    """Shared memory the staged scales (and zero points) of ``config`` take (``staged_params``)."""
    from .staged_params import staged_bytes

    return staged_bytes(config.block_n, ws_staged_chunks(config, k_blocks, group), zero_points)


def ws_staged(config: GemmConfig, bits: int, k_blocks: int, group: int, scales, zeros, scale_after: bool) -> bool:
    """Whether the warp-specialized kernel stages each work item's scales (and zero points) in
    shared memory (its STAGED, ``staged_params``) rather than loading each K-block's from global
    memory: where they come in whole 16-byte chunks of 8 groups (a row's groups contiguous, a
    multiple of 8 of them, rows 16-byte aligned; zero points 8-byte), where the regions fit
    beside the ring and the cluster sum's buffer, and never where the scale is applied to the
    sum (``scale_after``).  A tail that would take a kernel whose ring fits Triton's default
    48 KB past it is not staged either (``cluster.launch_clustered`` refuses it).  The
    scales and zero points read are the same either way (the results are bit for bit equal)."""
    from .cluster import DEFAULT_DYNAMIC_LIMIT

    num_groups = scales.shape[1]
    if scale_after or num_groups % 8 or scales.stride(1) != 1 or scales.stride(0) % 8 or scales.data_ptr() % 16:
        return False
    if zeros is not None and (zeros.stride(1) != 1 or zeros.stride(0) % 8 or zeros.data_ptr() % 8):
        return False
    tail = ws_staged_bytes(config, k_blocks, group, zeros is not None) + ws_cluster_bytes(config)
    ring = ws_ring_bytes(config, bits)
    if ring <= DEFAULT_DYNAMIC_LIMIT < ring + WS_SMEM_EXTRA + tail:
        return False
    return ws_fits(config, bits, tail + (_store_scratch(config) if ws_vector_store(config, bits) else 0))


def ws_vector_store(config: GemmConfig, bits: int) -> bool:
    """Whether the warp-specialized kernel stores y in 16-byte vectors (its VECTOR_STORE): where
    the ring leaves room for the conversion, with split-K only where the last split's loads
    (ws_wg_rows x block_m / 128 registers a split) take at most 3/5 of the consumer's registers:
    beyond, ptxas spills around the conversion (docs/NOTES-gemm.md v25); never with the cluster
    sum, which stores its slices itself (``cluster.cluster_sum``)."""
    loads = config.split_k * ws_wg_rows(config) * config.block_m // 128
    return not ws_push_sum(config) and (config.split_k == 1 or 5 * loads <= 3 * ws_consumer_regs(config)) \
        and ws_fits(config, bits, _store_scratch(config))


def _store_scratch(config: GemmConfig) -> int:
    """Shared memory the vector store's conversion of a tile takes (``ws_vector_store``)."""
    return WS_STORE_SCRATCH * config.block_n // 64


def ws_scale_after(num_groups: int) -> bool:
    """Whether the warp-specialized kernel scales each row's sum once instead of every weight
    (its SCALE_AFTER): where each row of W has one scale (one group along K, as in the
    per-channel formats), so that the decode of a weight is one instruction shorter.  The
    product is then sum_k (q - z) x times s in fp32, the exact weights s (q - z) rather than
    their fp16 roundings: within the matmul tests' tolerance of the float64 reference, not
    bit for bit the per-weight kernels' (docs/NOTES-gemm.md v37)."""
    return num_groups == 1


def ws_blocks_per_split(config: GemmConfig, k_blocks: int) -> int:
    """The warp-specialized kernel's BLOCKS_PER_SPLIT for ``k_blocks`` K-blocks: each split's
    share, ceil(k_blocks / split_k), or 0 for stream-K (which shares K-blocks out at run
    time, so its kernel compiles once for every K)."""
    return 0 if config.stream_k else -(-k_blocks // config.split_k)


@dataclass(frozen=True)
class StreamKItem:
    """One stretch of a stream-K program's work: K-blocks ``first`` .. ``first + blocks``
    of output tile ``tile``; ``shared`` when other programs add to that tile, then ``slot``
    (0 or 1) is the partial's place among the program's two in the workspace."""

    tile: int
    first: int
    blocks: int
    slot: int
    shared: bool


def stream_k_items(tiles: int, k_blocks: int, programs: int) -> list[list[StreamKItem]]:
    """Each program's work in a stream-K launch (``GemmConfig.stream_k``), as the kernel
    (``_stream_k_work``, ``_item``) computes it::

        tiles 0 .. waves * programs - 1     whole: program p takes tiles p, p + programs, ...
        the last tiles % programs tiles     shared: their K-blocks in one row, tile by tile,

            tile t  |<----- k_blocks ----->|<----- k_blocks ----->|  ...
                    | p0 ..... | p1 ...... | ...  | p2 ....... |     (cut at i * S // Q)

    S = the shared tiles' K-blocks, Q = min(programs, S) programs share them (none gets
    an empty stretch); a share is shorter than a tile, so it touches at most two tiles."""
    waves = tiles // programs
    sk_blocks = (tiles - waves * programs) * k_blocks
    sharers = max(1, min(programs, sk_blocks))
    work = []
    for pid in range(programs):
        items = [StreamKItem(w * programs + pid, 0, k_blocks, 0, False) for w in range(waves)]
        lo, hi = (pid * sk_blocks // sharers, (pid + 1) * sk_blocks // sharers) if pid < sharers else (0, 0)
        for slot, local in enumerate(range(lo // k_blocks, (hi - 1) // k_blocks + 1) if hi > lo else ()):
            start, end = max(lo, local * k_blocks), min(hi, (local + 1) * k_blocks)
            items.append(StreamKItem(waves * programs + local, start - local * k_blocks, end - start, slot,
                                     end - start < k_blocks))
        work.append(items)
    return work
