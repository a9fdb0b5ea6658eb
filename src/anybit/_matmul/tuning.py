"""Per-GPU tables of measured plans for x with more than ``gemv.MAX_M`` rows, and
the lookup the dispatcher uses.

A table is a JSON file written by ``anybit tune`` (schema version
``SCHEMA_VERSION``)::

    {"schema": 1, "gpu": "NVIDIA H200", "sms": 132, "triton": "3.6.0",
     "torch": "...", "anybit": "...", "date": "2026-11-21",
     "arch": "sm_90",                         # optional: the GPU's compute capability
     "hw": {"copy_TBps": 4.23, "fp16_TFLOPs": 766.0},
     "model": {<perf_model.ModelParams fields>} or null,
     "entries": [{"format": "int4-g128", "n": 4096, "k": 4096, "m": 64,
                  "kernel": "gemm",           # or "dequant" (then "config": null)
                  "config": {"block_m": 64, "block_n": 64, "block_k": 64, "split_k": 4,
                             "num_warps": 4, "num_stages": 4, "swizzle": 8},
                  "us": 12.1, "fp16_us": 12.4}, ...]}

Lookup for a product of m rows of x with a weight of format F and shape (n, k):
the entries of (F, n, k) with the smallest ``m`` >= the product's m, or the
largest ``m`` when the product is larger than every tuned one; outside the tuned
range an entry serves only up to ``LOOKUP_REACH`` times its m away (a table whose
shape was tuned at M = 64 alone does not serve M = 4096 with a 64-row tile: the
next table, else the performance model's plan, does; docs/NOTES-gemm.md v59).

Where tables come from, first match wins per (format, n, k):

1. ``ANYBIT_TUNED``: a table file or a directory of them (``off``: no tables
   at all, the fallback below everywhere);
2. the user's cache, ``$XDG_CACHE_HOME/anybit/tuned`` (default
   ``~/.cache/anybit/tuned``), where ``anybit tune`` writes;
3. the tables shipped in ``anybit/_matmul/tuned``.

A table applies to a device when its ``gpu`` name and SM count are the
device's.  Tables measured with the installed Triton (major.minor) come first;
then those of other Triton versions, nearest version first, each with a
warning: their plans are launch settings the kernels take under any supported
Triton, but their speed was measured under another compiler (the shipped H200
table, measured with 3.6, gave int4-g128 1.31 / 0.96 / 0.84 / 0.92 / 0.89x
fp16 at M = 64 / 128 / 256 / 1024 / 4096 under Triton 3.7.1, the fallback below
0.98 / 0.61 / 0.56 / 0.80 / 0.91x; docs/NOTES-gemm.md v20).  ``anybit tune``
measures a table for the installed Triton.  A GPU with no table of its own takes
the tables of other GPUs of its compute capability (``arch``), with a warning:
the plans are launch settings any GPU of that capability runs (stream-K sizes
itself to the GPU's SMs), tuned for another one (the H100 table on an H200:
docs/NOTES-gemm.md v20).

A point no entry holds (a shape, format or group not tuned) on a Hopper GPU that
has tables: the performance model's first choice (``model_plan``), ranked with the
rates and coefficients those tables were measured with, for the formats the
warp-specialized kernel computes.  Elsewhere (an unknown GPU, formats only the
Triton kernels compute): ``gemm.default_plan``, the deterministic heuristic (the
GEMM kernel below ``DEQUANT_MIN_M`` rows with ``gemm_config``'s settings,
dequantize + cuBLAS from there on).

Tables are read when the first product needs a plan, never at import;
``clear_caches`` makes the next product read them again.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import candidates
from .candidates import MODEL_KERNELS  # noqa: F401 (the kernels model_plan ranks; tests use it as tuning.*)
from .gemm import Plan, default_plan
from .gemv import capability, cuda_index, sm_count
from .perf_model import Hardware, ModelParams, rank

SCHEMA_VERSION = 1
TABLE_ENV = "ANYBIT_TUNED"
SHIPPED_DIR = Path(__file__).with_name("tuned")


@dataclass(frozen=True)
class TunedEntry:
    """The measured best plan for one (format, n, k, m)."""

    format: str
    n: int
    k: int
    m: int
    plan: Plan
    us: float
    fp16_us: float

    def to_dict(self) -> dict:
        return {"format": self.format, "n": self.n, "k": self.k, "m": self.m, **self.plan.to_dict(), "us": self.us,
                "fp16_us": self.fp16_us}

    @classmethod
    def from_dict(cls, data: dict, where: str) -> TunedEntry:
        try:
            return cls(str(data["format"]), int(data["n"]), int(data["k"]), int(data["m"]), Plan.from_dict(data),
                       float(data["us"]), float(data["fp16_us"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: bad entry {data!r}: {err}") from None


@dataclass(frozen=True)
class TunedTable:
    """One GPU's measured plans (see the module docstring for the file format)."""

    gpu: str
    sms: int
    triton: str
    torch: str
    anybit: str
    date: str
    hw: dict
    model: ModelParams | None
    entries: tuple[TunedEntry, ...] = field(default=())
    arch: str = ""  #: compute capability of the GPU measured (``device_arch``); "" in older tables

    def to_json(self) -> str:
        data = {"schema": SCHEMA_VERSION, "gpu": self.gpu, "sms": self.sms, "triton": self.triton,
                "torch": self.torch, "anybit": self.anybit, "date": self.date, "hw": self.hw,
                "arch": self.arch, "model": None if self.model is None else self.model.to_dict(),
                "entries": [e.to_dict() for e in self.entries]}
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str, where: str = "tuned table") -> TunedTable:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not JSON ({err})") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA_VERSION:
            schema = data.get("schema") if isinstance(data, dict) else None
            raise ValueError(f"{where}: schema {schema!r} is not supported; accepted: {SCHEMA_VERSION}")
        try:
            model = None if data["model"] is None else ModelParams.from_dict(data["model"])
            header = (str(data["gpu"]), int(data["sms"]), str(data["triton"]), str(data["torch"]),
                      str(data["anybit"]), str(data["date"]), dict(data["hw"]))
            raw_entries = list(data["entries"])
            arch = str(data.get("arch", ""))
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise ValueError(f"{where}: missing or bad field ({err})") from None
        return cls(*header, model, tuple(TunedEntry.from_dict(e, where) for e in raw_entries), arch)

    def merged(self, newer: TunedTable) -> TunedTable:
        """This table with ``newer``'s entries added, replacing those of the same
        (format, n, k, m); ``newer``'s header."""
        keep = {(e.format, e.n, e.k, e.m): e for e in self.entries}
        keep.update({(e.format, e.n, e.k, e.m): e for e in newer.entries})
        entries = tuple(sorted(keep.values(), key=lambda e: (e.format, e.n, e.k, e.m)))
        return TunedTable(newer.gpu, newer.sms, newer.triton, newer.torch, newer.anybit, newer.date, newer.hw,
                          newer.model or self.model, entries, newer.arch or self.arch)


