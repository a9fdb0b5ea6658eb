"""The reference path on a CUDA device: quantization there matches the CPU bit for bit."""

import pytest
import torch
from conftest import assert_matmul_close, unit_roundoff

import anybit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("spec", ["int4-g128", "uint3-g64", "int1-g32", "nf4-g64", "lut3-g32", "fp8-e4m3", "mxfp4", "nvfp4"])
@pytest.mark.parametrize("method", ["rtn", "mse"])
@pytest.mark.parametrize("seed", range(4))
def test_quantize_on_cuda_matches_cpu(spec, method, seed):
    w = torch.randn(96, 576, generator=torch.Generator().manual_seed(seed)) * 0.02
    cpu = anybit.quantize(w, spec, method=method)
    gpu = anybit.quantize(w.cuda(), spec, method=method)
    assert gpu.device.type == "cuda" and gpu.codes.is_cuda
    values_cpu = cpu.dequantize(torch.float64)
    values_gpu = gpu.dequantize(torch.float64).cpu()
    if spec.startswith("lut"):
        # k-means sums in a different order on the GPU: tables may differ in the last bits.
        assert (values_gpu - values_cpu).norm() <= 1e-2 * values_cpu.norm()
    else:
        assert torch.equal(values_gpu, values_cpu)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("lead", [(1,), (7,), (2, 33)], ids=str)
def test_matmul_on_cuda(dtype, lead):
    qw = anybit.quantize(torch.randn(200, 576, device="cuda", dtype=dtype), "int4-g128")
    x = torch.randn(*lead, 576, device="cuda", dtype=dtype)
    bias = torch.randn(200, device="cuda", dtype=dtype)
    y = anybit.matmul(x, qw, bias)
    assert y.is_cuda
    # above 32 rows fp16/bf16 x takes the GEMM path, which rounds each weight once to x's dtype
    rows = x.numel() // 576
    roundoff = unit_roundoff(dtype) if rows > 32 and dtype != torch.float32 else 0.0
    assert_matmul_close(y.cpu(), x.cpu(), qw.to("cpu"), bias.cpu(), weight_roundoff=roundoff)


def test_device_mismatch_is_an_error():
    qw = anybit.quantize(torch.randn(8, 64), "int4-g32")
    with pytest.raises(ValueError, match="x is on cuda:0 but the quantized weight is on cpu"):
        anybit.matmul(torch.randn(2, 64, device="cuda"), qw)


def test_quantlinear_moves_and_saves(tmp_path):
    layer = anybit.QuantLinear.from_linear(torch.nn.Linear(64, 32), "nvfp4").cuda()
    assert layer.codes.is_cuda and layer.tensor_scale.is_cuda
    x = torch.randn(3, 64, device="cuda")
    model = torch.nn.Sequential(layer)
    anybit.save(model, tmp_path)
    loaded = anybit.load(torch.nn.Sequential(torch.nn.Linear(64, 32)).cuda(), tmp_path)
    assert loaded[0].codes.is_cuda
    assert torch.equal(loaded(x), model(x))


def test_transformers_model_on_cuda_generates():
    transformers = pytest.importorskip("transformers", reason="transformers is the demo extra")
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to("cuda", torch.float16).eval()
    ids = torch.randint(0, 128, (2, 16), device="cuda")
    with torch.no_grad():
        before = model(ids).logits.float()
    summary = anybit.quantize_(model, "int8-g32", progress=False)
    assert len(summary.converted) == 14
    with torch.no_grad():
        after = model(ids).logits.float()
        out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert (after - before).norm() / before.norm() < 0.02
    assert out.shape == (2, 21)


def test_graphs_timed_in_turn():
    """``bench._median_replays_us``: graphs replayed in turn give each its own time (a graph of
    the same matmul twice takes about twice one of it once; two identical graphs take the
    same), and a bench of two formats on one point writes a row for each."""
    from anybit import bench

    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    once, twice, again = bench._median_replays_us([[lambda: a @ a], [lambda: a @ a, lambda: a @ a], [lambda: a @ a]],
                                                  15)
    assert 1.7 < twice / once < 2.3
    assert 0.9 < again / once < 1.1
    result = bench.run(["int4-g128", "int8-gc"], shapes=[(512, 1024)], ms=[1, 64], replays=3, peers=False,
                       log=lambda _: None)
    assert not result.errors
    assert [(r["format"], r["M"]) for r in result.rows] == [("int4-g128", 1), ("int8-gc", 1), ("int4-g128", 64),
                                                            ("int8-gc", 64)]
    assert all(r["anybit_us"] > 0 and r["fp16_us"] > 0 for r in result.rows)
