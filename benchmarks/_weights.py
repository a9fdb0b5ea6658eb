"""What the kernel probes share (ds_probe.py, dequant_overlap_probe.py, ws_ab.py, tree_ab.py,
ws_diagnostics.py): the command lines of shapes, M and format, each shape's weights with
enough copies for a cold L2, and loading an edited copy of a kernel's source as a module.
Imported by those scripts from this folder (run them as ``python benchmarks/<script>.py``)."""
import argparse
import importlib.util
import os
import re
import statistics
import sys
import tempfile
import types

import torch

import anybit
from anybit import bench


def parser() -> argparse.ArgumentParser:
    """--shapes NxK ..., --m M ..., --format (default int4-g128), --out FILE."""
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", nargs="+", required=True)
    p.add_argument("--m", nargs="+", type=int, required=True)
    p.add_argument("--format", default="int4-g128")
    p.add_argument("--out")
    return p


def ab_parser(doc: str, baseline: str, m: list[int]) -> argparse.ArgumentParser:
    """The A/B scripts' command line (ws_ab.py, tree_ab.py): --baseline (``baseline``: what
    the folder holds), --formats, --m (default ``m``), --shapes (default the standard ones),
    --rounds, --out."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--baseline", required=True, help=baseline)
    p.add_argument("--formats", nargs="+", default=["int4-g128"])
    p.add_argument("--m", nargs="+", type=int, default=m)
    p.add_argument("--shapes", nargs="+", default=[f"{n}x{k}" for n, k in bench.STANDARD_SHAPES])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out")
    return p


def ab_point(spec: str, n: int, k: int, m: int, label: str, fp16_us: float, timers: dict, rounds: int) -> dict:
    """One point of an A/B script: ``timers`` {"new": ..., "base": ...} (each a call returning
    one timing in us) run ``rounds`` times each in the order new base base new ...; prints
    the medians against fp16 and returns the point's row (every timing kept)."""
    times = {name: [] for name in timers}
    for r in range(rounds):
        for name in ("new", "base") if r % 2 == 0 else ("base", "new"):
            times[name].append(timers[name]())
    new, base = (statistics.median(times[v]) for v in ("new", "base"))
    print(f"{spec} {n}x{k} M={m} {label:40s} new {new:8.2f} base {base:8.2f} us "
          f"({base / new:5.3f}x; fp16 {fp16_us:8.2f}: {fp16_us / new:4.2f} / {fp16_us / base:4.2f}x)", flush=True)
    return dict(format=spec, N=n, K=k, M=m, plan=label, new_us=times["new"], base_us=times["base"], fp16_us=fp16_us)


def weights(shape: str, fmt: str):
    """(n, k, qw, copies of qw, copies of W in fp16) for a random W of ``shape`` (NxK, on the GPU),
    as many copies as ``anybit bench`` cycles through so that each call reads W from HBM."""
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    n, k = (int(v) for v in shape.split("x"))
    w = torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.02
    qw = anybit.quantize(w, fmt)
    copies = [qw] + [bench._clone(qw) for _ in range(bench._copies(qw.nbytes, l2) - 1)]
    w16 = [w.clone() for _ in range(bench._copies(2 * n * k, l2))]
    return n, k, qw, copies, w16


def absolute_imports(text: str, keep: tuple[str, ...] = ()) -> str:
    """A kernel module's source (``anybit._matmul``) with its relative imports made absolute, so that
    a copy loaded by ``load_source`` outside the package still finds them; imports of the
    modules in ``keep`` stay relative (a copy's own package provides them)."""
    text = re.sub(r"^from \. import", "from anybit._matmul import", text, flags=re.M)
    return re.sub(r"^from \.(\w+) import",
                  lambda m: m.group(0) if m.group(1) in keep else f"from anybit._matmul.{m.group(1)} import",
                  text, flags=re.M)


def load_source(name: str, text: str, directory: str | None = None) -> types.ModuleType:
    """``text`` (a module's source, e.g. a kernel file with edits) as module ``name``: written
    to ``directory`` (a fresh temporary one by default; Triton reads a kernel's source from
    its file) and registered in ``sys.modules`` before it runs (its dataclasses and relative
    imports look their package up there)."""
    path = os.path.join(directory or tempfile.mkdtemp(), f"_{name.replace('.', '_')}.py")
    with open(path, "w") as f:
        f.write(text)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
