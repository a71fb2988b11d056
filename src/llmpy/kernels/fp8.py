"""FP8 matmuls for the output head (the largest matmul of a small GPT: 768 x 50304 per token, three times a step).

x @ W^T runs on FP8 tensor cores through `torch._scaled_mm` with one scale per tensor, taken from its absolute maximum
each call (so nothing to tune and nothing stale): the forward operands in e4m3 (3 mantissa bits, range 448), the
incoming gradient in e5m2 (2 mantissa bits, range 57344), the way FP8 training recipes split them (Micikevicius et al.
2022, "FP8 formats for deep learning"). The weight's gradient is accumulated and returned in fp32. Off by default;
`--arch fp8_head=1` asks for it and it runs where the GPU has FP8 matmuls (compute capability 8.9+: Ada, Hopper).
"""

from __future__ import annotations

import torch

FORWARD_FP8 = torch.float8_e4m3fn
GRADIENT_FP8 = torch.float8_e5m2


def _fp8_matmul_available(device_index: int) -> bool:
    """Whether CUDA device `device_index` has FP8 tensor cores (sm_89 and newer)."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability(device_index) >= (8, 9)


def __getattr__(name: str):
    """`fp8_matmul_available` is `_fp8_matmul_available` under torch.compiler.assume_constant_result (a constant to a
    compiled graph), made at first use: the decorator imports torch._dynamo, which only a compiled run needs. An FP8
    head asks for it when built (see llmpy.modern.SoftcapHead)."""
    if name == "fp8_matmul_available":
        built = torch.compiler.assume_constant_result(_fp8_matmul_available)
        globals()[name] = built
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def to_fp8(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~= x8 * scale with x8 in `dtype`: scale = amax(|x|) / the format's largest value (fp32, 0-dim)."""
    largest = torch.finfo(dtype).max
    amax = x.detach().abs().amax().float()
    scale = torch.clamp(amax, min=1e-30) / largest
    # clamped: a quotient rounded just above the largest value would become inf in e5m2 (which has infinities)
    return (x.float() / scale).clamp(-largest, largest).to(dtype), scale


def column_major(x: torch.Tensor) -> torch.Tensor:
    """The same matrix stored column by column, as `_scaled_mm` wants its second operand."""
    return x.t().contiguous().t()


class FP8Linear(torch.autograd.Function):
    """x (N, C) @ w (V, C)^T -> (N, V) in x's dtype, with every product of the forward and backward in FP8."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x8, x_scale = to_fp8(x, FORWARD_FP8)
        w8, w_scale = to_fp8(w, FORWARD_FP8)
        ctx.save_for_backward(x8, x_scale, w8, w_scale)
        ctx.x_dtype, ctx.w_dtype = x.dtype, w.dtype
        return torch._scaled_mm(x8, w8.t(), scale_a=x_scale, scale_b=w_scale, out_dtype=x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x8, x_scale, w8, w_scale = ctx.saved_tensors
        g8, g_scale = to_fp8(grad.contiguous(), GRADIENT_FP8)  # row-major, as _scaled_mm's first operand must be
        grad_x = torch._scaled_mm(g8, column_major(w8), scale_a=g_scale, scale_b=w_scale,
                                  out_dtype=ctx.x_dtype)  # (N, V) @ (V, C)
        grad_w = torch._scaled_mm(g8.t().contiguous(), column_major(x8), scale_a=g_scale, scale_b=x_scale,
                                  out_dtype=torch.float32)  # (V, N) @ (N, C)
        return grad_x, grad_w.to(ctx.w_dtype)


def fp8_shapes_fit(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `_scaled_mm` takes these shapes: rows, inner and output dimensions multiples of 16 (a training
    batch; not the few rows of sampling or HellaSwag, which then take the ordinary matmul)."""
    return (x.numel() // max(1, x.size(-1))) % 16 == 0 and x.size(-1) % 16 == 0 and weight.size(0) % 16 == 0


def fp8_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (..., C) @ weight (V, C)^T in FP8 -> (..., V). Every dimension must be a multiple of 16."""
    leading = x.shape[:-1]
    return FP8Linear.apply(x.reshape(-1, x.size(-1)), weight).view(*leading, weight.size(0))
