"""Perplexity of a causal language model on a token sequence, and of quantized variants of it."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@torch.inference_mode()
def perplexity(model: nn.Module, input_ids: Tensor, window: int = 512, stride: int = 512) -> float:
    """exp(mean negative log-likelihood) of ``input_ids`` under ``model``.

    Args:
        model: a causal LM whose forward takes ``input_ids`` (1, T) and returns
            an object with ``.logits`` (1, T, vocab) (transformers models do).
        input_ids: LongTensor (T,) or (1, T), T >= 2.
        window: tokens per forward pass.
        stride: tokens the window advances by.  Each window scores the tokens
            that no earlier window scored and that have at least one token of
            context inside it: with ``stride < window`` that is its last
            ``stride`` tokens (overlapping windows, the usual sliding
            evaluation); with ``stride == window`` the windows are disjoint and
            each window's first token serves only as context.

    Returns:
        the perplexity over all scored tokens.
    """
    if input_ids.dim() == 2 and input_ids.shape[0] == 1:
        input_ids = input_ids[0]
    if input_ids.dim() != 1 or input_ids.dtype != torch.long:
        raise ValueError(f"input_ids must be a LongTensor of shape (T,) or (1, T), got {input_ids.dtype} {tuple(input_ids.shape)}")
    if input_ids.numel() < 2:
        raise ValueError("input_ids needs at least 2 tokens")
    if not 1 <= stride <= window:
        raise ValueError(f"stride={stride} must be in 1..window ({window})")
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    t = ids.numel()
    total_nll = 0.0
    scored = 0
    begin = 0
    done = 1  # tokens before `done` are scored already (token 0 never is)
    while True:
        end = min(begin + window, t)
        first = max(done, begin + 1)
        if first < end:
            logits = model(ids[begin:end].unsqueeze(0)).logits[0].float()
            preds = logits[first - begin - 1 : end - begin - 1]
            targets = ids[first:end]
            total_nll += torch.nn.functional.cross_entropy(preds, targets, reduction="sum").item()
            scored += targets.numel()
        done = end
        if end == t:
            break
        begin += stride
    return math.exp(total_nll / scored)


@dataclass(frozen=True)
class Variant:
    """One quantized version of a model to evaluate: a method with a format, or with a size budget."""

    method: str
    fmt: str | None = None
    budget_bits: float | None = None

    @property
    def label(self) -> str:
        what = self.fmt if self.fmt is not None else f"mixed {self.budget_bits} bits"
        return f"{self.method} {what}"

    @property
    def needs_calibration(self) -> bool:
        return self.method == "gptq" or self.budget_bits is not None

    def apply(self, model: nn.Module, calibration: Tensor | None):
        """Quantize ``model`` in place; ``calibration`` (LongTensor (n, L)) is used only where needed.

        Returns the :class:`anybit.QuantizeSummary`.
        """
        from .nn import quantize_

        return quantize_(model, self.fmt, budget_bits=self.budget_bits, method=self.method,
                         calibration=calibration if self.needs_calibration else None, progress=False)


@dataclass
class EvalRow:
    """Perplexity of the unquantized model (first row, ``method`` "none") or of one variant."""

    label: str
    method: str
    format: str
    bits_per_weight: float
    perplexity: float
    seconds: float
    formats: dict[str, int] = field(default_factory=dict)


def evaluate_variants(
    model: nn.Module,
    ids: Tensor,
    variants: list[Variant],
    calibration: Tensor,
    *,
    window: int = 512,
    stride: int = 512,
    progress: Callable[[EvalRow], None] | None = None,
) -> list[EvalRow]:
    """Perplexity of ``model`` on ``ids`` as it is, then of each variant (each on a fresh copy).

    Args:
        model: a causal LM (see :func:`perplexity`); left unchanged.
        ids: LongTensor (T,) of the evaluation text, the same tokens for every row.
        variants: what to quantize and how.
        calibration: LongTensor (n_samples, seq_len) for ``gptq`` and budgets.
        window, stride: as in :func:`perplexity`.
        progress: called with each row as it is done.

    Returns one row per variant after the unquantized model's; ``seconds`` is
    the quantization time.
    """
    dtype = next(model.parameters()).dtype
    base = str(dtype).removeprefix("torch.")
    rows = [EvalRow(base, "none", base, float(torch.finfo(dtype).bits), perplexity(model, ids, window, stride), 0.0)]
    if progress:
        progress(rows[-1])
    for variant in variants:
        quantized = copy.deepcopy(model)
        start = time.perf_counter()
        summary = variant.apply(quantized, calibration)
        seconds = time.perf_counter() - start
        ppl = perplexity(quantized, ids, window, stride)
        rows.append(EvalRow(variant.label, variant.method, summary.format, summary.bits_per_weight, ppl, seconds,
                            summary.format_counts()))
        del quantized
        if progress:
            progress(rows[-1])
    return rows
