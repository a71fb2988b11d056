"""Causal attention alone, at GPT-2's training shapes: cuDNN through SDPA (today's default) against FlashAttention-4
called directly on the packed q/k/v (`--attention fa4`, llmpy.kernels.fa4) and against cuDNN's forward kernel with
FA4's backward pass (`--attention cudnn+fa4`), forward and forward + backward.

Both start from the (B, T, 3C) output of the q/k/v matmul, as a training step does, and end with the gradient of
that tensor: through SDPA, autograd stacks dq, dk, dv into it; FA4's direct path writes them in place. Errors are
against fp32 math attention on the same bf16 inputs (the first rows of the batch).
    PYTHONPATH=src python benchmarks/gpu_attention_ops.py [--batch 64] [--heads 12] [--json FILE]
FlashAttention-4 must be importable (.fa4/install.sh, see benchmarks/fa4_pack.sh).
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from gpu_gelu_fusion_check import timed  # this folder's op timer (ms per call, CUDA events)
from llmpy.kernels.fa4 import fa4_causal


def sdpa(qkv5: torch.Tensor, backend: SDPBackend) -> torch.Tensor:
    q, k, v = (t.transpose(1, 2) for t in qkv5.unbind(2))
    with sdpa_kernel([backend]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    B, T, nh, hs = args.batch, args.seq_len, args.heads, args.head_dim
    g = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(B, T, 3 * nh * hs, device="cuda", generator=g).to(torch.bfloat16).requires_grad_(True)
    dy = torch.randn(B, T, nh, hs, device="cuda", generator=g).to(torch.bfloat16)
    variants = {"cudnn_sdpa": lambda t: sdpa(t, SDPBackend.CUDNN_ATTENTION),
                "fa4_direct": lambda t: fa4_causal(t)[0],
                "cudnn_fwd_fa4_bwd": lambda t: fa4_causal(t, "cudnn")[0]}
    # causal attention's FLOPs: 2 matmuls (QK^T, PV) of 2 B nh T T hs / 2 forward; the backward is 2.5x that
    flops_fwd = 4 * B * nh * T * T * hs / 2
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "B": B, "T": T, "n_head": nh,
              "head_dim": hs}
    rows = min(B, 4)
    ref_qkv = qkv.detach()[:rows].float().requires_grad_(True)
    ref_y = sdpa(ref_qkv.view(rows, T, 3, nh, hs), SDPBackend.MATH)
    ref_y.backward(dy[:rows].float())
    for name, fn in variants.items():
        first = time.perf_counter()
        part = qkv.detach()[:rows].clone().requires_grad_(True)
        y = fn(part.view(rows, T, 3, nh, hs))
        y.backward(dy[:rows])
        torch.cuda.synchronize()
        result[f"{name}_first_call_s"] = time.perf_counter() - first  # FA4 compiles its kernels here
        result[f"{name}_y_max_err"] = (y.float() - ref_y).abs().max().item()
        result[f"{name}_dqkv_max_err"] = (part.grad.float() - ref_qkv.grad).abs().max().item()
        packed = qkv.view(B, T, 3, nh, hs)

        def forward():
            with torch.no_grad():
                fn(packed)

        def forward_backward():
            qkv.grad = None
            fn(packed).backward(dy)

        result[f"{name}_fwd_ms"] = fwd = timed(forward)
        result[f"{name}_fwd_bwd_ms"] = both = timed(forward_backward)
        result[f"{name}_fwd_tflops"] = flops_fwd / fwd / 1e9
        result[f"{name}_fwd_bwd_tflops"] = 3.5 * flops_fwd / both / 1e9
    result["ref_y_max"] = ref_y.abs().max().item()
    result["ref_dqkv_max"] = ref_qkv.grad.abs().max().item()
    print(json.dumps(result))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
