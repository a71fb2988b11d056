"""The attention seam: every model calls `causal_attention`, so a new kernel (FlashAttention-3/4, FlexAttention) is a
new branch here, not an edit of the model. Inputs and outputs are (B, T, n_head, head_dim), the layout the
FlashAttention kernels take; PyTorch's SDPA wants (B, n_head, T, head_dim), so this is where the transposes live.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache=None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with a causal mask; q, k, v (B, T, nh, hs) -> (B, T, nh, hs).

    `kv_cache` (inference, see llmpy.infer.KVCache's layer view) holds the keys and values of earlier positions; a
    cached forward takes a whole prompt first, then one token at a time."""
    T = q.size(1)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, T, hs)
    if kv_cache is not None:
        k, v = kv_cache.update(k, v)  # (B, nh, T_past + T, hs)
        if T != 1 and T != k.size(2):
            raise ValueError("a KV cache takes a whole prompt first, then one token at a time")
    # one new token attends to every cached position; otherwise the usual causal mask
    y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)  # (B, nh, T, hs)
    return y.transpose(1, 2)


def backend_context(backend: str) -> contextlib.AbstractContextManager:
    """The SDPA kernel preference for the forward passes run inside it (entered outside torch.compile's region)."""
    if backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernels = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    # the chosen kernel first; the others stay as fallbacks for shapes it cannot take (e.g. KV-cache decode)
    order = [kernels[backend]] + [kernel for name, kernel in kernels.items() if name != backend]
    return sdpa_kernel(order, set_priority=True)
