"""An analytic time model of the GEMM-path plans, used to rank candidates before
measuring them (``anybit tune``), and by the dispatcher for points that no measured
table holds on a GPU that has one (``tuning.model_plan``).

Plans (``Plan``): the Triton GEMM kernel with a ``GemmConfig``, or the Triton
dequantize kernel followed by cuBLAS.  For a product of x (m, k) and W (n, k)
of ``bits``-bit codes, the GEMM kernel's time is modelled as::

    programs   = ceil(m / bm) * ceil(n / bn) * split
    (cluster sum: waves of whole clusters on CLUSTER_SM_SHARE of the SMs)
    resident   = CTAs per SM (registers, shared memory, warps; see _resident; the
                 warp-specialized kernel: 1, its registers fill the SM)
    (stream-K: one program per SM, one wave, each with ceil(tiles * K-blocks / SMs) K-blocks)
    (tail rows: the whole waves, then the tail programs' waves at tail_rows / bn of a wave's time)
    per K-block of one program, in SM cycles:
        mma    = bn * bm * bk / (fp16 FMA per SM per cycle)        tensor cores
        issue  = (bn * bk * instr_per_weight * decode_cost(bits) + bm * bk * instr_per_x) / 128
                 (thread instructions; 4 schedulers x 32 lanes per cycle; decode_cost: codes
                 of other widths than 4 and 8 bits take more instructions a weight)
    a wave of `resident` programs per SM runs its K-blocks at
        max(resident * (mma + issue), (latency + mma + issue) / k_warpgroups,
            load_latency / (stages - 1))                          cycles each
        (mma + issue: a consumer decodes a block's weights, then multiplies, and the
        decode of one warpgroup hides little under another's MMAs (docs/NOTES-gemm.md
        v46, v59); k_warpgroups: warpgroups of a row set taking turns at its K-blocks,
        so that many blocks' chains in flight at once)
    time = waves * K-blocks per program * that / clock
           + split-K fix-up (fp32 partials written and read; through a cluster's shared
             memory CLUSTER_FIXUP_SHARE of that; stream-K: two tiles a program where the
             last wave is partial) + launch
    and never less than the bytes moved / copy bandwidth.

The dequantize path costs its bytes (codes read, W written in x's dtype) at
``dequant_efficiency`` of the copy bandwidth, then cuBLAS at the larger of its
FLOPs at the fp16 rate and its bytes at the copy bandwidth.

The named coefficients (``ModelParams``) were fitted to H200 measurements
(``fit``; ``anybit tune --exhaustive`` refits them per GPU and stores them
with the tuned table).  The model only has to order candidates; how often
its first choice is within 10% of the measured best is what ``anybit tune``
reports.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .gemm import GemmConfig, Kernel, Plan, ws_tail_layout
from .ws_settings import decode_cost

#: Fallback clock for the cycle terms (SM clock under load on H100/H200-class parts).
DEFAULT_CLOCK_GHZ = 1.75
#: The split-K fix-up's share left when the partials are summed through a cluster's shared
#: memory (``GemmConfig.cluster_sum``): 0.5-1.1 against 1.4-4 us a launch in the probe
#: (docs/NOTES-gemm.md v32); a plan class's correction learns the rest.
CLUSTER_FIXUP_SHARE = 0.25
#: Share of the SMs that clusters of 2, 4 or 8 CTAs (one a SM) fill at once: a cluster's CTAs
#: run in one GPC, and GPCs of SM counts not a multiple of 4 leave SMs over.  Fitted to the
#: v35 tunes (132 SMs: 32 clusters of 4 ran in two waves, 64 of 2 in one; 4 of 8 on 120 SMs
#: give the cross-validated hits the most); docs/NOTES-gemm.md v35.
CLUSTER_SM_SHARE = {2: 1.0, 4: 120 / 132, 8: 120 / 132}


@dataclass(frozen=True)
class Hardware:
    """What the model needs of a GPU.  ``fp16_tflops`` and ``copy_tbps`` are
    measured rates (``bench.measure_hw``), not datasheet peaks."""

    sms: int
    fp16_tflops: float
    copy_tbps: float
    clock_ghz: float = DEFAULT_CLOCK_GHZ
    regs_per_sm: int = 65536
    smem_per_sm: int = 227 * 1024
    max_warps_per_sm: int = 64

    @property
    def fma_per_sm_cycle(self) -> float:
        return self.fp16_tflops * 1e12 / 2 / (self.sms * self.clock_ghz * 1e9)


@dataclass(frozen=True)
class ModelParams:
    """The model's coefficients (see the module docstring for where each enters)."""

    # defaults: fitted (``fit``, without corrections) to an H200 sweep of int4-g128 GEMM tiles (docs/NOTES-gemm.md v11)
    instr_per_weight: float = 9.8   # thread instructions per decoded weight (load, decode, scale, convert)
    instr_per_x: float = 1.3        # thread instructions per x element of a K-block (addressing, copies)
    latency: float = 950.0          # cycles of one K-block's dependent chain in one program
    load_latency: float = 1500.0    # cycles from a K-block's load to its use, hidden by num_stages - 1 blocks
    reg_base: float = 48.0          # registers per thread besides the accumulator and the weights
    launch_us: float = 6.0          # launch and ramp-up
    fixup: float = 2.0              # weight of the split-K fix-up's bytes
    dequant_efficiency: float = 0.8  # fraction of the copy bandwidth the dequantize kernel reaches
    #: measured / modelled time per plan class (``plan_class``), geometric means from ``fit``
    corrections: tuple[tuple[str, float], ...] = ()

    def replace(self, **changes) -> ModelParams:
        return dataclasses.replace(self, **changes)

    def correction(self, key: str) -> float:
        return dict(self.corrections).get(key, 1.0)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["corrections"] = dict(self.corrections)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelParams:
        """Inverse of ``to_dict``; unknown keys are refused."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model coefficients {sorted(unknown)}; accepted: {sorted(known)}")
        values = {k: float(v) for k, v in data.items() if k != "corrections"}
        corrections = tuple(sorted((str(k), float(v)) for k, v in data.get("corrections", {}).items()))
        return cls(**values, corrections=corrections)


@dataclass(frozen=True)
class Problem:
    """One product: x (m, k) @ W^T, W (n, k) of ``bits``-bit codes in groups of ``group``."""

    m: int
    n: int
    k: int
    bits: int
    group: int

    def weight_bytes(self) -> float:
        scales = 2 * self.n * max(1, self.k // max(1, min(self.group, self.k)))
        return self.n * self.k * self.bits / 8 + scales


def _resident(config: GemmConfig, bits: int, hw: Hardware, params: ModelParams) -> int:
    """CTAs per SM: limited by registers (accumulator + decoded weights + the rest per
    thread), by shared memory (x and code tiles per stage) and by warps."""
    threads = 32 * config.num_warps
    regs = config.block_n * config.block_m / threads + config.block_n * config.block_k / (2 * threads)
    regs = min(255, 8 * math.ceil((regs + params.reg_base) / 8))
    by_regs = hw.regs_per_sm // (regs * threads)
    stage = config.block_m * config.block_k * 2 + config.block_n * config.block_k * bits / 8
    by_smem = int(hw.smem_per_sm // (config.num_stages * stage))
    return max(1, min(by_regs, by_smem, hw.max_warps_per_sm // config.num_warps))


def gemm_us(problem: Problem, config: GemmConfig, hw: Hardware, params: ModelParams,
            one_per_sm: bool = False) -> float:
    """Modelled time of the GEMM kernel with ``config``, in microseconds; ``one_per_sm``:
    the kernel's registers fill an SM, so one program runs on it at a time."""
    m, n, k = problem.m, problem.n, problem.k
    tiles = -(-m // config.block_m) * -(-n // config.block_n)
    programs = tiles * config.split_k
    k_blocks = -(-(-(-k // config.block_k)) // config.split_k)
    resident = 1 if one_per_sm else _resident(config, problem.bits, hw, params)
    resident = min(resident, -(-programs // hw.sms))
    waves = -(-programs // (hw.sms * resident))
    if config.cluster_sum:  # whole clusters of split_k programs, on the SMs such clusters can use
        per_wave = max(1, int(hw.sms * resident * CLUSTER_SM_SHARE.get(config.split_k, 1.0)) // config.split_k)
        waves = -(-tiles // per_wave)
    if config.stream_k:  # one program per SM, an equal share of all the K-blocks each
        resident, waves, k_blocks = 1, 1, -(-tiles * k_blocks // hw.sms)
    if config.tail_rows:  # the whole waves, then the tail programs' wave(s) at their share of the rows
        full, programs = ws_tail_layout(config, m, n, hw.sms)
        whole = full * -(-m // config.block_m)
        per_wave = hw.sms * resident
        waves = -(-whole // per_wave) + -(-(programs - whole) // per_wave) * config.tail_rows / config.block_n
    mma = config.block_n * config.block_m * config.block_k / hw.fma_per_sm_cycle
    issue = (config.block_n * config.block_k * params.instr_per_weight * decode_cost(problem.bits)
             + config.block_m * config.block_k * params.instr_per_x) / 128
    per_block = max(resident * (mma + issue), (params.latency + mma + issue) / config.k_warpgroups,
                    params.load_latency / max(1, config.num_stages - 1))
    compute_us = waves * k_blocks * per_block / (hw.clock_ghz * 1e3)
    moved = problem.weight_bytes() + 2 * m * k + 2 * m * n
    memory_us = moved / (hw.copy_tbps * 1e6)
    fixup_us = 0.0
    if config.split_k > 1 or config.k_warpgroups > 1:  # each partial written and read once
        fixup_us = params.fixup * 8 * m * n * config.split_k * config.k_warpgroups / (hw.copy_tbps * 1e6)
        if config.cluster_sum or config.k_warpgroups > 1:  # through shared memory
            fixup_us *= CLUSTER_FIXUP_SHARE
    elif config.stream_k and tiles % hw.sms:  # two partial tiles per program, written and read
        fixup_us = params.fixup * 8 * 2 * hw.sms * config.block_m * config.block_n / (hw.copy_tbps * 1e6)
    return max(compute_us, memory_us) + fixup_us + params.launch_us


def dequant_us(problem: Problem, hw: Hardware, params: ModelParams) -> float:
    """Modelled time of dequantize-to-x's-dtype then cuBLAS, in microseconds."""
    m, n, k = problem.m, problem.n, problem.k
    dequant = (problem.weight_bytes() + 2 * n * k) / (params.dequant_efficiency * hw.copy_tbps * 1e6)
    cublas = max(2 * m * n * k / (hw.fp16_tflops * 1e6), 2 * (n * k + m * k + m * n) / (hw.copy_tbps * 1e6))
    return dequant + cublas + 2 * params.launch_us


def plan_class(problem: Problem, plan: Plan) -> str:
    """What a correction is learned per: the kernel, its tiles, warps and stages (not
    split-K, which the analytic terms model), stream-K or the cluster sum, and m's
    power-of-two bucket; e.g. ``gemm 64x64x64 4w4s m64``, ``gluon_ws 256x128x128 12w3s
    stream-k m256``, ``gluon_ws 64x128x64 12w6s cluster m64``, ``gluon_ws 64x64x128 12w6s
    kwg2 m64`` (warpgroups sharing K), ``gluon_ws 64x256x128 20w3s tail m64`` (tail rows),
    ``gluon_ws 64x128x128 12w6s cluster ahead4 m64`` (loads_ahead), ``dequant m1024``."""
    bucket = f"m{1 << max(0, problem.m - 1).bit_length()}"
    if plan.config is None:
        return f"{plan.kernel.value} {bucket}"
    c = plan.config
    stream_k = " stream-k" if c.stream_k else " cluster" if c.cluster_sum else ""
    stream_k += f" kwg{c.k_warpgroups}" if c.k_warpgroups > 1 else ""
    stream_k += " tail" if c.tail_rows else ""
    stream_k += f" ahead{c.loads_ahead}" if c.loads_ahead else ""
    return f"{plan.kernel.value} {c.block_m}x{c.block_n}x{c.block_k} {c.num_warps}w{c.num_stages}s{stream_k} {bucket}"


def analytic_us(problem: Problem, plan: Plan, hw: Hardware, params: ModelParams) -> float:
    """The analytic terms alone (no learned correction)."""
    if plan.kernel is Kernel.DEQUANT:
        return dequant_us(problem, hw, params)
    # the warp-specialized kernel sets its warpgroups' registers (setmaxnreg) to fill the SM's
    # 64K: one program per SM (docs/NOTES-gemm.md v31's profile; v35: cross-validated hits of
    # the v35 tunes 25 -> 41 of 60 on the H100, 27 -> 50 on the H200 against _resident's count)
    return gemm_us(problem, plan.config, hw, params, one_per_sm=plan.kernel is Kernel.GLUON_WS)


def predict_us(problem: Problem, plan: Plan, hw: Hardware, params: ModelParams) -> float:
    """Modelled time in microseconds: the analytic terms times the plan class's correction."""
    return analytic_us(problem, plan, hw, params) * params.correction(plan_class(problem, plan))


def rank(problem: Problem, plans: Iterable[Plan], hw: Hardware, params: ModelParams) -> list[tuple[float, Plan]]:
    """(modelled us, plan) sorted fastest first; ties keep the given order."""
    scored = [(predict_us(problem, plan, hw, params), i, plan) for i, plan in enumerate(plans)]
    scored.sort(key=lambda item: (item[0], item[1]))
    return [(us, plan) for us, _, plan in scored]


@dataclass(frozen=True)
class Observation:
    """A measured time of one plan on one problem (what ``fit`` learns from)."""

    problem: Problem
    plan: Plan
    us: float


#: Coefficients ``fit`` adjusts, besides the per-class corrections.
FITTED = ("instr_per_weight", "instr_per_x", "latency", "load_latency", "launch_us", "fixup", "dequant_efficiency")


def log_error(observations: Sequence[Observation], hw: Hardware, params: ModelParams) -> float:
    """Mean squared log ratio of modelled to measured time."""
    total = 0.0
    for obs in observations:
        total += math.log(predict_us(obs.problem, obs.plan, hw, params) / obs.us) ** 2
    return total / max(1, len(observations))


def fit(observations: Sequence[Observation], hw: Hardware, params: ModelParams = ModelParams(),
        rounds: int = 6) -> ModelParams:
    """Fit the model to measured times; deterministic.

    First a coordinate search over ``FITTED`` (multiplicative steps, shrinking
    each round) minimising ``log_error`` of the analytic terms, then one
    correction per plan class: the geometric mean of measured / analytic time
    over that class's observations (a small regression on the measured data:
    what the terms miss about a tile configuration at a size of m).
    """
    params = params.replace(corrections=())
    best = log_error(observations, hw, params)
    step = 2.0
    for _ in range(rounds):
        for name in FITTED:
            for factor in (step, 1 / step):
                value = getattr(params, name) * factor
                if name == "dequant_efficiency":
                    value = min(value, 1.0)
                trial = params.replace(**{name: value})
                err = log_error(observations, hw, trial)
                if err < best:
                    best, params = err, trial
        step = math.sqrt(step)
    logs: dict[str, list[float]] = {}
    for obs in observations:
        ratio = obs.us / analytic_us(obs.problem, obs.plan, hw, params)
        logs.setdefault(plan_class(obs.problem, obs.plan), []).append(math.log(ratio))
    corrections = tuple(sorted((key, math.exp(sum(v) / len(v))) for key, v in logs.items()))
    return params.replace(corrections=corrections)
