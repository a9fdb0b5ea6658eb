"""Every registered format: parsing, round trips, nearest-grid rounding, storage."""

import math

import pytest
import torch
from conftest import ALL_SPECS

import anybit
from anybit.formats import NF4_LEVELS, IntFormat, UIntFormat
from anybit.formats.floating import e2m1_decode, e2m1_encode, e4m3_decode
from anybit.quantized import group

SHAPES = [(1, 40), (7, 96), (3, 300)]


def test_registry_lists_every_family():
    families = [cls.family for cls in anybit.registered_formats()]
    assert families == ["int", "uint", "nf4", "lut", "fp8", "mxfp4", "nvfp4"]
    assert len(ALL_SPECS) == len(set(ALL_SPECS)) == 8 * 6 * 2 + 6 + 3 * 6 + 3


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_spec_round_trips_through_parse(spec):
    fmt = anybit.parse_format(spec)
    assert fmt.spec == spec
    assert anybit.parse_format(fmt) is fmt
    assert anybit.parse_format(spec.upper()) == fmt


@pytest.mark.parametrize(
    "bad, message",
    [
        ("int9-g128", "bit width 9"),
        ("uint0-g64", "bit width 0"),
        ("int4-g100", "group size '100'"),
        ("int4", "not a known weight format"),
        ("lut5-g64", "lut accepts K = 2..4"),
        ("lut1-g64", "lut accepts K = 2..4"),
        ("nf4-g7", "group size '7'"),
        ("fp8-e5m2", "not a known weight format"),
        ("q4_k", "accepted: intK-gG"),
    ],
)
def test_bad_specs_name_what_is_accepted(bad, message):
    with pytest.raises(ValueError, match=message):
        anybit.parse_format(bad)


def test_non_string_spec():
    with pytest.raises(ValueError, match="spec string"):
        anybit.parse_format(4)


def _random_weight(n, k, dtype=torch.float32):
    # Heavy-ish tails and a skewed row, as real weights have.
    w = torch.randn(n, k) * torch.rand(n, 1) * 0.1
    w[0] += 0.05
    return w.to(dtype)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("spec", ALL_SPECS)
def test_grid_points_are_reproduced_exactly(spec, shape):
    """Re-encoding the dequantized weight with the same parameters gives the same values."""
    qw = anybit.quantize(_random_weight(*shape), spec)
    fmt, params = qw.format, dict(qw.params)
    values = qw.dequantize(torch.float64)
    wg, _ = group(values.float(), fmt.group_len(shape[1]))
    again = fmt.decode(fmt.encode(wg, params), params, torch.float64)
    assert torch.equal(again.reshape(shape[0], -1)[:, : shape[1]], values)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("spec", ALL_SPECS)
def test_rtn_picks_the_nearest_grid_point(spec, shape):
    w = _random_weight(*shape)
    qw = anybit.quantize(w, spec)
    fmt, params = qw.format, dict(qw.params)
    n, k = shape
    wg, mask = group(w.double(), fmt.group_len(k))
    ng = wg.shape[1]
    every_code = torch.arange(2**fmt.bits, dtype=torch.uint8).expand(n, ng, -1)
    grid = fmt.decode(every_code, params, torch.float64).nan_to_num(nan=math.inf)  # fp8 NaN codes
    nearest = (wg.unsqueeze(-1) - grid.unsqueeze(-2)).abs().amin(-1)
    got = (wg - group(qw.dequantize(torch.float64), fmt.group_len(k))[0]).abs()
    slack = 1e-6 * w.abs().max().item()
    assert ((got - nearest) * mask <= slack).all()


@pytest.mark.parametrize("spec", [s for s in ALL_SPECS if s.startswith(("int", "uint"))])
def test_integer_rtn_error_within_half_a_step(spec):
    """|w - q(w)| <= step / 2 for weights inside the representable range.

    The step is the scale, except for int1 whose grid {-s, +s} has step 2s.
    """
    w = _random_weight(5, 160)
    qw = anybit.quantize(w, spec)
    fmt = qw.format
    g = fmt.group_len(160)
    wg, mask = group(w.double(), g)
    scale = qw.params["scales"].double().unsqueeze(-1)
    if isinstance(fmt, IntFormat):
        half = 2 ** (fmt.bits - 1)
        lo, hi = (-scale, scale) if fmt.bits == 1 else (-half * scale, (half - 1) * scale)
        step = 2 * scale if fmt.bits == 1 else scale
    else:
        assert isinstance(fmt, UIntFormat)
        zero = qw.params["zeros"].double().unsqueeze(-1)
        lo, hi = -zero * scale, (2**fmt.bits - 1 - zero) * scale
        step = scale
    err = (wg - group(qw.dequantize(torch.float64), g)[0]).abs()
    inside = mask & (wg >= lo) & (wg <= hi)
    assert inside.float().mean() > 0.3  # the bound is not vacuous
    assert (err[inside] <= (step / 2).expand_as(err)[inside] * (1 + 1e-6)).all()


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_bits_per_weight_is_bits_plus_stated_overhead(spec):
    qw = anybit.quantize(_random_weight(6, 256), spec)
    expected = qw.format.bits + qw.format.overhead_bits(6, 256)
    assert qw.bits_per_weight == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_mse_never_worse_than_rtn(spec):
    w = _random_weight(4, 192)
    rtn = anybit.quantize(w, spec, method="rtn").dequantize(torch.float64)
    mse = anybit.quantize(w, spec, method="mse").dequantize(torch.float64)
    assert ((mse - w.double()) ** 2).sum() <= ((rtn - w.double()) ** 2).sum()


