"""Print, as JSON, where the decode kernel's PTX (compiled for sm_90, no GPU needed) waits
for the kernel before it, lets the next one launch, first touches global memory and last
issues a K loop copy.

Usage: python tests/gemv_ptx.py PDL BITS WEIGHTS [norm]   (PDL: off, early or late; WEIGHTS 1
to 3) with int-``BITS`` symmetric codes in groups of 128, split-K 4, the PTX decode where it
exists; ``norm``: reading an RMSNorm's sums of squares (ROW_SCALE) and, with one weight,
writing them (NORM_PARTS).  Run in a process of its own: Triton's interpreter (TRITON_INTERPRET=1) cannot
compile kernels."""

import inspect
import json
import re
import sys

import triton
from triton.backends.compiler import GPUTarget

from anybit._matmul import gemv as g
from anybit._matmul.decode_ptx import constraints, decode_asm
from anybit._matmul.gemv_triton import PDL_OFF, SYMMETRIC, TRIGGER_IDS, gemv_kernel

#: PTX that reads or writes global memory (kernel parameters are read with ld.param)
GLOBAL_ACCESS = re.compile(r"^\s*(@%p\d+\s+)?(ld\.global|st\.global|cp\.async|atom\.|red\.)")
COPY = re.compile(r"^\s*(@%p\d+\s+)?cp\.async\.c")


def report(pdl: str, bits: int, weights: int, norm: bool = False) -> dict:
    mode = SYMMETRIC.value
    trigger = None if pdl == "off" else g.Trigger(pdl)
    ptx_groups = g.ptx_groups(bits, g.Decode.SYMMETRIC, 128, 256, 1)
    constants = dict(BITS=bits, GROUP=128, MODE=mode, BLOCK_M=1, BLOCK_N=32, BLOCK_K=256, SPLIT_K=4,
                     BLOCKS_PER_SPLIT=4, HAS_BIAS=False, INTERPRET=False, X_PAIRS=False, EVEN_K=True,
                     PTX_GROUPS=ptx_groups, PTX_ASM=decode_asm(bits, mode, False) if ptx_groups else "",
                     PTX_CONSTRAINTS=constraints(bits, mode) if ptx_groups else "",
                     PTX_NATURAL=bool(ptx_groups) and g.ptx_natural(bits), WEIGHTS=weights,
                     PDL=PDL_OFF.value if trigger is None else TRIGGER_IDS[trigger],
                     UNROLL=2, HAS_ADDEND=False, NORM_PARTS=norm and weights == 1, ROW_SCALE=128 if norm else 0,
                     GLU=False)
    names = list(inspect.signature(gemv_kernel.fn).parameters)
    pointers = {name: "*i32" if name.startswith("codes") or name == "counter_ptr" else
                "*fp32" if name in ("ws_ptr", "parts_out_ptr", "parts_in_ptr") else "*fp16"
                for name in names if name.endswith("_ptr")}
    signature = {name: "constexpr" if name in constants else "fp32" if name == "eps" else pointers.get(name, "i32")
                 for name in names}
    # pointers and row lengths 16-byte aligned, as in real launches: the K loop's loads
    # then become cp.async copies (pipelined) as on the GPU
    aligned = {(names.index(name),): [["tt.divisibility", 16]] for name in names
               if name.endswith("_ptr") or name in ("K", "words_per_row", "kpad_words", "stride_xm")}
    source = triton.compiler.ASTSource(fn=gemv_kernel, signature=signature, constexprs=constants, attrs=aligned)
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                            options=dict(num_warps=2, num_stages=3, launch_pdl=trigger is not None))
    lines = kernel.asm["ptx"].splitlines()

    def first(predicate):
        return next((i for i, line in enumerate(lines) if predicate(line)), None)

    def last(predicate):
        return max((i for i, line in enumerate(lines) if predicate(line)), default=None)

    return {"launch_pdl": kernel.metadata.launch_pdl,
            "wait": first(lambda line: "griddepcontrol.wait" in line),
            "launch_dependents": first(lambda line: "griddepcontrol.launch_dependents" in line),
            "first_global_access": first(lambda line: GLOBAL_ACCESS.match(line) is not None),
            # the K loop's weight and x copies (the split-K fix-up and the store use none)
            "last_copy": last(lambda line: COPY.match(line) is not None)}


if __name__ == "__main__":
    print(json.dumps(report(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:] == ["norm"])))
