"""Print ptxas's report (-v) on the warp-specialized Gluon GEMM compiled for sm_90 (no GPU
needed: Triton emits the PTX, then its ptxas compiles it).

Usage: python tests/ptxas_report.py BLOCK_M BLOCK_N BLOCK_K STAGES OVERLAP NUM_WARPS [BITS [STREAM_K [SPLIT_K]]]
[--sass] [--ptx] [--pdl early|late] [--cluster] [--scale-after] [--k-warpgroups N] [--staged] [--zero-point]
[--tail-rows N] [--loads-ahead N] [--table | --row-table] [--group G]
(with the default consumer registers, symmetric codes of BITS bits (default 4) in groups of
G (default 128), K of 64 K-blocks, SPLIT_K splits (default 1), stream-K when STREAM_K is 1; NUM_WARPS as
``gemm.ws_warps`` gives it for 64 or 128 rows of W per consumer warpgroup).  With
``--sass``, the machine code (cuobjdump -sass) follows the report, with ``--ptx`` the PTX;
``--pdl`` compiles the kernel as a programmatic dependent with that trigger, ``--cluster`` with the
split-K sum through a cluster's shared memory (``GemmConfig.cluster_sum``), ``--scale-after`` with each
row's sum scaled once (one scale per row), ``--k-warpgroups 2`` with two consumer warpgroups per row set
sharing its K-blocks (``GemmConfig.k_warpgroups``; NUM_WARPS counts them), ``--tail-rows`` and
``--loads-ahead`` with those ``GemmConfig`` fields, ``--table`` / ``--row-table`` for 4-bit codes
looked up in one table (NF4) / a table per row (lut4).  The report ends with the
shared memory the kernel takes (Triton's count), and the output store is vectorized where
the launcher would vectorize it.  Run in a
process of its own: Triton's interpreter (TRITON_INTERPRET=1) cannot compile kernels."""

import inspect
import os
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource

from anybit._matmul import gemm as gm
from anybit._matmul.gemm_gluon_ws import gemm_gluon_ws_kernel
from anybit._matmul.decode_ptx import ROW_TABLE, TABLE
from anybit._matmul.gemv_triton import PDL_EARLY, PDL_LATE, PDL_OFF

PDL_IDS = {"off": PDL_OFF.value, "early": PDL_EARLY.value, "late": PDL_LATE.value}
MODES = {"table": TABLE, "row_table": ROW_TABLE}


def compile_ws(block_m: int, block_n: int, block_k: int, stages: int, overlap: int, num_warps: int, bits: int = 4,
               stream_k: bool = False, split_k: int = 1, pdl: str = "off", cluster: bool = False,
               scale_after: bool = False, k_warpgroups: int = 1, staged: bool = False, zero_point: bool = False,
               tail_rows: int = 0, loads_ahead: int = 0, table: str = "", group: int = 128):
    """The warp-specialized kernel compiled for sm_90 with these settings (Triton's compiled
    kernel: ``asm["ptx"]``, ``metadata``); ``scale_after``: its SCALE_AFTER (one scale per row);
    ``staged``: its STAGED (scales staged in shared memory); ``zero_point``: zero-point codes;
    ``tail_rows``: ``GemmConfig.tail_rows`` (its TAIL_SETS); ``loads_ahead``: its LOADS_AHEAD;
    ``table``: "table" or "row_table" for those decode modes; ``group``: its GROUP."""
    config = gm.GemmConfig(block_m, block_n, block_k, split_k, num_warps, stages, stream_k=bool(stream_k),
                           cluster_sum=cluster, k_warpgroups=k_warpgroups, tail_rows=tail_rows,
                           loads_ahead=loads_ahead)
    gm.check_gluon_ws_config(config)
    x_layout = gl.NVMMASharedLayout.get_default_for([block_m, block_k], gl.float16)
    rows = gm.ws_code_rows(block_n, gm.ws_wg_rows(config) if tail_rows else None)
    c_descs = [f"tensordesc<i32[{b[0]}, {b[1]}],{gl.NVMMASharedLayout.get_default_for(b, gl.int32)!r}>"
               for b in gm.ws_code_boxes(bits, rows, block_k)]
    constants = dict(GROUP=group, MODE=MODES[table] if table else 2 if zero_point else 0, STAGED=staged,
                     BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SWIZZLE=8, SPLIT_K=split_k,
                     BLOCKS_PER_SPLIT=gm.ws_blocks_per_split(config, 64), STAGES=stages, HAS_BIAS=False,
                     CONSUMER_REGS=gm.ws_consumer_regs(config), OVERLAP=overlap, WG_ROWS=gm.ws_wg_rows(config),
                     BITS=bits, STREAM_K=bool(stream_k), num_warps=4,
                     VECTOR_STORE=gm.ws_vector_store(config, bits), PDL=PDL_IDS[pdl],
                     CLUSTER=gm.ws_push_sum(config), SCALE_AFTER=scale_after, WG_K=k_warpgroups,
                     TAIL_SETS=tail_rows // gm.ws_wg_rows(config), LOADS_AHEAD=loads_ahead)
    pointers = dict(x_desc=f"tensordesc<fp16[{block_m}, {block_k}],{x_layout!r}>",
                    c_desc=c_descs[0], c_desc1=c_descs[1], c_desc2=c_descs[2], scales_ptr="*fp16",
                    zeros_ptr="*u8", bias_ptr="*fp16", table_ptr="*fp32", out_ptr="*fp16", ws_ptr="*fp32",
                    counter_ptr="*i32")
    names = list(inspect.signature(gemm_gluon_ws_kernel.fn).parameters)
    signature = {name: "constexpr" if name in constants else pointers.get(name, "i32") for name in names}
    # 16-byte aligned pointers and row counts, as the launches on real weights see them
    aligned = [name for name in names if name.endswith("_ptr") or name in ("N", "stride_sn", "srow", "stride_ym")]
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in aligned}
    source = GluonASTSource(fn=gemm_gluon_ws_kernel, signature=signature, constexprs=constants, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=4, launch_pdl=pdl != "off"))


