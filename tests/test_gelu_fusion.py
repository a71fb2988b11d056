"""-ge / --gelu-fusion: the MLP with GELU inside the matmuls' cuBLASLt epilogues (llmpy.kernels.cublaslt).

On a CPU the two epilogue ops run as PyTorch ops, so these tests check the autograd function's math (every gradient,
at both fusion levels, keeping or recomputing GELU) against fp64
autograd through F.linear/F.gelu, and how a run chooses and refuses the fusion. The cuBLASLt kernels themselves are
checked on the GPU (benchmarks/gpu_gelu_fusion_check.py, `llmpy bench --check -ge 2`; benchmarks/RESULTS.md)."""

import types
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

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


class _OpCounts(TorchDispatchMode):
    """Counts the ops dispatched while active (the custom ops by name, not what runs inside them)."""

    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("level", [0, 1, 2])
def test_each_level_runs_its_epilogue_ops_once_per_layer(level):
    config = ModelConfig.from_descriptor("d2w64")
    model = GPT(config)
    model.set_gelu_fusion(level)
    x = torch.randint(0, 50257, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ModelWithLoss(model, build_loss("plain", config.vocab_size, config.padded_vocab_size))(x, x)
    counts = _OpCounts()
    with counts:
        loss.backward()
    assert counts.counts["matmul_dgelu"] == (config.n_layer if level == 2 else 0)
    with counts, torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    assert counts.counts["linear_gelu"] == (config.n_layer if level else 0)
    assert counts.counts["gelu"] == (0 if level else config.n_layer)


def test_keep_gelu_false_saves_only_the_gelu_input():
    (x, w_fc, b_fc, w_proj, b_proj), _ = _mlp_inputs()
    saved = {}
    for keep in (True, False):
        tensors = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: tensors.append(t) or t, lambda t: t):
            MLPFunction.apply(x, w_fc, b_fc, w_proj, b_proj, 2, keep)
        saved[keep] = sum(t.numel() for t in tensors)
    assert saved[True] - saved[False] == x.shape[0] * w_fc.shape[0]  # GELU(h): one (M, 4C) tensor


def test_recompute_two_keeps_gelu_unfused_and_fp32_runs_unfused():
    config = ModelConfig.from_descriptor("d2w64")
    model = GPT(config, recompute=2)
    assert model.set_gelu_fusion(2) == 0
    assert all(block.mlp.gelu_fusion == 0 for block in model.transformer.h)
    fused = GPT(config)
    fused.set_gelu_fusion(2)
    counts = _OpCounts()
    with counts:
        fused(torch.randint(0, 50257, (1, 8)))  # without autocast: the plain MLP (the epilogues are bf16 only)
    assert counts.counts["linear_gelu"] == 0 and counts.counts["gelu"] == config.n_layer


def test_gelu_fusion_on_cuda_is_auto_on_hopper_and_explains_a_refusal(monkeypatch):
    cuda = types.SimpleNamespace(is_cuda=True, precision="bf16", device=torch.device("cuda", 0),
                                 device_name=lambda: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(cublaslt, "gelu_fusion_supported", lambda index: True)
    for capability, auto in (((9, 0), 2), ((8, 0), 0)):  # llm.c's default: on from Hopper
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index, c=capability: c)
        assert gelu_fusion_for(-1, cuda, GPT(ModelConfig.from_descriptor("d2w64")), 0) == auto
    assert gelu_fusion_for(1, cuda, GPT(ModelConfig.from_descriptor("d2w64")), 0) == 1  # asked for: given
    monkeypatch.setattr(cublaslt, "gelu_fusion_supported", lambda index: False)
    monkeypatch.setattr(cublaslt, "unsupported_reason", lambda index: "libcublasLt was not found")
    assert gelu_fusion_for(-1, cuda, GPT(ModelConfig.from_descriptor("d2w64")), 0) == 0
    with pytest.raises(LlmpyError, match=r"^-ge/--gelu-fusion 2: cuBLASLt's GELU epilogues do not run on NVIDIA "
                                         r"A100-SXM4-80GB: libcublasLt was not found; leave -ge at -1 or give -ge 0$"):
        gelu_fusion_for(2, cuda, GPT(ModelConfig.from_descriptor("d2w64")), 0)