def read_table(path: str | Path) -> TunedTable:
    path = Path(path)
    return TunedTable.from_json(path.read_text(), str(path))


def write_table(table: TunedTable, path: str | Path, merge: bool = True) -> Path:
    """Write ``table`` to ``path``; with ``merge``, entries already in a table of the
    same GPU and Triton there are kept unless ``table`` replaces them."""
    path = Path(path)
    if merge and path.exists():
        old = read_table(path)
        if (old.gpu, old.sms, _minor(old.triton)) == (table.gpu, table.sms, _minor(table.triton)):
            table = old.merged(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table.to_json() + "\n")
    return path


def user_dir() -> Path:
    """Where ``anybit tune`` writes tables by default."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "anybit" / "tuned"


def table_file_name(gpu: str) -> str:
    """``NVIDIA H200`` -> ``nvidia-h200.json``."""
    slug = "".join(c if c.isalnum() else "-" for c in gpu.lower()).strip("-")
    return f"{'-'.join(filter(None, slug.split('-')))}.json"


def _minor(version: str | None) -> str:
    return ".".join((version or "").split(".")[:2])


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


@functools.cache
def installed_triton() -> str:
    """major.minor of the installed Triton ('' without one)."""
    return _minor(_triton_version())


def _sources() -> list[Path]:
    """Table files in lookup order (see the module docstring)."""
    setting = os.environ.get(TABLE_ENV, "").strip()
    if setting.lower() == "off":
        return []
    places = ([Path(setting)] if setting else []) + [user_dir(), SHIPPED_DIR]
    files = []
    for place in places:
        if place.is_file():
            files.append(place)
        elif place.is_dir():
            files.extend(sorted(place.glob("*.json")))
        elif place == Path(setting):
            raise ValueError(f"{TABLE_ENV}={setting!r}: no such file or directory (or 'off' for no tables)")
    return files


def device_arch(device: torch.device) -> str:
    """The compute capability tables are matched by across GPUs: ``sm_90`` for a Hopper
    GPU, ``cpu`` for the interpreter."""
    if device.type != "cuda":
        return "cpu"
    major, minor = capability(device)
    return f"sm_{major}{minor}"


def device_name(device: torch.device) -> str:
    """The name tables are keyed by: the CUDA device's name, ``cpu`` for the interpreter."""
    if device.type != "cuda":
        return "cpu"
    return _cuda_name(cuda_index(device))