def report(block_m: int, block_n: int, block_k: int, stages: int, overlap: int, num_warps: int, bits: int = 4,
           stream_k: bool = False, split_k: int = 1, sass: bool = False, ptx: bool = False,
           pdl: str = "off", cluster: bool = False, scale_after: bool = False, k_warpgroups: int = 1,
           staged: bool = False, zero_point: bool = False, tail_rows: int = 0, loads_ahead: int = 0,
           table: str = "", group: int = 128) -> str:
    compiled = compile_ws(block_m, block_n, block_k, stages, overlap, num_warps, bits, stream_k, split_k, pdl,
                          cluster, scale_after, k_warpgroups, staged, zero_point, tail_rows, loads_ahead, table, group)
    text = compiled.asm["ptx"]
    with tempfile.TemporaryDirectory() as tmp:
        with open(f"{tmp}/kernel.ptx", "w") as f:
            f.write(text)
        ptxas = get_ptxas(90).path
        done = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", f"{tmp}/kernel.ptx",
                               "-o", f"{tmp}/kernel.cubin"], capture_output=True, text=True, check=True)
        text = (text if ptx else "") + done.stdout + done.stderr + f"shared memory: {compiled.metadata.shared} bytes\n"
        if sass:
            cuobjdump = os.path.join(os.path.dirname(ptxas), "cuobjdump")
            text += subprocess.run([cuobjdump, "-sass", f"{tmp}/kernel.cubin"], capture_output=True, text=True,
                                   check=True).stdout
    return text


if __name__ == "__main__":
    argv = sys.argv[1:]
    pdl = argv.pop(argv.index("--pdl") + 1) if "--pdl" in argv else "off"
    k_warpgroups = int(argv.pop(argv.index("--k-warpgroups") + 1)) if "--k-warpgroups" in argv else 1
    tail_rows = int(argv.pop(argv.index("--tail-rows") + 1)) if "--tail-rows" in argv else 0
    loads_ahead = int(argv.pop(argv.index("--loads-ahead") + 1)) if "--loads-ahead" in argv else 0
    group = int(argv.pop(argv.index("--group") + 1)) if "--group" in argv else 128
    args = [arg for arg in argv if not arg.startswith("--")]
    print(report(*(int(arg) for arg in args[:9]), sass="--sass" in argv, ptx="--ptx" in argv, pdl=pdl,
                 cluster="--cluster" in argv, scale_after="--scale-after" in argv, k_warpgroups=k_warpgroups,
                 staged="--staged" in argv, zero_point="--zero-point" in argv, tail_rows=tail_rows,
                 loads_ahead=loads_ahead, table="table" if "--table" in argv else "row_table" if "--row-table" in argv
                 else "", group=group))
