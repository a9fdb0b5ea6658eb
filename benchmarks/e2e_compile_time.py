"""Seconds spent compiling and capturing ``anybit bench --e2e``'s decoding step, with the model's
whole forward as one graph (``e2e._compile_layers(scope="model")``) or layer by layer, for a given
number of decoder layers.

Usage on a CUDA machine::

    PYTHONPATH=src python benchmarks/e2e_compile_time.py FORMAT SCOPE LAYERS[,LAYERS...] [EVERY_S]

For each layer count: seconds for the prefill call (compiles the prompt's graph), the first
decoding step (compiles the step's graph), the CUDA graph's capture, then the step's
milliseconds. Every ``EVERY_S`` seconds (default 30) a line gives the host's available memory,
the resident memory of this process and its children (Inductor's compile workers), the GPU
memory allocated and where the main thread is.
"""
import os
import sys
import threading
import time
import traceback

import torch

from anybit import e2e
from anybit.nn import quantize_

START = time.time()


def _rss_gib(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, GiB (from /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return total / 2**30


def _available_gib() -> float:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable")) / 2**20


def _watch(every: float, main: int) -> None:
    while True:
        time.sleep(every)
        frames = traceback.extract_stack(sys._current_frames()[main])[-4:]
        where = " < ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in reversed(frames))
        print(f"  [{time.time() - START:5.0f} s] host available {_available_gib():.1f} GiB, rss {_rss_gib(os.getpid()):.1f} "
              f"GiB, cuda {torch.cuda.memory_allocated() / 2**30:.1f} GiB; {where}", flush=True)


def _stage(label: str, since: float) -> float:
    torch.cuda.synchronize()
    now = time.time()
    print(f"    {label}: {now - since:.1f} s", flush=True)
    return now


fmt, scope = sys.argv[1], sys.argv[2]
counts = [int(n) for n in sys.argv[3].split(",")]
threading.Thread(target=_watch, args=(float(sys.argv[4]) if len(sys.argv) > 4 else 30, threading.get_ident()),
                 daemon=True).start()
for layers in counts:
    torch._dynamo.reset()
    print(f"{fmt} scope={scope} layers={layers}", flush=True)
    model = e2e.random_llama(dict(e2e.LLAMA_31_8B, num_hidden_layers=layers), torch.device("cuda"))
    e2e.use_attention(model, e2e.DEFAULT_ATTENTION)
    if fmt != "float16":
        quantize_(model, fmt, skip=(), progress=False)
    e2e._compile_layers(model, fmt != "float16", scope=scope)
    t = time.time()
    decoder = e2e.Decoder(model, 1, prompt_len=128, max_steps=200)
    t = _stage("prefill call", t)
    decoder.step()
    t = _stage("first step", t)
    decoder.capture()
    t = _stage("capture", t)
    print(f"    step: {min(decoder.time_ms(50) for _ in range(2)):.3f} ms", flush=True)
    del decoder, model
    torch.cuda.empty_cache()
