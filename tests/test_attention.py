"""anybit.attention.decode_attention against a float64 reference (interpreter on CPU, kernel on CUDA)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from anybit.attention import AttentionConfig, attention_config, decode_attention, decode_attention_torch
from conftest import unit_roundoff

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Case:
    batch: int
    heads: int
    kv_heads: int
    slots: int
    dim: int
    #: "none", "prefix" (the first slots kept per sequence, as a static cache's),
    #: "random", "broadcast" (one boolean row for the batch), "additive", "empty" (sequence 0 keeps nothing)
    mask: str = "prefix"
    dtype: torch.dtype = torch.float16
    block_s: int = 16
    #: None: the heuristic's config
    splits: int | None = 1

    def __str__(self):
        return (f"B{self.batch}-H{self.heads}/{self.kv_heads}-S{self.slots}-D{self.dim}-{self.mask}-"
                f"{str(self.dtype)[6:]}-b{self.block_s}-s{self.splits}")


CASES = [
    Case(1, 4, 1, 1, 16),  # one slot, one key/value head
    Case(2, 4, 2, 37, 16),  # slots not a multiple of the block
    Case(3, 6, 3, 70, 32, "random", splits=2),  # group of 2, last split short
    Case(1, 32, 8, 130, 64, "prefix", splits=3),  # Llama's grouping
    Case(2, 8, 8, 50, 16, "none"),  # no grouping, no mask
    Case(2, 8, 2, 45, 16, "broadcast", splits=3),
    Case(2, 8, 2, 45, 16, "additive", splits=2),
    Case(3, 4, 2, 33, 16, "empty", splits=3),
    Case(2, 12, 4, 64, 32, "prefix", torch.bfloat16, splits=2),  # group of 3 padded
    Case(2, 4, 2, 29, 16, "random", torch.float32),
    Case(2, 4, 2, 100, 16, "prefix", block_s=32, splits=None),  # the heuristic's split
    Case(1, 40, 8, 20, 16, "prefix", block_s=16, splits=2),  # group of 5 padded to 16
]


def _inputs(case: Case, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    b, s, d = case.batch, case.slots, case.dim
    q = torch.randn(b, case.heads, d, generator=gen).to(case.dtype)
    k = torch.randn(b, case.kv_heads, s, d, generator=gen).to(case.dtype)
    v = torch.randn(b, case.kv_heads, s, d, generator=gen).to(case.dtype)
    mask = None
    if case.mask in ("prefix", "empty"):
        lengths = torch.randint(1, s + 1, (b,), generator=gen)
        if case.mask == "empty":
            lengths[0] = 0
        mask = torch.arange(s)[None, :] < lengths[:, None]
    elif case.mask == "random":
        mask = torch.rand(b, s, generator=gen) < 0.5
        mask[:, 0] = True
    elif case.mask == "broadcast":
        mask = torch.arange(s)[None, :] < s - 3
    elif case.mask == "additive":
        mask = (torch.randn(b, s, generator=gen) * 2).to(case.dtype)
    to = dict(device=DEVICE)
    return q.to(**to), k.to(**to), v.to(**to), None if mask is None else mask.to(**to)


def _reference(q, k, v, mask, scale=None):
    mask64 = None if mask is None else (mask if mask.dtype == torch.bool else mask.double())
    return decode_attention_torch(q.double(), k.double(), v.double(), mask64, scale)


def assert_attention_close(out, q, k, v, mask, scale=None):
    """out against the float64 reference: the probabilities' rounding to v's dtype
    (relative u per term, so at most u * max|v|), fp32 scores and sums, and the
    output's rounding, times 2."""
    ref = _reference(q, k, v, mask, scale)
    assert out.shape == q.shape and out.dtype == q.dtype
    u = unit_roundoff(q.dtype)
    vmax = v.double().abs().amax(dim=(2, 3)).repeat_interleave(q.shape[1] // k.shape[1], dim=1)[..., None]
    bound = 2 * (u * ref.abs() + (u + 64 * 2.0**-24) * vmax) + 1e-30
    worst = ((out.double() - ref).abs() / bound).max().item()
    assert torch.isfinite(out).all()
    assert worst <= 1.0, f"max error/bound = {worst:.3f}"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_decode_attention_matches_float64(case):
    q, k, v, mask = _inputs(case)
    config = None if case.splits is None else AttentionConfig(block_s=case.block_s, splits=case.splits)
    out = decode_attention(q, k, v, mask, config=config)
    assert_attention_close(out, q, k, v, mask)
    if case.mask == "empty":
        assert not out[0].any(), "a sequence whose mask keeps nothing gets zeros"


def test_explicit_scale_and_repeated_launches_agree():
    """A non-default scale; three split launches in a row give identical results
    (the split counters are left zero by each)."""
    case = Case(2, 8, 2, 90, 32, "prefix", splits=3)
    q, k, v, mask = _inputs(case, seed=1)
    config = AttentionConfig(block_s=16, splits=3)
    outs = [decode_attention(q, k, v, mask, scale=0.3, config=config) for _ in range(3)]
    assert_attention_close(outs[0], q, k, v, mask, scale=0.3)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_reference_matches_sdpa():
    """The reference itself, against PyTorch's SDPA on repeated key/value heads."""
    q, k, v, mask = _inputs(Case(2, 8, 2, 30, 16, "random", torch.float32))
    q, k, v, mask = (t.cpu() for t in (q, k, v, mask))
    ref = decode_attention_torch(q, k, v, mask)
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q[:, :, None], k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), attn_mask=mask[:, None, None, :])
    torch.testing.assert_close(ref, sdpa[:, :, 0], rtol=1e-5, atol=1e-5)


