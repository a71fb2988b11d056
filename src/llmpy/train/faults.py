"""Numerical faults and interruptions: outlier updates (llm.c's -sl/-sg z-scores), runs of non-finite steps, and
SIGTERM/SIGINT turned into "finish this step, checkpoint, exit"."""

from __future__ import annotations

import collections
import math
import signal
import threading

from llmpy.errors import LlmpyError

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again" — the auto-restart loop relaunches on it


class Preempted(Exception):
    """Raised after the checkpoint that a SIGTERM/SIGINT asked for has been written."""

    def __init__(self, step: int):
        super().__init__(f"stopped by a signal; checkpoint written at step {step}")
        self.step = step


class OutlierDetector:
    """z-score of a new value against the last `window` values (llm.c's outlier detector); nan until the window fills."""

    def __init__(self, window: int = 128):
        self.values: collections.deque = collections.deque(maxlen=window)

    def zscore(self, value: float) -> float:
        if len(self.values) < self.values.maxlen or not math.isfinite(value):
            return math.nan
        mean = sum(self.values) / len(self.values)
        std = math.sqrt(sum((v - mean) ** 2 for v in self.values) / len(self.values))
        return (value - mean) / std if std > 0 else 0.0

    def add(self, value: float) -> None:
        if math.isfinite(value):
            self.values.append(value)

    def state_dict(self) -> dict:
        return {"values": list(self.values), "window": self.values.maxlen}

    def load_state_dict(self, state: dict) -> None:
        self.values = collections.deque(state["values"], maxlen=state["window"])


class BadStepCounter:
    """Stops the run after `limit` consecutive updates were skipped for non-finite loss or gradient norm."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row = limit, 0

    def record(self, finite: bool, step: int, last_checkpoint: str | None) -> None:
        self.in_a_row = 0 if finite else self.in_a_row + 1
        if self.limit > 0 and self.in_a_row >= self.limit:
            where = f"; the last good checkpoint is {last_checkpoint}" if last_checkpoint else "; no checkpoint yet"
            raise LlmpyError(
                f"step {step}: {self.in_a_row} steps in a row had a non-finite loss or gradient norm and were "
                f"skipped{where}. Lower -l, raise -u, or resume from that checkpoint with a different seed"
            )


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
