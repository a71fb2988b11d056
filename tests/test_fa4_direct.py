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
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):  # CUDA tensors without a GPU
        cuda = {dtype: torch.empty(1, 4, 3, 2, 64, dtype=dtype, device="cuda")
                for dtype in (torch.bfloat16, torch.float16, torch.float32)}
        odd_head = torch.empty(1, 4, 3, 2, 60, dtype=torch.bfloat16, device="cuda")
    monkeypatch.setattr(attention, "_fa4_forward", "cudnn")
    assert attention._fa4_applies(cuda[torch.bfloat16], None) and attention._fa4_applies(cuda[torch.float16], None)
    assert not attention._fa4_applies(cuda[torch.float32], None)  # FA4 takes bf16/fp16 only
    assert not attention._fa4_applies(cuda[torch.bfloat16], object())  # a KV cache: SDPA
    assert not attention._fa4_applies(odd_head, None)  # sm90 kernels take head sizes in multiples of 8
    assert not attention._fa4_applies(torch.zeros(1, 4, 3, 2, 64, dtype=torch.bfloat16), None)  # a CPU tensor
    monkeypatch.setattr(attention, "_fa4_forward", None)
    assert not attention._fa4_applies(cuda[torch.bfloat16], None)  # not activated


def test_cudnn_forward_feeds_fa4s_backward(reference_fa4, monkeypatch):
    """forward="cudnn": cuDNN's output and its (B, nh, T, 1) log-sum-exp (stood in for by the reference), then FA4's
    backward pass, against fp64 SDPA autograd."""

    def cudnn_stand_in(q, k, v):  # (B, nh, T, hs) views, as the op passes them to cuDNN
        y, lse = ReferenceFA4._flash_attn_fwd(*(t.transpose(1, 2) for t in (q, k, v)), causal=True, return_lse=True)
        return y.transpose(1, 2), lse[..., None]

    monkeypatch.setattr(fa4, "_cudnn_forward", cudnn_stand_in)
    qkv, dy = _packed()
    y, lse = fa4.fa4_causal(qkv, "cudnn")
    (y * dy).sum().backward()
    expected_qkv = qkv.detach().double().requires_grad_(True)
    (_sdpa_on_packed(expected_qkv) * dy.double()).sum().backward()
    assert y.is_contiguous() and lse.shape == (2, 3, 12) and lse.is_contiguous()  # what the fake promises
    torch.testing.assert_close(qkv.grad.double(), expected_qkv.grad, atol=1e-5, rtol=1e-5)


def test_probe_passes_a_correct_kernel_and_raises_on_a_wrong_one(reference_fa4, monkeypatch):
    fa4.probe(torch.device("cpu"), forward="fa4")

    class SwappedGradients(ReferenceFA4):
        @classmethod
        def _flash_attn_bwd(cls, q, k, v, out, dout, lse, causal, dq, dk, dv):
            return super()._flash_attn_bwd(q, k, v, out, dout, lse, causal, dq, dv, dk)

    fa4.use_module(SwappedGradients)
    with pytest.raises(RuntimeError, match="q/k/v gradient differs from SDPA's"):
        fa4.probe(torch.device("cpu"), forward="fa4")


def test_a_later_runtime_undoes_what_fa4_set(monkeypatch):
    import torch.nn.attention as sdpa

    restored = []
    monkeypatch.setattr(sdpa, "restore_flash_attention_impl", lambda: restored.append(True))
    monkeypatch.setattr(attention, "_fa4_forward", "fa4")
    monkeypatch.setattr(attention, "_fa4_hook", True)
    attention.activate_attention(torch.device("cpu"), "auto")
    assert attention._fa4_forward is None and not attention._fa4_hook and restored == [True]


def test_load_keeps_the_compiled_kernels_in_the_llmpy_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMPY_CACHE", str(tmp_path))
    for name in ("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"):
        monkeypatch.setenv(name, "")  # recorded, so that what load() sets is undone after the test
        monkeypatch.delenv(name)
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
                        lambda name, *a: (object() if installed else None) if name == "flash_attn"
                        else real_find_spec(name, *a))
    monkeypatch.setattr(fa4, "load", lambda: ReferenceFA4)
    probed = []
    monkeypatch.setattr(fa4, "probe", probed.append)  # the small GPU pass, checked in test_probe_... on a CPU
    assert auto_attention(torch.device("cuda", 0), precision) == expected
    assert probed == ([torch.device("cuda", 0)] if expected == "cudnn+fa4" else [])
    assert auto_attention(torch.device("cpu"), "bf16") == "auto"


def test_auto_attention_warns_and_stays_with_pytorch_when_fa4_does_not_load(monkeypatch):
    import importlib.util

    from llmpy.runtime import auto_attention

    def broken():
        raise ImportError("No module named 'flash_attn.cute'")  # flash-attn 2 is installed, not 4

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(fa4, "load", broken)
    with pytest.warns(UserWarning, match="FlashAttention-4 did not load or run .ImportError: No module named"):
        assert auto_attention(torch.device("cuda", 0), "bf16") == "auto"

    def wrong(device):
        raise RuntimeError("FlashAttention-4's output differs from SDPA's by 3.1")

    monkeypatch.setattr(fa4, "load", lambda: ReferenceFA4)
    monkeypatch.setattr(fa4, "probe", wrong)
    with pytest.warns(UserWarning, match="did not load or run .RuntimeError: FlashAttention-4's output differs"):
        assert auto_attention(torch.device("cuda", 0), "bf16") == "auto"
