"""Launch settings of ``anybit.attention.decode_attention`` against the heuristic's, over 32
Llama-3.1-8B layers of one decoding token (32 query heads, 8 key/value heads, head dim 128,
a static cache of S slots of which ``pos`` are filled), timed in a CUDA graph.

Usage on a CUDA machine: ``PYTHONPATH=src python benchmarks/attention_configs.py``.
Prints, per (batch, S), the heuristic's time and the five fastest settings (microseconds for
the 32 layers); every setting's output is checked against the heuristic's first.
"""
import itertools

import torch

from anybit.attention import AttentionConfig, attention_config, decode_attention

H, HKV, D, L = 32, 8, 128, 32
dev = torch.device("cuda")


def time_graph(fn, reps=20):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        g.replay()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / reps * 1000


for B in (1, 8, 32):
    for S, pos in ((186, 150), (1024, 900)):
        q = torch.randn(B, H, D, device=dev, dtype=torch.float16)
        ks = [torch.randn(B, HKV, S, D, device=dev, dtype=torch.float16) for _ in range(L)]
        vs = [torch.randn(B, HKV, S, D, device=dev, dtype=torch.float16) for _ in range(L)]
        mask = torch.arange(S, device=dev)[None, :] < pos
        heuristic = attention_config(B, HKV, S, dev)
        ref = decode_attention(q, ks[0], vs[0], mask, config=heuristic)
        results = {heuristic: time_graph(lambda: [decode_attention(q, ks[i], vs[i], mask, config=heuristic)
                                                  for i in range(L)])}
        for block_s, warps, stages in itertools.product((32, 64, 128), (4, 8), (2, 3)):
            blocks = -(-S // block_s)
            for splits in sorted({-(-blocks // -(-blocks // n)) for n in (1, 2, 4, 8, blocks)}):
                config = AttentionConfig(block_s, splits, warps, stages)
                if stages == 3 and splits > 2 or config == heuristic:
                    continue
                try:
                    err = (decode_attention(q, ks[0], vs[0], mask, config=config) - ref).abs().max().item()
                    assert err < 1e-2, f"{config}: {err}"
                    results[config] = time_graph(lambda: [decode_attention(q, ks[i], vs[i], mask, config=config)
                                                          for i in range(L)])
                except Exception as e:  # noqa: BLE001
                    print(f"B={B} S={S} {config} failed: {repr(e)[:200]}")
        best = sorted(results.items(), key=lambda kv: kv[1])[:5]
        print(f"B={B:2d} S={S:5d} pos={pos}: heuristic {heuristic} {results[heuristic]:.1f} us", flush=True)
        for config, us in best:
            print(f"      {us:8.1f} us  {config}", flush=True)
