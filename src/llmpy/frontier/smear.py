"""Smear: each token's embedding plus a gated copy of the previous token's (modded-nanogpt record of 2025-09-18,
"Smear"; docs/frontier_research.md §3.8).

x_t = e_t + lam * sigmoid(w . e_t[:12]) * e_{t-1} for t >= 1, x_0 = e_0 (no previous token: nothing added), with e the
raw token embeddings, w (1 x 12) and lam starting at 0, so the model begins as without it. It gives every position a
cheap view of the token before it; the gate lets a token decide how much. Sampling with a KV cache passes the
previous token's embedding for the first new position (`previous`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

GATE_DIMS = 12  # the input dims the gate reads


class Smear(nn.Module):
    optimizer_group = "scalar"  # a (1, 12) gate and a scalar: Adam, not Muon

    def __init__(self, n_embd: int):
        super().__init__()
        self.gate_dims = min(GATE_DIMS, n_embd)
        self.gate = nn.Parameter(torch.zeros(1, self.gate_dims))
        self.lam = nn.Parameter(torch.zeros(1))  # (1,), not 0-d: FSDP2 shards no scalar parameters

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.gate.zero_()
        self.lam.zero_()

    def forward(self, e: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        """e (B, T, C) token embeddings; previous (B, C): the embedding of the token before e[:, 0] (None: none)."""
        before = e[:, :-1] if previous is None else torch.cat([previous[:, None].to(e.dtype), e[:, :-1]], dim=1)
        gate = torch.sigmoid(e[:, -before.size(1):, : self.gate_dims] @ self.gate.to(e.dtype).t())  # (B, T', 1)
        added = self.lam.to(e.dtype) * gate * before
        if previous is None:  # position 0 has no previous token
            return torch.cat([e[:, :1], e[:, 1:] + added], dim=1)
        return e + added
