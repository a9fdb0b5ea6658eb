"""The anybit command on a tiny random transformers model, and the demo's smoke mode."""

import subprocess
import sys

import pytest
import torch

import anybit
from anybit.cli import main

import transformers  # noqa: E402  (the test extra installs the demo extra)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def tiny_with_tokenizer(tmp_path_factory):
    """A tiny random Llama saved with SmolLM2's tokenizer (the calibrated commands need one)."""
    from anybit import demo

    tokenizer = demo.load_tokenizer()
    model = demo.tiny_model(tokenizer, torch.device("cpu"), torch.float32)
    folder = tmp_path_factory.mktemp("tiny-tokenizer")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_quantize_info_and_load(tiny_llama, tmp_path, capsys):
    folder, model = tiny_llama
    out = tmp_path / "q"
    assert main(["quantize", str(folder), "--format", "int4-g32", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "14 linear layers -> int4-g32" in printed and "skipped lm_head" in printed

    assert main(["info", str(out), "--layers"]) == 0
    info = capsys.readouterr().out
    assert "quantized layers: 14" in info and "model.layers.1.mlp.down_proj: int4-g32 (64, 96)" in info

    config = transformers.AutoConfig.from_pretrained(out)
    loaded = anybit.load(config, out)
    expected = model
    anybit.quantize_(expected, "int4-g32", progress=False)
    ids = torch.randint(0, 64, (1, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, expected(ids).logits)


def test_info_lists_every_format(capsys):
    assert main(["info"]) == 0
    table = capsys.readouterr().out
    for cls in anybit.registered_formats():
        assert cls.template in table


def test_bad_format_is_a_clean_error(tiny_llama, tmp_path, capsys):
    folder, _ = tiny_llama
    assert main(["quantize", str(folder), "--format", "int9-g32", "--out", str(tmp_path)]) == 2
    assert "bit width 9 is not supported" in capsys.readouterr().err


def test_entry_point_runs():
    run = subprocess.run([sys.executable, "-m", "anybit", "info"], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert "nvfp4" in run.stdout


@pytest.mark.slow
def test_demo_smoke_on_a_tiny_model(capsys):
    argv = ["demo", "--tiny", "--formats", "int4-g32", "nvfp4", "--gptq", "int3-g32", "--budget", "4.5",
            "--eval-tokens", "128", "--window", "64",
            "--new-tokens", "4", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for label in ("float32", "int4-g32", "nvfp4", "gptq int3-g32", "gptq mixed 4.5 bits", "perplexity", "tokens/s",
                  "Answers to"):
        assert label in out


@pytest.mark.slow
def test_eval_table_and_json(tiny_with_tokenizer, tmp_path, capsys):
    """anybit eval on a tiny random Llama saved with SmolLM2's tokenizer: every variant, same tokens, JSON written."""
    import json

    folder = tiny_with_tokenizer
    text = tmp_path / "text.txt"
    text.write_text("In the beginning was the word, and the word was with the text. " * 40)
    out = tmp_path / "eval.json"
    argv = ["eval", str(folder), "--formats", "int4-g32", "int3-g32", "--methods", "rtn", "gptq", "--budget", "4",
            "--text", str(text), "--tokens", "256", "--window", "128", "--stride", "64", "--samples", "4",
            "--seq-len", "64", "--device", "cpu", "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for label in ("rtn int4-g32", "gptq int3-g32", "gptq mixed 4.0 bits", "perplexity"):
        assert label in printed
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [r["label"] for r in rows] == ["float32", "rtn int4-g32", "rtn int3-g32", "gptq int4-g32", "gptq int3-g32",
                                          "gptq mixed 4.0 bits"]
    assert result["env"]["tokens"] == 256 and result["env"]["calibration"] == [4, 64]
    assert rows[-1]["bits_per_weight"] <= 4.0
    assert all(r["perplexity"] > 1 for r in rows)


def test_eval_needs_something_to_do(capsys):
    with pytest.raises(SystemExit, match="nothing to evaluate"):
        main(["eval", "--formats", "--methods"])


@pytest.mark.slow
def test_quantize_gptq_and_budget_from_the_command_line(tiny_with_tokenizer, tmp_path, capsys):
    folder = tiny_with_tokenizer
    small = ["--samples", "4", "--seq-len", "32", "--device", "cpu"]
    assert main(["quantize", str(folder), "-f", "int3-g32", "--method", "gptq", "-o", str(tmp_path / "g"), *small]) == 0
    assert "-> int3-g32 by gptq" in capsys.readouterr().out
    assert main(["quantize", str(folder), "--budget", "4", "-o", str(tmp_path / "b"), *small]) == 0
    printed = capsys.readouterr().out
    assert "mixed (4.0 bits/weight budget)" in printed and "formats chosen" in printed
    with pytest.raises(SystemExit, match="exactly one of --format and --budget"):
        main(["quantize", str(folder), "-o", str(tmp_path / "x")])


@pytest.mark.parametrize("fusion", [False, True])
def test_e2e_table_says_whether_siblings_were_fused_which_attention_and_how_launched(fusion):
    from rich.console import Console

    from anybit.cli import _e2e_table

    result = {"env": {"gpu": "GPU X", "sibling_fusion": fusion, "attention": "sdpa-packed-gqa",
                      "inductor_pdl": fusion}, "rows": [
        {"format": "float16", "batch": 1, "ms_per_step": 5.0, "tokens_per_s": 200.0, "speedup": 1.0, "weight_gib": 15.0},
        {"format": "int4-g128", "batch": 1, "ms_per_step": 2.5, "tokens_per_s": 400.0, "speedup": 2.0,
         "weight_gib": 4.6}]}
    console = Console(width=200, record=True)
    console.print(_e2e_table(result))
    text = " ".join(console.export_text().split())  # the title wraps at the table's width
    assert "GPU X" in text and "2.00x" in text
    assert ("q/k/v and gate/up in one launch each" in text) == fusion
    assert "attention sdpa-packed-gqa" in text
    assert ("programmatic dependent launch" in text) == fusion
