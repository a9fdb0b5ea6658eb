"""Thread-block clusters for the Gluon kernels on Hopper: launching a kernel compiled for one
CTA as clusters, and the cluster instructions (by inline PTX) that a split-K sum through
distributed shared memory needs, and that sum for the warp-specialized GEMM (``cluster_sum``).

Why: the warp-specialized GEMM's split plans summed their partials through global memory,
2-4 us a launch on the small layers (docs/NOTES-gemm.md v32); with the S splits of a tile as
the S CTAs of one cluster, each CTA pushes slice q of its partial into CTA q's shared memory
(``st.async``, whose bytes an mbarrier there counts) and sums its own slice: 0.5-1.1 us in
``benchmarks/cluster_probe.py``.

Triton 3.6's Gluon compiles ``num_ctas`` > 1 only for layouts split across CTAs, so the
kernel is compiled for one CTA (``%ctaid.x`` runs over the whole grid) and
``launch_clustered`` sets the compiled kernel's packed ``num_ctas``, from which Triton's
launcher takes the cluster's size (and multiplies the grid's x by it).

Shared memory: Triton's is dynamic (its ``global_smem``) and its buffers' offsets are not
known to the kernel's code, so the cluster sum's buffer is a tail that ``launch_clustered``
adds to the dynamic shared memory of the launch, after Triton's (``tail_buffer`` finds it
from ``%dynamic_smem_size``).  A static buffer declared by PTX would be capped at 48 KB by
ptxas (and would move Triton's dynamic memory, whose TMA destinations need 1024-byte
alignment).
"""

from __future__ import annotations

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

#: Most CTAs in a cluster that every Hopper GPU runs (16 needs an opt-in).
MAX_CLUSTER = 8
#: Alignment of the tail buffer's start after Triton's dynamic shared memory (``launch_clustered``).
TAIL_ALIGN = 128
#: Dynamic shared memory a kernel may take without the opt-in that Triton's loader makes
#: only for kernels whose own count exceeds it.
DEFAULT_DYNAMIC_LIMIT = 49152


@triton.constexpr_function
def buffer_bytes(partial_bytes, barriers):
    """Shared memory of a cluster sum's tail buffer: the receiving buffer of ``partial_bytes``
    and ``barriers`` mbarriers (8 bytes each) after it, rounded up to TAIL_ALIGN.  Also
    callable outside kernels."""
    return (partial_bytes + 8 * barriers + TAIL_ALIGN - 1) // TAIL_ALIGN * TAIL_ALIGN


@triton.constexpr_function
def _tail(nbytes):
    """PTX: $0 = the shared address ``nbytes`` (an immediate, or an operand such as "$1") before
    the end of the launch's dynamic shared memory."""
    return ("{\n\t.reg .b32 d;\n\tmov.u32 d, %dynamic_smem_size;\n\tmov.u32 $0, global_smem;\n\t"
            f"add.u32 $0, $0, d;\n\tsub.u32 $0, $0, {nbytes};\n\t}}")


@gluon.jit
def tail_buffer(NBYTES: gl.constexpr):
    """The shared address (32 bits) of the last NBYTES bytes of the launch's dynamic shared
    memory: the tail ``launch_clustered`` adds after Triton's own (``global_smem``, the start
    of the dynamic shared memory, on whose alignment Triton's TMA buffers already rely), so
    TAIL_ALIGN-byte aligned."""
    return gl.inline_asm_elementwise(_tail(NBYTES), "=r", [], dtype=gl.int32, is_pure=True, pack=1)


@gluon.jit
def tail_at(nbytes):
    """``tail_buffer`` for a byte count known only at run time (int32 ``nbytes``)."""
    return gl.inline_asm_elementwise(_tail("$1"), "=r,r", [nbytes], dtype=gl.int32, is_pure=True, pack=1)


