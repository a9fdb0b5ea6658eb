"""``anybit bench --e2e``: decoding tokens/s of a Llama-3.1-8B-shaped model, fp16 against quantized.

Speed does not depend on the weights' values, so the model is built from
Llama-3.1-8B's configuration with random weights (no download).  For each
format and batch size the same stack runs:

* transformers' ``LlamaForCausalLM`` in fp16 with a static KV cache
  (``transformers.StaticCache``), prompt of ``prompt_len`` random tokens;
* attention (``attention=``, the same for every format), for the decoding
  token (the prompt always runs transformers' ``sdpa``):
  ``"anybit-gqa"`` (default) anybit's decode-attention kernel
  (:func:`anybit.attention.decode_attention`: grouped heads native, the
  cache's unfilled slots not read; on an H200 a batch-1 step of fp16 and of
  int4-g128 took 0.28 / 0.33 ms less than with ``"sdpa-packed-gqa"``);
  ``"sdpa-packed-gqa"`` PyTorch's scaled_dot_product_attention on
  the 8 key/value heads, the 4 query heads that share one stacked as 4 query
  rows (:func:`packed_gqa_attention`); ``"flex-gqa"`` PyTorch's flex_attention
  compiled with the layer, grouped-query attention native
  (:func:`flex_gqa_attention`; on an H200 slower than ``sdpa-packed-gqa`` at
  batch 1 and 8, faster at 32); ``"sdpa"`` transformers' own, which under
  ``torch.compile`` copies each layer's key/value cache into 32 heads every step;
* every decoder layer compiled by ``torch.compile`` (one compiled region
  shared by all layers; it fuses the norms, rotary embedding and residual
  adds), by default with Inductor's programmatic dependent launch
  (``inductor_pdl=``: its kernels may launch while the one before them
  ends, on Hopper and later; anybit's decode kernel launches so too, see
  ``gemv.programmatic_launch``; cuBLAS launches its own as it does); the
  linear layers are ``nn.Linear`` (cuBLAS) for fp16 and
  :class:`anybit.QuantLinear` otherwise, every linear layer including
  ``lm_head``;
* one greedy decoding step (forward, argmax, position + 1) captured in a CUDA
  graph and replayed ``steps`` times; tokens/s = batch * steps / time.

Results JSON: ``{"env": {...}, "config": {...}, "rows": [{format, batch,
ms_per_step, tokens_per_s, speedup, weight_gib}]}`` with ``speedup`` the
ratio to fp16 at the same batch size.
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from . import __version__

#: Llama-3.1-8B's shapes (its config.json), all that matters for speed.
LLAMA_31_8B = dict(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
    rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
)
DEFAULT_FORMATS = ("int4-g128", "int3-g128")
DEFAULT_BATCHES = (1, 8, 32)

#: ``attention=`` choices: their names in transformers' attention interface.
ATTENTION = {"anybit-gqa": "anybit_decode_gqa", "flex-gqa": "anybit_flex_gqa",
             "sdpa-packed-gqa": "anybit_sdpa_packed_gqa", "sdpa": "sdpa"}
DEFAULT_ATTENTION = "anybit-gqa"


@dataclass
class E2ERow:
    format: str
    batch: int
    ms_per_step: float
    tokens_per_s: float
    #: tokens/s over fp16's at the same batch size.
    speedup: float
    #: Bytes of all the model's weights (quantized layers, embeddings, norms), GiB.
    weight_gib: float


def random_llama(config: dict, device: torch.device, seed: int = 0) -> nn.Module:
    """An fp16 ``LlamaForCausalLM`` with the given config and random N(0, 0.02) weights on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**config))
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def _prompt_or_token(module, query, key, value, attention_mask, dropout, scaling, is_causal, kwargs):
    """transformers' ``sdpa`` output for what the decoding-token paths do not take
    (several query tokens, no grouped heads, a position bias), else None."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    heads, length, kv_heads = query.shape[1], query.shape[2], key.shape[1]
    if length != 1 or heads == kv_heads or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if heads % kv_heads:
        raise ValueError(f"query heads ({heads}) must be a multiple of key/value heads ({kv_heads})")
    return None


def packed_gqa_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                         is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """Grouped-query attention of one decoding token without repeating the key/value heads.

    Shapes (transformers' attention interface): ``query`` (B, Hq, L, D),
    ``key``/``value`` (B, Hkv, S, D), ``attention_mask`` boolean or additive,
    (B or 1, 1, L, S) or None; returns ((B, L, Hq, D), None).

    For L = 1 the R = Hq / Hkv query heads that share a key/value head
    (heads h*R .. h*R+R-1) become R query rows of head h: query viewed as
    (B, Hkv, R, D), the mask (B, 1, 1, S) broadcast over them, so
    scaled_dot_product_attention reads each cached key/value once and nothing
    is copied. Any other L (the prompt) goes to transformers' ``sdpa``.
    """
    other = _prompt_or_token(module, query, key, value, attention_mask, dropout, scaling, is_causal, kwargs)
    if other is not None:
        return other
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    out = torch.nn.functional.scaled_dot_product_attention(
        query.reshape(batch, kv_heads, heads // kv_heads, dim), key, value, attn_mask=attention_mask,
        dropout_p=dropout, scale=scaling)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def flex_gqa_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                       is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """Attention of one decoding token through PyTorch's flex_attention, grouped heads native.

    Shapes as :func:`packed_gqa_attention`. The mask's last row, (B, S) after
    broadcasting the batch, is read inside the kernel by a score modifier
    (-inf where a boolean mask is False, else the additive mask's value); no
    block mask is passed, so every cache block is visited. Under
    ``torch.compile`` the call becomes Inductor's flex-attention kernel;
    uncompiled it runs PyTorch's reference. Any other L (the prompt) goes to
    transformers' ``sdpa``. No dropout.
    """
    from torch.nn.attention.flex_attention import flex_attention

    other = _prompt_or_token(module, query, key, value, attention_mask, dropout, scaling, is_causal, kwargs)
    if other is not None:
        return other
    if dropout:
        raise ValueError(f"flex-gqa attention has no dropout (got dropout={dropout})")
    score_mod = None
    if attention_mask is not None:
        keep = attention_mask[:, 0, -1, :].expand(query.shape[0], key.shape[2])
        boolean = keep.dtype == torch.bool

        def masked(score, b, h, q, kv):
            return torch.where(keep[b, kv], score, -float("inf")) if boolean else score + keep[b, kv]

        score_mod = masked
    out = flex_attention(query, key, value, score_mod=score_mod, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def decode_gqa_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                         is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """Attention of one decoding token on anybit's kernel (:func:`anybit.attention.decode_attention`).

    Shapes as :func:`packed_gqa_attention`; the mask's last row, (B or 1, S),
    goes to the kernel, which reads each cached key/value once for the query
    heads sharing it and does not read the slots the mask drops.  Any other L
    (the prompt) goes to transformers' ``sdpa``.  No dropout.
    """
    from .attention import decode_attention

    other = _prompt_or_token(module, query, key, value, attention_mask, dropout, scaling, is_causal, kwargs)
    if other is not None:
        return other
    if dropout:
        raise ValueError(f"anybit-gqa attention has no dropout (got dropout={dropout})")
    mask = None if attention_mask is None else attention_mask[:, 0, -1, :]
    out = decode_attention(query[:, :, 0], key, value, mask, scaling)
    return out[:, None], None


_FUNCTIONS = {"anybit_decode_gqa": decode_gqa_attention, "anybit_flex_gqa": flex_gqa_attention,
              "anybit_sdpa_packed_gqa": packed_gqa_attention}


def use_attention(model: nn.Module, attention: str) -> None:
    """Set ``model``'s attention to one of :data:`ATTENTION` (registering ours with transformers)."""
    if attention not in ATTENTION:
        raise ValueError(f"attention={attention!r}: expected one of {sorted(ATTENTION)}")
    name = ATTENTION[attention]
    if name in _FUNCTIONS:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(name, _FUNCTIONS[name])
        AttentionMaskInterface.register(name, sdpa_mask)  # the same masks as "sdpa"
    model.set_attn_implementation(name)


#: Chunks of the vocabulary the greedy choice first reduces separately.
ARGMAX_CHUNKS = 64


def _next_token(logits: torch.Tensor, token: torch.Tensor, position: torch.Tensor) -> None:
    last = logits[:, -1].float()  # (B, V)
    batch, vocab = last.shape
    width = -(-vocab // ARGMAX_CHUNKS)
    padded = torch.nn.functional.pad(last, (0, width * ARGMAX_CHUNKS - vocab), value=-float("inf"))
    best, where = padded.view(batch, ARGMAX_CHUNKS, width).max(-1)  # first maximum of each chunk
    chunk = best.argmax(-1, keepdim=True)  # the first chunk holding the maximum
    token.copy_(chunk * width + where.gather(-1, chunk))
    position.add_(1)


@functools.cache
def _next_token_compiled():
    return torch.compile(_next_token, fullgraph=True, dynamic=False)


def next_token(logits: torch.Tensor, token: torch.Tensor, position: torch.Tensor) -> None:
    """Greedy choice: ``token`` (B, 1) <- the first argmax of ``logits`` (B, L, V)'s last
    position, as ``argmax(-1)`` gives it; ``position`` (1,) += 1.

    Reduced in two steps (the maximum of each of ``ARGMAX_CHUNKS`` chunks of the
    vocabulary, then of the chunks), compiled by Inductor on CUDA: on an H200 PyTorch's
    own argmax kernel took 35 us for one row of 128256 logits, Inductor's single-kernel
    argmax 29 us.  Elsewhere eager, the same result."""
    (_next_token_compiled() if logits.is_cuda else _next_token)(logits, token, position)


class Decoder:
    """One greedy decoding step of ``model`` at batch ``batch``, replayable as a CUDA graph.

    The step reads ``self.token`` (batch, 1) and ``self.position`` (1,),
    writes the argmax token back to ``self.token`` and adds 1 to ``self.position``.
    """

    def __init__(self, model: nn.Module, batch: int, prompt_len: int, max_steps: int, seed: int = 0):
        from transformers import StaticCache

        self.model = model
        device = next(model.parameters()).device
        gen = torch.Generator(device=device).manual_seed(seed)
        prompt = torch.randint(0, model.config.vocab_size, (batch, prompt_len), device=device, generator=gen)
        self.cache = StaticCache(config=model.config, max_cache_len=prompt_len + max_steps)
        with torch.inference_mode():
            logits = model(input_ids=prompt, past_key_values=self.cache, use_cache=True,
                           cache_position=torch.arange(prompt_len, device=device)).logits
        self.token = logits[:, -1:].argmax(-1).clone()
        self.position = torch.tensor([prompt_len], device=device)
        self.graph: torch.cuda.CUDAGraph | None = None

    def step(self) -> None:
        with torch.inference_mode():
            logits = self.model(input_ids=self.token, past_key_values=self.cache, use_cache=True,
                                cache_position=self.position).logits
            next_token(logits, self.token, self.position)

    def capture(self, warmup: int = 3) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self.step()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step()

    def time_ms(self, steps: int) -> float:
        """Mean milliseconds per step over ``steps`` graph replays."""
        assert self.graph is not None, "capture() first"
        self.graph.replay()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            self.graph.replay()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / steps


#: Each decoder layer compiles once per shape (transformers layers differ in
#: their ``layer_idx`` constant; the generated code is cached and shared).
RECOMPILE_LIMIT = 4096


#: What ``_compile_layers`` compiles: each decoder layer as a graph of its own, or the
#: model's whole forward as one graph (where ``SiblingFusion`` also sees the products
#: across layers: a layer's input norm reads the previous layer's down projection).
COMPILE_SCOPES = ("layers", "model")


def _compile_layers(model: nn.Module, fusion: bool, inductor_pdl: bool = True, residual: bool = True,
                    norm: bool = True, scope: str = "layers", glu: bool = True) -> None:
    import torch._dynamo.config

    if scope not in COMPILE_SCOPES:
        raise ValueError(f"scope={scope!r}: expected one of {', '.join(COMPILE_SCOPES)}")

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    torch._dynamo.config.accumulated_recompile_limit = max(
        torch._dynamo.config.accumulated_recompile_limit, RECOMPILE_LIMIT
    )
    options = {"triton.enable_pdl": inductor_pdl}
    if fusion:
        from ._matmul.fusion import SiblingFusion

        options["post_grad_custom_post_pass"] = SiblingFusion(residual=residual, norm=norm, glu=glu)
    if scope == "model":
        model.forward = torch.compile(model.forward, fullgraph=True, dynamic=False, options=options)
        return
    for layer in model.model.layers:
        layer.compile(fullgraph=True, dynamic=False, options=options)


def step_ms(model: nn.Module, batch: int, *, prompt_len: int, steps: int, rounds: int = 1,
            max_steps: int | None = None) -> float:
    """Milliseconds per graph-replayed decoding step of ``model`` at ``batch``: the best of
    ``rounds`` timings of ``steps`` replays each, on a cache of ``prompt_len + max_steps``
    slots (default: just enough for the steps run)."""
    decoder = Decoder(model, batch, prompt_len, max_steps=max_steps or rounds * (steps + 1) + 7)
    decoder.capture()
    ms = min(decoder.time_ms(steps) for _ in range(rounds))
    del decoder
    torch.cuda.empty_cache()
    return ms


def run(
    formats=DEFAULT_FORMATS, batches=DEFAULT_BATCHES, *, config: dict | None = None, prompt_len: int = 128,
    steps: int = 100, fusion: bool = True, attention: str = DEFAULT_ATTENTION, inductor_pdl: bool = True,
    log=print, on_result=None,
) -> dict:
    """Measure fp16 and each format (see the module docstring); returns the results dict.

    ``fusion``: compile the quantized models' layers with ``anybit.SiblingFusion``
    (q/k/v and gate/up each in one kernel launch, residual adds folded into the products
    before them, the post-attention norm split between the launches around it, with no
    kernel of its own, at one row of x the MLP's silu(gate) * up written by the gate/up launch; fp16 runs
    transformers' layers as they are).
    ``attention``: a key of :data:`ATTENTION`, the same for every format.
    ``inductor_pdl``: compile every model's layers with Inductor's programmatic dependent
    launch (``torch._inductor.config.triton.enable_pdl``).

    ``on_result``, if given, is called with the results so far after each measurement
    (to save partial results of a long run).
    """
    from .nn import model_nbytes, quantize_

    if not torch.cuda.is_available():
        raise ValueError("anybit bench --e2e needs a CUDA GPU")
    config = dict(config or LLAMA_31_8B)
    device = torch.device("cuda")
    base = random_llama(config, device)
    use_attention(base, attention)
    import transformers

    env = {
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "transformers": transformers.__version__,
        "anybit": __version__, "date": datetime.date.today().isoformat(),
        "stack": f"transformers LlamaForCausalLM, StaticCache, attention {attention}, decoder layers "
                 "torch.compile'd, one CUDA graph per decoding step; all linear layers (lm_head included) quantized"
                 + ("; quantized layers sharing an input in one launch, residual adds folded into the "
                    "products, a norm between two products split between their launches and the MLP's activation "
                    "written by the gate/up launch at one row of x (anybit.SiblingFusion)" if fusion else "")
                 + ("; Inductor's kernels with programmatic dependent launch" if inductor_pdl else ""),
        "prompt_len": prompt_len, "steps": steps, "sibling_fusion": fusion, "attention": attention,
        "inductor_pdl": inductor_pdl,
    }
    rows: list[E2ERow] = []
    fp16: dict[int, float] = {}

    def result() -> dict:
        return {"env": env, "config": config, "rows": [asdict(r) for r in rows]}

    for fmt in ("float16", *formats):
        if fmt == "float16":
            model = base
        else:
            model = copy.deepcopy(base)
            quantize_(model, fmt, skip=(), progress=False)
        gib = model_nbytes(model) / 2**30
        _compile_layers(model, fusion and fmt != "float16", inductor_pdl)
        for batch in batches:
            ms = step_ms(model, batch, prompt_len=prompt_len, steps=steps)
            if fmt == "float16":
                fp16[batch] = ms
            rows.append(E2ERow(fmt, batch, ms, batch * 1000 / ms, fp16[batch] / ms, gib))
            log(f"{fmt:>10} batch {batch:>3}: {ms:7.3f} ms/step, {batch * 1000 / ms:8.1f} tokens/s, "
                f"{fp16[batch] / ms:.2f}x fp16 ({gib:.2f} GiB of weights)")
            if on_result is not None:
                on_result(result())
        if model is not base:
            del model
            torch.cuda.empty_cache()
    return result()


def write(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path
