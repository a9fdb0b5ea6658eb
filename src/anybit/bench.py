"""``anybit bench``: the project's speed protocol (graph-launched, cold L2, ratio to fp16).

For each (N, K, M, format) point:

1. enough independent weight copies that their bytes exceed 4 x L2 (one for
   large layers), so every call reads its weights from device memory;
2. every call warmed up on a side stream, then one CUDA graph that calls the
   op once per copy;
3. the graph replayed ``replays`` times, each timed with CUDA events; the
   median replay time over the number of copies is the time per call;
4. fp16 ``x @ W.t()`` (cuBLAS) timed the same way in the same process, its
   graph and the formats' replayed in turn (``_median_replays_us``), and the
   installed peers timed the same way just before.

The floor is the larger of bytes / measured copy bandwidth (packed weights,
scales, x and y) and 2*M*N*K / measured fp16 matmul rate.  Results: one JSON
file per run (schema below), a printed table, and with ``plot`` a PNG.

JSON: ``{"env": {gpu, sms, l2_bytes, torch, triton, anybit, date}, "hw":
{copy_TBps, fp16_TFLOPs}, "rows": [{N, K, M, format, copies, floor_us, fp16_us,
anybit_us, <peer>_us ...}], "errors": [...]}``, times in microseconds per call.
"""

from __future__ import annotations

import datetime
import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__
from .matmul import matmul
from .quantized import QuantizedWeight, quantize

STANDARD_SHAPES = (
    (4096, 4096), (6144, 4096), (28672, 4096), (4096, 14336),
    (8192, 8192), (10240, 8192), (57344, 8192), (8192, 28672),
)
STANDARD_M = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)
#: How many times the per-copy bytes must exceed L2.
L2_FACTOR = 4


@dataclass
class BenchResult:
    env: dict
    hw: dict
    rows: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"env": self.env, "hw": self.hw, "rows": self.rows, "errors": self.errors}, indent=1)


