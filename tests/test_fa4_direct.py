"""--attention fa4's direct path (llmpy.kernels.fa4): FlashAttention-4 on the packed q/k/v, its gradient written as
one tensor.

The CuTe kernels need a Hopper GPU (checked there by `llmpy bench --check --attention fa4`, benchmarks/RESULTS.md).
Here a stand-in module with FlashAttention's two entry points, written from the textbook formulas in fp64 (the
backward pass rebuilds P from the log-sum-exp, as FlashAttention does), checks everything llmpy adds around them:
which slot of the packed tensor each of q, k, v and their gradients takes, the custom ops' fake tensors under
torch.compile, and the model's wiring, all against fp64 autograd through PyTorch's own SDPA."""

import math
import os

import pytest
import torch
import torch.nn.functional as F

from llmpy import attention
from llmpy.config import ModelConfig
from llmpy.kernels import fa4
from llmpy.loss import build_loss
from llmpy.model import GPT


class ReferenceFA4:
    """flash_attn.cute.interface's _flash_attn_fwd/_flash_attn_bwd for causal attention, (B, T, nh, hs) layout."""

    bwd_calls = 0

    @staticmethod
    def _scores(q, k):
        T, hs = q.size(1), q.size(3)
        s = q.double().transpose(1, 2) @ k.double().transpose(1, 2).transpose(-1, -2) / math.sqrt(hs)
        return s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))  # (B, nh, T, T)

    @classmethod
    def _flash_attn_fwd(cls, q, k, v, causal, return_lse):
        assert causal and return_lse
        s = cls._scores(q, k)
        lse = torch.logsumexp(s, dim=-1)
        y = torch.exp(s - lse[..., None]) @ v.double().transpose(1, 2)
        return y.transpose(1, 2).to(q.dtype).contiguous(), lse.float()

    @classmethod
    def _flash_attn_bwd(cls, q, k, v, out, dout, lse, causal, dq, dk, dv):
        assert causal and dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
        cls.bwd_calls += 1
        hs = q.size(3)
        p = torch.exp(cls._scores(q, k) - lse.double()[..., None])  # (B, nh, T, T)
        do, o = dout.double().transpose(1, 2), out.double().transpose(1, 2)
        dp = do @ v.double().transpose(1, 2).transpose(-1, -2)
        ds = p * (dp - (do * o).sum(-1, keepdim=True))
        dq.copy_((ds @ k.double().transpose(1, 2) / math.sqrt(hs)).transpose(1, 2))
        dk.copy_((ds.transpose(-1, -2) @ q.double().transpose(1, 2) / math.sqrt(hs)).transpose(1, 2))
        dv.copy_((p.transpose(-1, -2) @ do).transpose(1, 2))
        return dq, dk, dv


@pytest.fixture
def reference_fa4():
    fa4.use_module(ReferenceFA4)
    ReferenceFA4.bwd_calls = 0
    yield ReferenceFA4
    fa4.use_module(None)


def _sdpa_on_packed(qkv):
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)


def _packed(B=2, T=12, nh=3, hs=8, dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, T, 3 * nh * hs, generator=generator).to(dtype).view(B, T, 3, nh, hs)
    return qkv.requires_grad_(True), torch.randn(B, T, nh, hs, generator=generator).to(dtype)


