"""Feeding calibration tokens through a model to collect what its linear layers see.

Used by ``quantize_(method="gptq")`` (:func:`gptq_model`).  The model is
processed one transformer block at a time, in order, so that every layer is
calibrated on inputs produced by the already quantized blocks before it (as
the model will run), and at most one block's Hessians exist at any time:

1. the inputs of the first block (hidden states and keyword arguments such
   as the attention mask and rotary embeddings) are captured by a hook that
   stops the forward pass there;
2. for each block: hooks sum ``X^T X`` for each of its layers over every
   calibration sample, the layers are quantized with GPTQ and swapped for
   quantized ones, and the block runs again to give the next block its inputs;
3. layers outside the blocks (an unskipped ``lm_head``) are calibrated with one
   more pass of the whole quantized model.

The blocks are the ``nn.ModuleList`` holding the most linear layers (for
transformers models, ``model.model.layers``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm


class _StopForward(Exception):
    """Raised by the capture hook to end a forward pass at the first block."""


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The name and the ``nn.ModuleList`` of the model's transformer blocks.

    Raises ValueError when the model has no ModuleList whose entries hold
    linear layers (GPTQ needs to run the model block by block).
    """
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            linears = sum(isinstance(m, nn.Linear) for m in module.modules())
            if linears and (best is None or linears > best[0]):
                best = (linears, name, module)
    if best is None:
        raise ValueError(
            f"{type(model).__name__} has no nn.ModuleList of blocks with linear layers; method='gptq' "
            "runs the model block by block and needs one (transformers models have model.layers)"
        )
    return best[1], best[2]


@dataclass
class BlockInput:
    """One batch's arguments to a block: the hidden states and everything else, as the model passed them."""

    hidden: Tensor
    args: tuple
    kwargs: dict

    def call(self, block: nn.Module) -> Tensor:
        out = block(self.hidden, *self.args, **self.kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def capture_first_block(model: nn.Module, block: nn.Module, ids: Tensor, batch_size: int) -> list[BlockInput]:
    """Run ``model`` on ``ids`` (n, L) in batches up to ``block`` and keep its inputs."""
    captured: list[BlockInput] = []

    def hook(module, args, kwargs):
        if args:
            hidden, rest = args[0], tuple(args[1:])
        else:
            kwargs = dict(kwargs)
            hidden, rest = kwargs.pop("hidden_states"), ()
        captured.append(BlockInput(hidden, rest, {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _StopForward

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, ids.shape[0], batch_size):
            try:
                model(input_ids=ids[start : start + batch_size], use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


class InputMoments:
    """Forward hooks that sum ``X^T X`` (float32) over the inputs each layer sees.

    Layers fed the very same tensor in one forward pass (q, k and v projections;
    gate and up) share one sum.  Use as a context manager; :meth:`hessian`
    gives ``X^T X / T`` for a layer.
    """

    def __init__(self, layers: dict[str, nn.Linear]):
        self.layers = layers
        self.sums: dict[str, Tensor] = {}
        self.tokens: dict[str, int] = {}
        self.owner: dict[str, str] = {}  # layer -> name of the layer whose sum it uses
        self._last: tuple[str, Tensor] | None = None
        self._handles: list = []

    def _hook(self, name: str) -> Callable:
        def hook(module, args, output):
            x = args[0]
            last = self._last
            self._last = (name, x)
            if last is not None and last[1] is x and self.owner.get(name, self.owner[last[0]]) == self.owner[last[0]]:
                self.owner[name] = self.owner[last[0]]
                return
            if self.owner.get(name, name) != name:
                raise RuntimeError(f"layer {name!r} saw an input different from that of {self.owner[name]!r} "
                                   "in a later pass; cannot share their statistics")
            self.owner[name] = name
            flat = x.detach().reshape(-1, x.shape[-1]).float()
            if name not in self.sums:
                self.sums[name] = torch.zeros(flat.shape[1], flat.shape[1], dtype=torch.float32, device=flat.device)
                self.tokens[name] = 0
            self.sums[name].addmm_(flat.T, flat)
            self.tokens[name] += flat.shape[0]

        return hook

    def __enter__(self) -> InputMoments:
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.layers.items()]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def hessian(self, name: str) -> Tensor:
        owner = self.owner.get(name)
        if owner is None:
            raise ValueError(f"layer {name!r} saw no calibration input; is it used by the model's forward?")
        return self.sums[owner] / self.tokens[owner]


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def calibrate_sequentially(
    model: nn.Module,
    layers: dict[str, nn.Linear],
    ids: Tensor,
    quantize_layer: Callable[[str, nn.Linear, Tensor], None],
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> None:
    """Call ``quantize_layer(name, module, hessian)`` for each of ``layers`` (name -> module of ``model``), in order.

    ``quantize_layer`` replaces the module in ``model``; later blocks are then
    calibrated on what the replaced ones compute.  ``ids``: LongTensor
    (n_samples, seq_len).  ``hessian`` is the (K, K) float32 second moment of
    the layer's inputs over all calibration tokens.
    """
    device = next(model.parameters()).device
    ids = ids.to(device)
    blocks_name, blocks = decoder_blocks(model)
    per_block: list[dict[str, nn.Linear]] = [{} for _ in blocks]
    outside: dict[str, nn.Linear] = {}
    for name, module in layers.items():
        prefix = f"{blocks_name}." if blocks_name else ""
        index = name[len(prefix):].split(".", 1)[0] if name.startswith(prefix) else ""
        if index.isdigit() and int(index) < len(blocks):
            per_block[int(index)][name] = module
        else:
            outside[name] = module

    with _eval_mode(model):
        inputs = capture_first_block(model, blocks[0], ids, batch_size)
        bar = tqdm(total=len(layers), desc="gptq", unit="layer", disable=not progress)
        for block, todo in zip(blocks, per_block):
            if todo:
                with InputMoments(todo) as moments:
                    for inp in inputs:
                        inp.call(block)
                for name, module in todo.items():
                    quantize_layer(name, module, moments.hessian(name))
                    bar.update()
                del moments
            for inp in inputs:
                inp.hidden = inp.call(block)
        if outside:
            with InputMoments(outside) as moments:
                for start in range(0, ids.shape[0], batch_size):
                    model(input_ids=ids[start : start + batch_size], use_cache=False)
            for name, module in outside.items():
                quantize_layer(name, module, moments.hessian(name))
                bar.update()
        bar.close()
