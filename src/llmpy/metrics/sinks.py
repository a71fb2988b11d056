"""Live monitoring: TensorBoard and Weights & Biases receive every record RunLogger writes (both optional, lazy)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Protocol

from llmpy.errors import LlmpyError

# JSONL bookkeeping fields that are not metrics
_NOT_METRICS = {"step", "kind", "time"}


class MetricSink(Protocol):
    """Where RunLogger sends each record besides its files."""

    def log(self, step: int, kind: str, fields: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def scalar_metrics(kind: str, fields: dict[str, Any]) -> dict[str, float]:
    """{'train/loss': 3.2, ...}: the finite numbers of a record, tagged `kind/name` (booleans and text left out)."""
    scalars = {}
    for name, value in fields.items():
        if name in _NOT_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            scalars[f"{kind}/{name}"] = float(value)
    return scalars


class TensorBoardSink:
    """Scalars as `kind/name` tags (train/loss, val/loss, eval/accuracy, ...); config and samples as text."""

    def __init__(self, log_dir: str | Path, run_config: dict | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise LlmpyError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        self._writer = SummaryWriter(log_dir=str(log_dir))
        if run_config:
            self._writer.add_text("config", _markdown_json(run_config), 0)

    def log(self, step: int, kind: str, fields: dict[str, Any]) -> None:
        """Write the record's scalars at `step`; a config record becomes text, a sample's text too."""
        if kind == "config":
            self._writer.add_text("config", _markdown_json(fields), step)
            return
        if isinstance(fields.get("text"), str):
            self._writer.add_text(kind, fields["text"], step)
        for tag, value in scalar_metrics(kind, fields).items():
            self._writer.add_scalar(tag, value, step)
        self._writer.flush()  # live monitoring: TensorBoard should see each step as it is logged

    def close(self) -> None:
        self._writer.close()


class WandbSink:
    """A W&B run; honours WANDB_MODE (offline) and the rest of wandb's own environment variables."""

    def __init__(self, project: str, run_config: dict | None = None, run_dir: str | Path | None = None) -> None:
        try:
            import wandb
        except ImportError:
            raise LlmpyError("--wandb needs the wandb package: pip install wandb") from None
        self._run = wandb.init(project=project, config=run_config or {},
                               dir=str(run_dir) if run_dir else None,
                               name=Path(run_dir).name if run_dir else None)
        # W&B drops values whose `step=` goes backwards, which a resumed run does: plot against our own step instead
        self._run.define_metric("step")
        self._run.define_metric("*", step_metric="step")

    def log(self, step: int, kind: str, fields: dict[str, Any]) -> None:
        """Send the record's scalars with `step` as the x axis; a config record updates the run's config."""
        if kind == "config":
            self._run.config.update(fields, allow_val_change=True)
            return
        scalars = scalar_metrics(kind, fields)
        if scalars:
            self._run.log({"step": step, **scalars})

    def close(self) -> None:
        self._run.finish()


def build_sinks(*, tensorboard_dir: str | Path | None = None, wandb_project: str | None = None,
                run_config: dict | None = None, run_dir: str | Path | None = None) -> list[MetricSink]:
    """The sinks asked for (none by default)."""
    sinks: list[MetricSink] = []
    if tensorboard_dir:
        sinks.append(TensorBoardSink(tensorboard_dir, run_config))
    if wandb_project:
        sinks.append(WandbSink(wandb_project, run_config, run_dir))
    return sinks


def _markdown_json(values: dict) -> str:
    """JSON indented as a code block: TensorBoard renders text as markdown."""
    return "```\n" + json.dumps(values, indent=2, default=str) + "\n```"
