"""Mixed precision: a format per layer, chosen under a size budget.

``anybit.quantize_(model, budget_bits=3.5, calibration=..., tokenizer=...)``
does two things, both exposed here:

1. :func:`sensitivity` measures, for every layer and every candidate format,
   how much quantizing that layer alone would raise the model's loss on the
   calibration tokens.  It uses the second-order (Fisher) estimate on the
   layer's output, exact in everything but the cross terms between output
   channels and between tokens::

       cost(layer, fmt) = 1/2 * sum over tokens t, outputs n of  g[t, n]^2 * (x[t] . (Q - W)[n])^2

   where ``x[t]`` are the layer's inputs, ``g[t, n]`` the gradient of the
   mean next-token loss with respect to the layer's output, and ``Q`` the
   weight quantized to ``fmt``.  One forward and backward pass per batch of
   calibration samples measures every layer and every candidate.
2. :func:`allocate` picks one candidate per layer that minimises the summed
   cost with total storage (codes, scales, zero points, tables: every stored
   bit) at most ``budget_bits`` per weight, by Lagrangian relaxation of this
   multiple-choice knapsack followed by a greedy fill of what budget is left.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import packing
from .formats import WeightFormat, parse_format
from .quantized import Method, quantize

#: Candidate formats when none are given: signed integers, groups of 64.
DEFAULT_CANDIDATES = ("int2-g64", "int3-g64", "int4-g64", "int5-g64", "int6-g64", "int8-g64")


def storage_bits(fmt: WeightFormat, out_features: int, in_features: int) -> int:
    """Stored bits of an (N, K) layer in ``fmt``: packed codes plus every parameter tensor."""
    codes = 32 * out_features * packing.packed_words(fmt.bits, in_features)
    params = fmt.param_specs(out_features, in_features, torch.float16).values()
    return codes + sum(8 * p.dtype.itemsize * math.prod(p.shape) for p in params)


@dataclass
class LayerChoice:
    """One layer's candidates: their stored bits and measured costs, and the pick."""

    name: str
    weights: int
    bits: dict[str, float]
    cost: dict[str, float]
    chosen: str = ""


