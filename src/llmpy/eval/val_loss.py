"""Validation loss: mean cross-entropy over the first `max_steps` batches of the val split."""

from __future__ import annotations

import sys

import torch
from tqdm import tqdm

from llmpy.data.loader import TokenLoader
from llmpy.distributed import Distributed, all_reduce_mean
from llmpy.runtime import Runtime


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, loader: TokenLoader, max_steps: int, runtime: Runtime,
                  job: Distributed = Distributed(), progress: bool = False) -> float:
    """Mean loss of `model` ((idx, targets) -> mean loss, e.g. llmpy.loss.ModelWithLoss) over `max_steps` batches
    (-1 = the whole split) from the split's start, averaged over ranks. `progress`: a progress bar on a terminal
    (rank 0 only)."""
    was_training = model.training
    model.eval()
    loader.reset()
    available = loader.steps_per_epoch  # the val loader has no accumulation: one chunk per batch
    steps = available if max_steps == -1 else min(max_steps, available)
    total = torch.zeros((), device=runtime.device, dtype=torch.float32)
    for _ in tqdm(range(steps), desc="val loss", unit="batch", leave=False,
                  disable=not (progress and job.is_main and sys.stderr.isatty())):
        x, y = loader.next_batch()
        x, y = x.to(runtime.device, non_blocking=True), y.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            loss = model(x, y)
        total += loss.float()
    model.train(was_training)
    return all_reduce_mean(total / steps, job).item()