@functools.lru_cache(maxsize=None)
def _cuda_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


@functools.lru_cache(maxsize=None)
def tables_for(gpu: str, sms: int, arch: str = "") -> tuple[TunedTable, ...]:
    """The tables that apply to a GPU (name, SM count, compute capability ``arch`` as
    ``device_arch`` gives it), in lookup order: its own, those measured with the installed
    Triton first, then the others, nearest Triton version first; with none of its own,
    those of other GPUs of the same ``arch`` (nearest Triton, then nearest SM count).  Each
    table not of this GPU and Triton comes with a warning.  Read once per process
    (``clear_caches`` re-reads)."""
    installed = installed_triton()
    own, foreign = [], []
    for path in _sources():
        table = read_table(path)
        if (table.gpu, table.sms) == (gpu, sms):
            own.append((path, table))
        elif arch and table.arch == arch:
            foreign.append((path, table))
    if own:
        chosen = own
    else:
        chosen = foreign
        for path, table in foreign:
            warnings.warn(f"no tuned table for {gpu} ({sms} SMs): {path}, measured on {table.gpu} ({table.sms} SMs, "
                          f"{arch}), serves it (run `anybit tune` to measure this GPU)", stacklevel=2)
    for path, table in chosen:
        if _minor(table.triton) != installed:
            warnings.warn(f"tuned table {path} was measured with Triton {table.triton}, the installed Triton is "
                          f"{installed or 'missing'}: used after any table of {installed or 'the installed one'} "
                          f"(run `anybit tune` to measure for this Triton)", stacklevel=2)
    order = sorted(chosen, key=lambda pt: (_version_distance(pt[1].triton, installed), abs(pt[1].sms - sms)))
    return tuple(table for _, table in order)


def _version_distance(version: str, installed: str) -> tuple[int, int]:
    """How far Triton ``version`` is from the ``installed`` major.minor: (major, minor) apart."""
    def parts(v: str) -> tuple[int, int]:
        numbers = [int(p) if p.isdigit() else 0 for p in _minor(v).split(".")] + [0, 0]
        return numbers[0], numbers[1]
    (a, b), (c, d) = parts(version), parts(installed)
    return abs(a - c), abs(b - d)


#: How far outside the M a table tuned a shape at its nearest entry still serves: up to this
#: factor above the largest tuned M and below the smallest (inside the tuned range the next
#: larger tuned M serves, however far: the default M of ``anybit tune`` are 4x apart at most).
LOOKUP_REACH = 2


