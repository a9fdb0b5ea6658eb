"""QuantLinear, quantize_ and save/load."""

import json

import pytest
import torch
from conftest import assert_matmul_close
from torch import nn

import anybit
from anybit import QuantLinear


def _linear(k=64, n=24, bias=True, dtype=torch.float32):
    return nn.Linear(k, n, bias=bias, dtype=dtype)


@pytest.mark.parametrize("spec", ["int4-g32", "uint3-gc", "nf4-g16", "lut2-g64", "fp8-e4m3", "mxfp4", "nvfp4"])
@pytest.mark.parametrize("bias", [True, False])
def test_from_linear_forward_is_matmul(spec, bias):
    linear = _linear(bias=bias)
    layer = QuantLinear.from_linear(linear, spec)
    x = torch.randn(2, 3, 64)
    y = layer(x)
    assert torch.equal(y, anybit.matmul(x, layer.qweight, layer.bias))
    assert_matmul_close(y, x, layer.qweight, layer.bias)
    reference = linear(x)
    assert (y - reference).norm() / reference.norm() < 0.5  # still the same layer


def test_repr_names_format_and_bits():
    text = repr(QuantLinear.from_linear(_linear(), "int4-g32"))
    assert "format=int4-g32" in text and "bits_per_weight=4.500" in text and "bias=True" in text


def test_state_dict_round_trip():
    layer = QuantLinear.from_linear(_linear(), "uint4-g16")
    state = layer.state_dict()
    assert set(state) == {"codes", "scales", "zeros", "bias"}
    empty = QuantLinear(64, 24, "uint4-g16", bias=True, dtype=torch.float16, bias_dtype=torch.float32)
    empty.load_state_dict(state)
    x = torch.randn(4, 64)
    assert torch.equal(empty(x), layer(x))


def test_state_dict_shape_mismatch_is_an_error():
    layer = QuantLinear.from_linear(_linear(), "int4-g32")
    other = QuantLinear(64, 24, "int4-g16", dtype=torch.float16, bias_dtype=torch.float32)
    with pytest.raises(RuntimeError, match="scales"):
        other.load_state_dict(layer.state_dict())


def test_dtype_casts_keep_the_quantized_tensors():
    layer = QuantLinear.from_linear(_linear(), "int4-g32")
    scales = layer.scales.clone()
    layer.to(torch.bfloat16)
    assert layer.scales.dtype == torch.float16 and torch.equal(layer.scales, scales)
    assert layer.codes.dtype == torch.int32
    assert layer.bias.dtype == torch.bfloat16
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    assert layer(x).dtype == torch.bfloat16
    layer.half().float()
    assert torch.equal(layer.scales, scales)


def test_from_linear_rejects_other_modules():
    with pytest.raises(ValueError, match="linear must be a torch.nn.Linear"):
        QuantLinear.from_linear(nn.Conv1d(4, 4, 1), "int4-g32")


def test_forward_rejects_wrong_width():
    layer = QuantLinear.from_linear(_linear(), "int4-g32")
    with pytest.raises(ValueError, match="in_features=64"):
        layer(torch.randn(2, 32))


