"""``QuantLinear``, a drop-in ``nn.Linear`` on a quantized weight, and ``quantize_``."""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import mixed
from ._calibrate import calibrate_sequentially
from .calibration import DEFAULT_SAMPLES, DEFAULT_SEQ_LEN, calibration_ids
from .formats import WeightFormat, parse_format
from .gptq import GPTQOptions, gptq_quantize, output_error
from .matmul import matmul
from .quantized import Method, QuantizedWeight, _parse_method, quantize


class QuantLinear(nn.Module):
    """``y = x @ W^T + b`` with W stored in a low-bit format.

    The quantized tensors are buffers named ``codes`` plus the format's
    ``param_names`` (``scales``, ``zeros``, ``table``, ``tensor_scale``), so
    ``state_dict()``, ``load_state_dict()`` and ``.to()`` behave as for any
    module.  ``bias``, if any, is a frozen parameter in its original dtype.

    Build one with :meth:`from_linear` or :meth:`from_quantized`; the
    constructor allocates empty (uninitialised) tensors of the right shapes,
    to be filled by ``load_state_dict``.

    Forward: x (..., in_features), fp16/bf16/fp32 -> (..., out_features) in x's dtype.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        fmt: str | WeightFormat,
        *,
        bias: bool = True,
        dtype: torch.dtype = torch.float16,
        bias_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.format = parse_format(fmt)
        self.dtype = dtype
        storage = QuantizedWeight.empty(self.format, (out_features, in_features), dtype, device)
        self.register_buffer("codes", storage.codes)
        for name, tensor in storage.params.items():
            self.register_buffer(name, tensor)
        if bias:
            b = torch.empty(out_features, dtype=bias_dtype or dtype, device=device)
            self.bias = nn.Parameter(b, requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, bias: Tensor | None = None) -> QuantLinear:
        """Wrap a quantized weight (tensors are shared, not copied)."""
        n, k = qw.shape
        layer = cls(
            k, n, qw.format, bias=bias is not None, dtype=qw.dtype,
            bias_dtype=None if bias is None else bias.dtype, device="meta",
        )
        layer.codes = qw.codes
        for name, tensor in qw.params.items():
            setattr(layer, name, tensor)
        if bias is not None:
            if tuple(bias.shape) != (n,):
                raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
            layer.bias = nn.Parameter(bias.detach(), requires_grad=False)
        return layer

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        fmt: str | WeightFormat,
        *,
        method: str | Method = "rtn",
        scale_dtype: torch.dtype | None = None,
    ) -> QuantLinear:
        """Quantize an ``nn.Linear``'s weight; the bias is kept as is."""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        qw = quantize(linear.weight, fmt, method=method, scale_dtype=scale_dtype)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls.from_quantized(qw, bias)

    def _apply(self, fn, recurse=True):
        """Let ``.to(device)`` move the quantized buffers but never change their dtype.

        ``model.half()`` or ``model.to(torch.bfloat16)`` cast every float
        tensor; the scales are part of the format and stay as quantized (a
        fp16 -> bf16 cast would lose bits).  The bias is an ordinary
        parameter and follows the cast.
        """
        buffers = self._buffers
        self._buffers = {}
        try:
            super()._apply(fn, recurse)
        finally:
            self._buffers = buffers
        for name, buf in buffers.items():
            if buf is not None:
                moved = fn(buf)
                buffers[name] = moved if moved.dtype == buf.dtype else buf.to(moved.device)
        return self

    @property
    def qweight(self) -> QuantizedWeight:
        """The layer's weight as a :class:`QuantizedWeight` (sharing its buffers)."""
        params = {name: getattr(self, name) for name in self.format.param_names}
        return QuantizedWeight(self.format, (self.out_features, self.in_features), self.codes, params, self.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return matmul(x, self.qweight, self.bias)

    def extra_repr(self) -> str:
        bits = self.qweight.bits_per_weight
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"format={self.format.spec}, bits_per_weight={bits:.3f}, bias={self.bias is not None}"
        )


