"""`llmpy plan`: time, GPU-hours and cost against hand computation; token suffixes; flags and errors."""

import argparse
import json
import math

import pytest

from llmpy import plan
from llmpy.errors import LlmpyError

D12_PARAMS = 50304 * 768 + 1024 * 768 + 12 * (12 * 768 * 768 + 13 * 768) + 2 * 768  # llm.c's count, by hand
D12_FLOPS_PER_TOKEN = 6 * D12_PARAMS + 6 * 12 * 768 * 1024


def run_cli(argv, capsys):
    parser = argparse.ArgumentParser()
    plan.add_arguments(parser)
    assert plan.run(parser.parse_args(argv)) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("text, value", [("10B", 10e9), ("500m", 500e6), ("1.5T", 1.5e12), ("2e9", 2e9),
                                         ("65536", 65536), ("32K", 32000), ("7G", 7e9)])
def test_token_counts(text, value):
    assert plan.parse_token_count(text) == value


@pytest.mark.parametrize("text", ["ten", "10X", "", "-5B", "0"])
def test_bad_token_counts(text):
    with pytest.raises(LlmpyError, match="--tokens"):
        plan.parse_token_count(text)


def test_measured_tok_per_sec_reproduces_hand_computation(capsys):
    out = run_cli(["--tokens", "10B", "--gpus", "8", "--tok-per-sec", "400000", "--price-per-gpu-hour", "2.5",
                   "--json"], capsys)
    record = json.loads(out)
    seconds = 10e9 / (8 * 400_000 * 0.9)  # 0.9: the stated default efficiency for more than one GPU
    assert record["seconds"] == pytest.approx(seconds)
    assert record["gpu_hours"] == pytest.approx(seconds * 8 / 3600)
    assert record["cost"] == pytest.approx(seconds * 8 / 3600 * 2.5)
    assert record["steps"] == math.ceil(10e9 / 524_288) == 19_074
    assert record["scaling_efficiency"] == 0.9
    assert record["num_parameters"] == D12_PARAMS == 124_475_904
    assert any("scaling efficiency 90%" in note for note in record["assumptions"])


def test_single_gpu_efficiency_and_explicit_efficiency():
    one = plan.make_plan(plan.PlanInputs(tokens=1e9, gpus=1, tok_per_sec=250_000, price_per_gpu_hour=3.0))
    assert one.scaling_efficiency == 1.0
    assert one.seconds == pytest.approx(1e9 / 250_000)
    assert one.cost == pytest.approx(1e9 / 250_000 / 3600 * 3.0)
    four = plan.make_plan(plan.PlanInputs(tokens=1e9, gpus=4, tok_per_sec=250_000, scaling_efficiency=0.8,
                                          price_per_gpu_hour=3.0))
    assert four.seconds == pytest.approx(1e9 / (4 * 250_000 * 0.8))
    assert four.seconds_per_step == pytest.approx(524_288 / (4 * 250_000 * 0.8))


def flops_by_hand(L, C, T=1024):
    params = 50304 * C + 1024 * C + L * (12 * C * C + 13 * C) + 2 * C
    return 6 * params + 6 * L * C * T


def test_default_throughput_is_the_measured_d12_h100_number():
    assert flops_by_hand(12, 768) == D12_FLOPS_PER_TOKEN
    default = plan.make_plan(plan.PlanInputs(model="d12", gpu="H100"))
    assert default.tok_per_sec_per_gpu == pytest.approx(545_470)
    assert default.mfu == pytest.approx(545_470 * D12_FLOPS_PER_TOKEN / 989e12)
    assert default.price_per_gpu_hour == plan.DEFAULT_PRICE_PER_GPU_HOUR["H100"]
    assert any("measured: d12 on one H100" in note for note in default.assumptions)


def test_measured_rows_are_used_as_measured_and_named():
    for gpu, model, tok_per_sec in (("H200", "d12", 590_228), ("H200 SXM 141GB", "gpt2-medium", 225_356),
                                    ("H200", "d36", 103_161), ("H200", "gpt2-xl", 53_211),
                                    ("H100 SXM", "gpt2-xl", 48_819)):
        result = plan.make_plan(plan.PlanInputs(model=model, gpu=gpu))
        assert result.tok_per_sec_per_gpu == pytest.approx(tok_per_sec)
        assert any(f"{tok_per_sec:,} tok/s" in note and "measured:" in note for note in result.assumptions)


