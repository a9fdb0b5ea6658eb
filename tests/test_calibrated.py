"""quantize_ with calibration data: GPTQ block by block, mixed precision under a budget, on tiny models (CPU)."""

import copy
import itertools
import random

import pytest
import torch
from conftest import tiny_llama
from torch import nn

import anybit
from anybit._calibrate import InputMoments, decoder_blocks
from anybit.gptq import output_error
from anybit.mixed import LayerChoice, allocate, storage_bits
from anybit.nn import QuantLinear


@pytest.fixture(scope="module")
def tiny():
    model = tiny_llama()
    ids = torch.randint(0, 97, (8, 32), generator=torch.Generator().manual_seed(1))
    return model, ids


def _block0_inputs_error(model, quantized, ids):
    """Output error of each layer of block 0 (whose inputs do not depend on quantization)."""
    layers = {n: m for n, m in model.named_modules() if n.startswith("model.layers.0.") and isinstance(m, nn.Linear)}
    with InputMoments(layers) as moments, torch.no_grad():
        model(ids)
    errors = {}
    for name, layer in layers.items():
        q = quantized.get_submodule(name).qweight.dequantize(torch.float32)
        errors[name] = output_error(layer.weight, q, moments.hessian(name))
    return errors


def _logit_error(model, quantized, ids):
    with torch.no_grad():
        return float((model(ids).logits - quantized(ids).logits).square().mean())


@pytest.mark.parametrize("spec", ["int3-g32", "uint2-g16", "nf4-g32", "lut3-gc"])
def test_gptq_beats_rtn_on_the_calibration_data(tiny, spec):
    model, ids = tiny
    rtn, gptq = copy.deepcopy(model), copy.deepcopy(model)
    anybit.quantize_(rtn, spec, progress=False)
    summary = anybit.quantize_(gptq, spec, method="gptq", calibration=ids, progress=False)
    assert summary.method == "gptq" and len(summary.converted) == 14
    assert set(summary.output_errors) == set(summary.converted)
    assert all(0 < e < 1 for e in summary.output_errors.values())
    rtn_err, gptq_err = _block0_inputs_error(model, rtn, ids), _block0_inputs_error(model, gptq, ids)
    for name in rtn_err:
        assert gptq_err[name] < rtn_err[name], name
    assert _logit_error(model, gptq, ids) < _logit_error(model, rtn, ids)


def test_gptq_in_input_order_and_unskipped_head(tiny):
    """The non-default sweep in input order; lm_head, outside the blocks, is calibrated too."""
    model, ids = tiny
    q = copy.deepcopy(model)
    summary = anybit.quantize_(q, "int4-g32", method="gptq", calibration=ids, skip=(), progress=False,
                               gptq=anybit.GPTQOptions(act_order=False))
    assert "lm_head" in summary.converted and isinstance(q.lm_head, QuantLinear)
    rtn = copy.deepcopy(model)
    anybit.quantize_(rtn, "int4-g32", skip=(), progress=False)
    assert _logit_error(model, q, ids) < _logit_error(model, rtn, ids)


def test_hessians_are_shared_by_layers_with_one_input(tiny):
    model, ids = tiny
    block = model.model.layers[0]
    layers = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    with InputMoments(layers) as moments, torch.no_grad():
        model(ids)
    assert moments.owner["self_attn.k_proj"] == moments.owner["self_attn.v_proj"] == "self_attn.q_proj"
    assert moments.owner["mlp.up_proj"] == "mlp.gate_proj"
    assert moments.owner["mlp.down_proj"] == "mlp.down_proj"
    assert torch.equal(moments.hessian("self_attn.k_proj"), moments.hessian("self_attn.q_proj"))
    assert moments.tokens["mlp.down_proj"] == ids.numel()


def test_decoder_blocks_found_or_refused(tiny):
    model, _ = tiny
    name, blocks = decoder_blocks(model)
    assert name == "model.layers" and blocks is model.model.layers
    with pytest.raises(ValueError, match="no nn.ModuleList of blocks"):
        decoder_blocks(nn.Sequential(nn.Linear(4, 4)))


