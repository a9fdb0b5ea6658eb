"""GPTQ on one weight (anybit.gptq) and calibration data (anybit.calibration), on the CPU."""

from dataclasses import dataclass

import pytest
import torch

import anybit
from anybit.calibration import calibration_ids, default_text
from anybit.gptq import GPTQOptions, gptq_quantize, output_error

ALL_SPECS = anybit.all_specs()


def correlated_hessian(k: int, tokens: int = 2048, seed: int = 0) -> torch.Tensor:
    """X^T X / T for inputs with correlated features and uneven energy, as LLM activations have."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=gen) * 0.2
    energy = torch.linspace(0.2, 3.0, k)[torch.randperm(k, generator=gen)]
    x = (torch.randn(tokens, k, generator=gen) + torch.randn(tokens, k, generator=gen) @ mix) * energy
    return x.T @ x / tokens


@pytest.mark.parametrize("fit", ["rtn", "mse"])
@pytest.mark.parametrize("spec", ALL_SPECS)
def test_identity_hessian_is_plain_quantization(spec, fit):
    """With H = I no error is pushed to other columns: GPTQ gives what quantize gives, bit for bit."""
    w = torch.randn(24, 96, generator=torch.Generator().manual_seed(1))
    got = gptq_quantize(w, torch.eye(96), spec, GPTQOptions(fit=fit))
    want = anybit.quantize(w, spec, method=fit)
    assert torch.equal(got.codes, want.codes)
    for name, tensor in want.params.items():
        assert torch.equal(got.params[name], tensor), name


@pytest.mark.parametrize("act_order", [False, True], ids=["in-order", "act-order"])
@pytest.mark.parametrize("spec", ALL_SPECS)
def test_gptq_beats_round_to_nearest_on_the_calibration_inputs(spec, act_order):
    """Output error tr(D H D^T) below RTN's for every format; the result is a valid weight in the usual layout."""
    k = 160  # not a multiple of 64, 128 or 256: partial last groups
    w = torch.randn(40, k, generator=torch.Generator().manual_seed(2))
    h = correlated_hessian(k)
    got = gptq_quantize(w, h, spec, GPTQOptions(act_order=act_order, block_size=48))
    rtn = anybit.quantize(w, spec)
    assert got.shape == (40, k) and got.format.spec == spec
    assert output_error(w, got.dequantize(torch.float64), h) < output_error(w, rtn.dequantize(torch.float64), h)


@dataclass
class Case:
    spec: str
    n: int
    k: int


@pytest.mark.parametrize("case", [Case("int4-g32", 1, 64), Case("uint3-g16", 7, 48), Case("nf4-gc", 5, 33)],
                         ids=lambda c: f"{c.spec}-{c.n}x{c.k}")
def test_odd_shapes_and_block_sizes_agree_on_what_they_can(case):
    """Block size changes only the order of float updates: codes may differ by rounding, error barely."""
    w = torch.randn(case.n, case.k, generator=torch.Generator().manual_seed(3))
    h = correlated_hessian(case.k)
    errors = [output_error(w, gptq_quantize(w, h, case.spec, GPTQOptions(block_size=b)).dequantize(torch.float64), h)
              for b in (1, 16, 128)]
    assert max(errors) <= min(errors) * 1.05


def test_dead_inputs_get_zero_weight():
    w = torch.randn(8, 64)
    h = correlated_hessian(64)
    h[5, :] = 0
    h[:, 5] = 0
    q = gptq_quantize(w, h, "int4-g32").dequantize(torch.float32)
    assert torch.all(q[:, 5] == 0)


def test_bad_inputs_are_named():
    w = torch.randn(8, 64)
    with pytest.raises(ValueError, match=r"hessian must be a float tensor of shape \(64, 64\)"):
        gptq_quantize(w, torch.eye(32), "int4-g32")
    with pytest.raises(ValueError, match="not positive definite"):
        gptq_quantize(w, -torch.eye(64), "int4-g32")
    with pytest.raises(ValueError, match="bit width 9"):
        gptq_quantize(w, torch.eye(64), "int9-g32")
    with pytest.raises(ValueError, match="needs calibration data"):
        anybit.quantize(w, "int4-g32", method="gptq")
    with pytest.raises(ValueError, match="damp"):
        GPTQOptions(damp=0)
    with pytest.raises(ValueError, match="fit must be"):
        GPTQOptions(fit="gptq")


class Words:
    """A tokenizer stand-in: one id per character."""

    def __call__(self, text):
        return {"input_ids": [ord(c) % 97 for c in text]}


def test_calibration_ids_from_text_tensor_and_default():
    ids = calibration_ids(["abc" * 50, "xyz" * 50], Words(), n_samples=5, seq_len=20, seed=3)
    assert ids.shape == (5, 20) and ids.dtype == torch.long
    assert torch.equal(ids, calibration_ids(["abc" * 50, "xyz" * 50], Words(), n_samples=5, seq_len=20, seed=3))
    given = torch.randint(0, 9, (3, 7))
    assert calibration_ids(given) is given
    shipped = calibration_ids(None, Words(), n_samples=2, seq_len=64)
    assert shipped.shape == (2, 64)
    assert "Genesis" not in default_text() and len(default_text()) > 100_000


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"calibration": torch.rand(2, 3)}, "LongTensor of shape"),
        ({"calibration": torch.zeros(5, dtype=torch.long)}, "LongTensor of shape"),
        ({"calibration": ["some text"]}, "needs tokenizer="),
        ({"calibration": "some text", "tokenizer": Words()}, "not one string"),
        ({"calibration": [], "tokenizer": Words()}, "non-empty list"),
        ({"calibration": ["short"], "tokenizer": Words(), "seq_len": 50}, "fewer than seq_len=50"),
    ],
)
def test_calibration_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        calibration_ids(**kwargs)
