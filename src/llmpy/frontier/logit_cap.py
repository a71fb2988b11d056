"""The asymmetric logit bound of the speedrun (modded-nanogpt, 2025; docs/frontier_research.md §3.12).

z = cap * sigmoid((l + shift) / scale), with shift 5 and scale 7.5 as the speedrun's records use at cap 23. Unlike
cap * tanh(l / cap) it is not symmetric: large negative logits are squeezed towards 0 (a floor the softmax cannot
tell apart from "very unlikely"), large positive ones towards `cap`. Softmax only sees differences, so the bound
acts through the slope cap / scale * sigmoid'(.), largest near l = -shift.
"""

from __future__ import annotations

import torch

SHIFT, SCALE = 5.0, 7.5


def sigmoid_cap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * sigmoid((logits + 5) / 7.5), in at least fp32 (the sigmoid saturates coarsely in bf16)."""
    wide = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return cap * torch.sigmoid((wide + SHIFT) / SCALE)