def _median_replays_us(call_sets: list[list[Callable[[], object]]], replays: int) -> list[float]:
    """Median time of one replay of each of several graphs (graph i makes every call of
    ``call_sets[i]`` once), in microseconds.

    The graphs are replayed in turn, the first of each round rotating, so that all of them
    run under the same clocks: a GPU at its power limit lowers its clock over the first
    tens of milliseconds of load, so of two timings taken one after the other the first
    gets the faster clock (on an H200 at M = 4096, fp16 cuBLAS timed first ran 5-10%
    faster than the same call timed again after the kernel it was compared with)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for calls in call_sets:
            for _ in range(2):
                for call in calls:
                    call()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graphs = []
    for calls in call_sets:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for call in calls:
                call()
        graphs.append(graph)
    for graph in graphs:
        graph.replay()
    torch.cuda.synchronize()
    times: list[list[float]] = [[] for _ in graphs]
    for r in range(replays):
        for j in range(len(graphs)):
            i = (r + j) % len(graphs)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graphs[i].replay()
            end.record()
            end.synchronize()
            times[i].append(start.elapsed_time(end) * 1000)
    del graphs
    return [statistics.median(t) for t in times]


def _median_replay_us(calls: list[Callable[[], object]], replays: int) -> float:
    """Median time of one graph replay that makes every call once, in microseconds."""
    return _median_replays_us([calls], replays)[0]


def _time_per_call(make_call: Callable[[int], Callable[[], object]], copies: int, replays: int) -> float:
    calls = [make_call(i) for i in range(copies)]
    return _median_replay_us(calls, replays) / copies


def _eager_us(call: Callable[[], object], repeats: int = 10) -> float:
    call()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000)
    return statistics.median(times)


def measure_hw(device: torch.device) -> dict:
    """Copy bandwidth (2 GiB device-to-device, read + written) and fp16 matmul rate (8192^3).

    The copy is timed three ways and the fastest counts: a memcpy launched
    eagerly, the same inside a CUDA graph (a memcpy node, which measured
    slower on an H200), and an element-wise kernel (``torch.add(src, 0)``).
    """
    src = torch.randn(1 << 29, dtype=torch.float32, device=device)  # 2 GiB
    dst = torch.empty_like(src)
    copy_us = min(
        _eager_us(lambda: dst.copy_(src)),
        _time_per_call(lambda i: lambda: dst.copy_(src), 1, 10),
        _eager_us(lambda: torch.add(src, 0, out=dst)),
    )
    del src, dst
    a = torch.randn(8192, 8192, dtype=torch.float16, device=device)
    b = torch.randn(8192, 8192, dtype=torch.float16, device=device)
    mm_us = _time_per_call(lambda i: lambda: a @ b, 1, 10)
    return {"copy_TBps": 2 * (2 << 30) / copy_us / 1e6, "fp16_TFLOPs": 2 * 8192**3 / mm_us / 1e6}


def _copies(nbytes: int, l2_bytes: int) -> int:
    return max(1, math.ceil(L2_FACTOR * l2_bytes / nbytes))


def _clone(qw: QuantizedWeight) -> QuantizedWeight:
    params = {k: v.clone() for k, v in qw.params.items()}
    return QuantizedWeight(qw.format, qw.shape, qw.codes.clone(), params, qw.dtype)


def _torch_int4_peer(w: torch.Tensor, x: torch.Tensor, l2: int, replays: int) -> float:
    """torch's int4 weight-only kernel (group 128, bf16), as torchao's int4 path uses it."""
    n, k = w.shape
    wg = w.float().reshape(n, k // 128, 128)
    lo, hi = wg.amin(-1), wg.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-6)
    q = ((wg - lo[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.uint8).reshape(n, k)
    packed = (q[:, ::2] << 4 | q[:, 1::2]).contiguous()
    weight = torch.ops.aten._convert_weight_to_int4pack(packed, 8)
    zeros = lo + 8 * scale  # torch's int4 decode: (q - 8) * scale + zero
    sz = torch.stack([scale, zeros], -1).transpose(0, 1).contiguous().to(torch.bfloat16)
    xb = x.to(torch.bfloat16)
    copies = _copies(n * k // 2, l2)
    weights = [weight.clone() for _ in range(copies)]
    return _time_per_call(lambda i: lambda: torch.ops.aten._weight_int4pack_mm(xb, weights[i], 128, sz), copies, replays)


PEERS = {"torch_int4": _torch_int4_peer}


def run(
    formats: list[str],
    shapes: list[tuple[int, int]] = list(STANDARD_SHAPES),
    ms: list[int] = list(STANDARD_M),
    *,
    replays: int = 20,
    peers: bool = True,
    log: Callable[[str], None] = print,
) -> BenchResult:
    """Measure every (shape, M, format) point on the current CUDA device."""
    if not torch.cuda.is_available():
        raise ValueError("anybit bench needs a CUDA device")
    device = torch.device("cuda")
    props = torch.cuda.get_device_properties(device)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    env = {
        "gpu": props.name, "sms": props.multi_processor_count, "l2_bytes": props.L2_cache_size,
        "torch": torch.__version__, "triton": triton_version, "anybit": __version__,
        "date": datetime.date.today().isoformat(),
    }
    result = BenchResult(env, measure_hw(device))
    log(f"{props.name}: copy {result.hw['copy_TBps']:.2f} TB/s, fp16 {result.hw['fp16_TFLOPs']:.0f} TFLOP/s")
    l2 = props.L2_cache_size
    gen = torch.Generator(device=device).manual_seed(0)
    for n, k in shapes:
        w = torch.randn(n, k, dtype=torch.float16, device=device, generator=gen) * 0.02
        fp16_copies = _copies(2 * n * k, l2)
        w16 = [w.clone() for _ in range(fp16_copies)]
        qws = {}
        for fmt in formats:
            qw = quantize(w, fmt)
            copies = _copies(qw.nbytes, l2)
            qws[fmt] = [qw] + [_clone(qw) for _ in range(copies - 1)]
        for m in ms:
            x = torch.randn(m, k, dtype=torch.float16, device=device, generator=gen)
            peer_us = {}
            if peers:
                for name, peer in PEERS.items():
                    try:
                        peer_us[f"{name}_us"] = peer(w, x, l2, replays)
                    except Exception as err:  # a peer that fails is reported, never dropped
                        result.errors.append(f"{name} N={n} K={k} M={m}: {type(err).__name__}: {err}")
            # fp16 and every format that runs are timed together, their replays taking turns
            call_sets = {"fp16": [lambda i=i: x @ w16[i].t() for i in range(fp16_copies)]}
            for fmt, copies in qws.items():
                try:
                    matmul(x, copies[0])
                except Exception as err:
                    result.errors.append(f"anybit {fmt} N={n} K={k} M={m}: {type(err).__name__}: {err}")
                    continue
                call_sets[fmt] = [lambda qw=qw: matmul(x, qw) for qw in copies]
            times = dict(zip(call_sets, _median_replays_us(list(call_sets.values()), replays)))
            fp16_us = times["fp16"] / fp16_copies
            for fmt, copies in qws.items():
                qw = copies[0]
                nbytes = qw.nbytes + 2 * m * k + 2 * m * n
                floor_us = max(nbytes / (result.hw["copy_TBps"] * 1e6), 2 * m * n * k / (result.hw["fp16_TFLOPs"] * 1e6))
                us = times[fmt] / len(copies) if fmt in times else float("nan")
                row = {"N": n, "K": k, "M": m, "format": fmt, "copies": len(copies), "floor_us": floor_us,
                       "fp16_us": fp16_us, "anybit_us": us, **peer_us}
                result.rows.append(row)
                log(f"N={n:6d} K={k:6d} M={m:5d} {fmt:>10}: {us:9.2f} us, fp16 {fp16_us:9.2f} us, "
                    f"{fp16_us / us:5.2f}x fp16, {floor_us / us:6.1%} of floor")
        del w16, qws
        torch.cuda.empty_cache()
    return result


def geomeans(rows: list[dict], key: str = "anybit_us") -> dict[tuple[str, int], float]:
    """Geometric mean over shapes of fp16_us / key, per (format, M)."""
    groups: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        if key in row and row[key] == row[key]:  # skip NaN
            groups.setdefault((row["format"], row["M"]), []).append(row["fp16_us"] / row[key])
    return {k: math.exp(sum(map(math.log, v)) / len(v)) for k, v in groups.items()}


def write(result: BenchResult, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(result.to_json() + "\n")
    return path


def plot(result: BenchResult, path: str | Path) -> Path:
    """PNG of speedup over fp16 against M, one line per (shape, format)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    lines: dict[tuple, list[tuple[int, float]]] = {}
    for row in result.rows:
        lines.setdefault((row["format"], row["N"], row["K"]), []).append((row["M"], row["fp16_us"] / row["anybit_us"]))
    for (fmt, n, k), points in sorted(lines.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{fmt} {n}x{k}")
    ax.axhline(1.0, color="gray", linestyle="--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("M (rows of x)")
    ax.set_ylabel("speedup over fp16 cuBLAS")
    ax.set_title(f"anybit {result.env['anybit']} on {result.env['gpu']}")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
