"""``anybit tune``: measure the plans for x with more than 32 rows on this GPU and
write the table the dispatcher reads (see ``anybit._matmul.tuning``).

For every (format, layer shape, m) point:

1. the candidates (``candidates.candidate_plans``: dequantize + cuBLAS, the GEMM
   kernel's tile, warp, stage and split-K settings, and on Hopper for 4-bit
   integer formats the two Gluon kernels', for 8-bit ones the warp-specialized one's)
   are ranked by the performance model (``perf_model``);
2. the model's first ``top``, its first Gluon plan, its first ``WS_MEASURED``
   warp-specialized Gluon plans, its first stream-K plan, its first ``CLUSTER_MEASURED``
   cluster-sum plans, its first ``SHARED_K_MEASURED`` plans of warpgroups sharing K
   (``GemmConfig.k_warpgroups``), its first ``TAIL_MEASURED`` with tail rows
   (``GemmConfig.tail_rows``), the heuristic's plan and the
   plan this GPU's tables already hold for the point
   (``gemm.default_plan``) are measured, and so are the first ``PACED_MEASURED``
   warp-specialized plans of those and the table's plan with their loader held to fewer
   K-blocks in flight (``candidates.paced``, ``GemmConfig.loads_ahead``), or every candidate
   with ``exhaustive``: each is first run
   ``VERIFY_LAUNCHES`` times on one input, and kept only if every launch gives
   the same bits and the result is within ``VERIFY_TOLERANCE`` (relative
   Frobenius norm) of the float32 product with the dequantized weight; then
   timed by the project's protocol (CUDA graph, weights cold in L2, median
   replay; ``anybit.bench``), fp16 cuBLAS in the same run;
3. the fastest verified plan becomes the point's table entry.

A tune stopped early keeps what it measured: ``checkpoint`` receives a report of the points
done so far (``TuneReport.complete`` False, the model not refitted) at most every
``CHECKPOINT_SECONDS``; ``anybit tune`` writes its table and report from it.

Before any point is timed, the kernels of every plan to measure are compiled by a pool of
processes (``precompile``), so the tuning process loads them from Triton's on-disk cache.

The report says how often the model's first choice was within 10% of the
fastest measured plan (with ``exhaustive``: of every candidate), and how often a
model fitted on the other layer shapes' measurements picks within 10% among a
point's measured plans.  Every tune refits the model's coefficients on its
measurements (``refit``) and stores them with the table for the next tuning on
this GPU.
"""

from __future__ import annotations

import datetime
import gzip
import json
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__, bench
from ._matmul import candidates as space
from ._matmul import gemm as gm
from ._matmul import perf_model as pm
from ._matmul import tuning
from ._matmul.gemv import MAX_M, cuda_index, sm_count
from .formats import parse_format
from .quantized import QuantizedWeight, quantize

#: Rows of x tuned by default: one per range the lookup serves (33-64, .., > 1024).
DEFAULT_M = (64, 128, 256, 1024, 4096)
#: Launches per candidate that must agree bit for bit before it is timed.
VERIFY_LAUNCHES = 6
VERIFY_TOLERANCE = 3e-3
#: A model pick within this factor of the fastest measured plan counts as a hit.
HIT_FACTOR = 1.10
#: The model's first this many warp-specialized plans are measured at every point besides its
#: overall top (the model has no correction for them until an exhaustive tune; two swizzles
#: of a tile rank alike, ``candidates.GLUON_WS_SWIZZLES``).
WS_MEASURED = 4
#: The model's first this many plans that sum split-K partials in a cluster are measured at
#: every point: whether a cluster of 2, 4 or 8 CTAs fits a wave depends on how the GPU's SMs
#: group, which the model does not know (docs/NOTES-gemm.md v34).
CLUSTER_MEASURED = 2
#: The model's first this many plans whose warpgroups share K (``GemmConfig.k_warpgroups``)
#: are measured at every point, for each count of such warpgroups (their class corrections
#: start at 1).
SHARED_K_MEASURED = 2
#: The model's first this many plans with tail rows (``GemmConfig.tail_rows``) are measured at
#: every point that has them (their class corrections start at 1).
TAIL_MEASURED = 1
#: The first this many warp-specialized plans measured at a point, and the table's plan, are
#: also measured with their loader held to fewer K-blocks in flight (``candidates.paced``; the
#: model ranks them by their own class correction, which starts at 1).
PACED_MEASURED = 1
#: Most processes ``precompile`` starts by default.  Each holds a CUDA context and one launch's
#: operands (up to 2 GB: a 57344 x 8192 weight's fp16 scratch copy with its x and output).
MAX_COMPILE_WORKERS = 16
#: Least time between two of ``tune``'s partial reports (each rewrites the table and the report).
CHECKPOINT_SECONDS = 10.0

