"""Can a TMA copy start at any column of a narrow tensor?  The question behind bringing a
K-block's group scales into the warp-specialized GEMM's ring (docs/NOTES-gemm.md v40): the
scales (N, groups) fp16 are too narrow for a box of one column (TMA copies at least 16 bytes
of a row), so a stage would copy a box of 8 groups starting at its own group and read the
first column.

Each case copies a [128, box] fp16 box of a (4096, 64) tensor starting at column ``col`` into
shared memory (NVMMA layout of ``swizzle`` bytes) and reads back its first column.

Usage on a Hopper GPU, one process a case (a failing case leaves the CUDA context unusable)::

    for i in 0 1 2 3 4 5 6; do PYTHONPATH=src python benchmarks/tma_column_probe.py $i; done
"""

from __future__ import annotations

import sys

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

#: (box columns, swizzle bytes, first column)
CASES = ((8, 0, 0), (8, 0, 8), (16, 32, 0), (64, 128, 0), (8, 0, 3), (16, 32, 3), (64, 128, 3))


@gluon.jit
def _first_column(desc, out_ptr, col, ROWS: gl.constexpr, BOX: gl.constexpr):
    """out[:ROWS] = the first column of the box at [0, col]."""
    bufs = gl.allocate_shared_memory(gl.float16, [2, ROWS, BOX], desc.layout)
    bar = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout())
    mbarrier.init(bar.index(0), count=1)
    fence_async_shared()
    mbarrier.expect(bar.index(0), desc.block_type.nbytes)
    tma.async_copy_global_to_shared(desc, [0, col], bar.index(0), bufs.index(1))
    mbarrier.wait(bar.index(0), 0)
    rows_of: gl.constexpr = gl.BlockedLayout([1, BOX], [32, 1], [4, 1], [1, 0])
    tile = bufs.index(1).load(rows_of)
    cols = gl.arange(0, BOX, layout=gl.SliceLayout(0, rows_of))
    first = gl.sum(gl.where(cols[None, :] == 0, tile, 0.0), axis=1)
    gl.store(out_ptr + gl.arange(0, ROWS, layout=gl.SliceLayout(1, rows_of)), first)


def main(case: int) -> None:
    src = torch.randn(4096, 64, device="cuda").half()
    for box, swizzle, col in CASES[case:case + 1]:
        desc = TensorDescriptor.from_tensor(src, [128, box], gl.NVMMASharedLayout(swizzle, 16, 2))
        out = torch.zeros(128, device="cuda").half()
        try:
            _first_column[(1,)](desc, out, col, ROWS=128, BOX=box, num_warps=4)
            torch.cuda.synchronize()
        except RuntimeError as e:
            print(f"box [128, {box}], swizzle {swizzle}, column {col}: {str(e).splitlines()[0]}")
            continue
        print(f"box [128, {box}], swizzle {swizzle}, column {col}: "
              f"{'right' if torch.equal(out, src[:128, col]) else 'WRONG'}")


if __name__ == "__main__":
    main(int(sys.argv[1]))
