"""Validation loss: mean cross-entropy over the first `max_steps` batches of the val split."""

from __future__ import annotations

import torch

from llmpy.data.loader import TokenLoader
from llmpy.runtime import Runtime


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, loader: TokenLoader, max_steps: int, runtime: Runtime) -> float:
    """Mean loss over `max_steps` batches (-1 = the whole split), always starting from the split's beginning."""
    was_training = model.training
    model.eval()
    loader.reset()
    available = loader.steps_per_epoch  # the val loader has no accumulation: one chunk per batch
    steps = available if max_steps == -1 else min(max_steps, available)
    total = torch.zeros((), device=runtime.device, dtype=torch.float32)
    for _ in range(steps):
        x, y = loader.next_batch()
        x, y = x.to(runtime.device, non_blocking=True), y.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            _, loss = model(x, y, return_logits=False)
        total += loss.float()
    model.train(was_training)
    return (total / steps).item()
