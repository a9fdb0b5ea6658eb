"""Quantized transformers models on the CPU: generate with dynamic and static caches, dynamo without graph breaks."""

import pytest
import torch
from conftest import tiny_llama

import anybit


@pytest.fixture(scope="module")
def quantized():
    model = tiny_llama()
    anybit.quantize_(model, "int4-g32", skip=(), progress=False)
    return model


def test_generate_static_cache_matches_dynamic(quantized):
    ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(3))
    settings = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    dynamic = quantized.generate(ids, **settings)
    static = quantized.generate(ids, cache_implementation="static", **settings)
    assert dynamic.shape == (2, 17)
    assert torch.equal(static, dynamic)


def test_forward_traces_without_graph_breaks(quantized):
    """fullgraph=True raises on any graph break; the eager backend keeps the test fast."""
    ids = torch.randint(0, 97, (1, 9), generator=torch.Generator().manual_seed(4))
    compiled = torch.compile(quantized, backend="eager", fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(ids).logits, quantized(ids).logits)