def test_unmeasured_setups_take_the_mfu_of_the_nearest_measured_run():
    d12, d6 = flops_by_hand(12, 768), flops_by_hand(6, 384)
    # d6 on the H200 was not measured: the H200's nearest model in size is d12
    h200_d6 = plan.make_plan(plan.PlanInputs(model="d6", gpu="H200"))
    assert h200_d6.tok_per_sec_per_gpu == pytest.approx(590_228 * d12 / d6)
    assert any("nearest measured run: d12 on one H200" in note for note in h200_d6.assumptions)
    # a GPU without rows of its own: the H200's nearest row, at this GPU's peak (A100: 312 TFLOP/s)
    a100 = plan.make_plan(plan.PlanInputs(model="gpt2", gpu="A100"))
    assert a100.tok_per_sec_per_gpu == pytest.approx(590_228 * 312 / 989)
    # a measured model at another sequence length keeps its MFU: the 6LCT term changes the FLOPs per token
    short = plan.make_plan(plan.PlanInputs(model="d12", gpu="H200", seq_len=512))
    assert short.tok_per_sec_per_gpu == pytest.approx(590_228 * D12_FLOPS_PER_TOKEN / flops_by_hand(12, 768, 512))


def test_mfu_gives_throughput_through_6n_plus_6lct():
    result = plan.make_plan(plan.PlanInputs(model="d12", gpu="H100", mfu=0.4, seq_len=1024))
    assert result.flops_per_token == D12_FLOPS_PER_TOKEN
    assert result.tok_per_sec_per_gpu == pytest.approx(0.4 * 989e12 / D12_FLOPS_PER_TOKEN)


def test_table_explain_and_references(capsys):
    out = run_cli(["--gpus", "8", "--tok-per-sec", "400000", "--price-per-gpu-hour", "2", "--explain"], capsys)
    assert "llm.c GPT-2 124M, 8x A100 80GB" in out and "1 h 30 min" in out and "$20.00" in out
    assert "140" in out  # llm.c's 8xH100 ms/step
    assert "tok/s total = per GPU * GPUs * efficiency = 400,000 * 8 * 0.9 = 2,880,000" in out
    assert "time = tokens / tok/s total = 10,000,000,000 / 2,880,000 = 3,472.2 s" in out
    assert "cost = GPU-hours * $/GPU-hour = 7.72 * 2 = $15.43" in out


def test_errors():
    with pytest.raises(LlmpyError, match="--gpus"):
        plan.make_plan(plan.PlanInputs(gpus=0))
    with pytest.raises(LlmpyError, match="--tok-per-sec and --mfu"):
        plan.make_plan(plan.PlanInputs(tok_per_sec=1e5, mfu=0.3))
    with pytest.raises(LlmpyError, match="--gpu TPU"):
        plan.make_plan(plan.PlanInputs(gpu="TPU"))
    with pytest.raises(LlmpyError, match="--model"):
        plan.make_plan(plan.PlanInputs(model="big"))
    with pytest.raises(LlmpyError, match="--mfu"):
        plan.make_plan(plan.PlanInputs(mfu=1.5))
    unknown_price = plan.make_plan(plan.PlanInputs(gpu="RTX 4090"))
    assert unknown_price.cost is None and any("--price-per-gpu-hour" in n for n in unknown_price.assumptions)


