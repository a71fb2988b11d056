"""The fused head + cross-entropy (llmpy.kernels.cross_entropy) against F.cross_entropy and autograd.

The Triton kernel runs on the CPU through Triton's interpreter (TRITON_INTERPRET=1, set before Triton is imported,
so in a child process); the PyTorch path is what CPUs use and what the GPU kernel is checked against on the device
(`llmpy bench --check`)."""

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmpy.cli import main
from llmpy.config import ModelConfig, TrainConfig
from llmpy.data.shards import write_shard
from llmpy.errors import LlmpyError
from llmpy.kernels.cross_entropy import head_loss, kernel_launch_config, reference_loss_and_grad
from llmpy.loss import ModelWithLoss, build_loss
from llmpy.model import GPT

SRC = Path(__file__).resolve().parents[1] / "src"


def _autograd_reference(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int):
    """Per-row losses and d(sum)/d(logits) from F.cross_entropy on the real columns, through autograd, in fp64."""
    real = logits[:, :vocab_size].double().requires_grad_(True)
    losses = F.cross_entropy(real, targets, ignore_index=-1, reduction="none")
    losses.sum().backward()
    grad = torch.zeros(logits.shape, dtype=torch.float64)
    grad[:, :vocab_size] = real.grad
    return losses.detach(), grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_matches_autograd_cross_entropy(dtype):
    torch.manual_seed(0)
    logits = (4 * torch.randn(2500, 72)).to(dtype)  # 2500 rows: more than one row block of the reference
    logits[:, 70:] = 0  # padded columns hold zeros, as the padded wte rows make them
    targets = torch.randint(0, 70, (2500,))
    targets[::5] = -1
    losses, grad = reference_loss_and_grad(logits, targets, 70)
    want_losses, want_grad = _autograd_reference(logits, targets, 70)
    assert grad.dtype == dtype and losses.dtype == torch.float32
    torch.testing.assert_close(losses.double(), want_losses, atol=1e-5, rtol=1e-5)
    tolerance = 1e-6 if dtype == torch.float32 else 4e-3  # bf16 storage: half a unit in the last place near 1
    torch.testing.assert_close(grad.double(), want_grad, atol=tolerance, rtol=0)
    assert grad[:, 70:].abs().max() == 0 and grad[::5].abs().max() == 0