DEFAULT_MODEL = "llama-3.1-8b"
#: Linear-layer shapes (out_features, in_features) of known models, without lm_head.
PRESETS: dict[str, tuple[tuple[int, int], ...]] = {
    # hidden 4096, 32 query / 8 key-value heads of 128, MLP 14336
    "llama-3.1-8b": ((4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)),
    # hidden 576, 9 query / 3 key-value heads of 64, MLP 1536
    "smollm2-135m": ((576, 576), (192, 576), (1536, 576), (576, 1536)),
}


def model_shapes(model: str) -> list[tuple[int, int]]:
    """The distinct (out_features, in_features) of a model's linear layers, lm_head
    left out: a ``PRESETS`` name, or a transformers model directory / config.json
    (the model is built on the meta device, no weights read)."""
    if model in PRESETS:
        return list(PRESETS[model])
    path = Path(model)
    if not path.exists():
        raise ValueError(f"model {model!r} is neither a preset ({', '.join(PRESETS)}) nor a path to a "
                         "transformers model directory or config.json")
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(path.parent if path.is_file() else path))
    with torch.device("meta"):
        built = AutoModelForCausalLM.from_config(config)
    shapes = {}
    for name, module in built.named_modules():
        if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head"):
            shapes[(module.out_features, module.in_features)] = None
    return list(shapes)


@dataclass
class Measured:
    """One candidate at one point: the model's time, and the measured one (None:
    not measured; NaN: refused by the check, see ``error``); ``ranked`` False for a plan
    measured besides the model's ranking (the heuristic's, where its kernel is not ranked),
    which is never the model's pick."""

    plan: gm.Plan
    model_us: float
    us: float | None = None
    error: str | None = None
    ranked: bool = True

    def to_dict(self) -> dict:
        return {**self.plan.to_dict(), "model_us": self.model_us, "us": self.us, "error": self.error,
                "ranked": self.ranked}

    @classmethod
    def from_dict(cls, data: dict) -> Measured:
        """Inverse of ``to_dict`` (reports written before ``ranked`` existed: True)."""
        own = ("model_us", "us", "error", "ranked")
        plan = gm.Plan.from_dict({key: value for key, value in data.items() if key not in own})
        return cls(plan, data["model_us"], data["us"], data["error"], data.get("ranked", True))


@dataclass
class Point:
    format: str
    n: int
    k: int
    m: int
    fp16_us: float
    candidates: list[Measured] = field(default_factory=list)

    def measured(self) -> list[Measured]:
        return [c for c in self.candidates if c.us is not None and c.us == c.us]

    def best(self) -> Measured | None:
        return min(self.measured(), key=lambda c: c.us, default=None)

    def model_pick(self) -> Measured:
        return min((c for c in self.candidates if c.ranked), key=lambda c: c.model_us)

    def hit(self) -> bool | None:
        """Whether the model's first choice measured within HIT_FACTOR of the best
        (None when it failed its check or was not measured)."""
        pick, best = self.model_pick(), self.best()
        if best is None or pick.us is None or pick.us != pick.us:
            return None
        return pick.us <= HIT_FACTOR * best.us