def test_shape_mismatches_are_refused_before_any_kernel_runs():
    x, w, b = torch.zeros(4, 8), torch.zeros(32, 16), torch.zeros(32)
    with pytest.raises(ValueError, match=r"linear_gelu: weight \(32, 16\) for x \(4, 8\)"):
        cublaslt.linear_gelu(x, w, b)
    with pytest.raises(ValueError, match=r"matmul_dgelu: pre \(4, 16\) for grad \(4, 8\)"):
        cublaslt.matmul_dgelu(torch.zeros(4, 8), torch.zeros(8, 32), torch.zeros(4, 16))


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


def test_a_failed_probe_leaves_the_fusion_off_and_says_why(monkeypatch):
    cublaslt._probe(torch.device("cpu"))  # the probe's own checks pass on the PyTorch ops it compares against

    def failing(device):
        raise cublaslt.CublasLtError("cuBLASLt's DGELU epilogue gave wrong values on X (max error 3)")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (9, 0))
    monkeypatch.setattr(cublaslt, "_probe", failing)
    cublaslt.gelu_fusion_supported.cache_clear()
    try:
        assert not cublaslt.gelu_fusion_supported(5)
        assert cublaslt.unsupported_reason(5) == ("GELU fusion: cuBLASLt's DGELU epilogue gave wrong values on X (max "
                                                  "error 3) (give -ge 0 to train without the cuBLASLt epilogues)")
    finally:
        cublaslt.gelu_fusion_supported.cache_clear()


@pytest.mark.parametrize("fusion, regions", [(0, 2), (2, 0)])
def test_recompute_one_with_fusion_needs_no_checkpoint_region(monkeypatch, fusion, regions):
    """-r 1 recomputes GELU only: the fused MLP does that itself, so its blocks run without torch's checkpoint."""
    import llmpy.model

    calls = []
    real = llmpy.model.checkpoint
    monkeypatch.setattr(llmpy.model, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    config = ModelConfig.from_descriptor("d2w64")
    model = GPT(config, recompute=1)
    model.set_gelu_fusion(fusion)
    x = torch.randint(0, 50257, (1, 8))
    _loss_and_grads(model, x)
    assert len(calls) == regions == (config.n_layer if not fusion else 0)


def test_the_probes_comparison_judges_each_output_against_its_scale():
    inputs = [t.detach().to(torch.bfloat16) for t in _mlp_inputs(rows=16, channels=8)[0][:4]]
    errors = cublaslt.epilogue_errors(*inputs, torch.randn(16, 8).to(torch.bfloat16))
    assert set(errors) == {"gelu", "gelu_erf", "pre", "dh", "dbias"}
    assert cublaslt.disagreeing_outputs(errors) == []  # the PyTorch ops against fp32: within bf16 rounding
    # 2e-2 of the scale, at least 1: 0.05 of a scale of 3 passes, 0.07 fails; gelu_erf is never judged
    assert cublaslt.disagreeing_outputs({"gelu": (0.05, 3.0), "dh": (0.07, 3.0), "pre": (0.019, 0.5),
                                         "gelu_erf": (9.0, 1.0)}) == ["dh"]


def test_fastest_candidate_skips_failures_and_keeps_the_first_on_ties():
    times = {0: 0.52, 1: None, 2: 0.41, 3: 0.41}
    assert cublaslt.fastest_candidate(4, times.get) == (2, [(0, 0.52), (2, 0.41), (3, 0.41)])
    assert cublaslt.fastest_candidate(2, lambda i: None) == (0, [])  # nothing timed: the heuristic's first choice
    assert cublaslt.fastest_candidate(1, lambda i: 0.3) == (0, [(0, 0.3)])


def test_a_malformed_tuning_variable_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("LLMPY_CUBLASLT_TUNE", "on")
    with pytest.raises(LlmpyError, match=r"LLMPY_CUBLASLT_TUNE='on': expected a number of candidates from 1 to 64"):
        cublaslt.tune_candidates()
    monkeypatch.setenv("LLMPY_CUBLASLT_TUNE", "8")
    assert cublaslt.tune_candidates() == 8
    monkeypatch.setenv("LLMPY_CUBLASLT_TUNE", "1")
    assert cublaslt.tune_candidates() == 1
    monkeypatch.delenv("LLMPY_CUBLASLT_TUNE")
    assert cublaslt.tune_candidates() == 8  # the default: the first choice lost 4.5% to the best of 8 on an H200
