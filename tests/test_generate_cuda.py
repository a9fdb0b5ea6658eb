"""Quantized transformers models on the GPU: generate with a static cache, torch.compile + CUDA graphs, GPTQ."""

import copy

import pytest
import torch
import transformers

import anybit
from anybit import e2e

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TINY = dict(
    vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
)


@pytest.fixture(scope="module")
def quantized():
    model = e2e.random_llama(TINY, torch.device("cuda"))
    model.lm_head.weight.data *= 30  # well separated logits, so greedy tokens do not hinge on rounding
    anybit.quantize_(model, "int4-g64", skip=(), progress=False)
    return model


def _generate(model, ids, **kwargs):
    return model.generate(ids, max_new_tokens=12, do_sample=False, cache_implementation="static",
                          pad_token_id=0, **kwargs)


def test_generate_static_cache_compiled_with_cuda_graphs(quantized):
    """transformers compiles the decoding step itself for a static cache (mode reduce-overhead: CUDA graphs);
    fullgraph=True makes any graph break, in the linear layers or elsewhere, an error."""
    ids = torch.randint(0, 512, (2, 9), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    eager = _generate(quantized, ids, disable_compile=True)
    config = transformers.CompileConfig(fullgraph=True, mode="reduce-overhead")
    compiled = _generate(quantized, ids, compile_config=config)
    again = _generate(quantized, ids, compile_config=config)
    assert torch.equal(compiled, eager)
    assert torch.equal(again, eager)


@pytest.mark.parametrize("attention", sorted(e2e.ATTENTION))
@pytest.mark.parametrize("fusion", [False, True], ids=["apart", "fused"])
@pytest.mark.parametrize("batch", [1, 8, 32])
def test_e2e_decoder_graph_replays_the_eager_steps(quantized, batch, fusion, attention):
    """The benchmark's captured decoding step produces the tokens that eager steps produce
    (with anybit.SiblingFusion: q/k/v and gate/up in one launch each; with either attention)."""
    e2e.use_attention(quantized, "sdpa")
    eager = e2e.Decoder(quantized, batch, prompt_len=16, max_steps=32)
    tokens = []
    for _ in range(6):
        eager.step()
        tokens.append(eager.token.clone())
    torch._dynamo.reset()
    e2e.use_attention(quantized, attention)
    e2e._compile_layers(quantized, fusion)
    graphed = e2e.Decoder(quantized, batch, prompt_len=16, max_steps=32)
    graphed.capture(warmup=3)  # three eager steps, then one captured
    replayed = []
    for _ in range(3):
        graphed.graph.replay()
        replayed.append(graphed.token.clone())
    assert torch.equal(torch.cat(replayed, 1), torch.cat(tokens[3:], 1))
    assert graphed.time_ms(3) > 0


def test_gptq_on_the_gpu_matches_its_promise():
    model = e2e.random_llama(TINY, torch.device("cuda"))
    ids = torch.randint(0, 512, (16, 64), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    rtn, gptq = copy.deepcopy(model), copy.deepcopy(model)
    anybit.quantize_(rtn, "int3-g64", progress=False)
    summary = anybit.quantize_(gptq, "int3-g64", method="gptq", calibration=ids, progress=False)
    assert all(isinstance(gptq.get_submodule(n), anybit.QuantLinear) for n in summary.converted)
    with torch.no_grad():
        ref = model(ids).logits.float()
        err_rtn = (rtn(ids).logits.float() - ref).square().mean()
        err_gptq = (gptq(ids).logits.float() - ref).square().mean()
    assert err_gptq < err_rtn