@dataclass
class TuneReport:
    table: tuning.TunedTable
    points: list[Point]
    exhaustive: bool
    seconds: float
    fitted: pm.ModelParams | None = None
    #: (hits, points) of a model fitted without each point's layer shape, picking among the
    #: point's measured candidates (all of them when exhaustive)
    cross_validated: tuple[int, int] | None = None
    #: False for a partial report of the points measured so far (``tune``'s ``checkpoint``)
    complete: bool = True

    def hit_rate(self) -> tuple[int, int]:
        """(hits, points): the ranking model's first choice within HIT_FACTOR of the
        fastest measured plan, with the coefficients tuning started with."""
        hits = [p.hit() for p in self.points]
        return sum(1 for h in hits if h), sum(1 for h in hits if h is not None)

    def to_json(self) -> str:
        return json.dumps({
            "env": {"gpu": self.table.gpu, "sms": self.table.sms, "triton": self.table.triton,
                    "torch": self.table.torch, "anybit": self.table.anybit, "date": self.table.date},
            "hw": self.table.hw, "exhaustive": self.exhaustive, "complete": self.complete, "seconds": self.seconds,
            "model": None if self.table.model is None else self.table.model.to_dict(),
            "fitted": None if self.fitted is None else self.fitted.to_dict(),
            "hit_rate": list(self.hit_rate()),
            "cross_validated_hit_rate": None if self.cross_validated is None else list(self.cross_validated),
            "points": [{"format": p.format, "n": p.n, "k": p.k, "m": p.m, "fp16_us": p.fp16_us,
                        "candidates": [c.to_dict() for c in p.candidates]} for p in self.points],
        }, indent=1)


def write_report(report: TuneReport, path: str | Path) -> None:
    """``report`` as JSON at ``path`` (gzip where the path ends in ``.gz``), for ``read_report``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (report.to_json() + "\n").encode()
    path.write_bytes(gzip.compress(text, mtime=0) if path.name.endswith(".gz") else text)


def read_report(path: str | Path) -> tuple[list[Point], pm.Hardware]:
    """The points (every candidate: model time, measured time or error) and the GPU's
    measured rates of a report ``TuneReport.to_json`` wrote, for refitting the model
    offline (``benchmarks/refit_model.py``); a path ending in ``.gz`` is read as gzip."""
    raw = Path(path).read_bytes()
    data = json.loads(gzip.decompress(raw) if Path(path).name.endswith(".gz") else raw)
    points = []
    for p in data["points"]:
        candidates = [Measured.from_dict(c) for c in p["candidates"]]
        points.append(Point(p["format"], p["n"], p["k"], p["m"], p["fp16_us"], candidates))
    hw = pm.Hardware(data["env"]["sms"], data["hw"]["fp16_TFLOPs"], data["hw"]["copy_TBps"])
    return points, hw


def _runner(plan: gm.Plan, x: torch.Tensor, qw) -> Callable[[], torch.Tensor]:
    if plan.kernel is gm.Kernel.DEQUANT:
        return lambda: gm.dequantize_matmul(x, qw, None)
    if plan.kernel is gm.Kernel.GLUON:
        return lambda: gm.gemm_gluon(x, qw, None, plan.config)
    if plan.kernel is gm.Kernel.GLUON_WS:
        return lambda: gm.gemm_gluon_ws(x, qw, None, plan.config)
    return lambda: gm.gemm(x, qw, None, plan.config)


def _check(plan: gm.Plan, x: torch.Tensor, qw, reference: torch.Tensor) -> str | None:
    """Why ``plan`` may not be used (launches disagree, or the result is off), or None."""
    run = _runner(plan, x, qw)
    outputs = [run() for _ in range(VERIFY_LAUNCHES)]
    if not all(torch.equal(outputs[0], y) for y in outputs[1:]):
        return f"launches disagree ({VERIFY_LAUNCHES} launches of one input)"
    err = ((outputs[0].float() - reference).norm() / reference.norm()).item()
    if not err <= VERIFY_TOLERANCE:
        return f"relative error {err:.1e} > {VERIFY_TOLERANCE:.0e}"
    return None


def placeholder_weight(spec: str, n: int, k: int, device: torch.device) -> QuantizedWeight:
    """An (n, k) weight in format ``spec`` with fp16 scales, every tensor zero: the operands
    a launch needs to compile a plan, without quantizing anything."""
    qw = QuantizedWeight.empty(parse_format(spec), (n, k), torch.float16, device)
    for tensor in (qw.codes, *qw.params.values()):
        tensor.zero_()
    return qw


@dataclass(frozen=True)
class Launch:
    """One launch ``precompile`` compiles: a plan for an (m, k) x by (n, k) weight product."""

    format: str
    n: int
    k: int
    m: int
    plan: gm.Plan

    def label(self) -> str:
        return f"{self.plan.label()} for {self.format} {self.n}x{self.k} M={self.m}"


def _compile_plans(device: torch.device, launches: Sequence[Launch]) -> list[str]:
    """In a ``precompile`` worker: launch each plan once on zeros, which
    compiles its kernel into Triton's on-disk cache.  Returns what failed (the tuner's own
    launch of the plan meets the same failure and reports it)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    failed = []
    for launch in launches:
        try:
            _runner(launch.plan, torch.zeros(launch.m, launch.k, dtype=torch.float16, device=device),
                    placeholder_weight(launch.format, launch.n, launch.k, device))()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        except Exception as e:  # noqa: BLE001 - reported, and raised again by the tuner's launch
            failed.append(f"{launch.label()}: {type(e).__name__}: {e}")
    return failed