@dataclass
class QuantizeSummary:
    """What :func:`quantize_` did: layers converted and skipped, bytes before and after."""

    #: The format spec, or "mixed (...)" when ``budget_bits`` chose one per layer.
    format: str
    method: str = "rtn"
    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    #: The format spec of each converted layer.
    formats: dict[str, str] = field(default_factory=dict)
    #: With ``budget_bits``: each layer's measured cost per candidate format
    #: (estimated loss increase, see :mod:`anybit.mixed`).
    sensitivity: dict[str, dict[str, float]] = field(default_factory=dict)
    #: With ``method="gptq"``: each layer's output error on its calibration
    #: inputs relative to its output, ``tr(D H D^T) / tr(W H W^T)``.
    output_errors: dict[str, float] = field(default_factory=dict)
    #: Bytes of the converted layers' weights before and after.
    layer_bytes_before: int = 0
    layer_bytes_after: int = 0
    #: Number of weights in the converted layers.
    layer_weights: int = 0
    #: Bytes of all the model's parameters and buffers before and after.
    model_bytes_before: int = 0
    model_bytes_after: int = 0

    @property
    def bits_per_weight(self) -> float:
        """Mean storage bits per weight over the converted layers."""
        return 8 * self.layer_bytes_after / self.layer_weights if self.layer_weights else float("nan")

    def format_counts(self) -> dict[str, int]:
        """Number of converted layers per format spec."""
        return dict(sorted(Counter(self.formats.values()).items()))

    def __str__(self) -> str:
        mb = 1 / 2**20
        lines = [
            f"anybit: {len(self.converted)} linear layers -> {self.format} by {self.method} "
            f"({self.bits_per_weight:.3f} bits/weight), {len(self.skipped)} skipped",
            f"  those layers: {self.layer_bytes_before * mb:.2f} MiB -> {self.layer_bytes_after * mb:.2f} MiB",
            f"  whole model:  {self.model_bytes_before * mb:.2f} MiB -> {self.model_bytes_after * mb:.2f} MiB",
        ]
        if self.sensitivity:
            lines.append("  formats chosen: " + ", ".join(f"{s} x {n}" for s, n in self.format_counts().items()))
            lines += [f"    {name}: {spec}" for name, spec in self.formats.items()]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


def model_nbytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers, counting shared tensors once."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        key = t.data_ptr() if t.device.type != "meta" else id(t)
        if key not in seen:
            seen.add(key)
            total += t.nbytes
    return total


def _matches(name: str, patterns: Iterable[str]) -> str | None:
    leaf = name.rsplit(".", 1)[-1]
    for pattern in patterns:
        if name == pattern or leaf == pattern or fnmatch.fnmatchcase(name, pattern):
            return pattern
    return None


def _shared_weights(model: nn.Module) -> dict[int, list[str]]:
    """Storage pointer -> names of the parameters that use it."""
    owners: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(p.data_ptr(), []).append(name)
    return owners


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, module)


def _eligible(model: nn.Module, skip: tuple[str, ...], summary: QuantizeSummary) -> dict[str, nn.Linear]:
    """The layers quantize_ converts; the others go to ``summary.skipped`` with the reason."""
    owners = _shared_weights(model)
    todo = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            summary.skipped[name] = f"already quantized ({module.format.spec})"
        elif isinstance(module, nn.Linear):
            pattern = _matches(name, skip)
            sharing = [o for o in owners.get(module.weight.data_ptr(), []) if o != f"{name}.weight"]
            if type(module) is not nn.Linear:
                summary.skipped[name] = f"{type(module).__name__} is a subclass of nn.Linear"
            elif pattern is not None:
                summary.skipped[name] = f"matches skip pattern {pattern!r}"
            elif sharing:
                summary.skipped[name] = f"weight is shared with {', '.join(sharing)}"
            else:
                todo[name] = module
    return todo