def test_the_modern_recipe_plans_a_tenth_of_the_tokens_at_its_measured_throughput():
    classic = plan.make_plan(plan.PlanInputs(model="d12", gpus=1, gpu="H100"))
    modern = plan.make_plan(plan.PlanInputs(model="d12", gpus=1, gpu="H100", recipe="modern", tokens_given=False))
    assert modern.inputs.tokens == pytest.approx(1e9)
    assert modern.tok_per_sec_per_gpu == pytest.approx(classic.tok_per_sec_per_gpu * 504_139 / 546_942)
    assert modern.seconds == pytest.approx(classic.seconds / 10 * 546_942 / 504_139)
    # an H200 row was measured with GELU fusion, which the modern MLP (ReLU^2) does not get: its ratio is divided by
    # the fusion's measured gain (590,228 against 574,354 and 575,651 tok/s)
    h200 = plan.make_plan(plan.PlanInputs(model="d12", gpu="H200", recipe="modern", tokens_given=False))
    gain = 590_228 / ((574_354 + 575_651) / 2)
    assert h200.tok_per_sec_per_gpu == pytest.approx(590_228 * 504_139 / 546_942 / gain)
    assert any("GELU fusion" in note for note in h200.assumptions)
    given = plan.make_plan(plan.PlanInputs(model="d12", tokens=5e9, recipe="modern", tokens_given=True))
    assert given.inputs.tokens == 5e9  # a budget the user gave is kept
    with pytest.raises(LlmpyError, match="--recipe must be classic, modern or frontier"):
        plan.make_plan(plan.PlanInputs(recipe="fast"))


def test_the_frontier_recipe_plans_the_published_tokens_at_modern_throughput_until_measured(capsys, monkeypatch):
    # by hand: the H100 d12 row (545,470 tok/s, no GELU fusion) x modern's measured 504,139 / 546,942 (H200, one call)
    per_gpu = 545_470 * 504_139 / 546_942
    one = plan.make_plan(plan.PlanInputs(model="d12", gpu="H100", recipe="frontier", tokens_given=False))
    assert one.inputs.tokens == pytest.approx(0.34e9)  # the speedrun's published ~0.34B tokens to 3.28 (llm.c: 10B)
    assert one.tok_per_sec_per_gpu == pytest.approx(per_gpu)
    assert one.seconds == pytest.approx(0.34e9 / per_gpu) and one.seconds == pytest.approx(676.2, abs=0.1)
    assert one.cost == pytest.approx(0.34e9 / per_gpu / 3600 * 2.99)
    assert any(n.startswith("frontier throughput not yet measured: modern's measured 0.922") for n in one.assumptions)
    assert any("published, not measured here" in n and "3.28" in n for n in one.assumptions)
    eight = json.loads(run_cli(["--recipe", "frontier", "--gpus", "8", "--json"], capsys))
    assert eight["seconds"] == pytest.approx(0.34e9 / (8 * per_gpu * 0.9))
    assert eight["steps"] == math.ceil(0.34e9 / 524_288) == 649
    given = plan.make_plan(plan.PlanInputs(model="d12", tokens=2e9, recipe="frontier", tokens_given=True))
    assert given.inputs.tokens == 2e9
    # the one number the next measurement sets: frontier tok/s over modern's, measured in one call
    monkeypatch.setitem(plan.FRONTIER_MEASURED, "tok_per_sec_vs_modern", 0.8)
    monkeypatch.setitem(plan.FRONTIER_MEASURED, "gpu", "H100")
    measured = plan.make_plan(plan.PlanInputs(model="d12", gpu="H100", recipe="frontier", tokens_given=False))
    assert measured.tok_per_sec_per_gpu == pytest.approx(per_gpu * 0.8)
    assert not any("not yet measured" in n for n in measured.assumptions)
    assert any("0.800 of the modern recipe's throughput" in n for n in measured.assumptions)


def test_plan_names_the_measured_fa4_gain_without_counting_it():
    with_note = plan.make_plan(plan.PlanInputs(model="d24", gpu="H200"))
    note = next(n for n in with_note.assumptions if "flash-attn-4" in n)
    # d24 on one H200, same call: 228,910 tok/s with cudnn+fa4 against 221,215 with cuDNN alone
    assert "+3.5% for d24 on one H200" in note and note.startswith("not counted")
    assert with_note.tok_per_sec_per_gpu == 225_356  # the cuDNN row, as measured
    for inputs in (plan.PlanInputs(model="d24", gpu="A100"), plan.PlanInputs(model="d24", gpu="H200", recipe="modern")):
        assert not any("flash-attn-4" in n for n in plan.make_plan(inputs).assumptions)
