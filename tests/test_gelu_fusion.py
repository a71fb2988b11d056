"""-ge / --gelu-fusion: the MLP with GELU inside the matmuls' cuBLASLt epilogues (llmpy.kernels.cublaslt).

On a CPU the two epilogue ops run as PyTorch ops, so these tests check the autograd function's math (every gradient,
at both fusion levels, keeping or recomputing GELU) against fp64
autograd through F.linear/F.gelu, and how a run chooses and refuses the fusion. The cuBLASLt kernels themselves are
checked on the GPU (benchmarks/gpu_gelu_fusion_check.py, `llmpy bench --check -ge 2`; benchmarks/RESULTS.md)."""

import pytest
import torch
import torch.nn.functional as F

from llmpy.config import ModelConfig, TrainConfig
from llmpy.errors import LlmpyError
from llmpy.kernels import cublaslt
from llmpy.kernels.cublaslt import MLPFunction
from llmpy.loss import ModelWithLoss, build_loss
from llmpy.model import GPT
from llmpy.modern import ModernGPT
from llmpy.runtime import select_runtime
from llmpy.train.build import gelu_fusion_for


def _mlp_inputs(rows=37, channels=16):
    generator = torch.Generator().manual_seed(0)

    def leaf(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_(True)

    return [leaf(rows, channels), leaf(4 * channels, channels), leaf(4 * channels), leaf(channels, 4 * channels),
            leaf(channels)], torch.randn(rows, channels, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("level, keep_gelu", [(1, True), (1, False), (2, True), (2, False)])
def test_fused_mlp_matches_fp64_autograd(level, keep_gelu):
    (x, w_fc, b_fc, w_proj, b_proj), dy = _mlp_inputs()
    expected = F.linear(F.gelu(F.linear(x, w_fc, b_fc), approximate="tanh"), w_proj, b_proj)
    expected_grads = torch.autograd.grad(expected, (x, w_fc, b_fc, w_proj, b_proj), dy)
    # the same math written out by hand: the tanh GELU and its derivative
    h = x @ w_fc.T + b_fc
    inner = 0.7978845608028654 * (h + 0.044715 * h**3)
    gelu = 0.5 * h * (1 + torch.tanh(inner))
    torch.testing.assert_close(gelu @ w_proj.T + b_proj, expected, rtol=1e-12, atol=1e-12)
    y = MLPFunction.apply(x, w_fc, b_fc, w_proj, b_proj, level, keep_gelu)
    grads = torch.autograd.grad(y, (x, w_fc, b_fc, w_proj, b_proj), dy)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    for name, grad, want in zip(("x", "w_fc", "b_fc", "w_proj", "b_proj"), grads, expected_grads):
        torch.testing.assert_close(grad, want, rtol=1e-10, atol=1e-10, msg=name)


def test_bf16_column_sums_are_the_fp64_sums_rounded_once():
    x = torch.randn(4096, 8, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16) + 1
    sums = cublaslt._column_sums(x)
    assert sums.dtype == torch.bfloat16
    torch.testing.assert_close(sums.double(), x.double().sum(0).to(torch.bfloat16).double(), rtol=2**-8, atol=0)


def _loss_and_grads(model, x, compile_model=False):
    model.zero_grad(set_to_none=True)
    run = ModelWithLoss(model, build_loss("plain", model.config.vocab_size, model.config.padded_vocab_size))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = (torch.compile(run) if compile_model else run)(x, x)
    loss.backward()
    return loss.item(), {n: p.grad.float().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("recompute", [0, 1, 3])
@pytest.mark.parametrize("compile_model", [False, True])
def test_fused_model_gives_the_unfused_models_loss_and_gradients(recompute, compile_model):
    torch.manual_seed(0)
    config = ModelConfig.from_descriptor("d2w64")
    unfused = GPT(config, recompute=recompute)
    fused = GPT(config, recompute=recompute)
    fused.load_state_dict(unfused.state_dict())
    assert fused.set_gelu_fusion(2) == 2 == fused.gelu_fusion
    assert all(block.mlp.keep_gelu == (recompute != 1) for block in fused.transformer.h)
    x = torch.randint(0, 50257, (2, 32))
    ref_loss, ref_grads = _loss_and_grads(unfused, x, compile_model)
    loss, grads = _loss_and_grads(fused, x, compile_model)
    assert loss == pytest.approx(ref_loss, rel=1e-3)
    for name, grad in grads.items():  # the same bf16 math in another order: within a few bf16 roundings
        assert (grad - ref_grads[name]).norm() <= 2e-2 * ref_grads[name].norm() + 1e-6, name


def test_recompute_two_keeps_gelu_unfused_and_fp32_runs_unfused():
    config = ModelConfig.from_descriptor("d2w64")
    model = GPT(config, recompute=2)
    assert model.set_gelu_fusion(2) == 0
    assert all(block.mlp.gelu_fusion == 0 for block in model.transformer.h)
    fused = GPT(config)
    fused.set_gelu_fusion(2)
    x = torch.randint(0, 50257, (1, 8))
    fused(x)  # without autocast the MLP takes the plain path (the epilogues are bf16 only)


def test_gelu_fusion_for_chooses_and_refuses_with_one_line_errors():
    cpu32 = select_runtime("cpu", "fp32")
    cpu16 = select_runtime("cpu", "bf16")
    gpt = GPT(ModelConfig.from_descriptor("d2w64"))
    assert gelu_fusion_for(-1, cpu16, gpt, 0) == 0  # auto: only on a CUDA GPU
    assert gelu_fusion_for(0, cpu16, gpt, 0) == 0 and gpt.gelu_fusion == 0
    assert gelu_fusion_for(1, cpu16, gpt, 0) == 1 == gpt.transformer.h[0].mlp.gelu_fusion
    with pytest.raises(LlmpyError, match=r"-ge/--gelu-fusion 2: the epilogues run in bf16 and this run is fp32"):
        gelu_fusion_for(2, cpu32, GPT(ModelConfig.from_descriptor("d2w64")), 0)
    with pytest.raises(LlmpyError, match=r"-r 2 recomputes GELU"):
        gelu_fusion_for(2, cpu16, GPT(ModelConfig.from_descriptor("d2w64"), recompute=2), 2)
    modern = ModernGPT(ModelConfig.from_descriptor("d2w64"))
    with pytest.raises(LlmpyError, match=r"modern family's MLP is not GPT-2's"):
        gelu_fusion_for(1, cpu16, modern, 0)
    assert gelu_fusion_for(-1, cpu16, modern, 0) == 0


def test_gelu_fusion_flag_values():
    assert TrainConfig(train_data="x.bin", gelu_fusion=2).validate().gelu_fusion == 2
    with pytest.raises(LlmpyError, match=r"-ge/--gelu-fusion .* got 3"):
        TrainConfig(train_data="x.bin", gelu_fusion=3).validate()
