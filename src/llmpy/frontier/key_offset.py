"""Partial key offset (modded-nanogpt records of 2025-12-14, "PartialKeyOffset", and 2026-01-19; docs/
frontier_research.md §3.4).

With rotary positions on only part of each head's dims (`--arch rope_dims`), the other dims of q and k carry no
position. Shift those stationary dims of the keys one position along the sequence: position t's key holds its own
rotated dims and the stationary dims of position t-1's key (position 0 keeps its own). A query then matches "the
token after X" through the stationary half and a relative position through the rotary half in one layer: the
induction-head pattern, which otherwise needs two layers. Decoding with a KV cache keeps, per layer, the newest
position's unshifted stationary dims for the next token (`previous`).
"""

from __future__ import annotations

import torch


def offset_keys(k: torch.Tensor, stationary_from: int,
                previous: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """k (B, T, nh, hs) -> (the keys with dims [stationary_from:] taken from the position before, the newest
    position's unshifted stationary dims (B, 1, nh, hs - stationary_from)). `previous`: those of the position before
    k[:, 0] (None: k[:, 0] keeps its own)."""
    stationary = k[..., stationary_from:]
    first = stationary[:, :1] if previous is None else previous.to(k.dtype)
    shifted = torch.cat([first, stationary[:, :-1]], dim=1)
    return torch.cat([k[..., :stationary_from], shifted], dim=-1), stationary[:, -1:]