def quantize_(
    model: nn.Module,
    fmt: str | WeightFormat | None = None,
    *,
    budget_bits: float | None = None,
    candidates: Sequence[str | WeightFormat] = mixed.DEFAULT_CANDIDATES,
    skip: Iterable[str] = ("lm_head",),
    method: str | Method = "rtn",
    calibration: Tensor | Sequence[str] | None = None,
    tokenizer=None,
    n_samples: int = DEFAULT_SAMPLES,
    seq_len: int = DEFAULT_SEQ_LEN,
    gptq: GPTQOptions = GPTQOptions(),
    scale_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> QuantizeSummary:
    """Replace every eligible ``nn.Linear`` of ``model`` by a :class:`QuantLinear`, in place.

    A layer is eligible when its type is exactly ``nn.Linear`` (subclasses may
    be read directly by their owners, as ``nn.MultiheadAttention`` does), its
    name does not match ``skip`` (a full name, a last name component such as
    ``"lm_head"``, or an fnmatch pattern such as ``"*.mlp.*"``), and its weight
    is not shared with another parameter (such as an embedding tied to the
    output head).  Quantization runs on each weight's own device.

    Args:
        model: any module; ``method="gptq"`` and ``budget_bits`` need a causal
            LM that takes ``input_ids`` / ``inputs_embeds`` and returns
            ``.logits`` (any transformers ``*ForCausalLM``).
        fmt: one format for every layer, e.g. ``"int4-g128"``.
        budget_bits: instead of ``fmt``: choose a format per layer among
            ``candidates`` so that all stored bits of the converted layers
            average at most this many per weight, least estimated loss
            increase first (:mod:`anybit.mixed`).  ``summary.formats`` gives the map.
        candidates: the formats ``budget_bits`` chooses from.
        method: ``"rtn"``, ``"mse"`` (weights alone) or ``"gptq"`` (calibrated,
            :mod:`anybit.gptq`, block by block through the model).
        calibration: for ``gptq`` and ``budget_bits``: a LongTensor
            (n_samples, seq_len) of token ids, or a list of strings with
            ``tokenizer``; None uses the text shipped with anybit (needs
            ``tokenizer``).  See :func:`anybit.calibration.calibration_ids`.
        tokenizer: the model's tokenizer, for text calibration.
        n_samples, seq_len: windows cut from calibration text.
        gptq: GPTQ's settings (:class:`anybit.gptq.GPTQOptions`).
        scale_dtype: fp16 or bf16 scales; default bf16 for bf16 weights, else fp16.
        progress: show progress bars.

    Returns a :class:`QuantizeSummary`; ``print`` it for a report.

    Raises:
        ValueError: both or neither of ``fmt`` and ``budget_bits``; calibration
            given where nothing uses it, or missing where needed; and the
            errors of :func:`anybit.quantize`, naming the layer.
    """
    method = _parse_method(method)
    if (fmt is None) == (budget_bits is None):
        raise ValueError("pass exactly one of fmt (one format for every layer) and budget_bits (a format per layer)")
    needs_data = method is Method.GPTQ or budget_bits is not None
    if not needs_data and (calibration is not None or tokenizer is not None):
        raise ValueError("calibration/tokenizer are used only by method='gptq' and budget_bits; drop them or use one")
    fmt = None if fmt is None else parse_format(fmt)
    label = fmt.spec if fmt is not None else f"mixed ({budget_bits} bits/weight budget)"
    summary = QuantizeSummary(format=label, method=method.value, model_bytes_before=model_nbytes(model))
    todo = _eligible(model, tuple(skip), summary)
    ids = calibration_ids(calibration, tokenizer, n_samples=n_samples, seq_len=seq_len) if needs_data else None

    if budget_bits is not None:
        measure = Method.MSE if method is Method.GPTQ else method
        choices = mixed.choose_formats(model, todo, ids, budget_bits, candidates, method=measure, progress=progress)
        formats = {c.name: parse_format(c.chosen) for c in choices}
        summary.sensitivity = {c.name: c.cost for c in choices}
    else:
        formats = dict.fromkeys(todo, fmt)

    def convert(name: str, module: nn.Linear, hessian: Tensor | None = None) -> None:
        """Quantize one layer (by GPTQ when given its inputs' Hessian) and swap it into the model."""
        try:
            if hessian is None:
                qw = quantize(module.weight, formats[name], method=method, scale_dtype=scale_dtype)
            else:
                qw = gptq_quantize(module.weight, hessian, formats[name], gptq, scale_dtype=scale_dtype)
                base = output_error(module.weight, torch.zeros_like(module.weight), hessian)
                err = output_error(module.weight, qw.dequantize(torch.float32), hessian)
                summary.output_errors[name] = err / base if base > 0 else 0.0
        except ValueError as err:
            raise ValueError(f"layer {name!r}: {err}") from err
        bias = None if module.bias is None else module.bias.detach().clone()
        _set_submodule(model, name, QuantLinear.from_quantized(qw, bias))
        summary.converted.append(name)
        summary.formats[name] = qw.format.spec
        summary.layer_bytes_before += module.weight.nbytes
        summary.layer_weights += module.weight.numel()
        summary.layer_bytes_after += qw.nbytes

    if method is Method.GPTQ:
        calibrate_sequentially(model, todo, ids, convert, progress=progress)
    else:
        desc = f"quantizing to {label}"
        for name, module in tqdm(todo.items(), desc=desc, disable=not progress, unit="layer"):
            convert(name, module)
    summary.model_bytes_after = model_nbytes(model)
    return summary