def test_mse_improves_on_heavy_tails():
    w = torch.randn(16, 256)
    w[:, ::37] *= 8  # outliers that RTN's absmax scale would chase
    rtn = anybit.quantize(w, "int3-g64").dequantize(torch.float64)
    mse = anybit.quantize(w, "int3-g64", method="mse").dequantize(torch.float64)
    assert ((mse - w.double()) ** 2).sum() < 0.95 * ((rtn - w.double()) ** 2).sum()


# -- definitions of particular formats -------------------------------------


def test_int1_is_the_binary_grid():
    w = torch.tensor([[0.5, -1.0, 2.0, -0.1] * 4])
    values = anybit.quantize(w, "int1-g16").dequantize(torch.float64)
    mean_abs = w.abs().mean().item()
    assert torch.allclose(values, torch.sign(w.double()) * mean_abs, rtol=1e-3)


def test_int_grid_and_offset_binary_codes():
    w = torch.tensor([[7.0, -7.0, 3.0, 0.0] + [0.0] * 12])
    qw = anybit.quantize(w, "int4-g16")
    assert qw.params["scales"].item() == 1.0
    assert qw.unpacked_codes()[0, :4].tolist() == [15, 1, 11, 8]


def test_uint_zero_point_makes_zero_exact():
    w = torch.tensor([[0.0, 1.0, 2.0, 3.0] * 4]) + 0.25
    w[0, 0] = 0.0
    values = anybit.quantize(w, "uint2-g16").dequantize(torch.float64)
    assert values[0, 0].item() == 0.0


def test_nf4_table_matches_qlora():
    assert len(NF4_LEVELS) == 16 and NF4_LEVELS[0] == -1.0 and NF4_LEVELS[7] == 0.0 and NF4_LEVELS[15] == 1.0
    assert list(NF4_LEVELS) == sorted(NF4_LEVELS)
    w = torch.tensor([list(NF4_LEVELS)]) * 0.5
    values = anybit.quantize(w, "nf4-g16").dequantize(torch.float64)
    assert torch.allclose(values, w.double(), atol=1e-4)


def test_lut_tables_are_sorted_and_exact_for_few_levels():
    # A row with exactly 4 distinct normalised values is reproduced by lut2.
    row = torch.tensor([-1.0, -0.25, 0.5, 1.0]).repeat(16)
    w = torch.stack([row * 0.3, row * 2.0])
    qw = anybit.quantize(w, "lut2-gc")
    table = qw.params["table"]
    assert torch.equal(table, table.sort(dim=1).values)
    assert torch.allclose(qw.dequantize(torch.float64), w.double(), rtol=1e-3)


def test_e2m1_round_half_to_even_and_saturation():
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -0.3, -100.0])
    expected = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, -0.5, -6.0]
    assert e2m1_decode(e2m1_encode(x), torch.float64).tolist() == expected


def test_e4m3_bit_patterns():
    bits = torch.tensor([0x38, 0x7E, 0x01, 0xB8], dtype=torch.uint8)
    assert e4m3_decode(bits, torch.float64).tolist() == [1.0, 448.0, 2.0**-9, -1.0]


def test_mxfp4_follows_the_ocp_scale_rule():
    # amax 5.0: floor(log2 5) = 2, minus E2M1's emax 2 -> shared exponent 0 (E8M0 127).
    block = torch.tensor([0.3, -1.7, 5.0, 2.5] + [0.0] * 28)
    # amax 7.0 -> also exponent 0, and 7 saturates to 6 as the spec prescribes.
    block2 = torch.tensor([7.0, 0.2] + [0.0] * 30)
    # amax 0.1: floor(log2 0.1) = -4 -> exponent -6.
    block3 = torch.tensor([0.1, -0.05] + [0.0] * 30)
    qw = anybit.quantize(torch.stack([block, block2, block3]), "mxfp4")
    assert qw.params["scales"].flatten().tolist() == [127, 127, 121]
    values = qw.dequantize(torch.float64)
    assert values[0, :4].tolist() == [0.5, -1.5, 4.0, 2.0]
    assert values[1, :2].tolist() == [6.0, 0.0]
    assert values[2, :2].tolist() == [6 * 2.0**-6, -3 * 2.0**-6]


def test_nvfp4_two_level_scales():
    # Tensor amax 6 * 448 -> tensor scale 1.0; a block with amax 3 gets
    # block scale e4m3(0.5) and stores 3 as 6 (code 7).
    w = torch.zeros(2, 16)
    w[0, 0] = 6 * 448.0
    w[1, :3] = torch.tensor([3.0, -1.5, 0.7])
    qw = anybit.quantize(w, "nvfp4")
    assert qw.params["tensor_scale"].item() == 1.0
    assert e4m3_decode(qw.params["scales"], torch.float64).tolist() == [[448.0], [0.5]]
    values = qw.dequantize(torch.float64)
    assert values[1, :3].tolist() == [3.0, -1.5, 0.75]
    assert values[0, 0].item() == 6 * 448.0


def test_fp8_per_row_scale_and_saturation():
    w = torch.tensor([[448.0, -1.0, 0.0, 3.3] * 8, [1.0, 2.0, 4.0, 8.0] * 8])
    qw = anybit.quantize(w, "fp8-e4m3")
    assert qw.params["scales"].flatten().tolist() == [1.0, pytest.approx(8 / 448, rel=1e-3)]
    assert 0x7F not in qw.unpacked_codes().flatten().tolist()
    values = qw.dequantize(torch.float64)
    assert values[0, :4].tolist() == [448.0, -1.0, 0.0, 3.25]
