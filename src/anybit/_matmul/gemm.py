"""Launch settings and the ``anybit::gemm`` operator around the Triton GEMM kernel
(x with more than ``gemv.MAX_M`` rows), and the dequantize kernel behind the
dequantize-then-cuBLAS path.

Triton is imported only when a kernel is first launched.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..formats._base import Decode
from ..quantized import QuantizedWeight
from .decode_ptx import codes_per_element, constraints, decode_asm
from .gemv import (
    MMA_K, capability, has_ptx_decode, interpreting, kernel_group, kernel_table, pdl_arguments, sm_count,
    split_for, split_counters, split_k_buffers, weight_operands,
)
from .ws_settings import (  # noqa: F401 (the launchers, the tuner and the tests use them as gemm.*)
    CARRY_TRITON, GLUON_WS_BITS, HOPPER_SMEM_BYTES, WS_BLOCK_KS, WS_SMEM_EXTRA, WS_STORE_SCRATCH, WS_WG_ROWS,
    WsOverlap, check_gluon_ws_config, ws_blocks_per_split, ws_cluster_bytes, ws_code_boxes, ws_code_rows, ws_config,
    ws_consumer_groups, ws_consumer_regs, ws_fit_stages, ws_fits, ws_overlap, ws_push_sum, ws_ring_bytes,
    ws_scale_after, ws_pieces_readable, ws_staged, ws_staged_bytes, ws_staged_chunks, ws_tail_layout, ws_tail_tiles,
    ws_vector_store, ws_warps, ws_wg_rows,
)


#: Rows of x per program: at most the MMA's largest N (m64n256), and 128 without
#: ``sync_mma``: 256 gave wrong results for some formats (int4-gc, uint4-g128) on the
#: H200 without the wait, right ones with it.
MAX_BLOCK_M, MAX_BLOCK_M_NO_SYNC = 256, 128

#: Rows of W per program that are not a power of two: three consumer warpgroups of 64 rows
#: of the warp-specialized Gluon kernel (its code tiles come in TMA boxes of 64 rows); the
#: other kernels take powers of two (their tensors span the tile).
WS_ONLY_BLOCK_N = (192,)


@dataclass(frozen=True)
class GemmConfig:
    """Launch settings of the GEMM kernel (see gemm_triton for the tiles).

    block_m: rows of x per program (the MMA's N: 16 .. 256).
    block_n: rows of W per program (the MMA's M: 64 per warpgroup on Hopper); a power of
        two, or 192 (three warpgroups of 64 rows: the warp-specialized Gluon kernel only).
    block_k: codes per K-block; a power of two >= 32.
    split_k: K ranges summed by the in-launch fix-up (1: none).
    swizzle: W tiles walked by consecutive programs that share an x tile.
    sync_mma: wait for all of a K-block's warpgroup MMAs before the next K-block's
        decode writes their register operand (default).  Without it, Triton 3.6's
        pipelining waits for the first only (triton-lang/triton#9433), and repeated
        launches gave different, wrong results (``racy``); with it, none did in any
        check on the H200, and the heuristic's 64 x 64 tiles ran as fast
        (docs/NOTES-gemm.md v12).  False is kept for measurements only.
    stream_k: one program per SM instead of one per tile and split (the warp-specialized
        Gluon kernel only, with split_k 1): the tiles of the full waves whole, then the
        K-blocks of the last partial wave's tiles shared equally, so no SM idles in that
        wave (``ws_settings.stream_k_items``); a shared tile's partials are summed in
        program order.
    cluster_sum: the split_k splits of a tile as the CTAs of one cluster, their partials
        summed through the cluster's shared memory instead of global memory (the
        warp-specialized Gluon kernel only; split_k 2, 4 or 8; its buffer ``ws_cluster_bytes``
        after the ring; docs/NOTES-gemm.md v33-v35).
    k_warpgroups: consumer warpgroups of the warp-specialized Gluon kernel that share each
        row set's K-blocks (1, 2 or 4): warpgroup j takes the tile's K-blocks j, j +
        k_warpgroups, ..., and the partials are summed through shared memory as the cluster
        sum's are (with split_k 1, or split_k 2, 4 or 8 with ``cluster_sum``), so a tile of 64
        rows of W keeps two or four warpgroups busy without a split across programs;
        num_stages a multiple of it, so that each warpgroup has stages of its own
        (docs/NOTES-gemm.md v38, v52).
    tail_rows: rows of W in each program after the full waves (the warp-specialized Gluon
        kernel only, split_k 1, k_warpgroups 1, no cluster_sum or stream_k; 0: every program
        takes block_n).  The programs of whole waves (``ws_tail_layout``) take block_n rows
        each, the rest of W's rows go to programs of tail_rows (a multiple of the consumer
        warpgroups' rows, below block_n) whose other warpgroups stay idle, so a last wave
        that would leave SMs idle is spread over more of them with fewer rows each
        (57344 x 8192 at M=64: 224 tiles of 256 rows are 132 + 123 x 192 rows; docs/NOTES-gemm.md v51, v53).
    loads_ahead: most K-blocks whose copies are in flight at once (the warp-specialized Gluon
        kernel only; 0: as many as the ring's stages, else 1 <= loads_ahead < num_stages): the
        loader issues a K-block's copies only once those of the block loads_ahead before it
        have landed.  A tuned choice, worth little on average: in the tuner's timings on the
        H100 at M = 64 and 128, unpaced / paced 0.90-1.06, geomean 1.00 (131 pairs), the table
        holding it where it measured 3% faster (docs/NOTES-gemm.md v55).
    """

    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 8
    num_stages: int = 3
    swizzle: int = 8
    sync_mma: bool = True
    stream_k: bool = False
    cluster_sum: bool = False
    k_warpgroups: int = 1
    tail_rows: int = 0
    loads_ahead: int = 0

    def __post_init__(self):
        for name in ("block_m", "block_n", "block_k"):
            value = getattr(self, name)
            if (value < 16 or value & (value - 1)) and not (name == "block_n" and value in WS_ONLY_BLOCK_N):
                also = f", or block_n {' or '.join(map(str, WS_ONLY_BLOCK_N))}" if name == "block_n" else ""
                raise ValueError(f"GemmConfig.{name}={value}: accepted: a power of two >= 16{also}")
        if self.block_m > MAX_BLOCK_M:
            raise ValueError(f"GemmConfig.block_m={self.block_m}: accepted: at most {MAX_BLOCK_M}")
        if self.block_m > MAX_BLOCK_M_NO_SYNC and not self.sync_mma:
            raise ValueError(f"GemmConfig.block_m={self.block_m} without sync_mma: accepted: at most "
                             f"{MAX_BLOCK_M_NO_SYNC} (256 rows of x per program compiled to wrong results with Triton 3.6)")
        if self.split_k < 1 or self.swizzle < 1:
            raise ValueError(f"GemmConfig split_k={self.split_k}, swizzle={self.swizzle}: accepted: >= 1")
        if self.stream_k and self.split_k != 1:
            raise ValueError(f"GemmConfig split_k={self.split_k} with stream_k: accepted: split_k 1 (stream-K "
                             f"shares the K-blocks itself)")
        if self.cluster_sum and self.split_k not in (2, 4, 8):
            raise ValueError(f"GemmConfig split_k={self.split_k} with cluster_sum: accepted: 2, 4 or 8 (the splits "
                             f"of a tile are the CTAs of a cluster)")
        if self.k_warpgroups not in (1, 2, 4):
            raise ValueError(f"GemmConfig k_warpgroups={self.k_warpgroups}: accepted: 1, 2 or 4")
        if self.num_stages % self.k_warpgroups:
            raise ValueError(f"GemmConfig num_stages={self.num_stages} with k_warpgroups={self.k_warpgroups}: accepted: "
                             f"a multiple of k_warpgroups (each warpgroup keeps to its own stages: with an odd ring "
                             f"a stage's barrier can be a phase behind a warpgroup's wait, whose parity then passes "
                             f"on stale data)")
        if self.k_warpgroups > 1 and (self.stream_k or (self.split_k > 1 and not self.cluster_sum)):
            raise ValueError(f"GemmConfig k_warpgroups={self.k_warpgroups} with split_k={self.split_k}, "
                             f"stream_k={self.stream_k}, cluster_sum={self.cluster_sum}: accepted: split_k 1, or "
                             f"split_k 2, 4 or 8 with cluster_sum (the warpgroups' partials are summed in shared "
                             f"memory as the cluster's are), no stream_k")
        if self.tail_rows and (self.tail_rows < 0 or self.tail_rows >= self.block_n or self.split_k != 1
                               or self.stream_k or self.cluster_sum or self.k_warpgroups != 1):
            raise ValueError(f"GemmConfig tail_rows={self.tail_rows} with block_n={self.block_n}, split_k="
                             f"{self.split_k}, stream_k={self.stream_k}, cluster_sum={self.cluster_sum}, "
                             f"k_warpgroups={self.k_warpgroups}: accepted: 0, or 0 < tail_rows < block_n with "
                             f"split_k 1, k_warpgroups 1, no stream_k or cluster_sum")
        if self.loads_ahead and not 1 <= self.loads_ahead < self.num_stages:
            raise ValueError(f"GemmConfig loads_ahead={self.loads_ahead} with num_stages={self.num_stages}: accepted: "
                             f"0 (as many as the ring holds), or 1 <= loads_ahead < num_stages")

    @property
    def ws_only(self) -> bool:
        """Whether only the warp-specialized Gluon kernel runs these settings (stream-K, tail
        rows, loads_ahead, or block_n in ``WS_ONLY_BLOCK_N``)."""
        return self.stream_k or self.tail_rows > 0 or self.loads_ahead > 0 or self.block_n in WS_ONLY_BLOCK_N


#: From this many rows of x on, the dispatcher (``anybit.matmul``) dequantizes W into
#: a scratch buffer (x's dtype, N x K) and multiplies with cuBLAS: faster than the GEMM kernel there
#: on the H200 (int4-g128, uint4-g128, int8-gc over the standard shapes; geomean
#: vs fp16 at M = 128 / 256 / 1024 / 4096: kernel 0.66 / 0.48 / 0.42 / 0.39x,
#: dequantize + cuBLAS 0.45 / 0.53 / 0.79 / 0.88x; variants-v10d-*.json).  The
#: same crossover serves every GPU until a tuned table says otherwise.
DEQUANT_MIN_M = 256


def heuristic_block_k(bits: int) -> int:
    """Codes per K-block of the heuristic and of the tuner's candidates: 64, or more
    where the PTX decode's tensors of ``bits``-bit codes need it to span the MMA's K."""
    return max(64, MMA_K * codes_per_element(bits))


@functools.lru_cache(maxsize=4096)  # called on every launch; a pure function of its arguments
def gemm_config(m: int, n: int, k: int, group: int, bits: int, sms: int) -> GemmConfig:
    """Deterministic launch settings for an (m, n, k) product (gemv.MAX_M < m).

    64 x 64 tiles on one warpgroup, 4 pipeline stages, K-blocks of 64 codes
    (128 where the PTX decode's C tensors need it to span the MMA's K), split-K
    to about 2 programs per SM, with ``sync_mma``.  Measured on the H200: the
    fastest of the settings tried for M <= 128 (variants-v10c/d); larger tiles
    ran faster at M >= 1024 only without the wait, which gave wrong results
    (256 x 128 on 8 warps: 0.77x fp16; with the wait 0.58x, below dequantize +
    cuBLAS there; docs/NOTES-gemm.md v10, v12).
    """
    block_m, block_n = 64, 64
    block_k = heuristic_block_k(bits)
    tiles = -(-n // block_n) * -(-m // block_m)
    k_blocks = -(-k // block_k)
    split_k = split_for(k_blocks, tiles, 2, sms)
    return GemmConfig(block_m, block_n, block_k, split_k, num_warps=4, num_stages=4)


class Kernel(str, enum.Enum):
    """How a product with more than ``gemv.MAX_M`` rows of x is computed."""

    GEMM = "gemm"  #: the Triton GEMM kernel (gemm_triton.gemm_kernel) with a GemmConfig
    DEQUANT = "dequant"  #: the Triton dequantize kernel writes W in x's dtype, then cuBLAS
    #: the Gluon kernel (gemm_gluon; Hopper, 4-bit integer codes, fp16) with a GemmConfig
    #: (its warps: 4 per 64 rows of W); where it does not apply (``gluon_supported``),
    #: the same tiles on the Triton GEMM kernel (each weight rounded the same way)
    GLUON = "gluon"
    #: the warp-specialized Gluon kernel (gemm_gluon_ws; Hopper, 4- or 8-bit integer codes, fp16,
    #: K a multiple of 8) with a GemmConfig (block_n 64, 128 or 256; its warps: 4 loader
    #: warps and 4 per 64 or 128 rows of W, ``ws_warps``); where it does not apply (``gluon_ws_supported``, or
    #: operands TMA cannot read), the Triton GEMM kernel with the heuristic's settings
    GLUON_WS = "gluon_ws"


@dataclass(frozen=True)
class Plan:
    """A kernel and its launch settings (``config``: GEMM only)."""

    kernel: Kernel
    config: GemmConfig | None = None

    def __post_init__(self):
        if (self.kernel is not Kernel.DEQUANT) != (self.config is not None):
            kernels = ", ".join(k.value for k in Kernel if k is not Kernel.DEQUANT)
            raise ValueError(f"Plan({self.kernel.value}): a GemmConfig is required for {kernels} and refused for "
                             f"{Kernel.DEQUANT.value}, got config={self.config}")
        if self.kernel is Kernel.GLUON:
            check_gluon_config(self.config)
        if self.kernel is Kernel.GLUON_WS:
            check_gluon_ws_config(self.config)
        elif self.config is not None and self.config.ws_only:
            raise ValueError(f"Plan({self.kernel.value}) with stream_k={self.config.stream_k}, tail_rows="
                             f"{self.config.tail_rows}, loads_ahead={self.config.loads_ahead}, block_n="
                             f"{self.config.block_n}: accepted: stream-K, tail rows, loads_ahead and block_n "
                             f"{WS_ONLY_BLOCK_N} in the {Kernel.GLUON_WS.value} kernel only")

    def to_dict(self) -> dict:
        """``{"kernel": ..., "config": {GemmConfig fields} or None}`` (tables, reports)."""
        return {"kernel": self.kernel.value, "config": None if self.config is None else asdict(self.config)}

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        config = data["config"]
        return cls(Kernel(data["kernel"]), None if config is None else GemmConfig(**config))

    def label(self) -> str:
        """Short text: ``dequant``, ``64x64x64 split4 4w4s``, ``gluon 64x64x64 split2 4w4s`` or
        ``gluon-ws 64x256x128 split1 20w3s`` (`` sw16`` added for a swizzle other than 8, ``
        stream-k`` for stream-K, `` cluster`` for the cluster sum, `` kwg2`` for two
        warpgroups per row set, `` tail192`` for tail rows, `` ahead2`` for loads_ahead)."""
        if self.config is None:
            return self.kernel.value
        c = self.config
        kind = {Kernel.GLUON: "gluon ", Kernel.GLUON_WS: "gluon-ws "}.get(self.kernel, "")
        swizzle = "" if c.swizzle == 8 else f" sw{c.swizzle}"
        stream_k = " stream-k" if c.stream_k else " cluster" if c.cluster_sum else ""
        k_wg = f" kwg{c.k_warpgroups}" if c.k_warpgroups > 1 else ""
        tail = f" tail{c.tail_rows}" if c.tail_rows else ""
        ahead = f" ahead{c.loads_ahead}" if c.loads_ahead else ""
        return (f"{kind}{c.block_m}x{c.block_n}x{c.block_k} split{c.split_k} {c.num_warps}w{c.num_stages}s{swizzle}"
                f"{stream_k}{k_wg}{tail}{ahead}")


def default_plan(m: int, n: int, k: int, group: int, bits: int, sms: int) -> Plan:
    """The plan without a tuned table: dequantize + cuBLAS from ``DEQUANT_MIN_M`` rows,
    the GEMM kernel with the heuristic's settings below."""
    if m >= DEQUANT_MIN_M:
        return Plan(Kernel.DEQUANT)
    return Plan(Kernel.GEMM, gemm_config(m, n, k, group, bits, sms))


def racy(config: GemmConfig) -> bool:
    """Whether the compiled kernel may give wrong results: every setting without
    ``sync_mma``.  Triton 3.6 lets the next K-block's decode overwrite the register
    operand of up to three wgmma that may still read it (SASS of 128 x 128 tiles on
    8 warps, docs/NOTES-gemm.md v11); measured as different results for one input in
    repeated launches of 128 x 128 tiles on 8 warps with 3 or 4 stages, 128 x 64 on 4
    warps with 3 stages, 256 rows of x, and once 64 x 64 on 4 warps with 3 stages and
    split-K (H200).  ``anybit tune`` never tries such settings."""
    return not config.sync_mma


def ptx_decode(bits: int, mode: Decode, block_k: int) -> bool:
    """Whether the GEMM kernel takes the PTX decode for these codes and K-blocks.

    Not for a table per row (lut4): the table decode reads the table of the first
    of the four elements it gets, and in the GEMM's register layout those four can
    come from two rows of W (measured wrong on the GPU); lut formats take the
    generic decode there.
    """
    return (not interpreting() and mode is not Decode.ROW_TABLE and has_ptx_decode(bits, mode)
            and block_k // codes_per_element(bits) >= MMA_K)


def _decode_constexprs(bits: int, mode: Decode, block_k: int, dtype: torch.dtype) -> dict:
    """The decode's constexprs, the same for the GEMM and the dequantize kernel."""
    from .gemv_triton import MODE_IDS

    ptx = ptx_decode(bits, mode, block_k)
    return dict(
        BITS=bits, MODE=MODE_IDS[mode], PTX=ptx,
        PTX_ASM=decode_asm(bits, MODE_IDS[mode], dtype == torch.bfloat16) if ptx else "",
        PTX_CONSTRAINTS=constraints(bits, MODE_IDS[mode]) if ptx else "",
    )


def _tiled_launch(x: Tensor, n: int, k: int, config: GemmConfig, out: Tensor | None, workspace: Tensor | None,
                  counters_per_tile: int = 1):
    """What the GEMM kernels' launches share: (x contiguous, out (M, n) allocated unless
    given, and (tiles, workspace, counters, K-blocks), or None when x has no rows);
    ``counters_per_tile`` split-K counters per output tile (none, and no workspace, where the
    splits are summed in a cluster: ``GemmConfig.cluster_sum``)."""
    x = x.contiguous()
    m = x.shape[0]
    if out is None:
        out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return x, out, None
    tiles = -(-n // config.block_n) * -(-m // config.block_m)
    splits = 1 if config.cluster_sum else config.split_k
    workspace, counters = split_k_buffers(out, splits, tiles * counters_per_tile, workspace)
    return x, out, (tiles, workspace, counters, -(-k // config.block_k))


def ws_workspace_size(config: GemmConfig, m: int, n: int, programs: int = 0) -> int:
    """Elements (fp32) of the warp-specialized kernel's split-K workspace: each split's
    partials as whole tiles, split_k x tiles x block_n x block_m; with stream-K, two
    partial tiles per program (``programs``: the SMs), none where every tile is whole."""
    tiles = -(-n // config.block_n) * -(-m // config.block_m)
    if config.stream_k:
        return 0 if tiles % programs == 0 else programs * 2 * config.block_n * config.block_m
    return config.split_k * tiles * config.block_n * config.block_m


def launch_gemm(
    x: Tensor, codes: Tensor, scales: Tensor, zeros: Tensor | None, table: Tensor | None,
    bias: Tensor | None, n: int, k: int, bits: int, group: int, mode: Decode, config: GemmConfig,
    out: Tensor | None = None, workspace: Tensor | None = None,
) -> Tensor:
    """Run the GEMM kernel: x (M, k) fp16/bf16 -> y (M, n) in x's dtype.

    Operands as ``gemv.launch_gemv``'s; ``group`` is the kernel GROUP (``kernel_group``).
    """
    from .gemm_triton import gemm_kernel

    if config.ws_only:
        raise ValueError(f"GemmConfig {config}: the Triton GEMM has no stream-K or tail rows, and takes block_n a "
                         f"power of two; accepted: stream_k=False, tail_rows=0, block_n not {WS_ONLY_BLOCK_N} (those "
                         f"run in the warp-specialized Gluon kernel)")
    x, out, launch = _tiled_launch(x, n, k, config, out, workspace)
    if launch is None:
        return out
    tiles, workspace, counters, k_blocks = launch
    split_k = config.split_k
    pointers, scalars = weight_operands(codes, scales, zeros, table, k)
    gemm_kernel[(tiles, split_k)](
        x, *pointers, scales if bias is None else bias, out, workspace, counters,
        x.shape[0], n, k, stride_xm=x.stride(0), **scalars, GROUP=group,
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k, SWIZZLE=config.swizzle,
        SPLIT_K=split_k, BLOCKS_PER_SPLIT=-(-k_blocks // split_k), HAS_BIAS=bias is not None,
        INTERPRET=interpreting(), EVEN_K=k % config.block_k == 0 and k_blocks % split_k == 0,
        SYNC_MMA=config.sync_mma, num_warps=config.num_warps, num_stages=config.num_stages,
        **_decode_constexprs(bits, mode, config.block_k, x.dtype), **pdl_arguments(x.device),
    )
    return out


def check_gluon_config(config: GemmConfig) -> None:
    """ValueError unless the Gluon kernel runs ``config``: 64 rows of W per warpgroup
    (num_warps = 4 per 64 rows) and a ring of at least 2 stages."""
    if (config.block_n % 64 or config.ws_only or config.num_stages < 2
            or config.num_warps != 4 * (config.block_n // 64)):
        raise ValueError(f"GemmConfig for the Gluon GEMM: {config}: accepted: block_n 64, 128 or 256, "
                         f"num_warps = 4 per 64 rows of W, num_stages >= 2, no stream_k")


def gluon_ws_supported(bits: int, mode: Decode, group: int, block_k: int, k: int, dtype: torch.dtype,
                       scale_dtype: torch.dtype, device: torch.device | None = None) -> bool:
    """Whether the warp-specialized Gluon kernel (``gemm_gluon_ws``) computes this product:
    as ``gluon_supported`` but for integer codes of 1 to 8 bits (GLUON_WS_BITS) and also 4-bit
    table codes (NF4, lut4: ``WS_TABLE_MODES``), with K-blocks of 64 or 128 and k a multiple of
    8 (TMA reads rows whose strides are multiples of 16 bytes); a K-block may also hold several
    whole groups of a multiple of 32 codes (``WS_MIN_SUBGROUP``: every word of codes the kernel
    decodes then lies in one group); codes of other widths than 4 and 8 bits also need
    ``ws_pieces_readable`` (K-blocks of 128 where a code has a 1-bit piece)."""
    table = mode in WS_TABLE_MODES and bits == 4
    return bits in GLUON_WS_BITS and block_k in WS_BLOCK_KS and k % 8 == 0 \
        and _gluon_operands(mode, group, block_k, dtype, scale_dtype, device, table, WS_MIN_SUBGROUP) \
        and ws_pieces_readable(bits, block_k, k)


#: The smallest group the warp-specialized kernel takes several of in a K-block: a word of codes
#: it decodes (4 bits: pairs of a 32-code chunk; 8 bits: of a 16-code one; pieces of other
#: widths: up to 32 codes in k order) then lies inside one group (``gemm_gluon_ws``).
WS_MIN_SUBGROUP = 32


#: The table modes the warp-specialized kernel decodes (4-bit codes; ``gemm_gluon.decode_operand``).
WS_TABLE_MODES = (Decode.TABLE, Decode.ROW_TABLE)


def _tma_readable(*tensors: Tensor) -> bool:
    """Whether TMA can read these 2-D tensors in place: contiguous rows, 16-byte aligned
    starts and row strides."""
    return all(t.stride(1) == 1 and (t.stride(0) * t.element_size()) % 16 == 0 and t.data_ptr() % 16 == 0
               for t in tensors)


def gluon_supported(bits: int, mode: Decode, group: int, block_k: int, dtype: torch.dtype,
                    scale_dtype: torch.dtype, device: torch.device | None = None) -> bool:
    """Whether the Gluon kernel (``gemm_gluon``) computes this product: 4-bit integer codes
    (symmetric or with zero points), fp16 x and scales, K-blocks of a multiple of 64
    codes inside one group, and (where ``device`` is given) a Hopper GPU (sm_90)."""
    return bits == 4 and _gluon_operands(mode, group, block_k, dtype, scale_dtype, device)


def hopper(device: torch.device) -> bool:
    """Whether ``device`` is a Hopper GPU (sm_90), which the Gluon kernels need."""
    return device.type == "cuda" and capability(device)[0] == 9


def _gluon_operands(mode: Decode, group: int, block_k: int, dtype: torch.dtype, scale_dtype: torch.dtype,
                    device: torch.device | None, table: bool = False, min_subgroup: int = 0) -> bool:
    """What both Gluon kernels need besides the code width: integer codes (symmetric or with
    zero points; or, with ``table``, a table mode), fp16 x and scales, K-blocks of a multiple
    of 64 codes, a whole number of them per group (or, with ``min_subgroup``, a whole number
    of groups of a multiple of ``min_subgroup`` codes per K-block), and (where ``device`` is
    given) a Hopper GPU (sm_90)."""
    if device is not None and not hopper(device):
        return False
    groups_fit = group % block_k == 0 or (min_subgroup > 0 and block_k % group == 0 and group % min_subgroup == 0)
    return (table or mode in (Decode.SYMMETRIC, Decode.ZERO_POINT)) and dtype == torch.float16 \
        and scale_dtype == torch.float16 and block_k % 64 == 0 and groups_fit


def launch_gemm_gluon(
    x: Tensor, codes: Tensor, scales: Tensor, zeros: Tensor | None, bias: Tensor | None, n: int, k: int,
    bits: int, group: int, mode: Decode, config: GemmConfig, out: Tensor | None = None,
    workspace: Tensor | None = None, overlap: bool = False, table: Tensor | None = None,
) -> Tensor:
    """Run the Gluon kernel (Hopper): x (M, k) fp16 -> y (M, n) fp16.

    ``config``: tiles, split-K, stages (the x / codes ring) and swizzle; the kernel runs
    4 warps per 64 rows of W (``block_n``).  Operands as ``launch_gemm``'s.
    ``overlap``: measurement only, unsafe (see gemm_gluon).  ``table``: as the other Gluon
    launcher takes it (``on_weight``); this kernel decodes integer codes only, so a table
    format is refused before it is read.
    """
    from .gemm_gluon import gemm_gluon_kernel
    from .gemv_triton import MODE_IDS

    if not gluon_supported(bits, mode, group, config.block_k, x.dtype, scales.dtype):
        raise ValueError(f"the Gluon GEMM does not compute {bits}-bit {mode.value} codes in groups of {group} with "
                         f"K-blocks of {config.block_k} for x {x.dtype}, scales {scales.dtype}; accepted: 4 bits, "
                         f"symmetric or zero-point codes, fp16 x and scales, block_k a multiple of 64 <= group")
    check_gluon_config(config)
    x, out, launch = _tiled_launch(x, n, k, config, out, workspace)
    if launch is None:
        return out
    tiles, workspace, counters, k_blocks = launch
    pointers, scalars = weight_operands(codes, scales, zeros, None, k)
    del scalars["kpad_words"]  # 4-bit codes: one piece per row, nothing to offset
    gemm_gluon_kernel[(tiles, config.split_k)](
        x, *pointers[:3], scales if bias is None else bias, out, workspace, counters,
        x.shape[0], n, k, stride_xm=x.stride(0), **scalars,
        GROUP=group, MODE=MODE_IDS[mode], BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        SWIZZLE=config.swizzle, SPLIT_K=config.split_k, BLOCKS_PER_SPLIT=-(-k_blocks // config.split_k),
        STAGES=config.num_stages, HAS_BIAS=bias is not None, num_warps=4 * (config.block_n // 64), OVERLAP=overlap,
        **pdl_arguments(x.device),
    )
    return out


def launch_gemm_gluon_ws(
    x: Tensor, codes: Tensor, scales: Tensor, zeros: Tensor | None, bias: Tensor | None, n: int, k: int,
    bits: int, group: int, mode: Decode, config: GemmConfig, out: Tensor | None = None,
    workspace: Tensor | None = None, consumer_regs: int | None = None, maxnreg: int | None = None,
    overlap: WsOverlap | None = None, scale_after: bool | None = None, staged: bool | None = None,
    table: Tensor | None = None,
) -> Tensor:
    """Run the warp-specialized Gluon kernel (Hopper): x (M, k) fp16 -> y (M, n) fp16.

    ``config``: tiles (block_n 64, 128, 192 or 256: one consumer warpgroup per 64 or 128 rows
    of W, as num_warps = ``ws_warps(block_n, rows)`` says; block_k 64 or 128), split-K (its
    sum through global memory, or with ``cluster_sum`` through a cluster's shared memory) or
    stream-K (one program per SM of x's device), tail rows (``ws_tail_layout`` on x's device's
    SMs), stages and swizzle.
    ``consumer_regs``: registers per consumer thread (default ``ws_consumer_regs``);
    ``maxnreg``: the launch's register limit (default: Triton's); ``overlap``: of decode
    and MMA (default ``ws_overlap``; a deeper one than the registers hold runs correctly
    but slowly); ``scale_after``: each row's sum scaled once instead of every weight (default
    ``ws_scale_after``; True needs one group per row); ``staged``: scales and zero points
    staged in shared memory (default ``ws_staged``; True where it cannot is a ValueError); ``table``:
    the table modes' levels (``gemv.kernel_table``: (16,) for TABLE, (n, 16) for ROW_TABLE; None
    for integer codes).  Operands as
    ``launch_gemm``'s, but ``workspace`` (with split-K or stream-K) is fp32 with at least
    ``ws_workspace_size`` elements; k a multiple of 8 and x, codes readable by TMA
    (``_tma_readable``).  ``out`` (M, n) fp16 may be a slice of a wider y's columns (rows
    ``out.stride(0)`` >= n elements apart, columns contiguous): a launch over rows r0 .. r0 + n
    of W (``codes``, ``scales``, ``zeros`` and ``bias`` sliced alike) writes y[:, r0 : r0 + n]
    and nothing else."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from .cluster import launch_clustered
    from .gemm_gluon_ws import gemm_gluon_ws_kernel
    from .gemv_triton import MODE_IDS
    from .staged_params import staged_row_bytes

    if not gluon_ws_supported(bits, mode, group, config.block_k, k, x.dtype, scales.dtype):
        raise ValueError(f"the warp-specialized Gluon GEMM does not compute {bits}-bit {mode.value} codes in groups "
                         f"of {group} with K-blocks of {config.block_k} for x {x.dtype}, scales {scales.dtype}, "
                         f"k={k}; accepted: 1 to 8 bits, symmetric or zero-point codes (or 4-bit table codes), fp16 "
                         f"x and scales, block_k 64 or 128 (128 for odd widths) a multiple of the group or a "
                         f"whole number of groups of a multiple of {WS_MIN_SUBGROUP} codes, k a multiple of 8 "
                         f"(of 128 for odd widths, of 64 for 2 and 6 bits, counted after rounding up to 32)")
    _check_ws_table(table, mode, n)
    check_gluon_ws_config(config)
    if scale_after and not ws_scale_after(scales.shape[1]):
        raise ValueError(f"scale_after=True scales each row's sum once, which needs one scale per row; got "
                         f"{scales.shape[1]} groups per row (scales {tuple(scales.shape)}); accepted: None or False "
                         f"here")
    if not ws_fits(config, bits, cluster_bytes := ws_cluster_bytes(config)):
        beside = f" beside the cluster sum's {cluster_bytes}" if cluster_bytes else ""
        raise ValueError(f"GemmConfig {config} for {bits}-bit codes: its ring of {config.num_stages} stages takes "
                         f"{ws_ring_bytes(config, bits)} bytes of shared memory; accepted: at most "
                         f"{HOPPER_SMEM_BYTES - WS_SMEM_EXTRA - cluster_bytes}{beside} (fewer stages or smaller tiles)")
    x = x.contiguous()
    if out is not None and (out.shape != (x.shape[0], n) or out.dtype != x.dtype or out.device != x.device
                            or out.stride(1) != 1 or out.stride(0) < n):
        raise ValueError(f"out: {out.dtype} {tuple(out.shape)} on {out.device} with strides {out.stride()}; accepted: "
                         f"{x.dtype} ({x.shape[0]}, {n}) on {x.device}, columns contiguous (stride 1) and rows at "
                         f"least {n} elements apart")
    if not _tma_readable(x, codes):
        raise ValueError(f"the warp-specialized Gluon GEMM reads x and the codes by TMA: both need 16-byte aligned "
                         f"starts and row strides (x at {x.data_ptr() % 16} bytes past 16, codes at "
                         f"{codes.data_ptr() % 16}, codes row stride {codes.stride(0)} words)")
    wg_rows = ws_wg_rows(config)
    groups = config.block_n // wg_rows  # one counter per consumer warpgroup of each tile
    programs = sm_count(x.device) if config.stream_k else 0
    if (config.split_k > 1 and not config.cluster_sum) or config.stream_k:  # partials as whole tiles
        size = ws_workspace_size(config, x.shape[0], n, programs)
        if workspace is None:
            workspace = torch.empty(max(1, size), dtype=torch.float32, device=x.device)
        elif workspace.dtype != torch.float32 or not workspace.is_contiguous() or workspace.numel() < size:
            raise ValueError(f"workspace: {workspace.dtype} {tuple(workspace.shape)} "
                             f"{'' if workspace.is_contiguous() else 'non-contiguous '}; accepted: contiguous "
                             f"float32 with at least {size} elements (``ws_workspace_size``)")
    x, out, launch = _tiled_launch(x, n, k, config, out, workspace, groups)
    if launch is None:
        return out
    tiles, split_workspace, counters, k_blocks = launch
    grid = (tiles,) if ws_push_sum(config) else (tiles, config.split_k)
    full_tiles, tail_sets = 0, config.tail_rows // wg_rows
    if tail_sets:  # whole tiles for the full waves, then tiles of tail_rows (``ws_tail_layout``)
        full_tiles, programs = ws_tail_layout(config, x.shape[0], n, sm_count(x.device))
        grid = (programs, 1)
    if config.stream_k:  # counters for the shared tiles only
        grid = (programs,)
        counters = split_counters(x.device, max(1, tiles % programs * groups))
    else:
        workspace = split_workspace
    m = x.shape[0]
    _, scalars = weight_operands(codes, scales, zeros, None, k)
    scale_after = ws_scale_after(scalars["num_groups"]) if scale_after is None else scale_after
    can_stage = ws_staged(config, bits, k_blocks, group, scales, zeros, scale_after)
    if staged and not can_stage:
        raise ValueError(f"staged=True: the scales {tuple(scales.shape)} (strides {scales.stride()}) of {config} "
                         f"cannot be staged in shared memory (``ws_staged``: rows of a multiple of 8 groups, "
                         f"16-byte aligned, room beside the ring, no scale_after); accepted: None or False here")
    staged = can_stage if staged is None else staged
    srow, tail = 0, cluster_bytes
    if staged:
        srow = staged_row_bytes(ws_staged_chunks(config, k_blocks, group), zeros is not None)[0]
        tail += ws_staged_bytes(config, k_blocks, group, zeros is not None)
    code_rows = ws_code_rows(config.block_n, wg_rows if tail_sets else None)
    x_block = [config.block_m, config.block_k]
    x_desc = TensorDescriptor.from_tensor(x, x_block, gl.NVMMASharedLayout.get_default_for(x_block, gl.float16))
    # one descriptor of the codes per piece (``ws_pieces``; the kernel adds the piece's place in the row)
    c_descs = [TensorDescriptor.from_tensor(codes, b, gl.NVMMASharedLayout.get_default_for(b, gl.int32))
               for b in ws_code_boxes(bits, code_rows, config.block_k)]
    extra = {} if maxnreg is None else {"maxnreg": maxnreg}
    run = functools.partial(launch_clustered, gemm_gluon_ws_kernel, grid, config.split_k if config.cluster_sum else 1,
                            tail) if ws_push_sum(config) or staged else gemm_gluon_ws_kernel[grid]
    run(
        x_desc, c_descs[0], scales, scales if zeros is None else zeros, scales if bias is None else bias, out,
        workspace, counters, scales if table is None else table, m, n, scalars["num_groups"], k_blocks,
        scalars["stride_sn"], scalars["stride_sg"], scalars["stride_zn"], scalars["stride_zg"], srow, out.stride(0),
        full_tiles, scalars["kpad_words"], *c_descs[1:],
        GROUP=group, MODE=MODE_IDS[mode], BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        SWIZZLE=config.swizzle, SPLIT_K=config.split_k, BLOCKS_PER_SPLIT=ws_blocks_per_split(config, k_blocks),
        STAGES=config.num_stages, HAS_BIAS=bias is not None,
        CONSUMER_REGS=ws_consumer_regs(config) if consumer_regs is None else consumer_regs,
        OVERLAP=int(ws_overlap(config) if overlap is None else WsOverlap(overlap)), WG_ROWS=wg_rows,
        BITS=bits, STREAM_K=config.stream_k, num_warps=4, **extra,
        VECTOR_STORE=ws_vector_store(config, bits), CLUSTER=ws_push_sum(config), WG_K=config.k_warpgroups,
        SCALE_AFTER=scale_after, STAGED=staged, TAIL_SETS=tail_sets, LOADS_AHEAD=config.loads_ahead,
        **pdl_arguments(x.device),
    )
    return out


def _check_ws_table(table: Tensor | None, mode: Decode, n: int) -> None:
    """ValueError unless ``table`` is what the warp-specialized kernel reads for ``mode``: None for
    integer codes, 16 contiguous levels for TABLE, (n, 16) contiguous for ROW_TABLE."""
    want = {Decode.TABLE: (16,), Decode.ROW_TABLE: (n, 16)}.get(mode)
    if want is None and table is None:
        return
    if want is None or table is None or tuple(table.shape) != want or not table.is_contiguous() \
            or not table.is_floating_point():
        got = "None" if table is None else f"{table.dtype} {tuple(table.shape)}"
        raise ValueError(f"table: {got} for {mode.value} codes; accepted: "
                         f"{'None' if want is None else f'a contiguous float tensor of shape {want}'}")


#: Tiles and warps of the dequantize kernel (the group it takes is ``kernel_group``).
#: 32 x 512 on 8 warps: 8192 x 8192 int4-g128 in 48 us against 56 us at 64 x 128 on 4 warps
#: (int8-gc: 56 against 64; 83-84% of the copy rate; H200, docs/NOTES-gemm.md v11).
DEQUANT_BLOCK_N, DEQUANT_BLOCK_K, DEQUANT_WARPS = 32, 512, 8


def launch_dequant(codes: Tensor, scales: Tensor, zeros: Tensor | None, table: Tensor | None, n: int, k: int,
                   bits: int, group: int, mode: Decode, dtype: torch.dtype, block_n: int = DEQUANT_BLOCK_N,
                   block_k: int = DEQUANT_BLOCK_K, num_warps: int = DEQUANT_WARPS,
                   out: Tensor | None = None) -> Tensor:
    """W (n, k) in ``dtype`` (fp16/bf16), each weight rounded as the GEMM kernel rounds it."""
    from .gemm_triton import dequant_kernel

    if out is None:
        out = torch.empty(n, k, dtype=dtype, device=codes.device)
    pointers, scalars = weight_operands(codes, scales, zeros, table, k)
    dequant_kernel[(-(-n // block_n), -(-k // block_k))](
        *pointers, out, n, k, **scalars, GROUP=group, BLOCK_N=block_n, BLOCK_K=block_k, EVEN_K=k % block_k == 0,
        num_warps=num_warps, **_decode_constexprs(bits, mode, block_k, dtype),
    )
    return out


@torch.library.custom_op("anybit::gemm", mutates_args=())
def gemm_op(
    x: Tensor, codes: Tensor, scales: Tensor, zeros: Tensor | None, table: Tensor | None,
    bias: Tensor | None, n: int, k: int, bits: int, group: int, mode: str,
    block_m: int, block_n: int, block_k: int, split_k: int, num_warps: int, num_stages: int, swizzle: int,
    sync_mma: bool,
) -> Tensor:
    """y (M, n) = x (M, k) @ W^T (+ bias) for W in the split-plane layout; see gemm_triton."""
    config = GemmConfig(block_m, block_n, block_k, split_k, num_warps, num_stages, swizzle, sync_mma)
    return launch_gemm(x, codes, scales, zeros, table, bias, n, k, bits, group, Decode(mode), config)


@gemm_op.register_fake
def _(x, codes, scales, zeros, table, bias, n, k, bits, group, mode, block_m, block_n, block_k, split_k,
      num_warps, num_stages, swizzle, sync_mma):
    return x.new_empty(x.shape[0], n)


def launch_settings(qw: QuantizedWeight, m: int, device: torch.device,
                    config: GemmConfig | None = None) -> tuple[GemmConfig, int]:
    """The launch config (the heuristic's unless given) and the kernel GROUP for ``qw`` at ``m`` rows."""
    n, k = qw.shape
    group = qw.format.group_len(k)
    if config is None:
        config = gemm_config(m, n, k, group, qw.format.bits, sm_count(device))
    return config, kernel_group(group, k)


@torch.library.custom_op("anybit::dequant", mutates_args=())
def dequant_op(codes: Tensor, scales: Tensor, zeros: Tensor | None, table: Tensor | None, n: int, k: int,
               bits: int, group: int, mode: str, dtype: torch.dtype) -> Tensor:
    """W (n, k) in ``dtype`` from the split-plane layout; see gemm_triton.dequant_kernel."""
    return launch_dequant(codes, scales, zeros, table, n, k, bits, group, Decode(mode), dtype)


@dequant_op.register_fake
def _(codes, scales, zeros, table, n, k, bits, group, mode, dtype):
    return codes.new_empty(n, k, dtype=dtype)


def dequantize(qw: QuantizedWeight, dtype: torch.dtype) -> Tensor:
    """W (N, K) in ``dtype`` (fp16/bf16) on the Triton dequantize kernel, each weight
    rounded once as the GEMM kernel rounds it."""
    n, k = qw.shape
    group = kernel_group(qw.format.group_len(k), k)
    return torch.ops.anybit.dequant(qw.codes, qw.params["scales"], qw.params.get("zeros"), kernel_table(qw), n, k,
                                    qw.format.bits, group, qw.format.kernel_decode().mode.value, dtype)


def dequantize_matmul(x: Tensor, qw: QuantizedWeight, bias: Tensor | None) -> Tensor:
    """x (..., K) fp16/bf16 -> (..., N) in x's dtype: W dequantized to x's dtype
    (a scratch N x K buffer), then cuBLAS; the bias is rounded to x's dtype first."""
    return _linear(x, dequantize(qw, x.dtype), bias)


def _linear(x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
    """cuBLAS on a dequantized W (x's dtype); the bias rounded to x's dtype first."""
    return torch.nn.functional.linear(x, w, None if bias is None else bias.to(x.dtype))


@torch.library.custom_op("anybit::planned_matmul", mutates_args=())
def planned_matmul_op(
    x: Tensor, codes: Tensor, scales: Tensor, zeros: Tensor | None, table: Tensor | None,
    bias: Tensor | None, n: int, k: int, bits: int, group: int, mode: str, spec: str,
) -> Tensor:
    """y (M, n) = x (M, k) @ W^T (+ bias) by the plan ``tuning.plan`` gives for M rows
    (a tuned table's or the heuristic's).  ``group``: the format's group length.

    The plan is looked up here, at run time, so that torch.compile never traces the
    table files (the op is opaque to it; the fake below gives the shape)."""
    from .tuning import plan as find_plan

    chosen = find_plan(spec, n, k, x.shape[0], group, bits, x.device)
    if chosen.kernel is Kernel.DEQUANT:
        w = launch_dequant(codes, scales, zeros, table, n, k, bits, kernel_group(group, k),
                           Decode(mode), x.dtype)
        return _linear(x, w, bias)
    config, kgroup = chosen.config, kernel_group(group, k)
    if chosen.kernel is Kernel.GLUON:
        if gluon_supported(bits, Decode(mode), kgroup, config.block_k, x.dtype, scales.dtype, x.device):
            return launch_gemm_gluon(x, codes, scales, zeros, bias, n, k, bits, kgroup, Decode(mode), config)
        # elsewhere the same tiles on the Triton kernel (see Kernel.GLUON)
    if chosen.kernel is Kernel.GLUON_WS:
        x = x.contiguous()  # (the launches keep a contiguous x as it is)
        if gluon_ws_supported(bits, Decode(mode), kgroup, config.block_k, k, x.dtype, scales.dtype, x.device) \
                and _tma_readable(x, codes):
            return launch_gemm_gluon_ws(x, codes, scales, zeros, bias, n, k, bits, kgroup, Decode(mode), config,
                                        table=table)
        # elsewhere the Triton kernel with the heuristic's settings (see Kernel.GLUON_WS)
        config = gemm_config(x.shape[0], n, k, group, bits, sm_count(x.device))
    return launch_gemm(x, codes, scales, zeros, table, bias, n, k, bits, kgroup, Decode(mode), config)


@planned_matmul_op.register_fake
def _(x, codes, scales, zeros, table, bias, n, k, bits, group, mode, spec):
    return x.new_empty(x.shape[0], n)


def planned_matmul(x: Tensor, qw: QuantizedWeight, bias: Tensor | None) -> Tensor:
    """x (..., K) fp16/bf16 -> (..., N) in x's dtype, by the plan for its number of rows
    (``tuning.plan``): the GEMM kernel, or dequantize + cuBLAS (bias rounded to x's dtype first)."""
    n, k = qw.shape
    y = torch.ops.anybit.planned_matmul(
        x.reshape(-1, k), qw.codes, qw.params["scales"], qw.params.get("zeros"), kernel_table(qw), bias, n, k,
        qw.format.bits, qw.format.group_len(k), qw.format.kernel_decode().mode.value, qw.format.spec,
    )
    return y.reshape(*x.shape[:-1], n)


def on_weight(launch, x: Tensor, qw: QuantizedWeight, bias: Tensor | None, config: GemmConfig,
              **options) -> Tensor:
    """``launch`` (a Gluon kernel's, operands as ``launch_gemm_gluon``'s) on x (..., K) and ``qw``,
    with ``config`` as the dispatcher adjusts it (``launch_settings``); ``options``: the
    launch's other keyword arguments (``out``, ``workspace``, ``overlap``, ...; a table format's
    ``table``, ``kernel_table``, is added here)."""
    n, k = qw.shape
    x2 = x.reshape(-1, k)
    config, group = launch_settings(qw, x2.shape[0], x.device, config)
    if (table := kernel_table(qw)) is not None:  # table codes: the warp-specialized kernel's
        options = {"table": table, **options}
    y = launch(x2, qw.codes, qw.params["scales"], qw.params.get("zeros"), bias, n, k, qw.format.bits, group,
               qw.format.kernel_decode().mode, config, **options)
    return y.reshape(*x.shape[:-1], n)


def gemm_gluon(x: Tensor, qw: QuantizedWeight, bias: Tensor | None, config: GemmConfig) -> Tensor:
    """x (..., K) fp16 -> (..., N) fp16 on the Gluon kernel (Hopper; ``gluon_supported``
    formats, else ValueError)."""
    return on_weight(launch_gemm_gluon, x, qw, bias, config)


def gemm_gluon_ws(x: Tensor, qw: QuantizedWeight, bias: Tensor | None, config: GemmConfig) -> Tensor:
    """x (..., K) fp16 -> (..., N) fp16 on the warp-specialized Gluon kernel (Hopper;
    ``gluon_ws_supported`` formats, else ValueError)."""
    return on_weight(launch_gemm_gluon_ws, x, qw, bias, config)


def gemm(x: Tensor, qw: QuantizedWeight, bias: Tensor | None, config: GemmConfig | None = None) -> Tensor:
    """x (..., K) fp16/bf16 -> (..., N) in x's dtype, on the Triton GEMM kernel."""
    n, k = qw.shape
    x2 = x.reshape(-1, k)
    config, group = launch_settings(qw, x2.shape[0], x.device, config)
    y = torch.ops.anybit.gemm(
        x2, qw.codes, qw.params["scales"], qw.params.get("zeros"), kernel_table(qw), bias,
        n, k, qw.format.bits, group, qw.format.kernel_decode().mode.value,
        config.block_m, config.block_n, config.block_k, config.split_k, config.num_warps, config.num_stages,
        config.swizzle, config.sync_mma,
    )
    return y.reshape(*x.shape[:-1], n)
