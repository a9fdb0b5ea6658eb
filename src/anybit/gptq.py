"""GPTQ: quantize a weight so that its output on calibration inputs changes least.

Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers".  Given the inputs X (T, K) a layer saw
on calibration data, GPTQ minimises ``||X W^T - X Q^T||^2`` column by column:
it quantizes one input feature's weights, then spreads the error over the
not yet quantized columns through the inverse of ``H = X^T X / T``.

This module works on one weight with its ``H``; :func:`anybit.quantize_` with
``method="gptq"`` feeds calibration text through a model block by block and
calls it for every layer (:mod:`anybit._calibrate`).

Every registered format works, because quantizing one column needs only the
format's own ``fit`` / ``encode`` / ``decode`` on groups of width 1:

* Group parameters (scales, zero points) of a group are fitted when the
  sweep reaches the group's first column, on the weights as updated so far
  (with ``fit=Method.MSE`` by the format's clipping search, else its
  round-to-nearest range).  Clip-independent tensors (a learned per-row
  codebook, nvfp4's tensor scale) are fitted once on the original weight.
* ``act_order=True`` (the default) visits columns by decreasing ``H[j, j]``
  (inputs with the most energy first).  Groups are then fitted once, before the sweep, on the
  original weights ("static groups"), so each code still belongs to the group
  of its input feature: the stored weight keeps the usual layout and every
  kernel reads it unchanged.  No permutation is stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import packing
from .formats import WeightFormat, parse_format
from .formats._base import SCALE_DTYPES
from .quantized import Method, QuantizedWeight, _check_weight, _search_clip, default_scale_dtype, group


@dataclass(frozen=True)
class GPTQOptions:
    """Settings of the GPTQ sweep.

    Attributes:
        block_size: columns updated together before the error is pushed to the
            rest of the weight (a speed setting; results barely depend on it).
        damp: ``damp * mean(diag(H))`` is added to H's diagonal before it is
            inverted (GPTQ's default 0.01).
        act_order: visit columns by decreasing ``H[j, j]`` with static groups
            (see the module docstring).  The default: on SmolLM2-135M at
            int3-g64 it gave perplexity 20.3 against 28.2 in input order.
        fit: how each group's scale (and zero point) is chosen: ``Method.MSE``
            searches the format's clipping ratios for the least squared error
            of the group's weights; ``Method.RTN`` uses the full range.
    """

    block_size: int = 128
    damp: float = 0.01
    act_order: bool = True
    fit: Method = Method.MSE

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"GPTQOptions.block_size={self.block_size} must be >= 1")
        if not 0 < self.damp <= 1:
            raise ValueError(f"GPTQOptions.damp={self.damp} must be in (0, 1]")
        object.__setattr__(self, "fit", Method(self.fit))
        if self.fit is Method.GPTQ:
            raise ValueError("GPTQOptions.fit must be Method.RTN or Method.MSE")


def output_error(weight: Tensor, dequantized: Tensor, hessian: Tensor) -> float:
    """``trace(D H D^T)`` for ``D = dequantized - weight``: the mean squared change of the output per token.

    With ``H = X^T X / T`` this is ``||X W^T - X Q^T||_F^2 / T``.
    """
    d = dequantized.detach().double() - weight.detach().double()
    return float(((d @ hessian.double()) * d).sum())


def _fit_group(fmt: WeightFormat, cols: Tensor, mask: Tensor, prepared: dict, fit: Method, dtype: torch.dtype) -> dict:
    """Parameters, (N, ng) each, of the groups ``cols`` (N, ng, G) whose real positions are ``mask``."""
    params = fmt.fit(cols, mask, 1.0, prepared, dtype)
    if fit is Method.MSE:
        params = _search_clip(fmt, cols, mask, prepared, params, dtype)
    return params


def _inverse_cholesky(hessian: Tensor, damp: float) -> Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) I)^-1``, float32."""
    h = hessian.clone()
    h.diagonal().add_(damp * h.diagonal().mean())
    factor, info = torch.linalg.cholesky_ex(h.double())
    if info.item() != 0:
        raise ValueError(
            f"GPTQ: the damped Hessian is not positive definite (damp={damp}); "
            f"raise GPTQOptions.damp or calibrate on more tokens"
        )
    inverse = torch.cholesky_inverse(factor)
    return torch.linalg.cholesky(inverse, upper=True).float()


def gptq_quantize(
    weight: Tensor,
    hessian: Tensor,
    fmt: str | WeightFormat,
    options: GPTQOptions = GPTQOptions(),
    *,
    scale_dtype: torch.dtype | None = None,
) -> QuantizedWeight:
    """Quantize ``weight`` with GPTQ, given the second moment of its inputs.

    Args:
        weight: (N, K) = (out_features, in_features), float, finite.
        hessian: (K, K) float, ``X^T X / T`` over the T calibration inputs
            (rows of X) the layer saw; symmetric positive semi-definite.  Input
            features that were always zero (``H[j, j] == 0``) get weight 0.
        fmt: a format spec or WeightFormat (every registered format works).
        options: the sweep's settings.
        scale_dtype: fp16 or bf16; default as :func:`anybit.quantize`.

    Returns:
        a :class:`QuantizedWeight` on ``weight``'s device, in the format's
        standard layout (codes in input-feature order).

    Raises:
        ValueError: bad shapes or dtypes, or a Hessian that stays singular after damping.
    """
    fmt = parse_format(fmt)
    _check_weight(weight)
    n, k = weight.shape
    if not isinstance(hessian, Tensor) or tuple(hessian.shape) != (k, k) or not hessian.is_floating_point():
        got = f"{hessian.dtype} {tuple(hessian.shape)}" if isinstance(hessian, Tensor) else type(hessian).__name__
        raise ValueError(f"hessian must be a float tensor of shape ({k}, {k}) for weight {tuple(weight.shape)}, got {got}")
    if hessian.device != weight.device:
        raise ValueError(f"hessian is on {hessian.device} but weight is on {weight.device}")
    dtype = default_scale_dtype(weight.dtype) if scale_dtype is None else scale_dtype
    if dtype not in SCALE_DTYPES:
        raise ValueError(f"scale_dtype={dtype} is not supported; accepted: torch.float16, torch.bfloat16")

    w = weight.detach().float().clone()
    h = hessian.detach().float().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0

    g = fmt.group_len(k)
    ng = fmt.num_groups(k)
    wg, mask = group(w, g)
    prepared = fmt.prepare(wg, mask, dtype)
    group_params: list[dict | None] = [None] * ng
    if options.act_order:
        static = _fit_group(fmt, wg, mask, prepared, options.fit, dtype)
        group_params = [{name: t[:, i : i + 1] for name, t in static.items()} for i in range(ng)]
        order = torch.argsort(h.diagonal(), descending=True, stable=True)
    else:
        order = torch.arange(k, device=w.device)
    w = w[:, order]
    hinv = _inverse_cholesky(h[order][:, order], options.damp)
    order_list = order.tolist()

    codes = torch.empty(n, k, dtype=torch.uint8, device=w.device)
    for start in range(0, k, options.block_size):
        stop = min(start + options.block_size, k)
        block = w[:, start:stop].clone()
        errors = torch.empty_like(block)
        hblock = hinv[start:stop, start:stop]
        for i in range(stop - start):
            col = order_list[start + i]
            gi = col // g
            if group_params[gi] is None:
                # Sequential order: this is the group's first column.  Fit on the
                # group's current weights (in-block ones already updated).
                current = torch.cat([block[:, i:], w[:, stop:]], dim=1)[:, : min(g, k - col)]
                padded, real = group(current, g)
                group_params[gi] = _fit_group(fmt, padded, real, prepared, options.fit, dtype)
            params = {**prepared, **group_params[gi]}
            column = block[:, i].reshape(n, 1, 1)
            code = fmt.encode(column, params)
            value = fmt.decode(code, params, torch.float32).reshape(n)
            codes[:, col] = code.reshape(n)
            err = (block[:, i] - value) / hblock[i, i]
            block[:, i:] -= err[:, None] * hblock[i, i:][None, :]
            errors[:, i] = err
        w[:, stop:] -= errors @ hinv[start:stop, stop:]

    params = {name: torch.cat([p[name] for p in group_params], dim=1) for name in group_params[0]}
    return QuantizedWeight(fmt, (n, k), packing.pack(codes, fmt.bits), {**prepared, **params}, dtype)
