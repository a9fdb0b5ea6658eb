"""Launch settings and the ``anybit::gemv`` operator around the Triton decode kernel.

Triton is imported only when a kernel is first launched, so ``import anybit``
works (on the reference path) where Triton is not installed.
"""

from __future__ import annotations

import enum
import functools
import importlib.util
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import packing
from ..formats._base import Decode
from ..quantized import QuantizedWeight
from .decode_ptx import codes_per_element, constraints, decode_asm

#: Whether Triton can be imported (looked up without importing it; a constant
#: so that torch.compile traces the dispatcher without a graph break).
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
#: The decode kernel serves x with at most this many rows (the GEMM kernel more).
MAX_M = 32
KERNEL_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class GemvConfig:
    """Launch settings of the decode kernel (see gemv_triton for what each tile is)."""

    block_m: int
    block_n: int
    block_k: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 2
    #: read x two elements per 32-bit load in the 4-bit path (where x allows)
    x_pairs: bool = False
    #: K-blocks per loop iteration, a divisor of each split's K-blocks: at 2 the
    #: pipeline fetches two consecutive K-blocks in one stage, so each row's bytes
    #: of both are requested together (128 bytes of 4-bit codes per row at 128-code
    #: blocks instead of 64, which streams faster; see ``gemv_config``)
    unroll: int = 1


