"""Print, as JSON, where each part of a GEMM kernel's PTX (compiled for sm_90, no GPU
needed) waits for the kernel before it, lets the next one launch, first touches global
memory and last issues a copy of its K loop.

Usage: python tests/gemm_pdl_ptx.py KERNEL PDL [SPLIT_K]   (KERNEL: triton, gluon or ws; PDL:
off, early or late) with 4-bit symmetric codes in groups of 128.  The parts: the whole
kernel for the Triton and Gluon GEMMs; for the warp-specialized one (64 x 128 x 64, two
consumer warpgroups) its loader partition and each consumer partition, the code from each
partition's entry label (the default warps' branch at the start, the workers' ``brx``
targets) up to the next part's.  Run in a process of its own: Triton's interpreter
(TRITON_INTERPRET=1) cannot compile kernels."""

import inspect
import json
import re
import sys

import triton
from gemv_ptx import GLOBAL_ACCESS
from ptxas_report import PDL_IDS, compile_ws
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource

from anybit._matmul import gemm as gm
from anybit._matmul.gemm_gluon import gemm_gluon_kernel
from anybit._matmul.gemm_triton import gemm_kernel
from anybit._matmul.gemv_triton import MODE_IDS
from anybit.formats._base import Decode

#: The K loop's copies: cp.async (Triton, Gluon) or TMA (the warp-specialized kernel)
COPY = re.compile(r"^\s*(@%p\d+\s+)?cp\.async\.(c|bulk\.tensor)")
LABEL = re.compile(r"^(\$L__\w+):")
BRANCH = re.compile(r"^(@!?%p\d+\s+)?bra(\.uni)?\s")


def _signature(kernel, constants: dict) -> tuple[dict, dict]:
    names = list(inspect.signature(kernel.fn).parameters)
    pointers = {name: "*i32" if name in ("codes_ptr", "counter_ptr") else "*fp32" if name == "ws_ptr" else "*fp16"
                for name in names if name.endswith("_ptr")}
    signature = {name: "constexpr" if name in constants else pointers.get(name, "i32") for name in names}
    aligned = {(names.index(name),): [["tt.divisibility", 16]] for name in names
               if name.endswith("_ptr") or name in ("K", "words_per_row", "kpad_words", "stride_xm", "stride_sn")}
    return signature, aligned


def compile_kernel(kernel: str, pdl: str, split_k: int):
    options = dict(launch_pdl=pdl != "off")
    common = dict(GROUP=128, MODE=MODE_IDS[Decode.SYMMETRIC], BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, SWIZZLE=8,
                  SPLIT_K=split_k, BLOCKS_PER_SPLIT=8, HAS_BIAS=False, PDL=PDL_IDS[pdl])
    if kernel == "triton":
        constants = dict(common, INTERPRET=False, EVEN_K=True, SYNC_MMA=True,
                         **gm._decode_constexprs(4, Decode.SYMMETRIC, 64, gm.torch.float16))
        signature, attrs = _signature(gemm_kernel, constants)
        source = triton.compiler.ASTSource(fn=gemm_kernel, signature=signature, constexprs=constants, attrs=attrs)
        options.update(num_warps=8, num_stages=3)
    elif kernel == "gluon":
        constants = dict(common, STAGES=3, num_warps=8)
        signature, attrs = _signature(gemm_gluon_kernel, constants)
        source = GluonASTSource(fn=gemm_gluon_kernel, signature=signature, constexprs=constants, attrs=attrs)
        options.update(num_warps=8)
    else:
        return compile_ws(64, 128, 64, 6, 2, 12, 4, False, split_k, pdl)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def part_starts(lines: list[str]) -> list[int]:
    """Line numbers where the warp-specialized kernel's parts begin: each ``setmaxnreg.inc``
    (a part taking its registers) that follows a label or a branch, i.e. that begins a
    block: the default warps' at the start of the kernel (a label or the fall-through of
    the first branch, by Triton version) and each worker partition's (the ``setmaxnreg.inc``
    that ends the default partition follows its last instructions).  A part's code before
    its wait is the straight line after its start, whatever the order of the blocks after it."""
    starts, previous = [], ""
    for i, line in enumerate(lines):
        text = line.strip()
        if not text or text.startswith(("//", ".loc", "$L__tmp")):
            continue
        if text.startswith("setmaxnreg.inc") and (LABEL.match(previous) or BRANCH.match(previous)):
            starts.append(i)
        previous = text
    return starts


def report(kernel: str, pdl: str, split_k: int = 1) -> dict:
    compiled = compile_kernel(kernel, pdl, split_k)
    lines = compiled.asm["ptx"].splitlines()
    if kernel == "ws":
        starts = part_starts(lines)
        bounds = list(zip(starts, starts[1:] + [len(lines)]))
    else:
        bounds = [(0, len(lines))]

    def first(lo, hi, predicate):
        return next((i for i in range(lo, hi) if predicate(lines[i])), None)

    def last(lo, hi, predicate):
        return max((i for i in range(lo, hi) if predicate(lines[i])), default=None)

    parts = [{"wait": first(lo, hi, lambda line: "griddepcontrol.wait" in line),
              "launch_dependents": first(lo, hi, lambda line: "griddepcontrol.launch_dependents" in line),
              "first_global_access": first(lo, hi, lambda line: GLOBAL_ACCESS.match(line) is not None
                                           or COPY.match(line) is not None),
              "first_copy": first(lo, hi, lambda line: COPY.match(line) is not None),
              "last_copy": last(lo, hi, lambda line: COPY.match(line) is not None)} for lo, hi in bounds]
    return {"launch_pdl": compiled.metadata.launch_pdl, "parts": parts,
            "waits": sum("griddepcontrol.wait" in line for line in lines)}


if __name__ == "__main__":
    print(json.dumps(report(sys.argv[1], sys.argv[2], *(int(arg) for arg in sys.argv[3:4]))))
