"""The end-to-end benchmark's attention: grouped-query attention without repeated key/value heads.

float32 (on the GPU where there is one, since anybit's kernel runs on the CPU only in
Triton's interpreter), a tiny Llama with 4 query heads per key/value head; the reference is
transformers' eager attention (key/value heads repeated, explicit softmax).
"""

import shutil

import pytest
import torch

from anybit import e2e

pytest.importorskip("transformers")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TINY = dict(e2e.LLAMA_31_8B, vocab_size=256, hidden_size=128, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256)


def _model(attention: str) -> torch.nn.Module:
    model = e2e.random_llama(TINY, DEVICE, seed=3).float()
    if attention == "eager":
        model.set_attn_implementation("eager")
    else:
        e2e.use_attention(model, attention)
    return model


def _decode(model, batch: int, steps: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Greedy tokens and each step's logits after an 8-token prompt."""
    decoder = e2e.Decoder(model, batch, prompt_len=8, max_steps=steps + 4, seed=5)
    tokens, logits = [], []
    for _ in range(steps):
        with torch.inference_mode():
            out = model(input_ids=decoder.token, past_key_values=decoder.cache, use_cache=True,
                        cache_position=decoder.position).logits
        logits.append(out.clone())
        decoder.token.copy_(out[:, -1:].argmax(-1))
        decoder.position.add_(1)
        tokens.append(decoder.token.clone())
    return torch.cat(tokens, 1), logits


OURS = [name for name in e2e.ATTENTION if name != "sdpa"]


@pytest.mark.parametrize("attention", OURS)
@pytest.mark.parametrize("batch", [1, 3])
def test_grouped_attention_matches_repeated_heads(batch, attention):
    ref_tokens, ref_logits = _decode(_model("eager"), batch, steps=5)
    tokens, logits = _decode(_model(attention), batch, steps=5)
    assert torch.equal(tokens, ref_tokens)
    for got, want in zip(logits, ref_logits):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention", OURS)
def test_grouped_attention_compiles_without_graph_breaks(attention):
    """Each decoder layer compiles with fullgraph=True and gives the eager logits."""
    torch._dynamo.reset()
    ref_tokens, ref_logits = _decode(_model("eager"), 2, steps=3)
    model = _model(attention)
    e2e._compile_layers(model, fusion=False)
    tokens, logits = _decode(model, 2, steps=3)
    torch._dynamo.reset()
    assert torch.equal(tokens, ref_tokens)
    for got, want in zip(logits, ref_logits):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention", OURS)
def test_grouped_attention_leaves_the_prompt_to_sdpa(monkeypatch, attention):
    """More than one query token (the prompt) goes to transformers' sdpa unchanged."""
    import transformers.integrations.sdpa_attention as sdpa

    calls = []
    real = sdpa.sdpa_attention_forward

    def spy(*args, **kwargs):
        calls.append(args[1].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(sdpa, "sdpa_attention_forward", spy)
    _decode(_model(attention), 1, steps=2)
    assert [shape[2] for shape in calls] == [8] * TINY["num_hidden_layers"]


def test_unknown_attention_is_refused():
    model = e2e.random_llama(TINY, torch.device("cpu"))
    with pytest.raises(ValueError, match="attention='flash'.*sdpa"):
        e2e.use_attention(model, "flash")


@pytest.mark.parametrize("vocab", [5, 64, 130, 1000])
@pytest.mark.parametrize("batch", [1, 3])
def test_next_token_is_the_first_argmax(batch, vocab):
    """The two-step greedy choice picks what argmax picks, ties (the first) and -inf included."""
    logits = torch.randn(batch, 2, vocab).half()
    logits[0, -1, vocab // 2] = logits[0, -1, vocab - 1] = 100  # a tie: the first wins
    if batch > 1:
        logits[1, -1] = -float("inf")
    token, position = torch.zeros(batch, 1, dtype=torch.long), torch.tensor([7])
    e2e.next_token(logits, token, position)
    assert torch.equal(token, logits[:, -1:].argmax(-1)) and position.item() == 8


@pytest.mark.skipif(DEVICE.type == "cpu" and shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="Inductor compiles the graph's CPU code with a C++ compiler, and none is installed")
@pytest.mark.parametrize("scope", e2e.COMPILE_SCOPES)
def test_quantized_layers_fold_their_residual_adds(monkeypatch, scope):
    """In a compiled transformers decoder layer, SiblingFusion leaves two launches for q/k/v and
    gate/up (3 saved), folds both residual adds into the products before them and the
    post-attention norm into the output projection's launch, and the MLP's silu(gate) * up into
    the gate/up launch; the logits stay close to those of
    the same model run eagerly.  With the whole forward as one graph (``scope="model"``) the
    norms before each later layer and before the output layer fold as well."""
    from anybit._matmul import fusion
    from anybit.nn import quantize_

    monkeypatch.setenv("ANYBIT_BACKEND", "triton")
    if DEVICE.type == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    counts = []

    class Counting(fusion.SiblingFusion):
        def __call__(self, graph):
            fusion.register_fallbacks(graph)
            counts.append((fusion.fuse_sibling_gemv(graph), fusion.fuse_residual_add(graph),
                           fusion.fuse_rms_norm(graph), fusion.fuse_glu(graph)))

    def quantized():
        model = e2e.random_llama(TINY, DEVICE, seed=3)
        quantize_(model, "int4-g32", skip=(), progress=False)
        e2e.use_attention(model, "anybit-gqa")
        return model

    torch._dynamo.reset()
    model, eager = quantized(), quantized()
    options = {"post_grad_custom_post_pass": Counting(), "fx_graph_cache": False}
    if scope == "model":
        model.forward = torch.compile(model.forward, fullgraph=True, dynamic=False, options=options)
    else:
        for layer in model.model.layers:
            layer.compile(fullgraph=True, dynamic=False, options=options)
    _, logits = _decode(model, 1, steps=2)
    torch._dynamo.reset()
    layers = TINY["num_hidden_layers"]
    expected = (3, 2, 1) if scope == "layers" else (3 * layers, 2 * layers, 2 * layers)
    glu = 1 if scope == "layers" else layers  # at one row of x (the steps), none in the prompt's graphs
    assert counts and all(c[:3] == expected and c[3] in (0, glu) for c in counts), counts
    assert any(c[3] == glu for c in counts), counts
    _, eager_logits = _decode(eager, 1, steps=2)
    for a, b in zip(logits, eager_logits):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