def lookup(tables: tuple[TunedTable, ...], spec: str, n: int, k: int, m: int) -> Plan | None:
    """The tuned plan for m rows of x with a (n, k) weight of format ``spec``: of the first of
    ``tables`` whose entries for the shape serve m (the smallest tuned M >= m; the largest
    where m is above them all; within LOOKUP_REACH of m outside the tuned range), or None."""
    for table in tables:
        tuned = sorted((e for e in table.entries if (e.format, e.n, e.k) == (spec, n, k)), key=lambda e: e.m)
        if not tuned:
            continue
        above = next((e for e in tuned if e.m >= m), None)
        if above is None:  # larger than every tuned M
            if m <= LOOKUP_REACH * tuned[-1].m:
                return tuned[-1].plan
        elif above is not tuned[0] or above.m <= LOOKUP_REACH * m:
            return above.plan
    return None


def model_rows(m: int) -> int:
    """The rows of x ``model_plan`` ranks plans for: m rounded up to a power of two, at least
    64 (so that a process sees few distinct rankings whatever its batch sizes)."""
    return max(64, 1 << (m - 1).bit_length())


def model_plan(tables: tuple[TunedTable, ...], spec: str, n: int, k: int, m: int, sms: int,
               arch: str) -> Plan | None:
    """The performance model's first choice for a point no entry of ``tables`` holds (a shape,
    format or group not tuned on this GPU): the candidates of MODEL_KERNELS its kernels compute
    on a GPU of ``arch`` with ``sms`` SMs (``candidates.format_plans``) ranked at ``model_rows(m)`` rows
    with the measured rates and fitted coefficients of the first of ``tables`` that has them;
    None without such a table or for a format that only the Triton kernels compute (there
    the model was never checked against measurements; the heuristic serves).
    (docs/NOTES-gemm.md v57: eight untuned layer shapes on the H100, int4-g128 at 1.91 / 0.92 /
    0.96x fp16 for M = 64 / 256 / 4096 against the heuristic's 1.27 / 0.56 / 0.95x; 9 of 200
    points slower than with the heuristic, the worst 0.73 -> 0.52x: a tune measures them.)"""
    rated = next((t for t in tables if {"fp16_TFLOPs", "copy_TBps"} <= set(t.hw)), None)
    if rated is None or arch != "sm_90":
        return None
    hw = Hardware(sms, float(rated.hw["fp16_TFLOPs"]), float(rated.hw["copy_TBps"]))
    params = next((t.model for t in tables if t.model is not None), ModelParams())
    problem, plans = candidates.format_plans(spec, model_rows(m), n, k, sms, hopper=True)
    plans = candidates.model_plans(plans)
    return rank(problem, plans, hw, params)[0][1] if plans else None


@functools.lru_cache(maxsize=4096)  # called on every launch; tables are read once (tables_for)
def _cached_plan(spec: str, n: int, k: int, m: int, group: int, bits: int, gpu: str, sms: int, arch: str) -> Plan:
    tables = tables_for(gpu, sms, arch)
    found = lookup(tables, spec, n, k, m)
    if found is None:
        found = _cached_model_plan(spec, n, k, model_rows(m), gpu, sms, arch)
    return found if found is not None else default_plan(m, n, k, group, bits, sms)


@functools.lru_cache(maxsize=1024)
def _cached_model_plan(spec: str, n: int, k: int, m: int, gpu: str, sms: int, arch: str) -> Plan | None:
    return model_plan(tables_for(gpu, sms, arch), spec, n, k, m, sms, arch)


def plan(spec: str, n: int, k: int, m: int, group: int, bits: int, device: torch.device) -> Plan:
    """The plan for m (> gemv.MAX_M) rows of x with a (n, k) weight of format ``spec``
    (group length ``group``, ``bits``-bit codes) on ``device``: a tuned table's, else
    ``model_plan``'s, else ``gemm.default_plan``.  Runs inside the ``anybit::planned_matmul`` op, never
    under torch.compile's tracing."""
    return _cached_plan(spec, n, k, m, group, bits, device_name(device), sm_count(device), device_arch(device))


def clear_caches() -> None:
    """Forget the tables read and the plans chosen (after writing a table, or changing ANYBIT_TUNED)."""
    tables_for.cache_clear()
    _cached_plan.cache_clear()
    _cached_model_plan.cache_clear()