def test_triton_kernel_under_the_interpreter_matches_autograd(tmp_path):
    pytest.importorskip("triton")
    script = tmp_path / "kernel.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        import torch
        from llmpy.kernels.cross_entropy import triton_loss_and_grad_
        torch.manual_seed(1)
        results = {}
        for dtype in (torch.float32, torch.bfloat16):
            logits = (4 * torch.randn(9, 50)).to(dtype)
            logits[:, 45:] = 0
            targets = torch.randint(0, 45, (9,))
            targets[2] = -1
            targets[4] = 44  # the last real column
            targets[5] = 45  # a padded column: not a real token
            targets[6] = -100  # PyTorch's ignore value, not ours: out of range here
            for lanewise in (0, 1, 2):
                out = torch.full_like(logits, 7.0)
                # 16-column chunks: 3 chunks per row, the last one partly padding; 2 programs loop over 9 rows;
                # lanewise 2 holds a whole row (64 columns >= 50) in one block
                launch = (64, 1, 1, 2, 1) if lanewise == 2 else (16, 1, 1, lanewise, 1 + lanewise)
                losses = triton_loss_and_grad_(logits, targets, 45, out=out, launch=launch)
                inplace = logits.clone()
                triton_loss_and_grad_(inplace, targets, 45, launch=launch)
                results[f"{dtype}-{lanewise}"] = dict(losses=losses.tolist(), grad=out.double().tolist(),
                                                      same_in_place=bool(torch.equal(inplace, out)))
            results[f"{dtype}-inputs"] = dict(logits=logits.double().tolist(), targets=targets.tolist())
        try:
            triton_loss_and_grad_(logits, targets, 45, launch=(32, 1, 1, 2, 1))
        except ValueError as exc:
            results["short_block"] = str(exc)
        json.dump(results, sys.stdout)
    """))
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(SRC))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads(run.stdout)
    for dtype, tolerance in (("torch.float32", 1e-6), ("torch.bfloat16", 4e-3)):
        inputs = results[f"{dtype}-inputs"]
        logits = torch.tensor(inputs["logits"], dtype=torch.float64)
        targets = torch.tensor(inputs["targets"])
        in_range = torch.tensor([i not in (5, 6) for i in range(9)])
        want_losses, want_grad = _autograd_reference(logits[in_range], targets[in_range], 45)
        for lanewise in (0, 1, 2):
            got = results[f"{dtype}-{lanewise}"]
            losses = torch.tensor(got["losses"], dtype=torch.float64)
            torch.testing.assert_close(losses[in_range], want_losses, atol=1e-5, rtol=1e-5)
            grad = torch.tensor(got["grad"], dtype=torch.float64)
            torch.testing.assert_close(grad[in_range], want_grad, atol=tolerance, rtol=0)
            assert grad[:, 45:].abs().max() == 0 and grad[2].abs().max() == 0  # padding, ignored row: exactly 0
            # a target that is no real token: infinite loss (the trainer skips the step), no gradient anywhere
            assert losses[5] == losses[6] == float("inf") and grad[5].abs().max() == grad[6].abs().max() == 0
            assert got["same_in_place"]
    assert results["short_block"] == "the loss kernel's whole-row launch needs BLOCK >= the 50 columns, not 32"


def test_out_of_range_targets_and_all_ignored_batches():
    torch.manual_seed(5)
    logits = torch.randn(4, 24)
    losses, grad = reference_loss_and_grad(logits, torch.tensor([3, 20, 23, -1]), 20)
    assert losses[0].isfinite() and losses[1] == losses[2] == float("inf") and losses[3] == 0
    assert grad[1:].abs().max() == 0 and grad[0, 20:].abs().max() == 0
    # no target at all: the loss is nan like F.cross_entropy's, but no nan reaches the gradients
    x = torch.randn(4, 8, requires_grad=True)
    weight = torch.randn(24, 8, requires_grad=True)
    for chunk_rows in (0, 3):
        x.grad = weight.grad = None
        loss = head_loss(x, weight, torch.full((4,), -1), 20, chunk_rows=chunk_rows)
        assert loss.isnan() and F.cross_entropy(x @ weight.t(), torch.full((4,), -1), ignore_index=-1).isnan()
        loss.backward()
        assert x.grad.abs().max() == 0 and weight.grad.abs().max() == 0


@pytest.mark.parametrize("text", ["16,1,0,0,1", "100,8,4,0,1", "4096,8,4,3,1", "4096,8,4,2,1", "4096,8,4",
                                  "a,b,c,d,e"])
def test_bad_loss_kernel_launch_is_a_one_line_error(text, monkeypatch):
    monkeypatch.setenv("LLMPY_LOSS_KERNEL", text)
    with pytest.raises(LlmpyError, match="LLMPY_LOSS_KERNEL") as error:
        kernel_launch_config(50304)
    if text == "4096,8,4,2,1":  # a whole-row launch whose chunk is shorter than the row
        assert "BLOCK must be >= the 50304 logit columns" in str(error.value)
    monkeypatch.setenv("LLMPY_LOSS_KERNEL", "2048,4,8,1,2")
    assert kernel_launch_config() == (2048, 4, 8, 1, 2)
    monkeypatch.setenv("LLMPY_LOSS_KERNEL", "65536,16,1,2,1")
    assert kernel_launch_config(50304) == (65536, 16, 1, 2, 1)


@pytest.mark.parametrize("chunk_rows", [0, 8, 13, 40, 64])  # all rows; blocks that divide 40, that do not; >= 40
def test_head_loss_value_and_gradients_match_linear_plus_cross_entropy(chunk_rows):
    """Against F.cross_entropy of x @ W^T through fp64 autograd, also a block of rows at a time (--loss-chunk-rows),
    where the head's gradients are made in the forward pass, block by block."""
    torch.manual_seed(2)
    x = torch.randn(40, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(24, 16, dtype=torch.float64) * 0.3
    weight[20:] = 0
    weight.requires_grad_(True)
    targets = torch.randint(0, 20, (40,))
    targets[:3] = -1
    loss = head_loss(x, weight, targets, 20, chunk_rows=chunk_rows)
    (3.0 * loss).backward()  # a non-unit incoming gradient reaches both matmuls
    x2, w2 = x.detach().clone().requires_grad_(True), weight.detach().clone().requires_grad_(True)
    want = F.cross_entropy((x2 @ w2.t())[:, :20], targets, ignore_index=-1)
    (3.0 * want).backward()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(weight.grad, w2.grad)
    assert weight.grad[20:].abs().max() == 0


def _tiny_gpt() -> GPT:
    torch.manual_seed(3)
    return GPT(ModelConfig(block_size=64, vocab_size=50257, padded_vocab_size=50304, n_layer=2, n_head=2, n_embd=64))


def test_gpt_with_fused_loss_trains_like_the_plain_loss():
    plain = _tiny_gpt()
    fused = copy.deepcopy(plain)
    vocab = (plain.config.vocab_size, plain.config.padded_vocab_size)
    steps = {plain: ModelWithLoss(plain, build_loss("plain", *vocab)),
             fused: ModelWithLoss(fused, build_loss("fused", *vocab))}
    torch.manual_seed(4)
    idx = torch.randint(0, 50257, (2, 64))
    targets = torch.randint(0, 50257, (2, 64))
    targets[0, :7] = -1
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1) for m in (plain, fused)]
    for _ in range(3):
        losses = []
        for model, optimizer in zip((plain, fused), optimizers):
            optimizer.zero_grad()
            loss = steps[model](idx, targets)
            assert (type(loss.grad_fn).__name__ == "_HeadLossBackward") == (model is fused)  # the fused kernel path
            loss.backward()
            losses.append(loss.item())
        assert abs(losses[0] - losses[1]) < 1e-5
        for (name, a), b in zip(plain.named_parameters(), fused.parameters()):  # fp32 summation order only
            torch.testing.assert_close(b.grad, a.grad, atol=1e-3 * a.grad.abs().max().item(), rtol=0, msg=name)
        for optimizer in optimizers:
            optimizer.step()
    # AdamW turns last-bit gradient differences on weights whose true gradient is ~0 (the key bias) into small
    # steps; a real error (a wrong scale, a missing term) would move weights by whole lr-sized steps (1e-3)
    for (name, a), b in zip(plain.named_parameters(), fused.parameters()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0, msg=name)
    # eval and sampling still see the plain path: logits come back, the loss too, without gradients
    with torch.no_grad():
        logits, loss = fused.logits(fused(idx)), steps[fused](idx, targets)
        want = build_loss("plain", *vocab)(fused(idx), targets, fused.lm_head)
    assert logits.shape == (2, 64, 50257) and loss.grad_fn is None
    torch.testing.assert_close(loss, want, rtol=0, atol=0)


