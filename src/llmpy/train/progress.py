"""Progress inside one long optimizer step: "step 7: micro-step 512/2048, ~41s left in this step", rewritten in place
on stderr while a step of many micro-steps runs (a CPU run, a first step that compiles, a large -d on a small -b).

It reads the host clock only, so it adds no device synchronisation to the step (on a GPU the host runs at most a few
micro-steps ahead of the device, so the count runs slightly early). It stays silent on a step shorter than
SHOW_AFTER_S, writes at most once every EVERY_S, clears its line when the step ends, and is off unless stderr is a
terminal (logs and captured output stay clean)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

SHOW_AFTER_S = 5.0  # a step shorter than this shows nothing
EVERY_S = 1.0  # at most one rewrite per this many seconds


class MicroStepProgress:
    """The in-place progress line of the step that is running: `start`, `tick(done)` as each micro-step begins,
    `finish`."""

    def __init__(self, enabled: bool | None = None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.perf_counter, show_after: float | None = None,
                 every: float | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = getattr(self.stream, "isatty", lambda: False)() if enabled is None else enabled
        self.clock = clock
        self.show_after = SHOW_AFTER_S if show_after is None else show_after
        self.every = EVERY_S if every is None else every
        self.step, self.micro_steps = 0, 0
        self.started = self.first_done = self.last_shown = 0.0
        self.width = 0  # of the line on screen: 0 when there is none

    def start(self, step: int, micro_steps: int) -> None:
        """Step `step` (0-based) of `micro_steps` micro-steps begins."""
        if self.enabled:
            self.step, self.micro_steps = step, micro_steps
            self.started = self.clock()
            self.last_shown = -float("inf")

    def tick(self, done: int) -> None:
        """`done` of the step's micro-steps have been queued."""
        if not self.enabled or not 0 < done < self.micro_steps:
            return
        now = self.clock()
        if done == 1:  # the first micro-step may compile or warm up: the estimate uses the ones after it
            self.first_done = now
        if now - self.started < self.show_after or now - self.last_shown < self.every:
            return
        per_micro_step = (now - self.first_done) / (done - 1) if done >= 2 else now - self.started
        left = per_micro_step * (self.micro_steps - done)
        self._write(f"step {self.step + 1}: micro-step {done}/{self.micro_steps}, ~{left:.0f}s left in this step")
        self.last_shown = now

    def finish(self) -> None:
        """The step is queued: clear the line, if one is shown."""
        if self.width:
            self._write("")

    def _write(self, line: str) -> None:
        self.stream.write("\r" + line.ljust(self.width) + ("\r" if not line else ""))
        self.stream.flush()
        self.width = len(line)
