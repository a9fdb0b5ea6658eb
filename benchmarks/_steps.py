"""What the same-process decoding-step scripts share (e2e_launch.py, e2e_attention.py,
e2e_fusion_rule.py, e2e_few_tiles.py): ``anybit bench --e2e``'s model and a timed step.
Imported by those scripts from this folder (run them as ``python benchmarks/<script>.py``)."""
import time

import torch

from anybit import e2e

START = time.time()


def base_model(attention: str = e2e.DEFAULT_ATTENTION) -> torch.nn.Module:
    """The fp16 Llama-3.1-8B-shaped model with random weights on the GPU, ``attention`` set."""
    model = e2e.random_llama(e2e.LLAMA_31_8B, torch.device("cuda"))
    e2e.use_attention(model, attention)
    return model


def measure(model: torch.nn.Module, batch: int, label: str, rounds: int = 2) -> float:
    """Milliseconds per graph-replayed step (best of ``rounds`` x 50 replays, a cache of 128 + 200
    slots), printed with ``label`` and the seconds since the script started."""
    ms = e2e.step_ms(model, batch, prompt_len=128, steps=50, rounds=rounds, max_steps=200)
    print(f"{label:>32} batch {batch}: {ms:.3f} ms/step  ({time.time() - START:.0f} s)", flush=True)
    return ms