class TinyLM(nn.Module):
    """Embedding tied to the head, an MLP, an attention block with an out_proj subclass."""

    def __init__(self, vocab=50, d=64):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.mlp = nn.Sequential(nn.Linear(d, 96), nn.GELU(), nn.Linear(96, d, bias=False))
        self.attn = nn.MultiheadAttention(d, 4, batch_first=True)
        self.proj = nn.Linear(d, d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.head2 = nn.Linear(d, vocab, bias=False)
        self.head2.weight = self.embed.weight

    def forward(self, ids):
        h = self.embed(ids)
        h = h + self.mlp(h)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        h = self.proj(h)
        return self.lm_head(h) + self.head2(h)


def test_quantize_replaces_eligible_linears_and_reports_the_rest():
    model = TinyLM()
    ids = torch.randint(0, 50, (2, 7))
    before = model(ids)
    summary = anybit.quantize_(model, "int8-g32", progress=False)
    assert summary.converted == ["mlp.0", "mlp.2", "proj"]
    assert summary.skipped == {
        "attn.out_proj": "NonDynamicallyQuantizableLinear is a subclass of nn.Linear",
        "lm_head": "matches skip pattern 'lm_head'",
        "head2": "weight is shared with embed.weight",
    }
    assert isinstance(model.mlp[0], QuantLinear) and isinstance(model.lm_head, nn.Linear)
    assert summary.layer_weights == 64 * 96 * 2 + 64 * 64
    assert summary.layer_bytes_before == 4 * summary.layer_weights
    assert summary.bits_per_weight == pytest.approx(8 + 16 / 32)
    assert summary.model_bytes_after < summary.model_bytes_before
    after = model(ids)
    assert (after - before).norm() / before.norm() < 0.02
    assert "3 linear layers -> int8-g32" in str(summary)


def test_quantize_skip_patterns_and_already_quantized():
    model = TinyLM()
    summary = anybit.quantize_(model, "int4-g32", skip=("mlp.*", "lm_head"), progress=False)
    assert summary.converted == ["proj"]
    assert summary.skipped["mlp.0"] == "matches skip pattern 'mlp.*'"
    again = anybit.quantize_(model, "int4-g32", skip=(), progress=False)
    assert again.skipped["proj"] == "already quantized (int4-g32)"
    assert "lm_head" in again.converted


def test_quantize_names_the_failing_layer():
    model = TinyLM()
    with torch.no_grad():
        model.proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer 'proj': weight contains NaN"):
        anybit.quantize_(model, "int4-g32", progress=False)


def _saved_tiny(tmp_path, spec="nf4-g32"):
    model = TinyLM()
    anybit.quantize_(model, spec, progress=False)
    anybit.save(model, tmp_path)
    return model


def test_save_load_round_trip(tmp_path):
    model = _saved_tiny(tmp_path)
    manifest = json.loads((tmp_path / "anybit.json").read_text())
    assert manifest["layers"]["proj"]["format"] == "nf4-g32"
    loaded = anybit.load(TinyLM(), tmp_path)
    assert isinstance(loaded.proj, QuantLinear)
    assert loaded.head2.weight is loaded.embed.weight  # still tied
    ids = torch.randint(0, 50, (2, 5))
    assert torch.equal(loaded(ids), model(ids))


@pytest.mark.parametrize("spec", ["int4-g32", "uint3-gc"])
def test_a_version_1_file_loads_its_natural_order_codes(tmp_path, spec):
    """Version 1 stored 4-bit codes in natural order: written that way (codes transposed
    back, checksums and version of that file), the loaded model is the saved one."""
    from safetensors.torch import load_file, save_file

    from anybit import io, packing

    model = _saved_tiny(tmp_path, spec)
    stored = load_file(str(tmp_path / "model.safetensors"))
    manifest = json.loads((tmp_path / "anybit.json").read_text())
    assert manifest["manifest_version"] == 2
    for name in manifest["layers"]:
        if spec.startswith("int4"):
            stored[f"{name}.codes"] = packing.transpose_pairs(stored[f"{name}.codes"])
        manifest["tensors"][f"{name}.codes"] = io.tensor_sha256(stored[f"{name}.codes"])
    save_file(stored, str(tmp_path / "model.safetensors"))
    manifest["manifest_version"] = 1
    (tmp_path / "anybit.json").write_text(json.dumps(manifest))
    loaded = anybit.load(TinyLM(), tmp_path)
    for name in manifest["layers"]:
        assert torch.equal(loaded.get_submodule(name).codes, model.get_submodule(name).codes)
    ids = torch.randint(0, 50, (2, 5))
    assert torch.equal(loaded(ids), model(ids))


def test_load_rejects_a_corrupted_layer(tmp_path):
    model = _saved_tiny(tmp_path)
    file = tmp_path / "model.safetensors"
    data = bytearray(file.read_bytes())
    header = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8 : 8 + header])
    start, _ = meta["proj.codes"]["data_offsets"]
    data[8 + header + start] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="layer 'proj': checksum of 'proj.codes'.*corrupted"):
        anybit.load(TinyLM(), tmp_path)
    del model


def test_load_rejects_a_truncated_file(tmp_path):
    _saved_tiny(tmp_path)
    file = tmp_path / "model.safetensors"
    file.write_bytes(file.read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot be read as safetensors"):
        anybit.load(TinyLM(), tmp_path)


def test_load_rejects_a_mismatched_model(tmp_path):
    _saved_tiny(tmp_path)
    with pytest.raises(ValueError, match=r"layer 'mlp.0': the model's Linear is \(128, 64\)"):
        smaller = TinyLM()
        smaller.mlp[0] = nn.Linear(64, 128)
        anybit.load(smaller, tmp_path)
    with pytest.raises(ValueError, match="layer 'proj' of the saved model does not exist"):
        other = TinyLM()
        del other.proj
        anybit.load(other, tmp_path)


def test_load_needs_a_manifest(tmp_path):
    with pytest.raises(ValueError, match="anybit.json is missing"):
        anybit.load(TinyLM(), tmp_path)
    (tmp_path / "anybit.json").write_text('{"manifest_version": 99}')
    with pytest.raises(ValueError, match="manifest_version 99 is not supported"):
        anybit.load(TinyLM(), tmp_path)


def test_load_rejects_other_things():
    with pytest.raises(ValueError, match="model_or_config must be"):
        anybit.load("not a model", ".")
