"""FlashAttention-4 (the flash-attn-4 package's CuTe DSL kernels) called directly on the packed q/k/v activation.

Through SDPA, each layer's backward pass gets dq, dk and dv as three new tensors, which autograd then stacks into the
(B, T, 3C) gradient of the q/k/v matmul: a copy of 3 x B x T x C bf16 per layer and micro-step (13.8 ms of a d12
step on an H200). Called directly, FlashAttention takes q, k, v as strided views of the (B, T, 3, nh, hs) matmul
output, its own layout, and writes dq, dk, dv into the three slots of one (B, T, 3, nh, hs) gradient, so the copy is
gone. Causal attention only, bf16/fp16; `llmpy.attention.qkv_attention` decides when this path runs.

The forward pass can run cuDNN's kernel instead (`forward="cudnn"`, --attention cudnn+fa4): on an H200 at GPT-2's
shapes cuDNN's forward is faster than FA4's and FA4's backward faster than cuDNN's (benchmarks/RESULTS.md). Both
return the log-sum-exp of the scaled scores in natural log, which is all the backward pass takes from the forward.

The package is imported on first use (`load`), so nothing here needs it on a CPU; tests substitute a reference
module with the same two functions.
"""

from __future__ import annotations

import contextlib
import importlib
import os

import torch

MODULE = "flash_attn.cute.interface"  # _flash_attn_fwd / _flash_attn_bwd, flash-attn-4 4.0.0b18's private API
_module = None


def load():
    """The flash-attn-4 interface module (imported once; ImportError when the package is missing). Its kernels
    compile at first use (~17 s on an H200); they are kept on disk, in the llmpy cache's fa4/ unless
    FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED/_DIR say otherwise, so later runs start at once."""
    global _module
    if _module is None:
        from llmpy.config import default_cache_dir

        os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "1")  # read when the package is imported
        os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", str(default_cache_dir() / "fa4"))
        _module = importlib.import_module(MODULE)
    return _module


def use_module(module) -> None:
    """Replace the FlashAttention-4 interface (tests: a reference with the same functions; None: import again)."""
    global _module
    _module = module


def _cudnn_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cuDNN's causal forward kernel on (B, nh, T, hs) views: (y (B, nh, T, hs), log-sum-exp (B, nh, T[, 1]) fp32)."""
    return torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, True, False)[:2]


def probe(device: torch.device, forward: str = "cudnn") -> None:
    """One small forward and backward pass through `fa4_causal` on `device` (compiling FA4's kernels for head size
    64, as GPT-2's models use), compared with SDPA in fp32 on the same bf16 inputs; raises where FA4 fails or
    disagrees. T = 256 spans two of the backward kernel's 128-row tiles, so the kernels compiled here are the ones
    T = 1024 takes."""
    generator = torch.Generator(device=device).manual_seed(0)
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with on_device:  # FA4 launches on the current device's stream
        qkv = torch.randn(2, 256, 3, 2, 64, device=device, generator=generator).to(torch.bfloat16)
        dy = torch.randn(2, 256, 2, 64, device=device, generator=generator).to(torch.bfloat16)
        fast = qkv.clone().requires_grad_(True)
        y = fa4_causal(fast, forward)[0]
        y.backward(dy)
        exact = qkv.float().requires_grad_(True)
        q, k, v = (t.transpose(1, 2) for t in exact.unbind(2))
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
        expected.backward(dy.float())
    for name, got, want in (("output", y, expected), ("q/k/v gradient", fast.grad, exact.grad)):
        error = (got.float() - want).abs().max().item()
        if not error <= 0.05 * max(1.0, want.abs().max().item()):  # bf16: ~1e-2 here (benchmarks/RESULTS.md)
            raise RuntimeError(f"FlashAttention-4's {name} differs from SDPA's by {error:.3g}")


@torch.library.custom_op("llmpy::fa4_causal", mutates_args=())
def fa4_causal(qkv: torch.Tensor, forward: str = "fa4") -> tuple[torch.Tensor, torch.Tensor]:
    """qkv (B, T, 3, nh, hs) -> (y (B, T, nh, hs), log-sum-exp (B, nh, T) fp32), softmax(q k^T / sqrt(hs)) v causal;
    the forward kernel FA4's or cuDNN's (`forward`), the backward pass FA4's."""
    if forward == "cudnn":
        B, T, _, nh, _ = qkv.shape
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # (B, nh, T, hs) views, as SDPA passes them
        y, lse = _cudnn_forward(q, k, v)
        return y.transpose(1, 2).contiguous(), lse.reshape(B, nh, T).contiguous()
    q, k, v = qkv.unbind(2)
    y, lse = load()._flash_attn_fwd(q, k, v, causal=True, return_lse=True)
    return y, lse


@fa4_causal.register_fake
def _(qkv, forward="fa4"):
    B, T, _, nh, hs = qkv.shape
    return qkv.new_empty(B, T, nh, hs), qkv.new_empty(B, nh, T, dtype=torch.float32)


@torch.library.custom_op("llmpy::fa4_causal_backward", mutates_args=())
def fa4_causal_backward(dy: torch.Tensor, qkv: torch.Tensor, y: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """The gradient of fa4_causal's y with respect to qkv, written as one (B, T, 3, nh, hs) tensor."""
    dqkv = torch.empty_like(qkv, memory_format=torch.contiguous_format)
    dq, dk, dv = dqkv.unbind(2)
    q, k, v = qkv.unbind(2)
    load()._flash_attn_bwd(q, k, v, y, dy.contiguous(), lse, causal=True, dq=dq, dk=dk, dv=dv)
    return dqkv


@fa4_causal_backward.register_fake
def _(dy, qkv, y, lse):
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], *output)


def _backward(ctx, dy, dlse):
    qkv, y, lse = ctx.saved_tensors
    return fa4_causal_backward(dy, qkv, y, lse), None


fa4_causal.register_autograd(_backward, setup_context=_setup_context)
