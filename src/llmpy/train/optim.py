"""AdamW with llm.c's weight-decay groups, and the learning-rate schedules of llm.c's `schedulers.h`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn

from llmpy.config import LR_SCHEDULES
from llmpy.errors import LlmpyError


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decay on matmul weights and embeddings (dim >= 2), none on biases and LayerNorm."""
    # named_parameters() yields a tied tensor (wte == lm_head) once, so nothing is decayed twice
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    # both groups are always present so optimizer checkpoints keep the same group layout
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def build_adamw(model: nn.Module, lr: torch.Tensor, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95),
                eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW as GPT-3 and llm.c configure it, reading its learning rate from the tensor `lr`.

    Always the fused implementation (CUDA and CPU): it takes the learning rate as a tensor and skips an update whose
    `found_inf` is set, both on the device, which is what lets a step run without waiting for the GPU."""
    groups = param_groups(model, weight_decay)
    if not any(group["params"] for group in groups):
        raise LlmpyError("optimizer: the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)


def build_muon_adamw(model: nn.Module, lr: torch.Tensor, weight_decay: float, **settings) -> torch.optim.Optimizer:
    """Muon on the blocks' matrices (-l is its LR, -c its weight decay), AdamW on embeddings, head and scalars at
    multiples of -l (llmpy.train.muon). `settings` (--optimizer-args): `embedding`, `head`, `scalar` (those
    multiples), `normuon` (0/1), and Muon's `momentum`, `momentum_start`, `momentum_warmup`, `ns_steps`,
    `orthogonalizer`, `nesterov`. The frontier settings, all off by default (docs/recipes.md): `normuon_beta`,
    `normuon_axis` (rows | auto), `qk_pairs` (0/1: Q/K per pair of heads), `cautious_wd` (0/1), `wd_schedule`
    (lr | lr2: decay lr wd or wd lr^2, every decayed group), `embedding_wd` and `head_wd` (the Adam groups')."""
    from llmpy.train.muon import ADAM_LR_SCALES, build_muon

    _check_muon_settings(settings)
    scales = {name: settings.pop(name) for name in list(settings) if name in ADAM_LR_SCALES}
    return build_muon(model, lr, weight_decay, adam_lr_scales=scales, **settings)


def _number(kind):
    return lambda value: isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (kind is float or float(value).is_integer())


_MUON_FLAGS = ("normuon", "nesterov", "qk_pairs", "cautious_wd")  # 0/1 settings, passed on as bools
_FRACTION = (lambda v: _number(float)(v) and 0 <= v < 1, "a number in [0, 1)")

# --optimizer-args of muon: name -> (test, what it must be)
_MUON_SETTINGS = {
    **{name: (lambda v: _number(float)(v) and v > 0, "a finite number > 0 (a multiple of -l)")
       for name in ("embedding", "head", "scalar")},
    **{name: (lambda v: v in (0, 1), "0 or 1") for name in _MUON_FLAGS},
    "momentum": _FRACTION,
    "momentum_start": _FRACTION,
    "momentum_warmup": (lambda v: _number(int)(v) and v >= 0, "a whole number >= 0 (steps)"),
    "ns_steps": (lambda v: _number(int)(v) and 1 <= v <= 20, "a whole number in [1, 20]"),
    "orthogonalizer": (lambda v: v in ("polar_express", "jordan"), "polar_express or jordan"),
    "normuon_beta": _FRACTION,
    "normuon_axis": (lambda v: v in ("rows", "auto"), "rows or auto (per row if rows >= cols, else per column)"),
    "wd_schedule": (lambda v: v in ("lr", "lr2"), "lr or lr2 (decay lr x wd, or wd x lr^2)"),
    **{name: (lambda v: _number(float)(v) and v >= 0, "a finite number >= 0") for name in ("embedding_wd", "head_wd")},
}


def _check_muon_settings(settings: dict) -> None:
    """Every --optimizer-args setting of muon known and in range, before anything is built (one line each)."""
    for name, value in settings.items():
        if name not in _MUON_SETTINGS:
            raise LlmpyError(f"--optimizer-args {name}={value}: muon has no setting {name!r}; its settings are "
                             f"{', '.join(_MUON_SETTINGS)} (-l and -c set its LR and weight decay)")
        test, what = _MUON_SETTINGS[name]
        if not test(value):
            raise LlmpyError(f"--optimizer-args {name} must be {what}, got {value!r}")
    for name in ("ns_steps", "momentum_warmup"):
        if name in settings:
            settings[name] = int(settings[name])
    for name in _MUON_FLAGS:
        if name in settings:
            settings[name] = bool(settings[name])


# --optimizer: name -> builder(model, lr tensor, weight decay, **--optimizer-args). A new optimizer is a new entry;
# its step must honour `found_inf` (see masked_step) so the trainer can skip updates on the device.
OPTIMIZERS = {"adamw": build_adamw, "muon": build_muon_adamw}


def parse_settings(text: str, flag: str = "--optimizer-args") -> dict:
    """"name=value,name=value" -> {name: int | float | str}."""
    settings = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise LlmpyError(f"{flag} {item!r}: expected name=value")
        value = value.strip()
        for kind in (int, float, str):
            try:
                settings[name.strip().replace("-", "_")] = kind(value)
                break
            except ValueError:
                continue
    return settings


def build_optimizer(name: str, model: nn.Module, lr: torch.Tensor, weight_decay: float,
                    settings: str = "") -> torch.optim.Optimizer:
    """The optimizer family `name` over `model`'s parameters, with --optimizer-args `settings`."""
    if name not in OPTIMIZERS:
        raise LlmpyError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    try:
        return OPTIMIZERS[name](model, lr, weight_decay, **parse_settings(settings))
    except (TypeError, ValueError) as exc:  # a setting the optimizer does not have, or a bad value
        raise LlmpyError(f"--optimizer-args {settings!r} for --optimizer {name}: {exc}") from None


def masked_step(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """optimizer.step(), except that nothing changes (weights, moments, step count) where `skip` (a 0-d bool tensor
    on the device) is true: the fused optimizers' `found_inf` protocol, the one GradScaler uses."""
    optimizer.grad_scale, optimizer.found_inf = None, skip.to(torch.float32)
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale, optimizer.found_inf


def learning_rate_at(
    step: int,
    *,
    max_lr: float,
    warmup_steps: int,
    total_steps: int,
    final_lr_frac: float,
    schedule: str,
    cooldown_frac: float = 0.2,
) -> float:
    """LR at 0-based `step`: linear warmup to max_lr, then `schedule` down to max_lr * final_lr_frac at total_steps."""
    if schedule not in LR_SCHEDULES:
        raise LlmpyError(f"unknown LR schedule {schedule!r}: use one of {', '.join(LR_SCHEDULES)}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    min_lr = max_lr * final_lr_frac
    if schedule == "constant":
        return max_lr
    if schedule == "wsd":
        # warmup-stable-decay: flat at max_lr, then linear over the last cooldown_frac of the run (never inside warmup)
        decay_start = max(warmup_steps, int((1.0 - cooldown_frac) * total_steps))
        if step < decay_start:
            return max_lr
        return max_lr - _decay_ratio(step, decay_start, total_steps) * (max_lr - min_lr)
    ratio = _decay_ratio(step, warmup_steps, total_steps)
    if schedule == "linear":
        return max_lr - ratio * (max_lr - min_lr)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)  # cosine


def _decay_ratio(step: int, start: int, end: int) -> float:
    """How far `step` is through the decay from `start` to `end`, in [0, 1]."""
    # max(1, ...) guards end == start (no decay phase); the clamp holds steps past `end` at min_lr
    return min(1.0, (step - start) / max(1, end - start))


@dataclass
class LRSchedule:
    """The LR schedule of one run: call it with a step; `state_dict()` is a plain dict for checkpoints.
    `extended_to`: a resume with --extend-schedule final let the run go on at the final LR up to this step."""

    max_lr: float
    warmup_steps: int
    total_steps: int
    final_lr_frac: float = 1.0
    schedule: str = "cosine"
    cooldown_frac: float = 0.2
    extended_to: int = 0

    def __post_init__(self) -> None:
        self(0)  # fail at construction on an unknown schedule name, not mid-run

    def __call__(self, step: int) -> float:
        return learning_rate_at(step, max_lr=self.max_lr, warmup_steps=self.warmup_steps, total_steps=self.total_steps,
                                final_lr_frac=self.final_lr_frac, schedule=self.schedule,
                                cooldown_frac=self.cooldown_frac)

    @property
    def final_lr(self) -> float:
        """The LR at the end of the schedule, held after it."""
        return self(max(self.total_steps, self.warmup_steps))

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        known = {f.name for f in fields(self)}
        unknown = set(state) - known
        if unknown:
            raise LlmpyError(f"LR schedule checkpoint: unknown keys {sorted(unknown)}")
        for key, value in state.items():
            setattr(self, key, value)
        self.__post_init__()
