"""Attention of one decoding token over 32 Llama-3.1-8B layers (32 query heads, 8 key/value heads,
head dim 128; a static cache of S slots of which ``pos`` are filled), timed in a CUDA graph.

Usage on a CUDA machine: ``python benchmarks/attention_probe.py [--all]``. Variants: the key/value
heads repeated to 32 (what transformers' ``sdpa`` does under torch.compile) or the query
heads packed onto the key/value heads (``anybit.e2e.packed_gqa_attention``), on SDPA's
default backend (with ``--all`` each also on the cuDNN, memory-efficient and math backends),
flex_attention (compiled, grouped heads native, a block mask of the filled slots) and
``anybit.attention.decode_attention``. Each prints microseconds for the 32 layers and the
largest difference from the repeated-heads default.
"""
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

torch.manual_seed(0)
dev = "cuda"
H, HKV, D, L = 32, 8, 128, 32
R = H // HKV


def make(B, S, pos):
    ks = [torch.randn(B, HKV, S, D, device=dev, dtype=torch.float16) for _ in range(L)]
    vs = [torch.randn(B, HKV, S, D, device=dev, dtype=torch.float16) for _ in range(L)]
    q = torch.randn(B, H, 1, D, device=dev, dtype=torch.float16)
    mask = torch.zeros(B, 1, 1, S, device=dev, dtype=torch.bool)
    mask[..., :pos] = True
    return q, ks, vs, mask


def unpacked(q, k, v, mask):
    B = q.shape[0]
    k = k[:, :, None].expand(B, HKV, R, *k.shape[2:]).reshape(B, H, *k.shape[2:])
    v = v[:, :, None].expand(B, HKV, R, *v.shape[2:]).reshape(B, H, *v.shape[2:])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def packed(q, k, v, mask):
    B = q.shape[0]
    return F.scaled_dot_product_attention(q.reshape(B, HKV, R, D), k, v, attn_mask=mask).reshape(B, H, 1, D)


def time_graph(fn, reps=20):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn(); fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay(); torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        g.replay()
    b.record(); torch.cuda.synchronize()
    return a.elapsed_time(b) / reps * 1000


for B in (1, 8, 32):
    for S, pos in ((288, 200), (1024, 900)):
        q, ks, vs, mask = make(B, S, pos)
        ref = [unpacked(q, ks[i], vs[i], mask) for i in range(2)]
        variants = {
            "repeat_kv + sdpa": lambda: [unpacked(q, ks[i], vs[i], mask) for i in range(L)],
            "packed sdpa (default)": lambda: [packed(q, ks[i], vs[i], mask) for i in range(L)],
        }
        backends = (("cudnn", SDPBackend.CUDNN_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                    ("math", SDPBackend.MATH)) if "--all" in sys.argv else ()
        for name, be in backends:
            def f(be=be):
                with sdpa_kernel(be):
                    return [packed(q, ks[i], vs[i], mask) for i in range(L)]
            variants[f"packed {name}"] = f

            def g(be=be):
                with sdpa_kernel(be):
                    return [unpacked(q, ks[i], vs[i], mask) for i in range(L)]
            variants[f"repeat_kv {name}"] = g
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
            fa = torch.compile(flex_attention, dynamic=False)
            valid = torch.full((B,), pos, device=dev)

            def keep(b, h, qi, kv):
                return kv < valid[b]
            bm = create_block_mask(keep, B, 1, 1, S, device=dev, BLOCK_SIZE=128)
            variants["flex gqa"] = lambda: [fa(q, ks[i], vs[i], block_mask=bm, enable_gqa=True) for i in range(L)]
        except Exception as e:  # noqa: BLE001
            print("flex unavailable:", repr(e)[:200])
        from anybit.attention import decode_attention
        keep = mask[:, 0, 0, :]
        variants["anybit decode_attention"] = lambda: [decode_attention(q[:, :, 0], ks[i], vs[i], keep)[:, :, None]
                                                       for i in range(L)]
        for name, fn in variants.items():
            try:
                out = fn()
                err = max((out[i].float() - ref[i].float()).abs().max().item() for i in range(2))
                us = time_graph(fn)
                print(f"B={B:2d} S={S:5d} {name:24s} {us:8.1f} us for {L} layers  ({us / L:5.2f} each)  err {err:.1e}",
                      flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"B={B:2d} S={S:5d} {name:24s} failed: {repr(e)[:150]}", flush=True)