def test_packed_op_matches_fp64_sdpa_autograd(reference_fa4):
    qkv, dy = _packed()
    y = fa4.fa4_causal(qkv)[0]
    (y * dy).sum().backward()
    expected_qkv = qkv.detach().double().requires_grad_(True)
    expected = _sdpa_on_packed(expected_qkv)
    (expected * dy.double()).sum().backward()
    assert y.shape == (2, 12, 3, 8)
    torch.testing.assert_close(y.double(), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(qkv.grad.double(), expected_qkv.grad, atol=1e-5, rtol=1e-5)
    assert reference_fa4.bwd_calls == 1
    # the gradient is one tensor laid out like the q/k/v matmul's output, not a stack of three
    assert qkv.grad.is_contiguous() and qkv.grad.shape == qkv.shape


def test_custom_ops_registrations_pass_opcheck(reference_fa4):
    qkv, dy = _packed(B=1, T=8, nh=2, hs=4)
    torch.library.opcheck(fa4.fa4_causal, (qkv,))
    y, lse = fa4.fa4_causal(qkv.detach())
    torch.library.opcheck(fa4.fa4_causal_backward, (dy, qkv.detach(), y, lse))


def test_compiled_graph_takes_the_ops_fake_shapes(reference_fa4):
    qkv, dy = _packed()

    def loss(t):
        return (fa4.fa4_causal(t)[0] * dy).sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    compiled(qkv).backward()
    eager_qkv = qkv.detach().clone().requires_grad_(True)
    loss(eager_qkv).backward()
    torch.testing.assert_close(qkv.grad, eager_qkv.grad)
    assert reference_fa4.bwd_calls == 2


def test_model_with_the_direct_path_matches_sdpa(reference_fa4, monkeypatch):
    config = ModelConfig(n_layer=2, n_head=4, n_embd=64, block_size=32)
    torch.manual_seed(0)
    model = GPT(config)
    loss_fn = build_loss("plain", config.vocab_size, config.padded_vocab_size)
    idx = torch.randint(0, config.vocab_size, (2, 32))
    targets = torch.randint(0, config.vocab_size, (2, 32))

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model(idx), targets, model.lm_head)
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    sdpa_loss, sdpa_grads = loss_and_grads()
    monkeypatch.setattr(attention, "_fa4_forward", "fa4")
    monkeypatch.setattr(attention, "_fa4_applies", lambda qkv, kv_cache: kv_cache is None)  # on a CPU
    direct_loss, direct_grads = loss_and_grads()
    assert reference_fa4.bwd_calls == config.n_layer
    torch.testing.assert_close(direct_loss, sdpa_loss, atol=1e-6, rtol=1e-6)
    for name, grad in sdpa_grads.items():
        torch.testing.assert_close(direct_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_direct_path_only_on_cuda_half_precision_without_a_cache(monkeypatch):
    qkv = torch.zeros(1, 4, 3, 2, 8, dtype=torch.bfloat16)
    monkeypatch.setattr(attention, "_fa4_forward", "cudnn")
    assert not attention._fa4_applies(qkv, None)  # a CPU tensor
    monkeypatch.setattr(attention, "_fa4_forward", None)
    assert not attention._fa4_applies(qkv, None)


def test_load_keeps_the_compiled_kernels_in_the_llmpy_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMPY_CACHE", str(tmp_path))
    monkeypatch.delenv("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", raising=False)
    monkeypatch.delenv("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", raising=False)
    monkeypatch.setattr(fa4, "MODULE", "json")  # any importable module stands in for flash_attn.cute.interface
    fa4.use_module(None)
    try:
        import json

        assert fa4.load() is json
        assert os.environ["FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED"] == "1"
        assert os.environ["FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"] == str(tmp_path / "fa4")
    finally:
        fa4.use_module(None)


@pytest.mark.parametrize("capability, precision, installed, expected", [
    ((9, 0), "bf16", True, "cudnn+fa4"),  # an H100/H200 with flash-attn-4: where the pair was measured faster
    ((9, 0), "bf16", False, "auto"),
    ((9, 0), "fp32", True, "auto"),  # FA4 takes bf16/fp16 only
    ((10, 0), "bf16", True, "auto"),  # Blackwell: not measured
    ((8, 0), "bf16", True, "auto"),
])
def test_auto_attention_picks_cudnn_fa4_only_where_it_was_measured(monkeypatch, capability, precision, installed,
                                                                    expected):
    import importlib.util

    from llmpy.runtime import auto_attention

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (object() if installed else None) if name == "flash_attn.cute"
                        else real_find_spec(name, *a))
    assert auto_attention(torch.device("cuda", 0), precision) == expected
    assert auto_attention(torch.device("cpu"), "bf16") == "auto"