def compile_workers() -> int:
    """``precompile``'s default number of processes: one per CPU core this process may
    use, at most MAX_COMPILE_WORKERS."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, MAX_COMPILE_WORKERS))


#: What a ``precompile`` process runs (``python -c``).
_WORKER_CODE = f"from {__name__} import _compile_worker; _compile_worker()"


def precompile(launches: Sequence[Launch], device: torch.device,
               workers: int | None = None, log: Callable[[str], None] = print) -> float:
    """Compile the kernels of these launches in ``workers`` processes
    (default ``compile_workers()``; 0 or 1: none, each kernel compiles at its first launch),
    so that the tuner's launches load them from Triton's on-disk cache instead of compiling
    one after another.  Triton compiles a kernel for each plan's tile settings, for
    whether n, k and m are multiples of 16 and for the K-blocks of each split (but for the
    warp-specialized kernel's stream-K plans), so the launches of one plan go to one worker,
    which compiles the kernel once per such key and launches it for every shape.  Nothing timed runs meanwhile.  The workers are fresh interpreters
    (``python -c``, this ``anybit`` first on their path), so a caller's script needs no
    ``__main__`` guard.  Returns the seconds taken."""
    workers = compile_workers() if workers is None else workers
    if workers < 0:
        raise ValueError(f"workers={workers}; accepted: >= 0 (0: compile at first launch)")
    launches = list(dict.fromkeys(launches))
    groups: dict[tuple[str, gm.Plan], list[Launch]] = {}
    for launch in launches:
        groups.setdefault((launch.format, launch.plan), []).append(launch)
    workers = min(workers, len(groups))
    if workers <= 1:
        return 0.0
    import queue
    import threading

    from tqdm.auto import tqdm

    if device.type == "cuda":
        device = torch.device("cuda", cuda_index(device))
    start = time.perf_counter()
    todo: queue.SimpleQueue = queue.SimpleQueue()
    # the groups with the most launches first, so that the last to finish are short
    for group in sorted(groups.values(), key=len, reverse=True):
        todo.put(group)
    failed: list[str] = []
    progress = tqdm(total=len(groups), desc="compiling", unit="plan")
    lock = threading.Lock()

    def feed(worker: subprocess.Popen) -> None:
        group = None
        try:
            pickle.dump(device, worker.stdin)
            while True:
                try:
                    group = todo.get_nowait()
                except queue.Empty:
                    break
                pickle.dump(group, worker.stdin)
                worker.stdin.flush()
                result = pickle.load(worker.stdout)
                with lock:
                    failed.extend(result)
                    progress.update()
            worker.stdin.close()
        except (EOFError, OSError, pickle.UnpicklingError):
            # not put back for another worker, which it could bring down too
            where = f" compiling {group[0].plan.label()} for {group[0].format}" if group else ""
            with lock:
                failed.append(f"a compiling process exited with code {worker.wait()}{where}")
        worker.wait()

    path = os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])
    command = [sys.executable, "-c", _WORKER_CODE]
    threads = [threading.Thread(target=feed, args=(subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": path}),))
        for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    progress.close()
    seconds = time.perf_counter() - start
    log(f"compiling {len(groups)} plans for {len(launches)} launches took {seconds:.0f} s "
        f"on {workers} processes" + (f"; {len(failed)} failed, first: {failed[0]}" if failed else ""))
    return seconds


def _compile_worker() -> None:
    """A ``precompile`` process: reads a pickled device from stdin, then pickled lists of
    launches, answering each with ``_compile_plans``'s list of failures, until stdin closes.
    Anything printed goes to stderr: stdout carries only the answers."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    device = pickle.load(sys.stdin.buffer)
    while True:
        try:
            launches = pickle.load(sys.stdin.buffer)
        except EOFError:
            return
        pickle.dump(_compile_plans(device, launches), answers)
        answers.flush()


def _incumbent(tables: Sequence[tuning.TunedTable], spec: str, n: int, k: int, m: int) -> gm.Plan | None:
    """The plan the first of ``tables`` with an entry for exactly this point holds, or None."""
    for table in tables:
        for entry in table.entries:
            if (entry.format, entry.n, entry.k, entry.m) == (spec, n, k, m):
                return entry.plan
    return None


def _model_params(tables: Sequence[tuning.TunedTable]) -> pm.ModelParams:
    """The coefficients stored with the first of this GPU's ``tables`` (``tuning.tables_for``)
    that has them, else the defaults."""
    for table in tables:
        if table.model is not None:
            return table.model
    return pm.ModelParams()


def _choose(spec: str, n: int, k: int, m: int, sms: int, device: torch.device, hw: pm.Hardware,
            params: pm.ModelParams, tables: Sequence[tuning.TunedTable], top: int,
            exhaustive: bool) -> tuple[Point, list[Measured]]:
    """A point's candidates ranked by the model, and those to measure: the model's first
    ``top``, its first Gluon plan, first WS_MEASURED warp-specialized plans, first stream-K
    plan, first CLUSTER_MEASURED cluster-sum plans and first SHARED_K_MEASURED plans of warpgroups
    sharing K for each count of them, first TAIL_MEASURED with tail rows, the heuristic's plan and
    the plan this GPU's tables hold (every candidate with ``exhaustive``).  Where the
    warp-specialized kernel computes the format, only ``candidates.MODEL_KERNELS``' plans are ranked
    (``candidates.model_plans``, as the dispatcher ranks them for untuned points), unless
    ``exhaustive``."""
    problem, plans = space.format_plans(spec, m, n, k, sms, gm.hopper(device))
    if not exhaustive:
        plans = space.model_plans(plans) or plans
    ranked = pm.rank(problem, plans, hw, params)
    point = Point(spec, n, k, m, float("nan"), [Measured(plan, us) for us, plan in ranked])
    default = gm.default_plan(m, n, k, problem.group, problem.bits, sms)
    if all(c.plan != default for c in point.candidates):  # the heuristic's plan is measured whatever its kernel
        point.candidates.append(Measured(default, pm.predict_us(problem, default, hw, params), ranked=False))
    # the model's first choice of the Gluon kernel, its first WS_MEASURED of the
    # warp-specialized one and its first stream-K one too (their corrections start at 1)
    also = [c.plan for c in point.candidates if c.plan.kernel is gm.Kernel.GLUON][:1]
    also += [c.plan for c in point.candidates if c.plan.kernel is gm.Kernel.GLUON_WS][:WS_MEASURED]
    also += [c.plan for c in point.candidates if c.plan.config and c.plan.config.stream_k][:1]
    also += [c.plan for c in point.candidates if c.plan.config and c.plan.config.cluster_sum][:CLUSTER_MEASURED]
    also += [c.plan for c in point.candidates if c.plan.config and c.plan.config.tail_rows][:TAIL_MEASURED]
    for k_wg in sorted({c.plan.config.k_warpgroups for c in point.candidates if c.plan.config} - {1}):
        also += [c.plan for c in point.candidates if c.plan.config and c.plan.config.k_warpgroups == k_wg
                 ][:SHARED_K_MEASURED]
    # and the plan this GPU's tables hold for the point, so that a ranking the
    # model gets wrong cannot lose a plan measured best before
    incumbent = _incumbent(tables, spec, n, k, m)
    if incumbent is not None:
        also.append(incumbent)
        if all(c.plan != incumbent for c in point.candidates):
            point.candidates.append(Measured(incumbent, pm.predict_us(problem, incumbent, hw, params)))
    selected = [c for i, c in enumerate(point.candidates)
                if exhaustive or i < top or c.plan == default or c.plan in also]
    # the first PACED_MEASURED warp-specialized plans of those (every one with exhaustive) and the
    # table's plan, each also with its loader held to fewer K-blocks in flight
    bases = [c.plan for c in selected if c.plan.kernel is gm.Kernel.GLUON_WS][:None if exhaustive else PACED_MEASURED]
    if incumbent is not None:
        bases.append(incumbent)
    known = {c.plan for c in point.candidates}
    for plan in dict.fromkeys(filter(None, map(space.paced, bases))):
        if plan not in known:
            paced = Measured(plan, pm.predict_us(problem, plan, hw, params))
            point.candidates.append(paced)
            selected.append(paced)
    return point, selected


def tune(
    shapes: Sequence[tuple[int, int]],
    formats: Sequence[str] = ("int4-g128",),
    ms: Sequence[int] = DEFAULT_M,
    *,
    top: int = 4,
    exhaustive: bool = False,
    replays: int = 10,
    jobs: int | None = None,
    log: Callable[[str], None] = print,
    checkpoint: Callable[[TuneReport], None] | None = None,
    checkpoint_s: float | None = None,
) -> TuneReport:
    """Measure the candidates for every (format, shape, m) on the current CUDA device.

    Args:
        shapes: (out_features, in_features) of the layers.
        formats: format specs with a Triton kernel (e.g. ``int4-g128``).
        ms: rows of x, each > 32 (the decode kernel serves fewer).
        top: how many of the model's best candidates to measure (besides the heuristic's).
        exhaustive: measure every candidate (for the model's hit rate; slow).
        replays: graph replays per timing (median).
        jobs: processes compiling the plans to measure before any is timed
            (``precompile``; default: one per CPU core, at most MAX_COMPILE_WORKERS; 0: none,
            each plan compiles when first launched).
        checkpoint: called with a partial report (``complete`` False: the points measured so
            far, the table of their entries, the model as tuning started) after a point once
            ``checkpoint_s`` seconds (default ``CHECKPOINT_SECONDS``) passed since the last call
            or since timing began.

    Returns a ``TuneReport`` whose ``table`` is ready for ``tuning.write_table``.
    """
    if not torch.cuda.is_available():
        raise ValueError("anybit tune needs a CUDA device")
    for m in ms:
        if m <= MAX_M:
            raise ValueError(f"ms contains {m}; accepted: rows > {MAX_M} (the decode kernel's heuristic serves fewer)")
    if top < 1:
        raise ValueError(f"top={top}; accepted: >= 1")
    for spec in formats:
        if parse_format(spec).kernel_decode() is None:
            raise ValueError(f"format {spec} has no Triton kernel; accepted: integer and lookup-table formats")
    start = time.perf_counter()
    device = torch.device("cuda")
    props = torch.cuda.get_device_properties(device)
    gpu, sms, l2 = props.name, sm_count(device), props.L2_cache_size
    measured_hw = bench.measure_hw(device)
    hw = pm.Hardware(sms, measured_hw["fp16_TFLOPs"], measured_hw["copy_TBps"])
    arch = tuning.device_arch(device)
    tables = tuning.tables_for(gpu, sms, arch)
    params = _model_params(tables)
    log(f"{gpu}: copy {hw.copy_tbps:.2f} TB/s, fp16 {hw.fp16_tflops:.0f} TFLOP/s; "
        f"{'every candidate' if exhaustive else f'model top {top} + heuristic'} per point")
    chosen = {(spec, n, k, m): _choose(spec, n, k, m, sms, device, hw, params, tables, top, exhaustive)
              for n, k in shapes for spec in formats for m in ms}
    precompile([Launch(spec, n, k, m, c.plan) for (spec, n, k, m), (_, selected) in chosen.items() for c in selected],
               device, workers=jobs, log=log)
    from tqdm.auto import tqdm

    gen = torch.Generator(device=device).manual_seed(0)
    points: list[Point] = []

    def report(complete: bool) -> TuneReport:
        entries = tuple(tuning.TunedEntry(p.format, p.n, p.k, p.m, p.best().plan, p.best().us, p.fp16_us)
                        for p in points if p.best() is not None)
        fitted = cross_validated = None
        if complete and _observations(points):
            fitted = refit(points, hw, params)
            cross_validated = cross_validated_hits(points, hw, params)
        table = tuning.TunedTable(gpu, sms, tuning._triton_version() or "", torch.__version__, __version__,
                                  datetime.date.today().isoformat(), measured_hw, fitted or params, entries, arch)
        return TuneReport(table, list(points), exhaustive, time.perf_counter() - start, fitted, cross_validated,
                          complete)

    last_checkpoint = time.perf_counter()
    checkpoint_s = CHECKPOINT_SECONDS if checkpoint_s is None else checkpoint_s
    total = len(formats) * len(shapes) * len(ms)
    with tqdm(total=total, desc="tuning", unit="point") as progress:
        for n, k in shapes:
            w = torch.randn(n, k, dtype=torch.float16, device=device, generator=gen) * 0.02
            w16 = [w.clone() for _ in range(bench._copies(2 * n * k, l2))]
            for spec in formats:
                qw = quantize(w, spec)
                copies = [qw] + [bench._clone(qw) for _ in range(bench._copies(qw.nbytes, l2) - 1)]
                reference_w = qw.dequantize(torch.float32)
                for m in ms:
                    x = torch.randn(m, k, dtype=torch.float16, device=device, generator=gen)
                    reference = x.float() @ reference_w.t()
                    point, selected = chosen[spec, n, k, m]
                    timed = []
                    for cand in selected:
                        cand.error = _check(cand.plan, x, qw, reference)
                        if cand.error is not None:
                            cand.us = float("nan")
                            continue
                        timed.append(cand)
                    # fp16 and the candidates timed together, their replays taking turns (the
                    # same clocks for all: ``bench._median_replays_us``)
                    times = bench._median_replays_us(
                        [[lambda i=i: x @ w16[i].t() for i in range(len(w16))]]
                        + [[_runner(cand.plan, x, c) for c in copies] for cand in timed], replays)
                    point.fp16_us = fp16_us = times[0] / len(w16)
                    for cand, us in zip(timed, times[1:]):
                        cand.us = us / len(copies)
                    points.append(point)
                    best = point.best()
                    progress.update()
                    if checkpoint is not None and time.perf_counter() - last_checkpoint >= checkpoint_s:
                        checkpoint(report(False))
                        last_checkpoint = time.perf_counter()
                    if best is not None:
                        log(f"{spec} {n}x{k} M={m}: best {best.plan.label()} {best.us:.1f} us "
                            f"({fp16_us / best.us:.2f}x fp16), model's pick {point.model_pick().plan.label()}")
                del x, reference
            del w16, copies
            torch.cuda.empty_cache()
    return report(True)


def _problem(point: Point) -> pm.Problem:
    fmt = parse_format(point.format)
    return pm.Problem(point.m, point.n, point.k, fmt.bits, fmt.group_len(point.k))


def _observations(points: Sequence[Point]) -> list[pm.Observation]:
    return [pm.Observation(_problem(p), c.plan, c.us) for p in points for c in p.measured()]


def refit(points: Sequence[Point], hw: pm.Hardware, start: pm.ModelParams) -> pm.ModelParams:
    """The model fitted to these points' measurements (``pm.fit``), keeping ``start``'s
    corrections of the plan classes none of them measured: what the table stores, so the
    next tune ranks with what this one learned.  Without an exhaustive tune the
    measurements are the candidates the model ranked first (and the warp-specialized ones),
    so a class it never ranked high keeps its old correction."""
    fitted = pm.fit(_observations(points), hw, start)
    corrections = dict(start.corrections) | dict(fitted.corrections)
    return fitted.replace(corrections=tuple(sorted(corrections.items())))


def measured_pick_hits(points: Sequence[Point], hw: pm.Hardware, params: pm.ModelParams) -> tuple[int, int]:
    """(hits, points with measurements): the model with ``params`` picks among each point's
    measured candidates, a hit within HIT_FACTOR of the fastest of them."""
    hits = counted = 0
    for point in points:
        measured = point.measured()
        if not measured:
            continue
        pick = min(measured, key=lambda c: pm.predict_us(_problem(point), c.plan, hw, params))
        hits += pick.us <= HIT_FACTOR * min(c.us for c in measured)
        counted += 1
    return hits, counted


def cross_validated_hits(points: Sequence[Point], hw: pm.Hardware, start: pm.ModelParams) -> tuple[int, int]:
    """(hits, points) where the model is fitted on the other layer shapes' measurements
    and then picks among this point's measured candidates: how well a fitted model
    ranks a shape it has not seen."""
    hits = counted = 0
    for shape in dict.fromkeys((p.n, p.k) for p in points):
        train = [p for p in points if (p.n, p.k) != shape]
        if not train:
            continue
        shape_hits, shape_counted = measured_pick_hits([p for p in points if (p.n, p.k) == shape], hw,
                                                       pm.fit(_observations(train), hw, start))
        hits, counted = hits + shape_hits, counted + shape_counted
    return hits, counted


def held_out_hits(points: Sequence[Point], hw: pm.Hardware, start: pm.ModelParams,
                  formats: Sequence[str]) -> tuple[int, int]:
    """(hits, points) of ``formats``' points where the model is fitted on the other formats'
    measurements only and then picks among each point's measured candidates: how well a
    fitted model ranks a format it has not seen (what the first tune of a new format, or the
    dispatcher's plan for an untuned one, starts from)."""
    train = [p for p in points if p.format not in formats]
    test = [p for p in points if p.format in formats]
    if not train or not test:
        return 0, 0
    return measured_pick_hits(test, hw, pm.fit(_observations(train), hw, start))
