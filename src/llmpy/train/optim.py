"""AdamW with llm.c's parameter groups, and the learning-rate schedules of llm.c's schedulers."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from llmpy.errors import LlmpyError

SCHEDULES = ("cosine", "linear", "constant", "wsd")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matmul weights and embeddings (dim >= 2); never biases or LayerNorm parameters."""
    params = [p for p in model.parameters() if p.requires_grad]  # parameters() yields a tied tensor once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, learning_rate: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8, fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW as GPT-3/llm.c use it; the fused CUDA kernel whenever every parameter is on a GPU."""
    groups = param_groups(model, weight_decay)
    if fused is None:
        fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps, fused=fused)


def learning_rate_at(
    step: int, *, max_lr: float, warmup_steps: int, total_steps: int, final_lr_frac: float, schedule: str,
    cooldown_frac: float = 0.2,
) -> float:
    """LR for 0-based `step`: linear warmup to max_lr, then decay to max_lr * final_lr_frac by total_steps."""
    if schedule not in SCHEDULES:
        raise LlmpyError(f"unknown LR schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    min_lr = max_lr * final_lr_frac
    if schedule == "constant":
        return max_lr
    if schedule == "wsd":
        # warmup-stable-decay: flat at max_lr, then a linear cooldown over the last cooldown_frac of the run
        decay_start = max(warmup_steps, int((1.0 - cooldown_frac) * total_steps))
        if step < decay_start:
            return max_lr
        ratio = (step - decay_start) / max(1, total_steps - decay_start)
        return max_lr - min(1.0, ratio) * (max_lr - min_lr)
    ratio = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return max_lr - ratio * (max_lr - min_lr)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)  # cosine


@dataclass
class LRSchedule:
    """The schedule of one run; callable on a step, and a plain dict for checkpoints."""

    max_lr: float
    warmup_steps: int
    total_steps: int
    final_lr_frac: float = 1.0
    schedule: str = "cosine"
    cooldown_frac: float = 0.2

    def __post_init__(self) -> None:
        learning_rate_at(0, **self._kwargs())  # validates the schedule name up front

    def _kwargs(self) -> dict:
        return dict(
            max_lr=self.max_lr, warmup_steps=self.warmup_steps, total_steps=self.total_steps,
            final_lr_frac=self.final_lr_frac, schedule=self.schedule, cooldown_frac=self.cooldown_frac,
        )

    def __call__(self, step: int) -> float:
        return learning_rate_at(step, **self._kwargs())

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def apply_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr
