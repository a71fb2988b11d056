"""Numerical faults and interruptions: which updates to skip (non-finite, or llm.c's -sl/-sg z-score outliers),
decided on the device; runs of non-finite steps, counted on the host when the step's metrics arrive; and
SIGTERM/SIGINT turned into "finish this step, checkpoint, exit"."""

from __future__ import annotations

import math
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llmpy.errors import LlmpyError


class Preempted(Exception):
    """Raised when a SIGTERM/SIGINT stopped the run between steps, after the checkpoint it asked for (with an -o
    `run_dir`: `written`, None if it could not be). `checkpoint`: what -y 1 continues from (None: nothing)."""

    def __init__(self, step: int, run_dir: str | None = None, written: Path | None = None, last: str | None = None):
        if not run_dir:
            outcome = "no -o was given, so nothing was saved"
        elif written is not None:
            outcome = f"checkpoint written in {run_dir}"
        else:
            outcome = ("its checkpoint was not written (see the warning above); "
                       + (f"the last good one is {last}" if last else "no checkpoint was written before it either"))
        super().__init__(f"stopped by a signal at step {step}; {outcome}")
        self.step = step
        self.checkpoint = str(written) if written is not None else last if run_dir else None


class OutlierWindow:
    """An outlier detector on the device: the z-score of a new value against the last `window` values before it.

    (llm.c's detector puts the new value into the window before scoring it; llmpy scores it against the values
    before it, so a spike does not dampen its own z-score.) The values live in a ring buffer tensor, fp64 where the
    device has it, so scoring and adding need no host sync; the z-score is nan (never an outlier) until the window
    is full. `state_dict` keeps the values oldest first, the checkpoint format since llmpy 0.1."""

    def __init__(self, window: int = 128, device: torch.device | str = "cpu"):
        self.window = window
        self.dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64  # MPS has no fp64
        self.values = torch.zeros(window, dtype=self.dtype, device=device)
        self.count = torch.zeros((), dtype=torch.long, device=device)  # values added so far (not capped)

    def zscore(self, value: torch.Tensor) -> torch.Tensor:
        """(value - mean) / std over the window (population std; 0 where the std is 0), nan until it is full."""
        value = value.to(self.dtype)
        mean = self.values.mean()
        std = (self.values - mean).square().mean().sqrt()
        z = torch.where(std > 0, (value - mean) / std, torch.zeros_like(value))
        full = (self.count >= self.window) & torch.isfinite(value)
        return torch.where(full, z, torch.full_like(z, math.nan))

    def add(self, value: torch.Tensor, keep: torch.Tensor) -> None:
        """Append `value` where `keep` (a 0-d bool tensor) is true; the oldest value leaves a full window."""
        # a mask rather than values[slot]: indexing with a 0-d tensor would read it back to the host
        slot = torch.arange(self.window, device=self.values.device) == self.count % self.window
        self.values = torch.where(slot & keep, value.to(self.dtype), self.values)
        self.count = self.count + keep.to(torch.long)

    def state_dict(self) -> dict:
        count = int(self.count)
        values = self.values.cpu().tolist()
        if count < self.window:
            return {"values": values[:count], "window": self.window}
        start = count % self.window
        return {"values": values[start:] + values[:start], "window": self.window}

    def load_state_dict(self, state: dict) -> None:
        values = list(state["values"])[-state["window"]:]
        self.window = state["window"]
        self.values = torch.zeros(self.window, dtype=self.dtype, device=self.values.device)
        self.values[: len(values)] = torch.tensor(values, dtype=self.dtype)
        self.count = torch.tensor(len(values), dtype=torch.long, device=self.values.device)


@dataclass
class SkipRule:
    """Which updates to skip, decided on the device: a non-finite loss or gradient norm, or (-sl/-sg, llm.c's flags)
    a loss or norm whose z-score against the last 128 finite steps exceeds its threshold (0 = off)."""

    loss_zscore: float = 0.0
    grad_zscore: float = 0.0
    loss_window: OutlierWindow = field(default_factory=OutlierWindow)
    norm_window: OutlierWindow = field(default_factory=OutlierWindow)

    def decide(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(skip, nonfinite), 0-d bool tensors; a finite step's loss and norm join the windows either way."""
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
        skip = ~finite
        if self.loss_zscore > 0:
            skip = skip | (self.loss_window.zscore(loss) > self.loss_zscore)
        if self.grad_zscore > 0:
            skip = skip | (self.norm_window.zscore(grad_norm) > self.grad_zscore)
        self.loss_window.add(loss, finite)
        self.norm_window.add(grad_norm, finite)
        return skip, ~finite


class BadStepCounter:
    """Stops the run after `limit` consecutive updates were skipped for non-finite loss or gradient norm."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row = limit, 0

    def record(self, finite: bool, step: int, last_checkpoint: str | None) -> None:
        self.in_a_row = 0 if finite else self.in_a_row + 1
        if self.limit > 0 and self.in_a_row >= self.limit:
            if last_checkpoint:
                advice = (f"; the last good checkpoint is {last_checkpoint}. Start a new run from its weights with a "
                          "lower -l or a longer -u: -e <that model file> -o <a new directory> (-y 1 keeps the run's flags)")
            else:  # no weights were saved to start from
                advice = "; no checkpoint was written (no -o, or none yet). Start over with a lower -l or a longer -u"
            raise LlmpyError(f"step {step}: {self.in_a_row} steps in a row had a non-finite loss or gradient norm and "
                             f"were skipped{advice}")


class StopSignal:
    """While active, SIGTERM/SIGINT only set a flag that the loop checks between steps."""

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