@gluon.jit
def init_byte_barrier(bar, nbytes):
    """Thread 0 of the CTA: the mbarrier at shared address ``bar`` waits for ``nbytes`` bytes
    (one arrival, its own, with the byte count), made visible to the cluster.  Before any
    partition starts; each partition's ``cluster_arrive`` at its start, and the pushing
    consumers' ``cluster_wait``, then order it before every other CTA's ``push``."""
    gl.inline_asm_elementwise(
        "{\n\t.reg .pred p;\n\t.reg .b32 t;\n\tmov.u32 t, %tid.x;\n\tsetp.eq.u32 p, t, 0;\n\t"
        "@p mbarrier.init.shared::cta.b64 [$1], 1;\n\t"
        "@p mbarrier.arrive.expect_tx.shared::cta.b64 _, [$1], $2;\n\t"
        "@p fence.mbarrier_init.release.cluster;\n\t}\n\tmov.u32 $0, 0;",
        "=r,r,r", [bar, nbytes], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def cluster_arrive():
    """This thread's arrival (release) at the cluster barrier, without waiting: a partition
    arrives at its start, after thread 0 initialized the mbarriers, and waits
    (``cluster_wait``) only where it needs the other CTAs' initialization, before its first
    ``push`` (in ``cluster_sum``), so that no partition waits at its start for the whole
    cluster (docs/NOTES-gemm.md v52).  Every partition of a warp-specialized kernel arrives
    and waits the same number of times, in turn."""
    gl.inline_asm_elementwise("barrier.cluster.arrive.release.aligned;\n\tmov.u32 $0, 0;", "=r", [], dtype=gl.int32,
                              is_pure=False, pack=1)


@gluon.jit
def cluster_wait():
    """Wait (acquire) until every thread of the cluster has passed its ``cluster_arrive``."""
    gl.inline_asm_elementwise("barrier.cluster.wait.acquire.aligned;\n\tmov.u32 $0, 0;", "=r", [], dtype=gl.int32,
                              is_pure=False, pack=1)


@gluon.jit
def cluster_barrier():
    """Every thread of every CTA of the cluster arrives (release) and waits (acquire).  Every
    partition of a warp-specialized kernel must call it the same number of times."""
    cluster_arrive()
    cluster_wait()


@gluon.jit
def cluster_barrier_relaxed():
    """``cluster_barrier`` without ordering: before exit, so that no CTA leaves while another
    may still write into its shared memory."""
    gl.inline_asm_elementwise("barrier.cluster.arrive.relaxed.aligned;\n\tbarrier.cluster.wait.aligned;\n\t"
                              "mov.u32 $0, 0;", "=r", [], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def wait_bytes(bar):
    """Wait until the mbarrier at shared address ``bar`` has completed its first phase (every
    byte ``init_byte_barrier`` expects has arrived); acquire at cluster scope."""
    _wait_first_phase(bar, "cluster")


@triton.constexpr_function
def _first_phase_asm(scope):
    """PTX: $0 = whether the mbarrier at shared address $1 has completed its first phase
    (acquire at ``scope``)."""
    return ("{\n\t.reg .pred p;\n\t"
            f"mbarrier.try_wait.parity.acquire.{scope}.shared::cta.b64 p, [$1], 0;\n\t"
            "selp.u32 $0, 1, 0, p;\n\t}")


@gluon.jit
def _wait_first_phase(bar, SCOPE: gl.constexpr):
    """Spin until the mbarrier at shared address ``bar`` has completed its first phase."""
    done = gl.to_tensor(0)
    while done == 0:
        done = gl.inline_asm_elementwise(_first_phase_asm(SCOPE), "=r,r", [bar], dtype=gl.int32, is_pure=False,
                                         pack=1)


@gluon.jit
def push(values, addr, rank, bar):
    """values [V, 4] fp32 (4 consecutive elements a thread per row): row v stored at shared
    address ``addr`` [V, 4] (its first element's) of CTA ``rank`` [V, 4] of the cluster, by
    ``st.async`` counting 16 bytes on the mbarrier at ``bar`` (an address in each CTA, scalar)
    of that CTA."""
    gl.inline_asm_elementwise(
        "{\n\t.reg .b32 a, b;\n\tmapa.shared::cluster.u32 a, $4, $8;\n\tmapa.shared::cluster.u32 b, $12, $8;\n\t"
        "st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [a], {$16, $17, $18, $19}, [b];\n\t}\n\t"
        "mov.u32 $0, 0;\n\tmov.u32 $1, 0;\n\tmov.u32 $2, 0;\n\tmov.u32 $3, 0;",
        "=r,=r,=r,=r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r,r",
        [addr, rank, addr * 0 + bar, values.to(gl.int32, bitcast=True)], dtype=gl.int32, is_pure=False, pack=4)


@gluon.jit
def init_count_barrier(bar, count):
    """Thread 0 of the CTA: the mbarrier at shared address ``bar`` waits for ``count`` arrivals
    (``arrive``, after ``store_shared``), for a sum within one CTA launched without a cluster, where the
    cluster instructions of ``init_byte_barrier`` and ``push`` are illegal (a CTA alone is not a
    cluster of one to them).  Before any partition starts, whose start orders it before every
    arrival."""
    gl.inline_asm_elementwise(
        "{\n\t.reg .pred p;\n\t.reg .b32 t;\n\tmov.u32 t, %tid.x;\n\tsetp.eq.u32 p, t, 0;\n\t"
        "@p mbarrier.init.shared::cta.b64 [$1], $2;\n\t}\n\tmov.u32 $0, 0;",
        "=r,r,r", [bar, count], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def store_shared(values, addr):
    """values [V, 4] fp32 (4 consecutive elements a thread per row): row v stored at this CTA's
    shared address ``addr`` [V, 4] (its first element's), 16 bytes a store."""
    gl.inline_asm_elementwise(
        "st.shared.v4.b32 [$4], {$8, $9, $10, $11};\n\tmov.u32 $0, 0;\n\tmov.u32 $1, 0;\n\tmov.u32 $2, 0;\n\t"
        "mov.u32 $3, 0;", "=r,=r,=r,=r,r,r,r,r,r,r,r,r", [addr, values.to(gl.int32, bitcast=True)], dtype=gl.int32,
        is_pure=False, pack=4)


@gluon.jit
def arrive(bar):
    """This thread arrives (release, CTA scope) on the mbarrier at shared address ``bar``
    (a scalar: every thread of the partition arrives once), after its stores before it."""
    gl.inline_asm_elementwise("mbarrier.arrive.release.cta.shared::cta.b64 _, [$1];\n\tmov.u32 $0, 0;", "=r,r",
                              [bar], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def wait_arrivals(bar):
    """Wait until the mbarrier at shared address ``bar`` has completed its first phase (every
    arrival ``init_count_barrier`` expects); acquire at CTA scope."""
    _wait_first_phase(bar, "cta")


@gluon.jit
def load_shared(addr):
    """[V, 4] fp32 from this CTA's shared memory, row v at shared address ``addr`` [V, 4]
    (its first element's), 16 bytes a load."""
    return gl.inline_asm_elementwise("ld.shared.v4.f32 {$0, $1, $2, $3}, [$4];", "=f,=f,=f,=f,r,r,r,r", [addr],
                                     dtype=gl.float32, is_pure=False, pack=4)


@gluon.jit
def cluster_bar(base, g, NUM_WG: gl.constexpr, WG_ROWS: gl.constexpr, BLOCK_M: gl.constexpr):
    """The shared address of consumer warpgroup g's mbarrier of the cluster sum: after the
    NUM_WG warpgroups' receiving buffers ([SPLIT_K, slice, 4] fp32, WG_ROWS x BLOCK_M floats
    each) in the buffer at ``base``."""
    return base + NUM_WG * WG_ROWS * BLOCK_M * 4 + g * 8


@gluon.jit
def cluster_sum(acc, base, pid_k, out, bias_ptr, row, col, row0, m0, M, N, WG: gl.constexpr,
                NUM_WG: gl.constexpr, WG_ROWS: gl.constexpr, BLOCK_M: gl.constexpr, SPLIT_K: gl.constexpr,
                HAS_BIAS: gl.constexpr, WG_K: gl.constexpr = 1):
    """The sum of a tile's T = SPLIT_K x WG_K partials through shared memory: the tile's
    SPLIT_K splits are the cluster's CTAs (``pid_k`` this one's rank), and in each the WG_K
    warpgroups of a row set (consumer WG = kj * R + rw, R = NUM_WG / WG_K row sets) took
    every WG_K-th K-block from kj on.  The warpgroup's partial ``acc`` [WG_ROWS, BLOCK_M]
    (wgmma's layout; ``row``, ``col`` its element's row of W and of x in the tile) is taken
    in ``gemm_gluon_ws._vectors``' rows, each thread's 4 registers of an 8-column block: row v
    belongs to slice q = v // SLICE, which consumer (q % WG_K) * R + rw of CTA q // WG_K sums; it goes
    into that consumer's buffer [T, SLICE, 4] fp32 at (pid_k * WG_K + kj, v % SLICE)
    (``push``: the bytes counted on that consumer's barrier there; the buffers [NUM_WG, T,
    SLICE, 4]; with SPLIT_K 1 the CTA is launched alone, not as a cluster, where the cluster
    instructions are illegal: plain shared stores, each thread then arriving on each receiver's
    barrier).  Once all T partials' rows of its slice have arrived, their sum in the order
    (split, warpgroup) (with WG_K 1 the bits of the global sum's) is stored as y, with the
    bias, at each element's (row of W, row of x) of ``out`` (y's pointer and its row stride).
    In a cluster it first waits for the cluster barrier (``cluster_wait``) at which every
    partition arrived at its start, so that every CTA's mbarriers are initialized.  No
    barrier is needed before exit: every push into a CTA is counted on a barrier there that
    one of its consumers waits for before it leaves, and a push, once issued, does not need
    the CTA that issued it (its values come from registers)."""
    R: gl.constexpr = NUM_WG // WG_K
    T: gl.constexpr = SPLIT_K * WG_K
    V: gl.constexpr = WG_ROWS * BLOCK_M // 4
    SLICE: gl.constexpr = V // T
    J: gl.constexpr = BLOCK_M // 8
    # _vectors' order [s, j, w, l, q | h, e] for row 64 s + 16 w + 8 h + l, column 8 j + 2 q + e
    v = ((((row // 64) * J + col // 8) * 4 + (row // 16) % 4) * 8 + row % 8) * 4 + (col // 2) % 4
    element = 2 * ((row // 8) % 2) + col % 2
    q = v // SLICE
    region = (q % WG_K) * R + WG % R
    addr = base + ((region * T + pid_k * WG_K + WG // R) * SLICE + v % SLICE) * 16 + element * 4
    if SPLIT_K > 1:
        cluster_wait()
        push(acc, addr, q // WG_K, cluster_bar(base, region, NUM_WG, WG_ROWS, BLOCK_M))
        wait_bytes(cluster_bar(base, WG, NUM_WG, WG_ROWS, BLOCK_M))
    else:  # one CTA, launched alone: plain shared stores, then one arrival per thread on each receiver
        store_shared(acc, addr)
        for r in gl.static_range(WG_K):
            arrive(cluster_bar(base, r * R + WG % R, NUM_WG, WG_ROWS, BLOCK_M))
        wait_arrivals(cluster_bar(base, WG, NUM_WG, WG_ROWS, BLOCK_M))
    layout: gl.constexpr = gl.BlockedLayout([1, 4], [32, 1], [4, 1], [1, 0])
    i = gl.arange(0, SLICE, layout=gl.SliceLayout(1, layout))[:, None]
    c = gl.arange(0, 4, layout=gl.SliceLayout(0, layout))[None, :]
    total = load_shared(base + (WG * T * SLICE + i) * 16 + c * 4)
    for r in gl.static_range(1, T):
        total += load_shared(base + ((WG * T + r) * SLICE + i) * 16 + c * 4)
    v = (pid_k * WG_K + WG // R) * SLICE + i
    rows = row0 + 64 * (v // (128 * J)) + 16 * ((v // 32) % 4) + 8 * (c // 2) + (v // 4) % 8
    cols = m0 + 8 * ((v // 128) % J) + 2 * (v % 4) + c % 2
    if HAS_BIAS:
        total += gl.load(bias_ptr + rows, mask=rows < N, other=0.0).to(gl.float32)
    out_ptr, stride_ym = out
    gl.store(out_ptr + cols * stride_ym + rows, total.to(gl.float16), mask=(rows < N) & (cols < M))


def tail_offset(shared: int) -> int:
    """Where the tail buffer starts in a launch's dynamic shared memory, after Triton's
    ``shared`` bytes."""
    return -(-shared // TAIL_ALIGN) * TAIL_ALIGN


def launch_clustered(kernel, grid: tuple[int, ...], cluster: int, tail: int, *args, **kwargs) -> None:
    """Launch the Gluon ``kernel`` (compiled for one CTA) on ``grid`` with its x multiplied by
    ``cluster``, as clusters of ``cluster`` consecutive CTAs along x, with ``tail`` bytes of
    dynamic shared memory after Triton's (``tail_offset``; the kernel finds them by
    ``tail_buffer``).  The compiled kernel's packed metadata (num_warps, num_ctas, shared
    memory) gets num_ctas = ``cluster``, which Triton's launcher turns into the cluster's
    size, and the larger shared memory; compile and launch take the same arguments, so every
    launch of that compiled kernel is so."""
    if not 1 <= cluster <= MAX_CLUSTER:
        raise ValueError(f"cluster={cluster}: accepted: 1 to {MAX_CLUSTER} CTAs")
    compiled = kernel.warmup(*args, grid=grid, **kwargs)
    packed = getattr(compiled, "packed_metadata", None)
    if not (isinstance(packed, tuple) and len(packed) == 3):
        raise RuntimeError(f"this Triton ({triton.__version__}) packs a compiled kernel's launch metadata as "
                           f"{packed!r}; launching as clusters needs (num_warps, num_ctas, shared) as in Triton 3.6")
    shared = compiled.metadata.shared
    total = tail_offset(shared) + tail
    if tail and shared <= DEFAULT_DYNAMIC_LIMIT < total:
        raise ValueError(f"tail={tail}: the kernel takes {shared} bytes of shared memory, so Triton's loader leaves "
                         f"its limit at {DEFAULT_DYNAMIC_LIMIT}; accepted: a tail up to "
                         f"{DEFAULT_DYNAMIC_LIMIT - tail_offset(shared)} bytes")
    compiled.packed_metadata = (packed[0], cluster, total)
    kernel[grid](*args, **kwargs)