def traceable_cache(maxsize: int | None):
    """``functools.lru_cache(maxsize)`` for a pure function of hashable arguments that
    torch.compile traces (the dispatcher runs under Dynamo): while tracing, the body
    runs directly, which is what Dynamo does with a cache wrapper anyway (with a
    warning per function); eager calls take the cache."""

    def wrap(fn):
        cached = functools.lru_cache(maxsize=maxsize)(fn)

        @functools.wraps(fn)
        def call(*args, **kwargs):
            if torch.compiler.is_compiling():
                return fn(*args, **kwargs)
            return cached(*args, **kwargs)

        return call

    return wrap


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@traceable_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def cuda_index(device: torch.device) -> int:
    """The index of a CUDA ``device`` (the current device's where it names none)."""
    return device.index if device.index is not None else torch.cuda.current_device()


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``; 4 for the CPU interpreter."""
    if device.type != "cuda":
        return 4
    return _sm_count(cuda_index(device))


@traceable_cache(maxsize=None)
def _capability(device_index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device_index)


def capability(device: torch.device) -> tuple[int, int]:
    """The compute capability of a CUDA ``device`` (read once per device)."""
    return _capability(cuda_index(device))


#: Environment variable setting programmatic dependent launch of the decode kernel and the
#: GEMM kernels (``programmatic_launch``): ``on`` (the default: ``DEFAULT_TRIGGER``), ``off``,
#: or ``early`` / ``late`` to force one ``Trigger``; read at every launch.
PDL_ENV = "ANYBIT_PDL"
PDL_SETTINGS = ("on", "off", "early", "late")


class Trigger(enum.Enum):
    """Where a kernel launched as a programmatic dependent (the decode kernel, the GEMM
    kernels) lets the next kernel in the stream launch (``griddepcontrol.launch_dependents``).
    Either way it first waits for the kernel before it (``griddepcontrol.wait``; in the
    warp-specialized GEMM each partition waits before it touches memory), and the next
    kernel waits for it in turn before touching anything it writes, so results do not
    depend on it."""

    #: right after the wait, before the K loop: the next kernel's programs may be
    #: placed on the SMs while this one streams its weights
    EARLY = "early"
    #: after the K loop, before the split-K fix-up and the store (the warp-specialized
    #: GEMM: once its loader has issued the last copy)
    LATE = "late"


#: The trigger ``programmatic_launch`` uses by default, at every BLOCK_M.
#:
#: Measured on the H200 (docs/NOTES.md, d15): the decoding step of a Llama-3.1-8B-shaped
#: model took 2.550 / 2.795 / 4.733 ms at batch 1 / 8 / 32 with the early trigger, 2.568 /
#: 2.748 / 4.742 ms with the late one, and 2.729 / 2.913 / 4.906 ms launched plainly.  In
#: the single-layer benchmark, where the next kernel is another launch of this one, the
#: early trigger let those waiting programs take SM slots while this one streamed its
#: weights: late against early, int4-g128 2.22x against 2.10x fp16 at 8 rows, uint4-g128
#: 1.25x against 1.23x at 32.
DEFAULT_TRIGGER = Trigger.LATE


def programmatic_launch(device: torch.device) -> Trigger | None:
    """How the decode kernel and the GEMM kernels are launched on ``device``: as a
    programmatic dependent with the given ``Trigger``, or plainly (None).  Programmatic
    launch is used on Hopper and later GPUs (sm_90+), unless ``ANYBIT_PDL=off``;
    ``ANYBIT_PDL=early`` or ``late`` forces the trigger, ``on`` (the default) takes
    ``DEFAULT_TRIGGER``.

    Such a launch may start while the kernel before it in the stream still runs, once
    that kernel lets it (``griddepcontrol.launch_dependents``); the kernel waits for it to
    finish (``griddepcontrol.wait``) before reading or writing anything.  Results
    are the same either way.  What it saves is the launch latency between kernels that
    launch this way (in a CUDA graph: those of Inductor with
    ``torch._inductor.config.triton.enable_pdl``): on the H200 a decoding step of a
    Llama-3.1-8B-shaped model took 0.15-0.17 ms (3-5%) less at batch 1, 8 and 32
    (docs/NOTES.md, e2e-v7)."""
    setting = os.environ.get(PDL_ENV, "on").strip().lower()
    if setting not in PDL_SETTINGS:
        raise ValueError(f"{PDL_ENV}={setting!r} is not supported; accepted: {', '.join(PDL_SETTINGS)}")
    if setting == "off" or interpreting() or device.type != "cuda" or capability(device)[0] < 9:
        return None
    return DEFAULT_TRIGGER if setting == "on" else Trigger(setting)


def row_block(m: int) -> int:
    """BLOCK_M for m rows of x: the next power of two (the dot pads it to the MMA's 8)."""
    return 1 << max(0, m - 1).bit_length()


def _divisors(k_blocks: int) -> list[int]:
    """The split-K counts under which every split runs the same whole number of K-blocks."""
    return [d for d in range(1, k_blocks + 1) if k_blocks % d == 0]


def even_split(k_blocks: int, want: int) -> int:
    """The divisor of ``k_blocks`` nearest ``want`` (ties go to the larger), so that
    every split runs the same whole number of K-blocks."""
    return min(_divisors(k_blocks), key=lambda d: (abs(d - want), -d))


def split_for(k_blocks: int, tiles: int, programs_per_sm: int, sms: int, unroll: int = 1) -> int:
    """Split-K count for about ``programs_per_sm`` programs per SM over ``tiles`` output
    tiles: at least 1, at least ``unroll`` K-blocks per split, such that every split runs
    the same whole number of ``unroll``-block steps (``even_split`` of k_blocks / unroll;
    ``unroll`` must divide ``k_blocks``)."""
    if k_blocks % unroll:
        raise ValueError(f"unroll={unroll} does not divide the {k_blocks} K-blocks")
    steps = k_blocks // unroll
    return even_split(steps, max(1, min(steps, -(-programs_per_sm * sms // tiles))))


def one_wave_split(k_blocks: int, tiles: int, sms: int) -> int:
    """The largest split-K count that divides ``k_blocks`` and keeps ``tiles`` x split
    programs within one wave of ``sms`` (at least 1): where ``split_for``'s nearest divisor
    overshoots into a second wave (64 tiles on 132 SMs: 4, not 2)."""
    return max(d for d in _divisors(k_blocks) if d == 1 or tiles * d <= sms)


@traceable_cache(maxsize=4096)  # called on every launch; a pure function of its arguments
def gemv_config(m: int, n: int, k: int, group: int, sms: int, programs_per_sm: int | None = None,
                ptx: bool = False, split_groups: bool = False, interleaved: bool = False,
                paired: bool = False) -> GemvConfig:
    """Deterministic launch settings for an (m, n, k) product with groups of ``group``.

    Fitted to H200 sweeps of forced configurations (benchmarks/results/
    h200-2026-11-21-variants-v7*, v8*, v9*.json):

    * BLOCK_M is the next power of two of m.
    * BLOCK_K: a row's bytes per K-block decide how well the weights stream:
      256 codes (128 bytes of 4-bit codes) ran up to 1.3x faster than 128
      on the PTX decode path (``ptx``), which takes 256 for per-row groups.
      Otherwise the K-block holds one group, so the group's scale multiplies
      a partial product once, except where ``split_groups`` (the PTX path,
      for codes without a zero point) lets the kernel keep up to 4 column
      blocks of groups apart in the product (BLOCK_M * groups per block <= 4).
      The kernel can keep zero-point groups apart too (a correction per column
      block), but it measured slower for uint4-g128 on most shapes (the x sums
      cost warp shuffles; decode-v9d-uint4.json), so the heuristic does not.
    * 32 rows per program on 2 warps (mma.sync), 3 pipeline stages, x read in
      pairs; split-K to about ``programs_per_sm`` programs per SM (unless
      given, ``heuristic_programs_per_sm``: 4, or 8 at 5 to 8 rows of x and
      128-code K-blocks), with a split count that divides the K-blocks.
    * ``interleaved`` (the PTX path's C >= 4 tensors put back in k order, see
      ``ptx_natural``) at 32 rows of x: 64 rows per program on 4 warps
      (int3-g128, M=32: 1.13x fp16 against 0.97x; variants-v8e), and about 2
      programs per SM instead of 4 (int3-g128 on 4096-6144 x 4096: 0.86-0.88x
      -> 1.05-1.12x; variants-v9b).
    * Per-row groups at 32 rows take 128-code K-blocks (int8-gc on 6144 x 4096:
      0.90x -> 1.19x; variants-v9b).
    * ``paired`` (4-bit codes on the PTX path, groups of a multiple of 128 codes)
      at 1 to 16 rows of x: 128-code K-blocks, two per loop iteration
      (``GemvConfig.unroll``), about 4 programs per SM, so a stage fetches 128
      bytes of each row without keeping two groups apart in the product.
      Geomean vs fp16 over the 8 standard shapes and 128256 x 4096 (int4-g128,
      h200-2026-11-22-variants-u1-*.json): 2.12 -> 2.32x at 2 rows, 1.99 ->
      2.28x at 4, 2.05 -> 2.27x at 8, 1.81 -> 1.96x at 16 (1.28 -> 1.24x at 32,
      so not there); over 7 of them (-u2-*.json) uint4-g128 1.91 / 1.84 / 1.85 /
      1.74x -> 2.26 / 2.12 / 2.13 / 1.79x at 1 / 4 / 8 / 16 rows, nf4-g128
      1.66 / 1.53 / 1.66 / 1.40x -> 1.83 / 1.76 / 1.74 / 1.40x.  At one row,
      where ``split_groups`` keeps int4-g128's two groups of a 256-code block
      apart, that stays: equal in geomean (2.49x against 2.50x) with larger
      per-shape swings (8192 x 8192: 16.3 against 20.2 us; 10240 x 8192: 24.2
      against 19.7 us).  int8-gc, int3-g128 and int2-g64 measured no better or
      worse with it.
    """
    block_m = row_block(m)
    wide = interleaved and block_m >= 32
    pair = False
    if ptx and group >= k:
        block_k = 128 if block_m >= 32 else 256
    elif paired and block_m <= 16 and group % 128 == 0 and not (split_groups and block_m == 1):
        block_k, pair = 128, True
    elif split_groups and group >= 32 and 256 % group == 0 and block_m * (256 // group) <= 4:
        block_k = 256
    else:
        block_k = min(128, group) if 32 <= group < k else 128
    block_n = 64 if wide else 32
    unroll = 2 if pair and -(-k // block_k) % 2 == 0 else 1
    split_k = heuristic_split(block_m, block_n, block_k, unroll, n, k, sms, programs_per_sm)
    return GemvConfig(block_m, block_n, block_k, split_k, num_warps=4 if wide else 2, num_stages=3, x_pairs=True,
                      unroll=unroll)


def heuristic_programs_per_sm(block_m: int, block_n: int, block_k: int, unroll: int, n_tiles: int) -> int:
    """The programs per SM ``gemv_config`` splits K for: 2 with its 64-row tiles (the
    interleaved widths at 32 rows of x), 8 at 5 to 8 rows of x (BLOCK_M 8) with
    128-code K-blocks taken one per iteration, 8 at one row of x on layers of at most
    ``ONE_ROW_FEW_TILES`` row tiles (``n_tiles``), else 4 (with two
    blocks per iteration, 4 per SM ran 2.27x fp16 at 8 rows against 2.14x with 8;
    variants-u1-m8-16-32).

    At one row of x, 8 per SM on layers of 4096 rows (128 tiles of 32; int4-g128, two
    runs, h200-2026-11-22-variants-d15-few-tiles-*.json): 4096 x 14336 12.5-12.9 us
    against 15.2-15.4, 4096 x 28672 22.6 against 27.3, 4096 x 4096 6.3 against 6.6;
    uint4-g128 4096 x 14336 15.7 against 17.2, nf4-g128 19.4 against 24.6.  Layers
    with more tiles gained nothing (6144 x 4096, 8192 x 8192) or lost (with 8 per SM
    for all, 6144 x 4096 8.7 against 7.8 us; -variants-d15-m1.json).

    At 8 rows of x, twice the splits (twice the warps in flight) ran int4-g128 at
    2.25x fp16 (geomean of the 8 standard shapes and 128256 x 4096) against 2.08x
    with 4 per SM, up to 25% faster on layers with few rows (4096 x 14336: 19.6 ->
    15.2 us); uint4-g128 1.97x against 1.92x and nf4-g128 1.64x against 1.54x on
    the decoding model's shapes. Not at 16 rows (1.74x against 1.81x), at 1 row
    (2.12x against 2.30x), nor for the 256-code blocks of per-row groups (int8-gc
    at 8 rows: 1.59x against 1.77x) (h200-2026-11-21-variants-e4-*.json).
    """
    if block_n == 64:
        return 2
    if block_m == 1 and n_tiles <= ONE_ROW_FEW_TILES:
        return 8
    return 8 if block_m == 8 and block_k == 128 and unroll == 1 else 4


#: At one row of x, layers of at most this many row tiles split K for 8 programs per SM.
ONE_ROW_FEW_TILES = 128


#: Decode modes the PTX decode path serves (integer codes; tables of 4-bit codes).
PTX_MODES = (Decode.SYMMETRIC, Decode.BINARY, Decode.ZERO_POINT, Decode.TABLE, Decode.ROW_TABLE)
#: The PTX path keeps groups apart in at most this many product columns (more
#: do not fit in shared memory next to the x tile).
MAX_GROUP_COLUMNS = 32
#: The MMA's K: every decoded tensor of the PTX path spans at least this many codes.
MMA_K = 16


def has_ptx_decode(bits: int, mode: Decode) -> bool:
    """Whether ``bits``-wide codes in ``mode`` have a PTX decode (integer codes of any
    width; 4-bit codes in a table, fixed or one per row)."""
    return mode in PTX_MODES and (mode not in (Decode.TABLE, Decode.ROW_TABLE) or bits == 4)


def ptx_groups(bits: int, mode: Decode, group: int, block_k: int, block_m: int) -> int:
    """How many groups per K-block the PTX decode path keeps apart in the product
    (1: the block lies in one group), or 0 where the generic decode runs instead.

    ``group`` is the kernel's GROUP (see ``kernel_group``).  The decode yields
    C = 8 / (narrowest piece) tensors of BLOCK_K / C codes, each at least the
    MMA's K.
    """
    if not has_ptx_decode(bits, mode) or block_k // codes_per_element(bits) < MMA_K:
        return 0
    if group >= block_k:
        return 1
    sub = block_k // group
    if block_k % group == 0 and sub * block_m <= MAX_GROUP_COLUMNS:
        return sub
    return 0


def ptx_natural(bits: int) -> bool:
    """Whether the PTX path interleaves its C decoded tensors back into k order (one
    dot with x's contiguous rows) instead of multiplying each by a strided slice of x.

    Strided slices of x are gathered and stored to shared memory synchronously in
    every K-block; a contiguous x tile is prefetched with the weights.  Two tensors
    (4-bit codes) read x in pairs instead; 8-bit codes decode to one tensor.
    """
    return codes_per_element(bits) >= 4


#: The GROUP kernels are compiled with for a per-row group (one scale per row): wider
#: than any k, so every K-block lies in group 0, and the same for every k, so a plan's
#: kernel compiled for one layer serves the others.
ROW_GROUP = 1 << 30


def kernel_group(group: int, k: int) -> int:
    """The GROUP a kernel is compiled with: ``group``, or ``ROW_GROUP`` for a per-row
    group (``group == k``), so the kernel takes one scale per row for every K-block."""
    return ROW_GROUP if group == k else group


def launch_settings(qw: QuantizedWeight, m: int, device: torch.device,
                    config: GemvConfig | None = None) -> tuple[GemvConfig, int]:
    """The launch config (the heuristic's unless given) and the kernel GROUP for ``qw`` at ``m`` rows."""
    k = qw.shape[1]
    group = qw.format.group_len(k)
    if config is None:
        decode = qw.format.kernel_decode()
        ptx = has_ptx_decode(qw.format.bits, decode.mode)
        paired = ptx and qw.format.bits == 4 and group < k and group % 128 == 0
        # 4-bit tables take the paired blocks even at one row (nf4-g128 1.66x -> 1.83x fp16)
        table = decode.mode in (Decode.TABLE, Decode.ROW_TABLE)
        config = gemv_config(m, qw.shape[0], k, group, sm_count(device), ptx=ptx,
                             split_groups=ptx and decode.mode is not Decode.ZERO_POINT and not (paired and table),
                             interleaved=ptx and ptx_natural(qw.format.bits), paired=paired)
    return config, kernel_group(group, k)


def unsupported_reason(x: Tensor, qw: QuantizedWeight) -> str | None:
    """Why the Triton kernels (decode and GEMM) cannot run these inputs, or None when they can."""
    decode = qw.format.kernel_decode()
    if decode is None:
        return f"format {qw.format.spec} has no Triton kernel yet"
    if x.dtype not in KERNEL_DTYPES:
        return f"x has dtype {x.dtype}; the Triton kernel takes torch.float16 or torch.bfloat16"
    if x.device.type != "cuda" and not interpreting():
        return f"x is on {x.device}; the Triton kernel needs a CUDA device (or TRITON_INTERPRET=1)"
    if not TRITON_INSTALLED:
        return "Triton is not installed"
    return None


@traceable_cache(maxsize=None)
def _levels(levels: tuple[float, ...], device: torch.device) -> Tensor:
    return torch.tensor(levels, dtype=torch.float32, device=device)


def kernel_table(qw: QuantizedWeight) -> Tensor | None:
    """The table the kernel reads: NF4's levels, a lut format's per-row tables, or None."""
    decode = qw.format.kernel_decode()
    if decode.mode is Decode.TABLE:
        return _levels(decode.levels, qw.device)
    if decode.mode is Decode.ROW_TABLE:
        return qw.params["table"]
    return None


#: Split-K tile counters: one ring of zeroed int32 per device.  Each launch
#: takes the next ``count`` entries, so launches in flight at the same time
#: (other streams, successive nodes of a CUDA graph) use disjoint counters,
#: and every launch leaves its entries zero again.
COUNTER_RING = 1 << 16


@dataclass
class _CounterRing:
    counters: Tensor  # int32 (COUNTER_RING,), zero between launches
    next: int = 0  # first entry the next launch takes


_RINGS: dict[torch.device, _CounterRing] = {}


def split_counters(device: torch.device, count: int) -> Tensor:
    """``count`` zeroed int32 counters for one launch's split-K fix-up."""
    if count > COUNTER_RING:
        raise ValueError(f"{count} output tiles exceed the split-K counter ring ({COUNTER_RING})")
    ring = _RINGS.get(device)
    if ring is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("anybit: call the layer once before capturing a CUDA graph (it allocates counters)")
        ring = _RINGS[device] = _CounterRing(torch.zeros(COUNTER_RING, dtype=torch.int32, device=device))
    start = ring.next if ring.next + count <= COUNTER_RING else 0
    ring.next = start + count
    return ring.counters[start : start + count]


def weight_operands(codes: Tensor, scales: Tensor, zeros: Tensor | None, table: Tensor | None,
                    k: int) -> tuple[tuple[Tensor, ...], dict[str, int]]:
    """The packed weight's pointer operands (codes, scales, zeros, table; ``scales``
    stands in for an absent one, never read) and its scalar arguments by name, as
    both Triton kernels take them."""
    zeros_or_scales = scales if zeros is None else zeros
    pointers = (codes, scales, zeros_or_scales, scales if table is None else table)
    scalars = dict(
        words_per_row=codes.shape[1], kpad_words=packing.padded_len(k) // 32, num_groups=scales.shape[1],
        stride_sn=scales.stride(0), stride_sg=scales.stride(1),
        stride_zn=zeros_or_scales.stride(0), stride_zg=zeros_or_scales.stride(1),
    )
    return pointers, scalars


def split_k_buffers(out: Tensor, split_k: int, tiles: int, workspace: Tensor | None,
                    columns: int | None = None) -> tuple[Tensor, Tensor]:
    """(fp32 workspace (split_k, M, columns), zeroed counters (tiles,)) for a split-K launch
    writing ``out`` (M, N); ``columns`` defaults to N (more for several outputs in one
    launch).  ``out`` stands in for both (never read) without a split."""
    if split_k == 1:
        return out, out
    if workspace is None:
        workspace = torch.empty(split_k, out.shape[0], columns or out.shape[1], dtype=torch.float32,
                                device=out.device)
    return workspace, split_counters(out.device, tiles)


def launch_gemv(
    x: Tensor, codes: Tensor, scales: Tensor, zeros: Tensor | None, table: Tensor | None,
    bias: Tensor | None, n: int, k: int, bits: int, group: int, mode: Decode, config: GemvConfig,
    out: Tensor | None = None, workspace: Tensor | None = None, addend: Tensor | None = None,
) -> Tensor:
    """Run the kernel: x (M, k) -> y (M, n) (+ ``addend`` (M, n)) in x's dtype.

    ``table``: for table modes, the levels (TABLE: (2**bits,), ROW_TABLE:
    (n, 2**bits) contiguous, any float dtype; the kernel rounds them to x's
    dtype).  ``out`` (M, n) and, with ``config.split_k > 1``, ``workspace`` (fp32
    (split_k, M, n)) may be given; tests pass NaN-filled buffers to catch
    elements the kernel fails to write.
    """
    return launch_gemv_multi(x, [(codes, scales, zeros, bias, n)], table, k, bits, group, mode, config,
                             None if out is None else [out], workspace, addend)[0]


#: Weights one launch of the decode kernel serves at most (``launch_gemv_multi``).
MAX_WEIGHTS = 3
#: One weight of a multi-weight launch: (codes, scales, zeros or None, bias or None, rows N).
WeightPart = tuple[Tensor, Tensor, "Tensor | None", "Tensor | None", int]


def launch_gemv_multi(
    x: Tensor, parts: list[WeightPart], table: Tensor | None, k: int, bits: int, group: int, mode: Decode,
    config: GemvConfig, outs: list[Tensor] | None = None, workspace: Tensor | None = None,
    addend: Tensor | None = None, norm_out: NormOut | None = None, norm_in: NormIn | None = None,
    glu: bool = False,
) -> list[Tensor]:
    """x (M, k) fp16/bf16 against 1 to ``MAX_WEIGHTS`` weights of one format and K in one
    launch: [y_w (M, N_w)] in x's dtype, each as ``launch_gemv`` would give it.

    ``parts[w]`` = (codes int32 (N_w, words per row), scales (N_w, groups), zeros
    (N_w, groups) or None, bias (N_w,) or None, N_w).  The weights' scales (and
    zeros) must share strides and all or none have a bias; ROW_TABLE formats (a
    table per row) take one weight per launch.  ``outs``: [(M, N_w)] to write, or
    None; ``workspace``: fp32, at least split_k * M * sum(N_w) elements, or None;
    ``addend`` (one weight only): (M, N_0) in x's dtype, added to the fp32 product
    before its rounding to x's dtype, or None.  An RMSNorm between this launch and a later
    one (see ``launch_gemv_norm_parts``): ``norm_out`` (one weight only) = (gamma (N_0,),
    scaled (M, N_0) in x's dtype, parts fp32 (M, tiles)) to write, ``norm_in`` = (parts
    fp32 (M, n_parts), N, eps) of the launch that wrote x as its ``scaled``.
    ``glu``: two weights of N rows, a gate and an up projection: returns [silu(x @ gate^T)
    * (x @ up^T) (M, N)], each product and the silu rounded to x's dtype as transformers'
    MLP rounds them (``outs``: that one tensor; ``workspace``: with a split, 2 * split_k *
    M * N elements).
    """
    from .gemv_triton import MODE_IDS, gemv_kernel

    if not 1 <= len(parts) <= MAX_WEIGHTS:
        raise ValueError(f"{len(parts)} weights in one launch; accepted: 1 to {MAX_WEIGHTS}")
    if norm_out is not None or norm_in is not None:
        _check_norm(x, parts, norm_out, norm_in, config)
    if len(parts) > 1:  # (not on the single-weight path every decode call takes)
        if mode is Decode.ROW_TABLE:
            raise ValueError("formats with a table per row (lut) take one weight per launch")
        shared = {(codes.shape[1], scales.shape[1], scales.stride(), None if zeros is None else zeros.stride(),
                   bias is None) for codes, scales, zeros, bias, _ in parts}
        if len(shared) > 1 or any(codes.shape[0] != n for codes, *_, n in parts):
            raise ValueError("the weights of one launch must share K, the format, the strides of their parameters "
                             "and whether they have a bias")
    m = x.shape[0]
    if glu and (len(parts) != 2 or parts[0][4] != parts[1][4] or addend is not None):  # (norm_out: one weight)
        raise ValueError(f"glu takes a gate and an up weight of as many rows and no addend; got "
                         f"{[part[4] for part in parts]} rows, addend {addend is not None}")
    x = x.contiguous()
    if addend is not None:
        if (len(parts) > 1 or addend.shape != (m, parts[0][4]) or addend.dtype != x.dtype
                or addend.device != x.device):
            raise ValueError(f"addend {tuple(addend.shape)} {addend.dtype} on {addend.device}: expected ({m}, "
                             f"{parts[0][4]}) {x.dtype} on {x.device}, with one weight per launch (got {len(parts)})")
        addend = addend.contiguous()
    split_k = config.split_k
    ns = [part[4] for part in parts]
    if outs is None:
        outs = [torch.empty(m, n, dtype=x.dtype, device=x.device) for n in ns[: 1 if glu else None]]
    if m == 0:
        return outs
    tiles = [-(-n // config.block_n) for n in ns]
    grid = (tiles[0] if glu else sum(tiles), split_k, -(-m // config.block_m))  # (GLU: a program per pair of tiles)
    if glu:
        workspace, counters = split_k_buffers(outs[0], split_k, grid[0] * grid[2], workspace, 2 * ns[0])
        outs, written = outs * 2, outs  # (the second output pointer is never written)
    else:
        workspace, counters = split_k_buffers(outs[0], split_k, grid[0] * grid[2], workspace, sum(ns))
        written = outs
    k_blocks = -(-k // config.block_k)
    per_split = -(-k_blocks // split_k)
    if config.unroll < 1 or per_split % config.unroll:
        raise ValueError(f"config.unroll={config.unroll} must be a positive divisor of the {per_split} K-blocks per "
                         f"split (k={k}, block_k={config.block_k}, split_k={split_k})")
    ptx = 0 if interpreting() else ptx_groups(bits, mode, group, config.block_k, config.block_m)
    pointers, scalars = weight_operands(parts[0][0], parts[0][1], parts[0][2], table, k)
    # the operands of weights 1 and 2; weight 0's stand in for absent ones (never read)
    absent = MAX_WEIGHTS - len(parts)
    extra = []
    for (codes, scales, zeros, bias, _), out in zip((parts + [parts[0]] * absent)[1:], (outs + [outs[0]] * absent)[1:]):
        extra += [codes, scales, scales if zeros is None else zeros, scales if bias is None else bias, out]
    rows = ns + [0] * absent
    bias0 = parts[0][3]
    gemv_kernel[grid](
        x, *pointers, parts[0][1] if bias0 is None else bias0, outs[0], workspace, counters,
        outs[0] if addend is None else addend, *extra,
        m, *rows, k, stride_xm=x.stride(0), **scalars,
        BITS=bits, GROUP=group, MODE=MODE_IDS[mode],
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k, SPLIT_K=split_k,
        BLOCKS_PER_SPLIT=per_split, HAS_BIAS=bias0 is not None, INTERPRET=interpreting(),
        X_PAIRS=config.x_pairs and k % 2 == 0 and x.stride(0) % 2 == 0 and x.data_ptr() % 4 == 0,
        EVEN_K=k % config.block_k == 0 and k_blocks % split_k == 0,
        PTX_GROUPS=ptx, PTX_ASM=decode_asm(bits, MODE_IDS[mode], x.dtype == torch.bfloat16) if ptx else "",
        PTX_CONSTRAINTS=constraints(bits, MODE_IDS[mode]) if ptx else "", PTX_NATURAL=bool(ptx) and ptx_natural(bits),
        WEIGHTS=len(parts), num_warps=config.num_warps, num_stages=config.num_stages,
        UNROLL=config.unroll, HAS_ADDEND=addend is not None, **pdl_arguments(x.device),
        **_norm_arguments(norm_out, norm_in), GLU=glu,
    )
    return written


#: What a launch writes for an RMSNorm of its result read by a later launch:
#: (gamma (N,), scaled (M, N) in x's dtype, parts fp32 (M, tiles of BLOCK_N rows)).
NormOut = tuple[Tensor, Tensor, Tensor]
#: What a launch reading such a ``scaled`` as x takes: (parts fp32 (M, n_parts), N, eps).
NormIn = tuple[Tensor, int, float]
#: A launch reading ``scaled`` adds at most this many sums of squares per row of x (one per
#: 32-row tile of the producer: norms up to 8192 wide fold at the heuristic's tiles).
MAX_NORM_PARTS = 256


def norm_tiles(n: int, block_n: int) -> int:
    """The sums of squares per row of x (``parts``' columns) a launch of BLOCK_N-row tiles over n rows writes."""
    return -(-n // block_n)


def _check_norm(x: Tensor, parts: list[WeightPart], norm_out: NormOut | None, norm_in: NormIn | None,
                config: GemvConfig) -> None:
    m, n = x.shape[0], parts[0][4]
    if norm_out is not None:
        gamma, scaled, sums = norm_out
        if len(parts) != 1:
            raise ValueError(f"a launch writing an RMSNorm's parts takes one weight (got {len(parts)})")
        if gamma.shape != (n,) or not gamma.is_floating_point() or gamma.device != x.device or not gamma.is_contiguous():
            raise ValueError(f"norm weight {tuple(gamma.shape)} {gamma.dtype} on {gamma.device}: expected a "
                             f"contiguous floating-point ({n},) tensor on {x.device}")
        if scaled.shape != (m, n) or scaled.dtype != x.dtype or scaled.device != x.device or not scaled.is_contiguous():
            raise ValueError(f"norm output {tuple(scaled.shape)} {scaled.dtype} on {scaled.device}: expected "
                             f"contiguous ({m}, {n}) {x.dtype} on {x.device}")
        tiles = norm_tiles(n, config.block_n)
        if sums.shape != (m, tiles) or sums.dtype != torch.float32 or sums.device != x.device or not sums.is_contiguous():
            raise ValueError(f"norm parts {tuple(sums.shape)} {sums.dtype} on {sums.device}: expected contiguous "
                             f"({m}, {tiles}) torch.float32 on {x.device}")
    if norm_in is not None:
        sums, width, eps = norm_in
        if (sums.dim() != 2 or sums.shape[0] != m or not 1 <= sums.shape[1] <= MAX_NORM_PARTS
                or sums.dtype != torch.float32 or sums.device != x.device or not sums.is_contiguous()):
            raise ValueError(f"norm parts {tuple(sums.shape)} {sums.dtype} on {sums.device}: expected contiguous "
                             f"({m}, 1 to {MAX_NORM_PARTS}) torch.float32 on {x.device}")
        if width != x.shape[1] or not eps >= 0:
            raise ValueError(f"norm over {width} columns with eps={eps!r}: expected x's {x.shape[1]} columns and "
                             f"eps >= 0")


def _norm_arguments(norm_out: NormOut | None, norm_in: NormIn | None) -> dict:
    """The kernel's arguments for the RMSNorm parts it writes and / or the row scale it applies."""
    arguments = {}
    if norm_out is not None:
        gamma, scaled, sums = norm_out
        arguments.update(gamma_ptr=gamma, scaled_ptr=scaled, parts_out_ptr=sums, NORM_PARTS=True)
    if norm_in is not None:
        sums, width, eps = norm_in
        arguments.update(parts_in_ptr=sums, n_parts=sums.shape[1], norm_n=width, eps=float(eps),
                         ROW_SCALE=1 << max(0, sums.shape[1] - 1).bit_length())
    return arguments


def rms_norm_reference(h: Tensor, gamma: Tensor, eps: float) -> Tensor:
    """transformers' RMSNorm (LlamaRMSNorm) of h (..., N) with weight gamma (N,):
    gamma * (float32(h) * rsqrt(mean(float32(h)^2, -1) + eps)).to(h's dtype), in h's dtype."""
    wide = h.float()
    normed = (wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)).to(h.dtype)
    return (gamma.float() * normed.float()).to(h.dtype)


def launch_gemv_norm_parts(
    x: Tensor, codes: Tensor, scales: Tensor, zeros: Tensor | None, table: Tensor | None,
    bias: Tensor | None, n: int, k: int, bits: int, group: int, mode: Decode, config: GemvConfig,
    gamma: Tensor, addend: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``launch_gemv`` that also writes what a later launch needs to read transformers'
    RMSNorm of its result, y = gamma * (h * rsqrt(mean(h^2) + eps)): (h (M, n), scaled
    (M, n), parts fp32 (M, tiles)), h = x @ W^T (+ bias) (+ addend) in x's dtype as
    ``launch_gemv`` gives it, scaled = (h * gamma) in x's dtype, parts[m, t] = the sum of
    squares of h's row m over tile t's columns.  A launch with x = scaled and
    ``norm_in=(parts, n, eps)`` then gives (W' y^T)^T up to rounding, each row scaled by
    rsqrt(mean of squares + eps) after its product: the norm needs no launch of its own
    and is not on any launch's path (``fusion.fuse_rms_norm`` puts it there).  Rounding:
    scaled is h * gamma rounded once, where the norm rounds h * rsqrt(..) and then its
    product with gamma."""
    scaled = torch.empty(x.shape[0], n, dtype=x.dtype, device=x.device)
    sums = torch.empty(x.shape[0], norm_tiles(n, config.block_n), dtype=torch.float32, device=x.device)
    h = launch_gemv_multi(x, [(codes, scales, zeros, bias, n)], table, k, bits, group, mode, config,
                          addend=addend, norm_out=(gamma, scaled, sums))[0]
    return h, scaled, sums


def pdl_arguments(device: torch.device) -> dict:
    """A launch's PDL constexpr and ``launch_pdl`` option on ``device``, as
    ``programmatic_launch`` says (none where it says to launch plainly)."""
    from .gemv_triton import TRIGGER_IDS

    trigger = programmatic_launch(device)
    return {} if trigger is None else {"PDL": TRIGGER_IDS[trigger], "launch_pdl": True}


@torch.library.custom_op("anybit::gemv", mutates_args=())
def gemv_op(
    x: Tensor, codes: Tensor, scales: Tensor, zeros: Tensor | None, table: Tensor | None,
    bias: Tensor | None, n: int, k: int, bits: int, group: int, mode: str,
    block_m: int, block_n: int, block_k: int, split_k: int, num_warps: int, num_stages: int, x_pairs: bool,
    unroll: int, addend: Tensor | None = None, norm_parts: Tensor | None = None, norm_n: int = 0,
    norm_eps: float = 0.0,
) -> Tensor:
    """y (M, n) = x (M, k) @ W^T (+ bias) (+ addend (M, n)) for W in the split-plane layout; see gemv_triton.
    With ``norm_parts``, x is an RMSNorm's ``scaled`` and each row of the product is scaled
    by rsqrt(mean of squares + norm_eps) before the bias (``launch_gemv_norm_parts``)."""
    config = GemvConfig(block_m, block_n, block_k, split_k, num_warps, num_stages, x_pairs, unroll)
    norm_in = None if norm_parts is None else (norm_parts, norm_n, norm_eps)
    return launch_gemv_multi(x, [(codes, scales, zeros, bias, n)], table, k, bits, group, Decode(mode), config,
                             addend=addend, norm_in=norm_in)[0]


@gemv_op.register_fake
def _(x, codes, scales, zeros, table, bias, n, k, bits, group, mode, block_m, block_n, block_k, split_k,
      num_warps, num_stages, x_pairs, unroll, addend=None, norm_parts=None, norm_n=0, norm_eps=0.0):
    return x.new_empty(x.shape[0], n)


@torch.library.custom_op("anybit::gemv_norm_parts", mutates_args=())
def gemv_norm_parts_op(
    x: Tensor, codes: Tensor, scales: Tensor, zeros: Tensor | None, table: Tensor | None,
    bias: Tensor | None, n: int, k: int, bits: int, group: int, mode: str,
    block_m: int, block_n: int, block_k: int, split_k: int, num_warps: int, num_stages: int, x_pairs: bool,
    unroll: int, addend: Tensor | None, gamma: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """``anybit::gemv`` writing the parts of an RMSNorm of its result too: (h (M, n), h * gamma
    (M, n), sums of squares fp32 (M, tiles)); see ``launch_gemv_norm_parts`` (and ``fusion``,
    which emits it)."""
    config = GemvConfig(block_m, block_n, block_k, split_k, num_warps, num_stages, x_pairs, unroll)
    return launch_gemv_norm_parts(x, codes, scales, zeros, table, bias, n, k, bits, group, Decode(mode), config,
                                  gamma, addend)


@gemv_norm_parts_op.register_fake
def _(x, codes, scales, zeros, table, bias, n, k, bits, group, mode, block_m, block_n, block_k, split_k,
      num_warps, num_stages, x_pairs, unroll, addend, gamma):
    return (x.new_empty(x.shape[0], n), x.new_empty(x.shape[0], n),
            x.new_empty(x.shape[0], norm_tiles(n, block_n), dtype=torch.float32))


@torch.library.custom_op("anybit::gemv_multi", mutates_args=())
def gemv_multi_op(
    x: Tensor, codes: list[Tensor], scales: list[Tensor], zeros: list[Tensor | None], table: Tensor | None,
    bias: list[Tensor | None], ns: list[int], k: int, bits: int, group: int, mode: str,
    block_m: int, block_n: int, block_k: int, split_k: int, num_warps: int, num_stages: int, x_pairs: bool,
    unroll: int, norm_parts: Tensor | None = None, norm_n: int = 0, norm_eps: float = 0.0, glu: bool = False,
) -> list[Tensor]:
    """``anybit::gemv`` for 1 to MAX_WEIGHTS weights of one format and K in one launch:
    [y_w (M, ns[w])], or with ``glu`` [silu(y_0) * y_1 (M, ns[0])]; see
    ``launch_gemv_multi`` (and ``fusion``, which emits it), and ``anybit::gemv`` for
    ``norm_parts``."""
    config = GemvConfig(block_m, block_n, block_k, split_k, num_warps, num_stages, x_pairs, unroll)
    parts = list(zip(codes, scales, zeros, bias, ns))
    norm_in = None if norm_parts is None else (norm_parts, norm_n, norm_eps)
    return launch_gemv_multi(x, parts, table, k, bits, group, Decode(mode), config, norm_in=norm_in, glu=glu)


@gemv_multi_op.register_fake
def _(x, codes, scales, zeros, table, bias, ns, k, bits, group, mode, block_m, block_n, block_k, split_k,
      num_warps, num_stages, x_pairs, unroll, norm_parts=None, norm_n=0, norm_eps=0.0, glu=False):
    return [x.new_empty(x.shape[0], n) for n in ns[: 1 if glu else None]]


def heuristic_split(block_m: int, block_n: int, block_k: int, unroll: int, n: int, k: int, sms: int,
                    programs_per_sm: int | None = None) -> int:
    """Split-K for these tiles over ``n`` rows (one weight, or several in one launch), to
    ``programs_per_sm`` or the heuristic's (``heuristic_programs_per_sm``)."""
    tiles = -(-n // block_n)
    per_sm = programs_per_sm or heuristic_programs_per_sm(block_m, block_n, block_k, unroll, tiles)
    return split_for(-(-k // block_k), tiles, per_sm, sms, unroll)


def merged_split(config: GemvConfig, n_total: int, k: int, sms: int) -> int:
    """Split-K for ``config``'s tiles over ``n_total`` rows (several weights in one launch),
    to the heuristic's programs per SM (``gemv_config``)."""
    return heuristic_split(config.block_m, config.block_n, config.block_k, config.unroll, n_total, k, sms)


def gemv(x: Tensor, qw: QuantizedWeight, bias: Tensor | None, config: GemvConfig | None = None) -> Tensor:
    """x (..., K) fp16/bf16 with at most MAX_M rows -> (..., N) in x's dtype, on the Triton kernel."""
    n, k = qw.shape
    x2 = x.reshape(-1, k)
    config, group = launch_settings(qw, x2.shape[0], x.device, config)
    y = torch.ops.anybit.gemv(
        x2, qw.codes, qw.params["scales"], qw.params.get("zeros"), kernel_table(qw), bias,
        n, k, qw.format.bits, group, qw.format.kernel_decode().mode.value,
        config.block_m, config.block_n, config.block_k, config.split_k, config.num_warps, config.num_stages,
        config.x_pairs, config.unroll,
    )
    return y.reshape(*x.shape[:-1], n)