def test_argument_errors(tiny):
    model, ids = tiny
    with pytest.raises(ValueError, match="exactly one of fmt"):
        anybit.quantize_(copy.deepcopy(model), progress=False)
    with pytest.raises(ValueError, match="exactly one of fmt"):
        anybit.quantize_(copy.deepcopy(model), "int4-g32", budget_bits=4, calibration=ids, progress=False)
    with pytest.raises(ValueError, match="used only by method='gptq' and budget_bits"):
        anybit.quantize_(copy.deepcopy(model), "int4-g32", calibration=ids, progress=False)
    with pytest.raises(ValueError, match="needs tokenizer="):
        anybit.quantize_(copy.deepcopy(model), "int4-g32", method="gptq", progress=False)
    with pytest.raises(ValueError, match="below the smallest mix"):
        anybit.quantize_(copy.deepcopy(model), budget_bits=1.5, calibration=ids, progress=False)


def test_mixed_precision_meets_the_budget_and_round_trips(tiny, tmp_path):
    model, ids = tiny
    q = copy.deepcopy(model)
    summary = anybit.quantize_(q, budget_bits=3.5, calibration=ids, method="gptq", progress=False,
                               candidates=("int2-g32", "int3-g32", "int4-g32", "int8-g32"))
    assert summary.bits_per_weight <= 3.5
    assert len(summary.format_counts()) > 1, "a 3.5-bit budget over 2..8-bit candidates must mix"
    for name, costs in summary.sensitivity.items():
        assert costs["int2-g32"] > costs["int4-g32"] > costs["int8-g32"] >= 0, name
        assert q.get_submodule(name).format.spec == summary.formats[name]
    assert "formats chosen" in str(summary)
    anybit.save(q, tmp_path)
    loaded = anybit.load(model.config, tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, q(ids).logits)


def test_mixed_precision_spends_bits_where_they_pay(tiny):
    """At a budget between two uniform widths, the mix loses less than the lower one and beats the same-size uniform mix."""
    model, ids = tiny
    low = copy.deepcopy(model)
    anybit.quantize_(low, "int2-g32", progress=False)
    mixed = copy.deepcopy(model)
    summary = anybit.quantize_(mixed, budget_bits=3.0, calibration=ids, progress=False,
                               candidates=("int2-g32", "int4-g32"))
    assert summary.bits_per_weight <= 3.0
    assert _logit_error(model, mixed, ids) < _logit_error(model, low, ids)


def _brute_force(choices, budget_bits):
    total = sum(c.weights for c in choices)
    best = None
    for combo in itertools.product(*(list(c.cost) for c in choices)):
        bits = sum(c.bits[s] for c, s in zip(choices, combo))
        cost = sum(c.cost[s] for c, s in zip(choices, combo))
        if bits <= budget_bits * total and (best is None or cost < best):
            best = cost
    return best


@pytest.mark.parametrize("seed", range(20))
def test_allocation_is_near_the_exact_optimum(seed):
    """Lagrangian + greedy fill against brute force on small random instances: within the budget, near optimal."""
    rng = random.Random(seed)
    fmts = [anybit.parse_format(s) for s in ("int2-g64", "int3-g64", "int4-g64", "int8-g64")]
    choices = []
    for i in range(6):
        n, k = rng.choice([64, 128, 256]), rng.choice([64, 128, 256])
        scale = rng.uniform(0.1, 10)
        cost = {f.spec: scale * 4.0 ** -f.bits * rng.uniform(0.5, 2) for f in fmts}
        choices.append(LayerChoice(f"l{i}", n * k, {f.spec: storage_bits(f, n, k) for f in fmts}, cost))
    budget = rng.uniform(2.5, 6)
    bits = allocate(choices, budget)
    assert bits <= budget
    got = sum(c.cost[c.chosen] for c in choices)
    assert got <= _brute_force(choices, budget) * 1.25


def test_storage_bits_match_the_stored_tensors():
    for spec in ("int3-g64", "uint4-g32", "lut3-g64", "nvfp4", "int8-gc"):
        qw = anybit.quantize(torch.randn(48, 256), spec)
        assert storage_bits(qw.format, 48, 256) == 8 * qw.nbytes, spec
