"""Sigmoid gates read from a few dimensions of a layer's input (modded-nanogpt records; docs/frontier_research.md
§3.5 and §3.7). Each starts where the model is as without it, and costs a (heads x 12) matrix per layer.

- AttentionGate ("sparse attention gate", 2025-08-23): y_h <- y_h * sigmoid(w_h . x[:12]) per head h, x the normed
  attention input. A head can switch itself off for a token: a context-dependent no-op that replaces the "attention
  sink" on the first token. Zero init: every head starts at half its output.
- ValueEmbedGate (2025-12-29, input as in 2026-02-03): v_h <- v_h + 2 sigmoid(w_h . [x[:6], ve[:6]]) * ve_h, the
  value embedding ve added to the values with a per-token, per-head gate (1 at init).
- SkipGate (same record): the U-net skip i is added with a per-token gate 2 sigmoid(w_i . x0[:12]) (1 at init), x0
  the normed input embedding.
"""

from __future__ import annotations

import torch
import torch.nn as nn

GATE_DIMS = 12


class _Gate(nn.Module):
    """weight (outputs, dims), zero at init; `gate(x)` = factor * sigmoid(x[..., :dims] @ weight^T)."""

    optimizer_group = "scalar"  # small matrices: Adam with the scalars, not Muon

    def __init__(self, outputs: int, dims: int, factor: float):
        super().__init__()
        self.dims, self.factor = dims, factor
        self.weight = nn.Parameter(torch.zeros(outputs, dims))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.weight.zero_()

    def gate(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.factor * torch.sigmoid(inputs @ self.weight.to(inputs.dtype).t())


class AttentionGate(_Gate):
    def __init__(self, n_head: int, n_embd: int):
        super().__init__(n_head, min(GATE_DIMS, n_embd), 1.0)

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """y (B, T, nh, hs) attention outputs, x (B, T, C) the normed attention input -> gated y."""
        return y * self.gate(x[..., : self.dims])[..., None]


class ValueEmbedGate(_Gate):
    def __init__(self, n_head: int, n_embd: int):
        self.half = min(GATE_DIMS // 2, n_embd)
        super().__init__(n_head, 2 * self.half, 2.0)

    def forward(self, v: torch.Tensor, value_embed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """v (B, T, nh, hs), value_embed (B, T, C), x (B, T, C) the normed attention input -> v + gate * ve."""
        g = self.gate(torch.cat([x[..., : self.half], value_embed[..., : self.half]], dim=-1))  # (B, T, nh)
        return v + g[..., None] * value_embed.view(v.shape)


class SkipGate(_Gate):
    def __init__(self, n_skips: int, n_embd: int):
        super().__init__(n_skips, min(GATE_DIMS, n_embd), 2.0)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 (B, T, C) -> every skip's per-token factor, (B, T, n_skips)."""
        return self.gate(x0[..., : self.dims])
