"""``anybit.attention``: attention of one decoding token over a key/value cache.

Decoding reads each layer's cache once per token; grouped-query models (Llama
3: 32 query heads on 8 key/value heads) share every key/value head between
several query heads.  :func:`decode_attention` computes, per sequence ``b`` and
query head ``j`` (key/value head ``h = j // (Hq / Hkv)``)::

    out[b, j] = softmax(query[b, j] @ key[b, h]^T * scale + mask[b]) @ value[b, h]

on a Triton kernel (:mod:`anybit._attention.decode_triton`) that reads each
cached key/value once for all the query heads sharing it, does not read the
slots the mask drops (a static cache's unfilled tail), splits the slots over
enough programs to fill the GPU and combines the splits in the same launch.
:func:`decode_attention_torch` is the pure torch reference with the same signature.  The op is registered as ``anybit::decode_attention`` with
a fake, so ``torch.compile`` and CUDA graphs take it as one opaque call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ._matmul.gemv import TRITON_INSTALLED, interpreting, pdl_arguments, sm_count, split_counters

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: head dimensions the kernel takes (a power of two, one tile wide)
HEAD_DIMS = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class AttentionConfig:
    """Launch settings of the decode-attention kernel."""

    #: cache slots per block (keys and values loaded per loop iteration)
    block_s: int = 64
    #: ranges of slots per (sequence, key/value head), each a separate program
    splits: int = 1
    num_warps: int = 4
    #: loads in flight across loop iterations (ranges of several blocks)
    num_stages: int = 2


def attention_config(batch: int, kv_heads: int, slots: int, device: torch.device) -> AttentionConfig:
    """The heuristic: blocks of 64 slots (128 from 512 slots where batch * kv_heads is at
    most a quarter of the SMs), split so that about one program per SM runs (never
    more splits than blocks, every split the same whole number of blocks), 3 stages
    where a 64-slot program loops over several blocks.

    Measured on the H200 (benchmarks/results/h200-2026-11-22-attention-configs-a2.txt,
    32 layers of Llama-3.1-8B's heads): two programs per SM and 64-slot blocks
    everywhere (the first version) took 382 / 1550 us at batch 32 with 186 / 1024
    slots, against 321 / 1134-1148 us unsplit; at batch 1 with 1024 slots 276 us
    against 234 us for 8 splits of 128-slot blocks; but at batch 8 with 1024 slots
    128-slot blocks in 3 splits took 526 us against 452-489 us for 64-slot blocks
    in 4 or 8 splits (-a3.txt; the final heuristic in -a4.txt).
    """
    block_s = 128 if slots >= 512 and 4 * batch * kv_heads <= sm_count(device) else 64
    blocks = max(1, -(-slots // block_s))
    want = max(1, -(-sm_count(device) // max(1, batch * kv_heads)))
    per_split = -(-blocks // min(blocks, want))
    stages = 3 if per_split > 1 and block_s == 64 else 2
    return AttentionConfig(block_s=block_s, splits=-(-blocks // per_split), num_stages=stages)


def _check(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None) -> None:
    if query.dim() != 3 or key.dim() != 4 or value.shape != key.shape:
        raise ValueError(f"expected query (B, Hq, D) and key, value (B, Hkv, S, D) of one shape; got query "
                         f"{tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}")
    batch, heads, dim = query.shape
    if key.shape[0] != batch or key.shape[3] != dim:
        raise ValueError(f"key {tuple(key.shape)} does not match query {tuple(query.shape)} in B or D")
    if heads % key.shape[1]:
        raise ValueError(f"query heads ({heads}) must be a multiple of key/value heads ({key.shape[1]})")
    if mask is not None:
        if mask.dim() != 2 or mask.shape[0] not in (1, batch) or mask.shape[1] != key.shape[2]:
            raise ValueError(f"mask must be (B or 1, S) = ({batch} or 1, {key.shape[2]}); got {tuple(mask.shape)}")
        if mask.dtype != torch.bool and not mask.dtype.is_floating_point:
            raise ValueError(f"mask must be boolean (True = attend) or an additive float; got {mask.dtype}")


def decode_attention_torch(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None,
                           scale: float | None = None) -> Tensor:
    """Reference of :func:`decode_attention` in the inputs' dtype (pass float64
    tensors for an exact reference): plain softmax, fully masked rows give zeros."""
    _check(query, key, value, mask)
    batch, heads, dim = query.shape
    kv_heads, slots = key.shape[1], key.shape[2]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    q = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = (q @ key.transpose(-1, -2)) * scale  # (B, Hkv, group, S)
    if mask is not None:
        mask = mask.expand(batch, slots)[:, None, None, :]
        scores = scores.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else scores + mask.to(scores.dtype)
    top = scores.amax(-1, keepdim=True)
    weights = torch.exp(scores - torch.where(torch.isinf(top), torch.zeros_like(top), top))
    total = weights.sum(-1, keepdim=True)
    out = (weights @ value) / torch.where(total > 0, total, torch.ones_like(total))
    return out.reshape(batch, heads, dim)


def unsupported_reason(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None) -> str | None:
    """Why the kernel cannot take these inputs, or None."""
    if not TRITON_INSTALLED:
        return "Triton is not installed"
    if query.device.type != "cuda" and not interpreting():
        return f"inputs on {query.device} (the kernel runs on CUDA, or on the CPU with TRITON_INTERPRET=1)"
    if any(t.device != query.device for t in (key, value) + (() if mask is None else (mask,))):
        return "query, key, value and mask must be on one device"
    if query.dtype not in DTYPES or key.dtype != query.dtype or value.dtype != query.dtype:
        return (f"query, key and value must share one dtype of {[str(d) for d in DTYPES]}; got {query.dtype}, "
                f"{key.dtype}, {value.dtype}")
    if query.shape[2] not in HEAD_DIMS:
        return f"head dimension {query.shape[2]} is not one of {HEAD_DIMS}"
    return None


def decode_attention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None,
                     scale: float | None = None, config: AttentionConfig | None = None) -> Tensor:
    """Attention of one query token per sequence: (B, Hq, D) in query's dtype.

    - ``query`` (B, Hq, D); ``key``, ``value`` (B, Hkv, S, D), Hq a multiple of
      Hkv (query head j reads key/value head j // (Hq / Hkv)); fp16, bf16 or
      fp32 (products in full fp32, not TF32), one dtype, one CUDA device (or the
      CPU under ``TRITON_INTERPRET=1``).
    - ``mask`` (B or 1, S): boolean (True = attend) or additive float; None
      attends to all S slots.  A row whose mask keeps nothing gives zeros.
    - ``scale`` defaults to 1 / sqrt(D); ``config`` forces launch settings
      (default :func:`attention_config`).

    Rounding: scores and softmax in fp32, the probabilities rounded to the
    value dtype for the tensor-core product, fp32 accumulation, one rounding
    of the output.  Raises ValueError for inputs the kernel does not take.
    """
    _check(query, key, value, mask)
    reason = unsupported_reason(query, key, value, mask)
    if reason is not None:
        raise ValueError(f"decode_attention: {reason}")
    config = config or attention_config(query.shape[0], key.shape[1], key.shape[2], query.device)
    scale = 1.0 / math.sqrt(query.shape[2]) if scale is None else float(scale)
    return torch.ops.anybit.decode_attention(query, key, value, mask, scale, config.block_s, config.splits,
                                             config.num_warps, config.num_stages)


@torch.library.custom_op("anybit::decode_attention", mutates_args=())
def decode_attention_op(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scale: float,
                        block_s: int, splits: int, num_warps: int, num_stages: int) -> Tensor:
    """See :func:`decode_attention` (inputs already checked)."""
    from ._attention.decode_triton import MASK_ADD, MASK_BOOL, MASK_NONE, decode_attention_kernel

    batch, heads, dim = query.shape
    kv_heads, slots = key.shape[1], key.shape[2]
    out = torch.empty(batch, heads, dim, dtype=query.dtype, device=query.device)
    if batch == 0 or heads == 0:
        return out
    if slots == 0:  # nothing to attend to: every row fully masked
        return out.zero_()
    query, key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value))
    blocks = -(-slots // block_s)
    per_split = -(-blocks // splits)
    if splits < 1 or -(-blocks // per_split) != splits:
        raise ValueError(f"splits={splits} does not divide the {blocks} blocks of {block_s} slots into equal "
                         f"whole ranges; accepted: -(-blocks // n) for n in 1..{blocks}")
    group = heads // kv_heads
    group_pad = max(16, 1 << (group - 1).bit_length())
    if mask is None:
        kind, mask_arg, stride_mb, stride_ms = MASK_NONE.value, query, 0, 0
    else:
        kind = MASK_BOOL.value if mask.dtype == torch.bool else MASK_ADD.value
        mask_arg = mask.view(torch.uint8) if mask.dtype == torch.bool else mask
        stride_mb = 0 if mask.shape[0] == 1 else mask.stride(0)
        stride_ms = mask.stride(1)
    if splits > 1:
        ws = torch.empty(batch * kv_heads * splits * group_pad * dim, dtype=torch.float32, device=query.device)
        stats = torch.empty(batch * kv_heads * splits * 2 * group_pad, dtype=torch.float32, device=query.device)
        counters = split_counters(query.device, batch * kv_heads)
    else:
        ws = stats = counters = out
    decode_attention_kernel[(batch * kv_heads, splits)](
        query, key, value, mask_arg, out, ws, stats, counters, slots, scale * math.log2(math.e),
        query.stride(0), query.stride(1), key.stride(0), key.stride(1), key.stride(2),
        value.stride(0), value.stride(1), value.stride(2), stride_mb, stride_ms, out.stride(0), out.stride(1),
        KV_HEADS=kv_heads, GROUP=group, GROUP_PAD=group_pad, DIM=dim, BLOCK_S=block_s, BLOCKS_PER_SPLIT=per_split,
        SPLITS=splits, MASK=kind, INTERPRET=interpreting(), num_warps=num_warps, num_stages=num_stages,
        **pdl_arguments(query.device),
    )
    return out


@decode_attention_op.register_fake
def _(query, key, value, mask, scale, block_s, splits, num_warps, num_stages):
    return query.new_empty(query.shape)
