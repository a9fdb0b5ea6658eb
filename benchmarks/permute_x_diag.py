"""What the warp-specialized kernel's PERMUTE_X costs (docs/NOTES-gemm.md v44): int4-g128 with the
tuned plan, timed with the decode by bytes (off), by nibble pairs with the loader permuting x
(full), the same without the permutation's shared-memory work (nowork: the waits, fence and
arrive kept; wrong results), without the consumers' wait for it (nowait: racy), and with the
permutation one block behind the copies (lag1).  Graph-launched, cold L2 (BENCH.md), two
rounds each, alternating.  Usage on a Hopper GPU: PYTHONPATH=src python benchmarks/permute_x_diag.py"""
import os, sys, statistics, json
import torch
sys.path.insert(0, "benchmarks"); sys.path.insert(0, "tests")
import _weights
from conftest import assert_matmul_close, unit_roundoff
import anybit
from anybit import bench
from anybit._matmul import gemm as gm, gemm_gluon_ws, tuning

src = _weights.absolute_imports(open(gemm_gluon_ws.__file__).read())
def sub(text, old, new):
    assert text.count(old) == 1, old
    return text.replace(old, new)
texts = {
    "full": src,
    "nowork": sub(src, "    permute_x(x_bufs.index(s), x_bufs.shape[1], x_bufs.shape[2], 4)  # the loader's 4 warps\n", ""),
    "nowait": sub(src, "        mbarrier.wait(xready.index(s), (u // STAGES) & 1)\n", ""),
    "lag1": sub(src, "    LAG: gl.constexpr = STAGES // 2\n", "    LAG: gl.constexpr = 1\n"),
}
kernels = {name: _weights.load_source(f"gemm_gluon_ws_{name}", t).gemm_gluon_ws_kernel for name, t in texts.items()}
orig_rule = gm.ws_permute_x
rows = []
for shape, m in [("4096x4096", 64), ("6144x4096", 64), ("28672x4096", 64), ("57344x8192", 64), ("8192x8192", 128)]:
    n, k, qw, copies, w16 = _weights.weights(shape, "int4-g128")
    plan = tuning.plan("int4-g128", n, k, m, qw.format.group_len(k), 4, qw.codes.device)
    x = torch.randn(m, k, device="cuda", dtype=torch.float16)
    fp16 = bench._time_per_call(lambda i: lambda: x @ w16[i].t(), len(w16), 20)
    def setv(v):
        if v == "off":
            gm.ws_permute_x = lambda c, b: False
            gemm_gluon_ws.gemm_gluon_ws_kernel = kernels["full"]
        else:
            gm.ws_permute_x = orig_rule
            gemm_gluon_ws.gemm_gluon_ws_kernel = kernels[v]
    times = {}
    for v in ["off", "full", "nowork", "nowait", "lag1"]:
        setv(v)
        y = anybit.matmul(x, copies[0])
        if v in ("off", "full", "lag1"):
            assert_matmul_close(y, x, qw, weight_roundoff=unit_roundoff(x.dtype))
        times[v] = []
    for r in range(2):
        for v in (["off", "full", "nowork", "nowait", "lag1"] if r == 0 else ["lag1", "nowait", "nowork", "full", "off"]):
            setv(v)
            times[v].append(bench._time_per_call(lambda i: lambda: anybit.matmul(x, copies[i]), len(copies), 20))
    med = {v: statistics.median(t) for v, t in times.items()}
    print(f"{shape} M={m} {plan.label()} fp16 {fp16:.2f} | " + " ".join(f"{v} {t:.2f}" for v, t in med.items()), flush=True)
    rows.append(dict(shape=shape, M=m, plan=plan.label(), fp16_us=fp16, times=times))
json.dump(rows, open(os.path.join(os.environ.get("OUT", "."), "perm_diag.json"), "w"), indent=1)
