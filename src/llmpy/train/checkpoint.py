"""Model checkpoints in a run directory: `model_%08d.pt` written atomically, then its `DONE_%08d` marker.

A checkpoint counts only once its DONE marker exists, so a crash mid-write never leaves one that looks complete.
This holds the model weights and configs (what `sample` and `eval` need); optimizer and loader state for exact
resume are layered on the same layout.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

import llmpy
from llmpy.config import ModelConfig
from llmpy.errors import LlmpyError
from llmpy.model import GPT

_DONE_RE = re.compile(r"DONE_(\d{8})$")


def model_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"model_{step:08d}.pt"


def done_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"DONE_{step:08d}"


def save_model_checkpoint(run_dir: str | Path, step: int, model: GPT, metadata: dict | None = None) -> Path:
    """Write the weights and config for `step`; the DONE marker goes last."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    target = model_path(run_dir, step)
    payload = {
        "format": "llmpy-model",
        "step": step,
        "model_config": model.config.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items() if k != "lm_head.weight"},
        "llmpy_version": llmpy.__version__,
        "torch_version": str(torch.__version__),
        "metadata": metadata or {},
    }
    tmp = target.with_name(target.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, target)
    done_path(run_dir, step).write_text(f"{target.name}\n")
    return target


def completed_steps(run_dir: Path) -> list[int]:
    """Steps in `run_dir` that have a DONE marker and their model file, oldest first."""
    steps = []
    for entry in Path(run_dir).iterdir():
        match = _DONE_RE.match(entry.name)
        if match and model_path(run_dir, int(match.group(1))).is_file():
            steps.append(int(match.group(1)))
    return sorted(steps)


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory -> its newest complete model file; a model file -> itself (checked to exist)."""
    path = Path(path)
    if path.is_dir():
        steps = completed_steps(path)
        if not steps:
            raise LlmpyError(f"{path}: no complete checkpoint (model_XXXXXXXX.pt with its DONE_XXXXXXXX marker)")
        return model_path(path, steps[-1])
    if not path.is_file():
        raise LlmpyError(f"{path}: no such checkpoint file or run directory")
    return path


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[GPT, dict]:
    """Build a GPT from an llmpy checkpoint (file or run directory); returns (model, payload without weights)."""
    file = resolve_checkpoint(path)
    try:
        payload = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which and why, not a pickle traceback
        raise LlmpyError(f"{file}: not a readable llmpy checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(payload, dict) or payload.get("format") != "llmpy-model":
        raise LlmpyError(f"{file}: not an llmpy model checkpoint (missing format marker)")
    model = GPT(ModelConfig.from_dict(payload["model_config"]))
    state = dict(payload.pop("model"))
    state["lm_head.weight"] = state["transformer.wte.weight"]
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise LlmpyError(f"{file}: weights do not match the stored config ({str(exc).splitlines()[-1].strip()})") from None
    if missing or unexpected:
        raise LlmpyError(f"{file}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model, payload


def prune_checkpoints(run_dir: str | Path, keep: int, keep_every: int = 0) -> list[int]:
    """Delete all but the newest `keep` checkpoints (-nk), sparing multiples of `keep_every` (-nm); returns steps removed."""
    if keep <= 0:
        return []
    run_dir = Path(run_dir)
    steps = completed_steps(run_dir)
    removable = [s for s in steps[:-keep] if not (keep_every > 0 and s % keep_every == 0)]
    for step in removable:
        done_path(run_dir, step).unlink(missing_ok=True)  # marker first: a half-deleted checkpoint is never "complete"
        model_path(run_dir, step).unlink(missing_ok=True)
    return removable