def test_heuristic_splits_into_whole_ranges():
    device = torch.device(DEVICE)
    for batch, kv_heads, slots in [(1, 8, 1), (1, 8, 288), (1, 8, 8192), (32, 8, 288), (4, 2, 1000), (1, 1, 0)]:
        config = attention_config(batch, kv_heads, slots, device)
        blocks = max(1, -(-slots // config.block_s))
        per_split = -(-blocks // config.splits)
        assert 1 <= config.splits <= blocks and -(-blocks // per_split) == config.splits


def test_empty_cache_gives_zeros():
    q = torch.randn(1, 4, 16, dtype=torch.float16, device=DEVICE)
    kv = torch.empty(1, 2, 0, 16, dtype=torch.float16, device=DEVICE)
    assert torch.equal(decode_attention(q, kv, kv), torch.zeros_like(q))


@pytest.mark.parametrize("bad, message", [
    (lambda q, k, v, m: (q[:, :, None], k, v, m), r"expected query \(B, Hq, D\)"),
    (lambda q, k, v, m: (q, k, v[:, :, :-1], m), "of one shape"),
    (lambda q, k, v, m: (q[:, :3], k, v, m), r"query heads \(3\) must be a multiple of key/value heads \(2\)"),
    (lambda q, k, v, m: (q, k, v, m[:, :-1]), r"mask must be \(B or 1, S\)"),
    (lambda q, k, v, m: (q, k, v, m.int()), "mask must be boolean"),
    (lambda q, k, v, m: (q, k.float(), v.float(), m), "must share one dtype"),
    (lambda q, k, v, m: (q[..., :12], k[..., :12], v[..., :12], m), "head dimension 12"),
])
def test_bad_inputs_are_refused(bad, message):
    q, k, v, mask = _inputs(Case(2, 4, 2, 20, 16))
    with pytest.raises(ValueError, match=message):
        decode_attention(*bad(q, k, v, mask))


def test_splits_must_divide_the_blocks():
    q, k, v, mask = _inputs(Case(1, 4, 2, 80, 16))
    with pytest.raises(ValueError, match="splits=4 does not divide the 5 blocks"):
        decode_attention(q, k, v, mask, config=AttentionConfig(block_s=16, splits=4))


def test_op_registration():
    """Schema, fake and autograd registration checks of anybit::decode_attention."""
    q, k, v, mask = _inputs(Case(1, 4, 2, 20, 16, splits=2))
    torch.library.opcheck(torch.ops.anybit.decode_attention.default, (q, k, v, mask, 1 / math.sqrt(16), 16, 2, 4, 2),
                          test_utils=("test_schema", "test_faketensor"))
