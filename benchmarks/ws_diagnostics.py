"""What each part of the warp-specialized GEMM's K-block costs: times the kernel with parts
removed (results wrong on purpose, reported, not checked).  docs/NOTES-gemm.md v17.

Usage on a Hopper GPU::

    [FORMAT=int8-gc] DIAGS="0 1 2 4 3" PYTHONPATH=src python benchmarks/ws_diagnostics.py 57344x8192 8192x8192 \\
        -- 64 ws,64,256,64,-1,4 ws,64,128,64,-1,6 [--out results.json]

Variants as ``gemv_variants.py --kernel gemm``'s ``ws,...``.  DIAGS: bits of what a copy of
``gemm_gluon_ws`` leaves out, 0 being the kernel as it is: 1 the scale loads (constant
scales), 2 the MMA (each register operand folded into a sink by xor, summed once at the
end), 4 the decode (a constant operand), 8 the decode replaced by that of a chunk-permuted
layout (``_chunk_decode``: what the consumers' work would be with it; wrong weights here), 16
the split-K fix-up's loads of the other splits' partials (the last split stores its own
sum), 32 that and the partials' stores and the count (each split stores its own sum, racing),
64 the output's stores (issued, every lane masked off), 128 every K-block (each program
loads and multiplies nothing and stores zeros: what launching, setting up and ending a
program cost), 256 and 512 the loader's extra shared-memory reads of 32 and 64 KB a K-block
(``_extra_reads``; results right); 1024 adds (results right) halves of the consumer
warpgroups taking turns at the MMAs, a half's turn passed once its MMAs are done, 2048 the
same passed once they are issued (``_turns``; plans with overlap NONE, no shared K); for
stream-K plans, 4096 the shared tiles' fix-up (no partial stored, no count, no loads: each
item stores its own sum, racing), 8192 every work item's K-blocks (each item loads and
multiplies nothing; its fix-up and stores stay), 16384 the staging of each item's scales
(each block's loaded from global memory as unstaged plans do; results right), 32768 x's copies
(the loader copies only the codes, so the MMAs read whatever x a stage held: what x's traffic
from L2 costs), 262144 / 4194304 / 8388608 / 524288 the loader sleeping 200 / 100 / 400 / 1000
ns after each K-block's copies (results right).  A loader held to n K-blocks in flight is the
kernel's own ``GemmConfig.loads_ahead``, a variant's ``ahead`` field (v55's diags 1048576 /
2097152 / 16777216 did the same for 2 / 3 / 4).  FORMAT (default int4-g128): the weights' format.
(Diags 65536 and 131072 left out the cluster barriers at the partitions'
start and before exit until v52 split the first and dropped the second; docs/NOTES-gemm.md.)
The copy is made by text substitutions of the kernel's source, each asserted, so a change of the kernel
that breaks one fails loudly.
Timing as ``anybit bench``'s (graph-launched, cold L2): fp16 cuBLAS and every diag of a variant
take turns (until v55 each was timed alone, fp16 and then the kernel as it is first after a
shape's weights were made, and v55 found the first timing after that up to 15% slow).
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from anybit import bench
from anybit._matmul import gemm_gluon_ws

sys.path.insert(0, os.path.dirname(__file__))
import _weights  # noqa: E402
import gemv_variants  # noqa: E402

SOURCE = os.path.join(os.path.dirname(gemm_gluon_ws.__file__), "gemm_gluon_ws.py")
#: The consumers' decode call in the kernel's source (what diags 4 and 8 replace)
DECODE_CALL = ("        a = decode_operand(words, select, bias_word(zero, BITS), scale, mul, WG_ROWS, BLOCK_K, a_layout, "
               "BITS,\n                           not SCALE_AFTER, table, table_mode(MODE))")


#: Seconds each shape's fp16 product runs before its timings: without it, the first timings after
#: a shape's weights were made, on a GPU that had been idle, ran up to 15% slow (v55).
WARM_UP_SECONDS = 2.0


def _replace(text: str, old: str, new: str, count: int | None = None) -> str:
    found = text.count(old)
    if not found or (count is not None and found != count):
        raise SystemExit(f"the kernel's source changed: {old!r} found {found} times")
    return text.replace(old, new)


def _extra_reads(s: str, reads: int) -> str:
    """The loader partition reads ``reads`` x 2 KB of shared memory (a zeroed buffer of its
    own, 16-byte loads, a different 2 KB each) after issuing each K-block's copies, and adds
    their sum (0) to the next block's x coordinate, so none is left out: does shared memory's
    bandwidth bound the consumers (then they slow down by about what the bytes add)?"""
    layout = "gl.BlockedLayout([1, 4], [4, 8], [4, 1], [1, 0])"
    s = _replace(s, "_load_blocks(x_desc, code_src, x_bufs, codes, ready, empty,",
                 "_load_blocks(x_desc, code_src, x_bufs, codes, ready, empty, dummy,", 3)
    s = _replace(s, "    pdl_trigger(PDL, PDL_EARLY)\n    x_bufs, codes, ready, empty = ring\n",
                 "    pdl_trigger(PDL, PDL_EARLY)\n    x_bufs, codes, ready, empty, dummy = ring\n", 1)
    s = _replace(s, "(_loader, (x_desc, code_src, ring, work,",
                 "(_loader, (x_desc, code_src, (x_bufs, (c_bufs, c_bufs1, c_bufs2), ready, empty, dummy), work,", 4)
    s = _replace(s, "    for i in range(n_blocks):\n        s = (base + i) % STAGES\n",
                 "    sink = n_blocks * 0\n    for i in range(n_blocks):\n        s = (base + i) % STAGES\n", 1)
    s = _replace(s, "_tma_load(x_desc, [m0, k], ready.index(s), x_bufs.index(s))",
                 "_tma_load(x_desc, [m0, k + sink], ready.index(s), x_bufs.index(s))", 1)
    copies = "                          codes[p].index(s * BOXES + b), pred=b < sets if TAIL_SETS > 0 else True)\n"
    s = _replace(s, copies,
                 copies +
                 f"        t = gl.zeros([16, 32], gl.int32, {layout})\n"
                 f"        for r in gl.static_range({reads}):\n"
                 f"            t = t ^ dummy.index(r).load({layout})\n"
                 "        sink = gl.sum(gl.sum(t, 1), 0)\n", 1)
    s = _replace(s, "    fence_async_shared()\n\n    base = 0\n",
                 f"    dummy = gl.allocate_shared_memory(gl.int32, [{reads}, 16, 32], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))\n"
                 f"    for r in gl.static_range({reads}):\n"
                 f"        dummy.index(r).store(gl.zeros([16, 32], gl.int32, {layout}))\n"
                 "    fence_async_shared()\n\n    base = 0\n", 1)
    return s


def _turns(s: str, issued: bool) -> str:
    """Halves of the consumer warpgroups (NUM_WG // 2 each; rows sets 0.. and ..NUM_WG - 1)
    take turns at the MMAs of each K-block: a half waits for its turn barrier (two more
    barriers after the ring's ``empty`` ones, counted NUM_WG // 2), issues the block's MMAs
    and passes the turn to the other half once they are done (``issued``: once issued).  Half
    0's turn of its first block is open from the start.  Overlap NONE only, no shared K."""
    s = _replace(s, "    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())\n",
                 "    empty = gl.allocate_shared_memory(gl.int64, [STAGES + 2, 1], mbarrier.MBarrierLayout())\n", 1)
    s = _replace(s, "        mbarrier.init(empty.index(s), count=NUM_WG // WG_K)  # each row set's warpgroup taking the block\n"
                 "    fence_async_shared()\n",
                 "        mbarrier.init(empty.index(s), count=NUM_WG // WG_K)  # each row set's warpgroup taking the block\n"
                 "    gl.static_assert(WG_K == 1 and NUM_WG % 2 == 0 and OVERLAP == NO_OVERLAP, 'turns: halves, NONE')\n"
                 "    mbarrier.init(empty.index(STAGES), count=NUM_WG // 2)\n"
                 "    mbarrier.init(empty.index(STAGES + 1), count=NUM_WG // 2)\n"
                 "    mbarrier.arrive(empty.index(STAGES), count=NUM_WG // 2)\n"
                 "    fence_async_shared()\n", 1)
    s = _replace(s, "staged=None, STAGED: gl.constexpr = False):",
                 "staged=None, STAGED: gl.constexpr = False, HALF: gl.constexpr = 1):", 1)
    s = _replace(s, "SCALE_AFTER, 1, staged, STAGED)\n", "SCALE_AFTER, 1, staged, STAGED, NUM_WG // 2)\n", 1)
    s = _replace(s, "SCALE_AFTER, WG_K, staged, STAGED)\n", "SCALE_AFTER, WG_K, staged, STAGED, NUM_WG // 2)\n", 1)
    mine, other = "empty.index(STAGES + WG // HALF)", "empty.index(STAGES + 1 - WG // HALF)"
    give = f"mbarrier.arrive({other}, count=1)"
    # the first block of an odd count (MMA waited for at once)
    s = _replace(s, "        acc = warpgroup_mma(a, x_bufs.index(base % STAGES).permute((1, 0)), acc)\n",
                 f"        mbarrier.wait({mine}, 0)\n"
                 "        acc = warpgroup_mma(a, x_bufs.index(base % STAGES).permute((1, 0)), acc)\n"
                 f"        {give}\n", 1)
    for op, t in (("a1", "i"), ("a0", "i + 1")):
        stage = "u % STAGES" if op == "a1" else "(u + STEP) % STAGES"
        call = f"        acc = warpgroup_mma({op}, x_bufs.index({stage}).permute((1, 0)), acc, is_async=True)\n"
        wait = f"            acc, {op} = warpgroup_mma_wait(num_outstanding=0, deps=(acc, {op}))\n"
        s = _replace(s, call, f"        mbarrier.wait({mine}, ({t}) & 1)\n" + call
                     + (f"        {give}\n" if issued else ""), 1)
        if not issued:
            s = _replace(s, "        if OVERLAP == NO_OVERLAP:\n" + wait,
                         "        if OVERLAP == NO_OVERLAP:\n" + wait + f"            {give}\n", 1)
    return s


def diagnostic_kernel(diag: int):
    """A copy of ``gemm_gluon_ws_kernel`` without the parts ``diag`` names."""
    s = _weights.absolute_imports(open(SOURCE).read())
    if diag & 1:
        constant = "    return (rows * 0).to(gl.float16) + 0.01, rows * 0 + 8\n"
        s = _replace(s, "    return group_params(", constant + "    return group_params(", 1)
        s = _replace(s, "    region, rows, g0, srow = staged\n", "    region, rows, g0, srow = staged\n" + constant, 1)
    if diag & 4:
        s = _replace(s, DECODE_CALL,
                     "        a = gl.full([WG_ROWS, BLOCK_K], 1.0, gl.float16, a_layout)")
    if diag & 8:  # the consumers' decode of a chunk-permuted layout (benchmarks/_chunk_decode.py)
        s = _replace(s, "from anybit._matmul.gemm_gluon import (", "from _chunk_decode import SIXTEENTH, chunk_word_layout, chunk_words, "
                     "decode_chunks\nfrom anybit._matmul.gemm_gluon import (", 1)
        s = _replace(s, ".load(word_layout)\n",
                     ".load(chunk_word_layout(gl.to_linear_layout(a_layout, [WG_ROWS, BLOCK_K])))\n"
                     "        bias_lo, bias_hi, scale_words = chunk_words(scale, zero)\n", 1)
        s = _replace(s, DECODE_CALL,
                     "        a = decode_chunks(words, bias_lo, bias_hi, scale_words, mul, WG_ROWS, BLOCK_K, a_layout)", 1)
        s = _replace(s, "    mul = nibble_multiplier(params[3])", "    mul = SIXTEENTH + (params[3] >> 31)", 1)
    if diag & 48:  # split-K: the last split's loads of the others' partials left out (it stores its own)
        s = _replace(s, """                    total = _split_partial(mine, own, 0, pid_k, split_stride, VECTOR_STORE)
                    for part in gl.static_range(1, SPLIT_K):
                        total += _split_partial(mine, own, part, pid_k, split_stride, VECTOR_STORE)
""", "                    total = mine\n", 1)
    if diag & 32:  # split-K: no partial stored, no count: every split stores its own sum (racy)
        s = _replace(s, """                gl.store(own + pid_k * split_stride, mine)
                cta_barrier()
                arrived = gl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
                last = arrived == SPLIT_K - 1
""", "", 1)
    if diag & 64:  # the output's stores issued with every lane masked off
        s = _replace(s, "y, mask=out_mask)", "y, mask=out_mask & (offs_m < 0)[None, :])", 1)
    if diag & 128:  # no K-blocks: each program starts, stores zeros and ends
        s = _replace(s, "gl.minimum(k_blocks - kb0, BLOCKS_PER_SPLIT), pid_k)", "kb0 * 0, pid_k)", 1)
    if diag & (262144 | 524288 | 4194304 | 8388608):  # the loader sleeps after each K-block's copies (results right)
        copies = ("                      c_bufs.index(s * BOXES + b), pred=b < sets if TAIL_SETS > 0 else True)\n")
        ns = 200 if diag & 262144 else 1000 if diag & 524288 else 100 if diag & 4194304 else 400
        s = _replace(s, copies, copies + f"        gl.inline_asm_elementwise('nanosleep.u32 {ns};\\n\\tmov.u32 $0, 0;', "
                     "'=r', [], dtype=gl.int32, is_pure=False, pack=1)\n", 1)
    if diag & 768:  # shared-memory reads added by the loader partition, results unchanged
        s = _extra_reads(s, 16 * bool(diag & 256) + 32 * bool(diag & 512))
    if diag & 4096:  # stream-K: no fix-up of the shared tiles, each item stores its own sum (racy)
        s = _replace(s, "            done = ~shared  # a whole tile is stored at once\n            if shared:\n",
                     "            done = shared | ~shared\n            if shared & (pid < 0):\n", 1)
    if diag & 8192:  # stream-K: every item without its K-blocks (the fix-up and the stores stay)
        s = _replace(s, "            tile, kb0, n_blocks, _, _ = work_item(work, j)\n",
                     "            tile, kb0, n_blocks, _, _ = work_item(work, j)\n            n_blocks = n_blocks * 0\n", 2)
    if diag & 16384:  # stream-K: the items' scales not staged (each block's from global memory)
        s = _replace(s, "            if STAGED:\n                staged = _stage(scales_ptr, zeros_ptr, sbase, WG, row0,",
                     "            if False:\n                staged = _stage(scales_ptr, zeros_ptr, sbase, WG, row0,", 1)
        s = _replace(s, "STAGES, OVERLAP, BITS, SCALE_AFTER, 1, staged, STAGED)\n",
                     "STAGES, OVERLAP, BITS, SCALE_AFTER, 1, staged, False)\n", 1)
    if diag & 32768:  # no x copies: each stage expects and gets only its codes' bytes
        s = _replace(s, "mbarrier.expect(ready.index(s), X_BYTES + BOXES * C_BYTES)",
                     "mbarrier.expect(ready.index(s), BOXES * C_BYTES)", 1)
        s = _replace(s, "        _tma_load(x_desc, [m0, k], ready.index(s), x_bufs.index(s))\n", "", 1)
    if diag & 3072:  # halves of the consumer warpgroups taking turns at the MMAs (NONE plans; results right)
        s = _turns(s, issued=bool(diag & 2048))
    if diag & 2:
        for a in ("a", "a1", "a0"):
            s = _replace(s, f"acc = warpgroup_mma({a}, x_bufs.index(",
                         f"sink = sink ^ {a}.to(gl.int16, bitcast=True); unused_{a} = (x_bufs.index(")
        s = _replace(s, "acc, is_async=True)", ")", 2)
        s = _replace(s, ".permute((1, 0)), acc)\n", ".permute((1, 0)))\n", 1)
        s = _replace(s, "    first = n_blocks % 2\n",
                     "    first = n_blocks % 2\n"
                     "    sink = gl.zeros([WG_ROWS, BLOCK_K], dtype=gl.int16, layout=a_layout)\n", 1)
        s = _replace(s, "    return acc\n\n\n@gluon.jit\ndef _scaled(",
                     "    acc += gl.sum(gl.sum(sink.to(gl.float32), 1), 0)\n"
                     "    return acc\n\n\n@gluon.jit\ndef _scaled(", 1)
    return _weights.load_source(f"gemm_gluon_ws_diag{diag}", s).gemm_gluon_ws_kernel


def _warm_up(call, seconds: float = WARM_UP_SECONDS) -> None:
    """Run ``call`` for about ``seconds`` first (what ``anybit bench``'s bandwidth and matmul
    rate measurements do before its timings)."""
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(20):
            call()
        torch.cuda.synchronize()


def main() -> None:
    split = sys.argv.index("--")
    out = None
    if "--out" in sys.argv:
        out = sys.argv[sys.argv.index("--out") + 1]
        sys.argv = sys.argv[:sys.argv.index("--out")]
    shapes, m, variants = sys.argv[1:split], int(sys.argv[split + 1]), sys.argv[split + 2:]
    diags = [int(d) for d in os.environ.get("DIAGS", "0 1 2 4 3").split()]
    fmt = os.environ.get("FORMAT", "int4-g128")
    kernels = {d: diagnostic_kernel(d) for d in diags}
    original = gemm_gluon_ws.gemm_gluon_ws_kernel
    rows = []

    def with_kernel(diag, launch):
        """``launch`` with diag's kernel swapped in (the launcher imports it per call)."""
        def call():
            gemm_gluon_ws.gemm_gluon_ws_kernel = kernels[diag]
            try:
                return launch()
            finally:
                gemm_gluon_ws.gemm_gluon_ws_kernel = original
        return call

    for shape in shapes:
        n, k, qw, copies, w16 = _weights.weights(shape, fmt)
        x = torch.randn(m, k, device="cuda", dtype=torch.float16)
        ref = x.double() @ qw.dequantize(torch.float64).t()
        _warm_up(lambda: x @ w16[0].t())
        for text in variants:
            config = gemv_variants._config(text, m, n, k, "gemm")
            errs = {}
            for diag in diags:
                y = with_kernel(diag, gemv_variants._call(x, qw, config))().double()
                errs[diag] = ((y - ref).norm() / ref.norm()).item()
            # fp16 and every diag's graph take turns (``bench._median_replays_us``), so that none is
            # timed alone right after the weights are made (the first timing after that ran up to
            # 15% slow: docs/NOTES-gemm.md v55)
            sets = [[lambda i=i: x @ w16[i].t() for i in range(len(w16))]]
            sets += [[with_kernel(diag, gemv_variants._call(x, c, config)) for c in copies] for diag in diags]
            times = bench._median_replays_us(sets, 20)
            fp16_us = times[0] / len(w16)
            for diag, total in zip(diags, times[1:]):
                us = total / len(copies)
                print(f"{fmt} {n}x{k} M={m} {text:34s} diag {diag}: {us:8.2f} us ({fp16_us / us:4.2f}x fp16) "
                      f"err {errs[diag]:.1e}", flush=True)
                rows.append(dict(format=fmt, N=n, K=k, M=m, variant=text, diag=diag, us=us, fp16_us=fp16_us,
                                 rel_err=errs[diag]))
    if out:
        with open(out, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