@pytest.mark.parametrize("chunk_rows", ["0", "5"])  # 16 rows: all at once; 4 blocks, the last short
def test_bench_check_passes_for_bf16_compiled_fused_path_on_cpu(tmp_path, capsys, chunk_rows):
    out = tmp_path / "check.jsonl"
    # one block is enough to cover every module (attention, MLP with -r 1 recompute, fused head + loss) and keeps the
    # CPU torch.compile, which dominates this test, short
    code = main(["bench", "--check", "--model", "d1w64", "-b", "2", "-t", "8", "--device", "cpu", "--dtype", "bf16",
                 "--compile", "1", "--fused-loss", "1", "-r", "1", "--loss-chunk-rows", chunk_rows,
                 "--json", str(out)])
    result = json.loads(out.read_text().splitlines()[-1])
    assert code == 0 and result["passed"], result
    assert result["fused_loss"] and result["compile"] and result["precision"] == "bf16"
    assert 0 < result["loss_rel_diff"] < 1e-2 and 0 < result["grad_rel_diff"] < 5e-2  # bf16 differs, a little
    assert "PASS" in capsys.readouterr().out


def test_loss_chunks_without_the_fused_loss_are_a_one_line_error(tmp_path, capsys):
    shard = tmp_path / "t_train_000001.bin"
    write_shard(shard, np.arange(4096) % 50257)
    assert main(["train", "-i", str(shard), "-e", "d1w64", "-b", "2", "-t", "8", "-x", "1", "--device", "cpu",
                 "--fused-loss", "0", "--loss-chunk-rows", "4", "-o", str(tmp_path / "run")]) == 2
    assert "--loss-chunk-rows splits the fused loss" in capsys.readouterr().err
    assert main(["bench", "--check", "--model", "d1w64", "-b", "2", "-t", "8", "--device", "cpu", "--compile", "0",
                 "--fused-loss", "0", "--loss-chunk-rows", "4"]) == 2  # the check does not drop it silently either
    assert "--loss-chunk-rows splits the fused loss" in capsys.readouterr().err
    with pytest.raises(LlmpyError, match="--loss-chunk-rows"):
        TrainConfig(train_data="x", loss_chunk_rows=-1).validate()


def test_bad_compile_mode_and_fused_loss_values_are_refused():
    with pytest.raises(LlmpyError, match="--compile-mode"):
        TrainConfig(train_data="x", compile_mode="reduce-overhead").validate()
    with pytest.raises(LlmpyError, match="--fused-loss"):
        TrainConfig(train_data="x", fused_loss=2).validate()
