"""Checkpoints in a run directory, llm.c's layout: `model_%08d.pt` (weights + config: what sample, eval and convert
read), `state_%08d_%05d.pt` per rank (optimizer, loader position, LR schedule, RNG: what exact resume needs), and last
the `DONE_%08d` marker listing every file with its size.

Each file is written to a temporary name and renamed, and the marker comes after all of them, so a kill or a full
disk mid-write leaves no checkpoint that looks complete; a checkpoint whose files are missing or of another size than
its marker records is never used. Plain `torch.save` of state dicts is enough while every rank holds the whole model
(single device, DDP); loading uses `weights_only=True`, so no pickled code ever runs.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

import llmpy
from llmpy.atomic import atomic_write_bytes
from llmpy.config import ModelConfig
from llmpy.errors import LlmpyError
from llmpy.model import GPT

_DONE_RE = re.compile(r"DONE_(\d{8})$")


def model_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"model_{step:08d}.pt"


def done_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"DONE_{step:08d}"


def state_path(run_dir: Path, step: int, rank: int = 0) -> Path:
    return Path(run_dir) / f"state_{step:08d}_{rank:05d}.pt"


def _atomic_save(payload: dict, target: Path) -> None:
    tmp = target.with_name(target.name + ".tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (full disk) leaves no partial file behind


def save_model_checkpoint(run_dir: str | Path, step: int, model: GPT, metadata: dict | None = None,
                          training_state: dict | None = None, state_dict: dict | None = None) -> Path:
    """Write the weights (and, for resume, the training state) for `step`; the DONE marker goes last.
    `state_dict`: the weights when they are not `model.state_dict()` (gathered from FSDP shards)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    target = model_path(run_dir, step)
    payload = {
        "format": "llmpy-model",
        "step": step,
        "model_config": model.config.to_dict(),
        "model": {k: v.detach().cpu() for k, v in (model.state_dict() if state_dict is None else state_dict).items()
                  if k != "lm_head.weight"},
        "llmpy_version": llmpy.__version__,
        "torch_version": str(torch.__version__),
        "metadata": metadata or {},
    }
    _atomic_save(payload, target)
    files = [target]
    if training_state is not None:
        files.append(state_path(run_dir, step))
        _atomic_save({"format": "llmpy-state", "step": step, **training_state}, files[-1])
    marker = {f.name: f.stat().st_size for f in files}
    atomic_write_bytes(done_path(run_dir, step), (json.dumps(marker) + "\n").encode())
    return target


def _marker_files(run_dir: Path, step: int) -> dict[str, int] | None:
    """The files and sizes a DONE marker vouches for (older markers hold just the model file's name)."""
    try:
        text = done_path(run_dir, step).read_text()
    except OSError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {text.strip(): -1}


def checkpoint_is_complete(run_dir: Path, step: int, with_state: bool = False) -> bool:
    """The DONE marker exists and every file it lists is there with the recorded size."""
    files = _marker_files(run_dir, step)
    if not files or model_path(run_dir, step).name not in files:
        return False
    if with_state and state_path(run_dir, step).name not in files:
        return False
    for name, size in files.items():
        path = Path(run_dir) / name
        if not path.is_file() or (size >= 0 and path.stat().st_size != size):
            return False
    return True


def completed_steps(run_dir: Path, with_state: bool = False) -> list[int]:
    """Steps in `run_dir` with a complete checkpoint (and the training state, if asked), oldest first."""
    steps = []
    for entry in Path(run_dir).iterdir():
        match = _DONE_RE.match(entry.name)
        if match and checkpoint_is_complete(run_dir, int(match.group(1)), with_state):
            steps.append(int(match.group(1)))
    return sorted(steps)


def load_training_state(run_dir: str | Path, step: int) -> dict:
    """The optimizer / loader / schedule / RNG state saved with `step`."""
    file = state_path(Path(run_dir), step)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LlmpyError(f"{file}: not a readable llmpy training state ({type(exc).__name__})") from None
    if state.get("format") != "llmpy-state":
        raise LlmpyError(f"{file}: not an llmpy training state (missing format marker)")
    return state


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory -> its newest complete model file; a model file -> itself (checked to exist)."""
    path = Path(path)
    if path.is_dir():
        steps = completed_steps(path)
        if not steps:
            raise LlmpyError(f"{path}: no complete checkpoint (a model_%08d.pt file with its DONE_%08d marker)")
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
        for state in Path(run_dir).glob(f"state_{step:08d}_*.pt"):
            state.unlink()
    return removable
