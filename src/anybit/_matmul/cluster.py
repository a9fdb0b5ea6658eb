"""Thread-block clusters for the Gluon kernels on Hopper: launching a kernel compiled for one
CTA as clusters, and the cluster instructions (by inline PTX) that a split-K sum through
distributed shared memory needs.

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
    partition starts; ``cluster_barrier`` at each partition's start then orders it before
    every other CTA's ``push``."""
    gl.inline_asm_elementwise(
        "{\n\t.reg .pred p;\n\t.reg .b32 t;\n\tmov.u32 t, %tid.x;\n\tsetp.eq.u32 p, t, 0;\n\t"
        "@p mbarrier.init.shared::cta.b64 [$1], 1;\n\t"
        "@p mbarrier.arrive.expect_tx.shared::cta.b64 _, [$1], $2;\n\t"
        "@p fence.mbarrier_init.release.cluster;\n\t}\n\tmov.u32 $0, 0;",
        "=r,r,r", [bar, nbytes], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def cluster_barrier():
    """Every thread of every CTA of the cluster arrives (release) and waits (acquire).  Every
    partition of a warp-specialized kernel must call it the same number of times."""
    gl.inline_asm_elementwise("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;\n\t"
                              "mov.u32 $0, 0;", "=r", [], dtype=gl.int32, is_pure=False, pack=1)


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
