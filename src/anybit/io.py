"""Saving and loading quantized models: safetensors plus a JSON manifest.

A saved model is a directory::

    path/
      model.safetensors   every parameter and buffer (tied tensors stored once)
      anybit.json         the manifest, below
      config.json         the model's transformers config, when it has one

Manifest (``MANIFEST_VERSION`` 2)::

    {
      "manifest_version": 2,
      "anybit_version": "0.1.0",
      "weights_file": "model.safetensors",
      "layers": {"model.layers.0.mlp.up_proj": {"format": "int4-g128",
                 "in_features": 576, "out_features": 1536, "dtype": "float16",
                 "bias": false, "bias_dtype": null}, ...},
      "tensors": {"model.layers.0.mlp.up_proj.codes": "<sha256 hex>", ...}
    }

Version 2 stores 4-bit codes pair-transposed (``anybit.packing``); version 1 stored
them in natural order, and :func:`load` transposes such files' 4-bit codes as it
reads them (their checksums are those of the bytes in the file).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model
from torch import Tensor, nn

from . import packing
from ._version import __version__
from .formats.registry import parse_format
from .nn import QuantLinear

MANIFEST_VERSION = 2
#: Versions :func:`load` reads: 1 (4-bit codes in natural order, converted on load) and 2.
READABLE_VERSIONS = (1, 2)
MANIFEST_FILE = "anybit.json"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"manifest names unknown dtype {name!r}")
    return dtype


def tensor_sha256(t: Tensor) -> str:
    """SHA-256 of a tensor's raw bytes (row-major, native byte order)."""
    flat = t.detach().contiguous().reshape(-1).view(torch.uint8).cpu()
    return hashlib.sha256(flat.numpy().tobytes()).hexdigest()


def _layer_entry(layer: QuantLinear) -> dict[str, Any]:
    return {
        "format": layer.format.spec,
        "in_features": layer.in_features,
        "out_features": layer.out_features,
        "dtype": _dtype_name(layer.dtype),
        "bias": layer.bias is not None,
        "bias_dtype": None if layer.bias is None else _dtype_name(layer.bias.dtype),
    }


def save(model: nn.Module, path: str | Path) -> Path:
    """Write ``model`` (quantized by :func:`anybit.quantize_`) to directory ``path``.

    Returns the directory.  Existing files of the same names are replaced.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    layers = {name: _layer_entry(m) for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    weights = path / WEIGHTS_FILE
    save_model(model, str(weights), metadata={"format": "pt", "anybit_version": __version__})
    stored = load_file(str(weights))
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "anybit_version": __version__,
        "weights_file": WEIGHTS_FILE,
        "layers": layers,
        "tensors": {key: tensor_sha256(t) for key, t in sorted(stored.items())},
    }
    (path / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_file"):
        config.to_json_file(str(path / CONFIG_FILE))
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a saved model directory, checked for version and fields."""
    file = Path(path) / MANIFEST_FILE
    if not file.is_file():
        raise ValueError(f"{path} is not an anybit model directory: {MANIFEST_FILE} is missing")
    try:
        manifest = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from err
    version = manifest.get("manifest_version") if isinstance(manifest, dict) else None
    if version not in READABLE_VERSIONS:
        raise ValueError(f"{file}: manifest_version {version!r} is not supported; this anybit reads "
                         f"{', '.join(map(str, READABLE_VERSIONS))}")
    for key in ("layers", "tensors", "weights_file"):
        if key not in manifest:
            raise ValueError(f"{file}: manifest lacks {key!r}")
    return manifest


def _is_config(obj: Any) -> bool:
    return hasattr(obj, "model_type") and hasattr(obj, "to_dict")


def _model_from(model_or_config: Any) -> nn.Module:
    if isinstance(model_or_config, nn.Module):
        return model_or_config
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(model_or_config)


