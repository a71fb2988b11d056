"""llmpy bench runs the real training step and reports it; kernel names map to the parts of a step."""

import json

import torch

from llmpy.bench import kernel_category
from llmpy.cli import main


def test_kernel_categories_of_real_h100_kernel_names():
    assert kernel_category("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT") == "matmul"
    assert kernel_category("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26") == "attention"
    assert kernel_category("triton_poi_fused_gelu_gelu_backward_view_5").startswith("fused elementwise")
    assert kernel_category("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<Adam>") == "optimizer"
    assert kernel_category("ncclDevKernel_AllReduce_Sum_f32_RING_LL") == "communication"
    assert kernel_category("Memcpy HtoD (Pinned -> Device)") == "copy"
    assert kernel_category("_loss_and_grad_kernel").startswith("loss")


def test_bench_on_cpu_reports_step_time_and_tokens(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    code = main(["bench", "--model", "d2w64", "-b", "2", "-t", "32", "-d", "128", "--steps", "2", "--warmup", "1",
                 "--device", "cpu", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text().splitlines()[-1])
    assert result["grad_accum_steps"] == 2 and result["total_batch_size"] == 128 and result["steps"] == 2
    # tok/s is the tokens of one step over the median step time
    assert result["tokens_per_sec"] == 128 / (result["step_ms_median"] / 1000)
    assert result["mfu"] is None  # no MFU on a CPU rather than a wrong one
    assert "ms/step median" in capsys.readouterr().out


def test_bench_and_its_check_run_the_modern_recipe(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    assert main(["bench", "--recipe", "modern", "--model", "d2w64", "-b", "2", "-t", "32", "-d", "64", "--steps", "1",
                 "--warmup", "1", "--device", "cpu", "--json", str(out)]) == 0
    assert "recipe modern | model d2w64 (modern, muon)" in capsys.readouterr().out
    assert main(["bench", "--check", "--recipe", "modern", "--model", "d2w64", "-b", "2", "-t", "32", "--device", "cpu",
                 "--compile", "0", "--json", str(out)]) == 0
    result = json.loads(out.read_text().splitlines()[-1])
    assert result["passed"] and not result["fused_loss"] and result["loss_rel_diff"] < 1e-6


def test_the_check_batch_has_documents_and_the_check_sees_the_mask_and_every_matrix(tmp_path):
    """The check's batch holds several documents per row, and the check runs the window at its first width and
    random (not zero) output projections, so a document mask, a window and the inner matmuls are all compared."""
    from llmpy.bench import check_batch, exercise_every_path
    from llmpy.families import build_model, model_config
    from llmpy.gpt2 import EOT_TOKEN

    x, y = check_batch(4, 1024, seed=42)
    assert x.shape == y.shape == (4, 1024)
    targeted = y[:, :-1] >= 0  # a target is the next input token
    assert torch.equal(x[:, 1:][targeted], y[:, :-1][targeted])
    assert ((x == EOT_TOKEN).sum(dim=1) >= 2).all() and (y[0, :256] == -1).all() and (y[1:] >= 0).all()
    model = build_model(model_config("modern", "d2w64", ""), "modern")
    assert not model.lm_head.weight.any()  # zero init
    exercise_every_path(model, seed=42)
    assert all(p.any() for p in model.parameters() if p.dim() >= 2)
    out = tmp_path / "check.jsonl"
    assert main(["bench", "--check", "--recipe", "modern", "--arch", "doc_mask=1,window=8", "--model", "d2w64",
                 "-b", "2", "-t", "64", "--device", "cpu", "--compile", "0", "--json", str(out)]) == 0
    result = json.loads(out.read_text().splitlines()[-1])
    assert result["passed"] and result["window"] == 8 and result["documents_per_row"] > 1
    assert result["parameters_without_gradient"] == []  # every parameter's gradient was compared


def test_the_check_fails_when_parameters_get_no_gradient(tmp_path, monkeypatch, capsys):
    """Without the random weights the modern family's zero-initialised projections leave the blocks without
    gradient: the check must say so and fail rather than compare the head alone."""
    import llmpy.bench

    monkeypatch.setattr(llmpy.bench, "exercise_every_path", lambda model, seed: None)
    out = tmp_path / "check.jsonl"
    assert main(["bench", "--check", "--recipe", "modern", "--model", "d2w64", "-b", "2", "-t", "32", "--device", "cpu",
                 "--compile", "0", "--json", str(out)]) == 1
    result = json.loads(out.read_text().splitlines()[-1])
    assert not result["passed"] and "transformer.h.0.attn.c_q.weight" in result["parameters_without_gradient"]
    assert "no gradient: " in capsys.readouterr().out


def test_the_check_covers_every_frontier_switch(tmp_path):
    out = tmp_path / "check.jsonl"
    assert main(["bench", "--check", "--recipe", "frontier", "--arch",
                 "bigram=0.05,rope_dims=32,key_offset=1,backout=1,untie_at=0.5,value_embeds=1", "--model", "d2w64",
                 "-b", "2", "-t", "64", "--device", "cpu", "--compile", "0", "--json", str(out)]) == 0
    result = json.loads(out.read_text().splitlines()[-1])
    assert result["passed"] and result["parameters_without_gradient"] == [], result