def sensitivity(
    model: nn.Module,
    layers: dict[str, nn.Linear],
    ids: Tensor,
    candidates: Sequence[str | WeightFormat],
    *,
    method: Method = Method.MSE,
    batch_size: int = 4,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Estimated loss increase of quantizing each layer alone to each candidate.

    Args:
        model: a causal LM; ``model(inputs_embeds=...)`` must return ``.logits``
            (transformers models do) and ``model.get_input_embeddings()`` give
            its embedding.
        layers: name -> nn.Linear of ``model`` to measure.
        ids: calibration token ids, LongTensor (n_samples, seq_len).
        candidates: formats to try on every layer.
        method: how each candidate is quantized for the measurement (``rtn``
            or ``mse``; GPTQ's result depends on the other layers, so the
            allocation for ``gptq`` is measured with ``mse``).
        batch_size: samples per forward/backward pass.

    Returns:
        ``{layer: {format spec: cost}}`` (see the module docstring), in
        nats of mean loss per token.
    """
    formats = [parse_format(c) for c in candidates]
    device = next(model.parameters()).device
    ids = ids.to(device)
    quantized = {}
    for name, layer in tqdm(layers.items(), desc="sensitivity: quantizing candidates", disable=not progress,
                            unit="layer"):
        quantized[name] = [quantize(layer.weight, fmt, method=method) for fmt in formats]
    cost = {name: torch.zeros(len(formats), dtype=torch.float64) for name in layers}
    saved: dict[str, Tensor] = {}

    def forward_hook(name):
        def hook(module, args, output):
            saved[name] = args[0].detach()
        return hook

    def backward_hook(name):
        def hook(module, grad_input, grad_output):
            x = saved.pop(name)
            g2 = grad_output[0].detach().float().square().reshape(-1, module.out_features)
            flat = x.reshape(-1, module.in_features).float()
            w = module.weight.detach().float()
            for i, qw in enumerate(quantized[name]):
                delta = flat @ (qw.dequantize(torch.float32) - w).T
                cost[name][i] += 0.5 * float((g2 * delta.square()).sum())
        return hook

    handles = []
    for name, layer in layers.items():
        handles.append(layer.register_forward_hook(forward_hook(name)))
        handles.append(layer.register_full_backward_hook(backward_hook(name)))
    embed = model.get_input_embeddings()
    was_training = model.training
    model.eval()
    try:
        batches = range(0, ids.shape[0], batch_size)
        for start in tqdm(batches, desc="sensitivity: loss gradients", disable=not progress, unit="batch"):
            batch = ids[start : start + batch_size]
            with torch.enable_grad():
                emb = embed(batch).detach().requires_grad_(True)
                logits = model(inputs_embeds=emb, use_cache=False).logits
                loss = nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1)
                )
                # The mean over all calibration tokens, not per batch.
                (loss * batch.shape[0] / ids.shape[0]).backward()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
        saved.clear()
    return {name: {fmt.spec: float(c[i]) for i, fmt in enumerate(formats)} for name, c in cost.items()}


def allocate(choices: list[LayerChoice], budget_bits: float) -> float:
    """Set ``chosen`` on every layer: least total cost with stored bits <= budget_bits per weight.

    Returns the resulting bits per weight.  Raises ValueError when even the
    smallest candidate of every layer exceeds the budget.
    """
    total_weights = sum(c.weights for c in choices)
    budget = budget_bits * total_weights
    smallest = sum(min(c.bits.values()) for c in choices)
    if smallest > budget:
        raise ValueError(
            f"budget_bits={budget_bits} is below the smallest mix the candidates allow "
            f"({smallest / total_weights:.3f} bits/weight); raise it or add smaller candidates"
        )

    def pick(lam: float) -> dict[str, str]:
        return {c.name: min(c.cost, key=lambda s: (c.cost[s] + lam * c.bits[s], c.bits[s])) for c in choices}

    def used(picks: dict[str, str]) -> float:
        return sum(c.bits[picks[c.name]] for c in choices)

    picks = pick(0.0)
    if used(picks) > budget:
        lo, hi = 0.0, 1.0
        while used(pick(hi)) > budget:
            lo, hi = hi, hi * 2
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if used(pick(mid)) > budget else (lo, mid)
        picks = pick(hi)
    # Greedy fill: the upgrade with the best cost saving per extra bit that still fits.
    left = budget - used(picks)
    while True:
        best = None
        for c in choices:
            now = picks[c.name]
            for spec in c.cost:
                extra = c.bits[spec] - c.bits[now]
                gain = c.cost[now] - c.cost[spec]
                if 0 < extra <= left and gain > 0 and (best is None or gain / extra > best[0]):
                    best = (gain / extra, c.name, spec, extra)
        if best is None:
            break
        picks[best[1]] = best[2]
        left -= best[3]
    for c in choices:
        c.chosen = picks[c.name]
    return used(picks) / total_weights


def choose_formats(
    model: nn.Module,
    layers: dict[str, nn.Linear],
    ids: Tensor,
    budget_bits: float,
    candidates: Sequence[str | WeightFormat] = DEFAULT_CANDIDATES,
    *,
    method: Method = Method.MSE,
    progress: bool = True,
) -> list[LayerChoice]:
    """Measure every layer's sensitivity and allocate formats under ``budget_bits`` (see the module docstring)."""
    formats = [parse_format(c) for c in candidates]
    if not formats:
        raise ValueError("candidates must name at least one format")
    costs = sensitivity(model, layers, ids, formats, method=method, progress=progress)
    choices = []
    for name, layer in layers.items():
        n, k = layer.weight.shape
        bits = {f.spec: storage_bits(f, n, k) for f in formats}
        choices.append(LayerChoice(name, n * k, bits, costs[name]))
    allocate(choices, budget_bits)
    return choices