def _install_layer(model: nn.Module, name: str, entry: dict[str, Any]) -> None:
    """Put an empty QuantLinear matching ``entry`` at ``name``."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"layer {name!r} of the saved model does not exist in the model given") from None
    n, k = entry["out_features"], entry["in_features"]
    if isinstance(module, QuantLinear):
        if module.format.spec != entry["format"] or (module.out_features, module.in_features) != (n, k):
            raise ValueError(
                f"layer {name!r}: the model has {module.format.spec} ({module.out_features}, {module.in_features}) "
                f"but the file has {entry['format']} ({n}, {k})"
            )
        return
    if not isinstance(module, nn.Linear):
        raise ValueError(f"layer {name!r}: expected nn.Linear or QuantLinear, the model has {type(module).__name__}")
    if (module.out_features, module.in_features) != (n, k):
        raise ValueError(
            f"layer {name!r}: the model's Linear is ({module.out_features}, {module.in_features}) "
            f"but the file holds ({n}, {k})"
        )
    if (module.bias is not None) != entry["bias"]:
        raise ValueError(f"layer {name!r}: bias presence differs between the model and the file")
    bias_dtype = entry["bias_dtype"]
    layer = QuantLinear(
        k, n, entry["format"], bias=entry["bias"], dtype=_dtype_from_name(entry["dtype"]),
        bias_dtype=None if bias_dtype is None else _dtype_from_name(bias_dtype), device=module.weight.device,
    )
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, layer)


def _owner(key: str, layers: dict[str, Any]) -> str:
    prefix = key.rpartition(".")[0]
    return f"layer {prefix!r}" if prefix in layers else f"tensor {key!r}"


def load(model_or_config: Any, path: str | Path) -> nn.Module:
    """Load a model written by :func:`save`.

    Args:
        model_or_config: the model's architecture, either an ``nn.Module``
            (unquantized, e.g. freshly built; its quantized layers are replaced
            in place) or a transformers config, from which a causal LM is built.
        path: the directory given to :func:`save`.

    Returns:
        the model with its quantized layers and all tensors loaded.

    Raises:
        ValueError: naming the layer, when the file's layers do not fit the
            model or a tensor's checksum does not match (a corrupted file).
    """
    if not (isinstance(model_or_config, nn.Module) or _is_config(model_or_config)):
        raise ValueError(
            "model_or_config must be an nn.Module of the model's architecture or a transformers config, "
            f"got {type(model_or_config).__name__}"
        )
    path = Path(path)
    manifest = read_manifest(path)
    model = _model_from(model_or_config)
    layers = manifest["layers"]
    for name, entry in layers.items():
        _install_layer(model, name, entry)
    weights = path / manifest["weights_file"]
    try:
        stored = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights} cannot be read as safetensors (corrupted or truncated?): {err}") from err
    expected = manifest["tensors"]
    if set(stored) != set(expected):
        missing = sorted(set(expected) - set(stored))[:5]
        extra = sorted(set(stored) - set(expected))[:5]
        raise ValueError(f"{weights} does not match its manifest: missing {missing}, unexpected {extra}")
    for key, tensor in stored.items():
        if tensor_sha256(tensor) != expected[key]:
            raise ValueError(f"{_owner(key, layers)}: checksum of {key!r} does not match the manifest; the file is corrupted")
    state = model.state_dict()
    for key, tensor in stored.items():
        if key not in state:
            raise ValueError(f"{_owner(key, layers)}: the model has no tensor {key!r}")
        if tuple(state[key].shape) != tuple(tensor.shape) or state[key].dtype != tensor.dtype:
            raise ValueError(
                f"{_owner(key, layers)}: {key!r} is {tensor.dtype} {tuple(tensor.shape)} in the file "
                f"but the model expects {state[key].dtype} {tuple(state[key].shape)}"
            )
    # Tensors tied to one in the file (save_model stores shared tensors once).
    live = model.state_dict(keep_vars=True)
    stored_storage = {t.data_ptr() for key, t in live.items() if key in stored}
    tied = {key for key, t in live.items() if t.data_ptr() in stored_storage}
    missing = [k for k in state if k not in stored and k not in tied]
    if missing:
        raise ValueError(f"{weights} lacks tensors the model needs: {missing[:5]}")
    if manifest["manifest_version"] == 1:
        _natural_codes_transposed(stored, layers)
    model.load_state_dict(stored, strict=False)
    return model


def _natural_codes_transposed(stored: dict[str, Tensor], layers: dict[str, Any]) -> None:
    """A version-1 file's 4-bit codes (natural order) in today's pair-transposed order, in place."""
    for name, entry in layers.items():
        if packing.pairs_transposed(parse_format(entry["format"]).bits):
            stored[f"{name}.codes"] = packing.transpose_pairs(stored[f"{name}.codes"])

