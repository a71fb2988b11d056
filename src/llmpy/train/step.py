"""One optimizer step that never waits for the GPU, and the metrics it leaves on the device until a log step.

The step queues its work and returns: the learning rate is a device tensor filled from the schedule, the skip
decision (non-finite loss or norm, -sl/-sg outliers) is made on the device and applied by the optimizer's
`found_inf` masking, and the loss, norm and skip flags stay on the device in a `StepRecord`. `MetricsQueue` reads
the records back in one transfer at log steps, so the host runs ahead of the GPU between them; that is also what
makes the step capturable by CUDA graphs in principle (no host decision inside it).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch

from llmpy.config import stage_micro_steps
from llmpy.data.loader import TokenLoader
from llmpy.distributed import Distributed, all_reduce_mean
from llmpy.frontier.untie import TiedUntil
from llmpy.runtime import Runtime
from llmpy.train.faults import SkipRule
from llmpy.train.graphs import MicroStepGraph, forward_backward
from llmpy.train.optim import LRSchedule, masked_step
from llmpy.train.parallel import ParallelModel
from llmpy.train.progress import MicroStepProgress


@dataclass(frozen=True)
class BatchLayout:
    """How one optimizer step's -d tokens are split: B x T per micro-step, over `world_size` ranks, `grad_accum_steps`
    micro-steps each. Derived once from the config (and auto-batch's choice of B). --batch-stages depends on the LR
    schedule's steps too (`plan_steps`, which a resume takes from the checkpoint), given with the step."""

    batch_size: int
    seq_len: int
    world_size: int
    grad_accum_steps: int
    batch_ramp: int = 0  # --batch-ramp
    seq_len_warmup: int = 0  # --seq-len-warmup
    batch_stages: tuple[int, ...] = ()  # --batch-stages W1,W2,...
    stage_lr_power: float = 0.0  # --batch-stages-lr-power

    def __post_init__(self) -> None:
        stage_micro_steps(self.batch_stages, self.grad_accum_steps, self.batch_size, self.seq_len, self.world_size)

    @property
    def tokens_per_step(self) -> int:
        return self.grad_accum_steps * self.world_size * self.batch_size * self.seq_len

    def micro_steps_at(self, step: int, plan_steps: int = 0) -> int:
        """Micro-steps of step `step`: with --batch-ramp N, 1 + floor((accum - 1) * step / N) for steps 0..N-1 (one
        micro-step at step 0, growing linearly), then all of -d's from step N on; with --batch-stages, accum x W_k /
        max(W) in stage k of an LR schedule of `plan_steps` steps."""
        if self.batch_stages:
            return self.micro_steps_per_stage[self.stage_at(step, plan_steps)]
        if step >= self.batch_ramp:
            return self.grad_accum_steps
        return 1 + (self.grad_accum_steps - 1) * step // self.batch_ramp

    @property
    def micro_steps_per_stage(self) -> tuple[int, ...]:
        """--batch-stages: each stage's micro-steps (() without stages)."""
        return stage_micro_steps(self.batch_stages, self.grad_accum_steps, self.batch_size, self.seq_len,
                                 self.world_size)

    def stage_starts(self, plan_steps: int) -> list[int]:
        """--batch-stages: an LR schedule of `plan_steps` steps split into n equal parts, stage k starting at step
        round(k * plan_steps / n) (Python's round, as the speedrun's); n + 1 values, the last `plan_steps`."""
        n = len(self.batch_stages)
        return [round(k * plan_steps / n) for k in range(n + 1)]

    def stage_at(self, step: int, plan_steps: int) -> int:
        """The stage of step `step` (steps past the plan: the last stage)."""
        return sum(step >= start for start in self.stage_starts(plan_steps)[1:-1])

    def lr_factor_at(self, step: int, plan_steps: int) -> float:
        """The LR multiplier of step `step`'s stage (1.0 without --batch-stages)."""
        return self.stage_lr_factor(self.stage_at(step, plan_steps)) if self.batch_stages else 1.0

    def stage_lr_factor(self, stage: int) -> float:
        """--batch-stages-lr-power P: stage k's LR multiplier (W_k / W_1) ** P (1.0 when P is 0)."""
        if not self.stage_lr_power:
            return 1.0
        return (self.batch_stages[stage] / self.batch_stages[0]) ** self.stage_lr_power

    def steps_to_cover(self, full_steps: int) -> int:
        """Steps that read as many micro-batches as `full_steps` steps of all of -d's (for -x -1: one epoch). With
        --batch-stages, the fewest steps whose stages, split over those steps, read at least that many."""
        needed, steps = full_steps * self.grad_accum_steps, 0
        if self.batch_stages:
            return self._stage_steps_to_cover(needed)
        while needed > 0 and steps < self.batch_ramp:
            needed -= self.micro_steps_at(steps)
            steps += 1
        return steps + math.ceil(max(needed, 0) / self.grad_accum_steps)

    def _stage_steps_to_cover(self, needed: int) -> int:
        """The fewest steps S whose stages read `needed` micro-batches. Stage k has at most S/n + 1 steps, so S
        steps read at most S x mean(m) + sum(m) (m: the stages' micro-steps): no S below (needed - sum(m)) / mean(m)
        can, and the search starts there."""
        micro, n = self.micro_steps_per_stage, len(self.batch_stages)
        if needed <= 0:
            return 0

        def reads(plan: int) -> int:
            starts = self.stage_starts(plan)
            return sum((starts[k + 1] - starts[k]) * micro[k] for k in range(n))

        steps = max(1, (needed - sum(micro)) * n // sum(micro))
        while reads(steps) < needed:
            steps += 1
        return steps

    def tokens_at(self, step: int, plan_steps: int = 0) -> int:
        return self.micro_steps_at(step, plan_steps) * self.world_size * self.batch_size * self.seq_len

    def row_length_at(self, step: int) -> int:
        """The rows' length at step `step`: with --seq-len-warmup N, T/4 for N steps, T/2 for N more, then T. A
        micro-batch holds the same B*T tokens either way (B*4 rows of T/4, ...): each row is still a contiguous
        piece of the stream with the next tokens as targets, so the data and its order do not change."""
        if not self.seq_len_warmup or step >= 2 * self.seq_len_warmup:
            return self.seq_len
        return self.seq_len // 4 if step < self.seq_len_warmup else self.seq_len // 2


@dataclass
class StepRecord:
    """One step's numbers: host values known when it was queued, and device values copied to the host without
    waiting (`host`, valid once the `end` mark has been reached)."""

    step: int
    lr: float
    tokens: int
    data_seconds: float  # host time spent producing this step's batches
    host: torch.Tensor  # (loss, grad norm, skipped, nonfinite, stop requested on some rank), fp32, on the CPU
    start: object  # CUDA events on a GPU, perf_counter() seconds on a CPU
    end: object
    wall_time: float  # time.time() when the step was queued

    @property
    def stop(self) -> bool:
        """Whether some rank was asked to stop (waits for this step to finish: use it on the step before the last)."""
        return bool(self.values()[4])

    def values(self) -> torch.Tensor:
        if isinstance(self.end, torch.cuda.Event):
            self.end.synchronize()
        return self.host


@dataclass(frozen=True)
class StepStats:
    """What one optimizer step reports, on the host."""

    step: int
    loss: float
    grad_norm: float
    lr: float
    seconds: float
    tokens: int
    skipped: bool = False
    data_seconds: float = 0.0
    nonfinite: bool = False  # the loss or the gradient norm was NaN/inf
    stop: bool = False  # a SIGTERM/SIGINT reached some rank before this step
    wall_time: float | None = None  # time.time() when the step was queued


class StepClock:
    """Step start and end marks that cost no sync: CUDA events on a GPU (their gap is the step's time on the
    GPU's timeline, host stalls included), the host clock elsewhere (CPU work is synchronous)."""

    def __init__(self, runtime: Runtime):
        self.cuda = runtime.is_cuda

    def to_host(self, values: torch.Tensor) -> torch.Tensor:
        """A copy of `values` on the CPU that arrives without the host waiting for it (pinned memory on a GPU)."""
        if not self.cuda:
            return values
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
        return host.copy_(values, non_blocking=True)

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start, end) -> float:
        return start.elapsed_time(end) / 1000 if self.cuda else end - start


class TrainStep:
    """Accumulate over the micro-batches of one -d batch, clip, decide the skip, update: all queued, nothing read.
    With `cuda_graphs`, the steady-state micro-step is a captured CUDA graph (`llmpy.train.graphs`)."""

    def __init__(self, model: ParallelModel, optimizer: torch.optim.Optimizer, lr: torch.Tensor,
                 schedule: LRSchedule, skip_rule: SkipRule, loader: TokenLoader, layout: BatchLayout,
                 runtime: Runtime, job: Distributed, grad_clip: float, overfit_batch: bool = False,
                 cuda_graphs: bool = False, tie: TiedUntil | None = None):
        self.model, self.optimizer, self.lr, self.schedule = model, optimizer, lr, schedule
        self.skip_rule, self.loader, self.layout = skip_rule, loader, layout
        self.runtime, self.job = runtime, job
        self.max_norm = grad_clip if grad_clip > 0 else math.inf
        self.overfit_batch = overfit_batch
        self.tie = tie  # a head tied to the embedding until a step (llmpy.frontier.untie), or None
        self.clock = StepClock(runtime)
        self.progress = MicroStepProgress(enabled=None if job.is_main else False)  # a long step's count, on a terminal
        self.graph = None
        if cuda_graphs:
            def micro_step(x, y, loss_sum):
                forward_backward(model.train_module, runtime.autocast, x, y, layout.grad_accum_steps, loss_sum)

            self.graph = MicroStepGraph(micro_step, runtime.device, (layout.batch_size, layout.seq_len))

    def __call__(self, step: int, stop_requested: bool = False) -> StepRecord:
        """Queue step `step`. `stop_requested`: this rank got a signal; it travels with the loss all-reduce."""
        with self.graph.on_stream() if self.graph is not None else contextlib.nullcontext():
            return self._queue(step, stop_requested)

    def _queue(self, step: int, stop_requested: bool) -> StepRecord:
        start, wall_time = self.clock.mark(), time.time()
        data_before = self.loader.data_seconds
        plan = self.schedule.total_steps  # --batch-stages split the LR schedule's steps
        device, accum = self.runtime.device, self.layout.micro_steps_at(step, plan)
        row_length = self.layout.row_length_at(step)
        graphed = (self.graph is not None and accum == self.layout.grad_accum_steps
                   and self.graph.covers((self.layout.batch_size, row_length)))
        lr = self.schedule(step) * self.layout.lr_factor_at(step, plan)
        self.lr.fill_(lr)  # a kernel argument, not a copy the host waits for
        self.model.train_module.train()
        if self.overfit_batch:
            self.loader.reset()  # -a 1: the same first batch every step
        loss_sum = self.graph.begin_step() if graphed else torch.zeros((), device=device)
        self.progress.start(step, accum)
        for micro_step in range(accum):
            self.progress.tick(micro_step)  # host clock only: nothing waits for the device
            self.model.set_grad_sync(micro_step, accum)
            x, y = self.loader.next_batch()
            if graphed:
                self.graph(x, y)
                continue
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if row_length != x.size(1):  # --seq-len-warmup: the same tokens as more, shorter rows
                x, y = x.reshape(-1, row_length), y.reshape(-1, row_length)
            forward_backward(self.model.train_module, self.runtime.autocast, x, y, accum, loss_sum)
        self.progress.finish()
        if self.tie is not None:  # while tied: the embedding's gradient joins the head's
            self.tie.merge_gradients(step)
        grad_norm = self.model.clip_grad_norm(self.max_norm).float()  # the unclipped norm
        if self.job.enabled:  # the loss of the whole -d batch, and whether any rank was asked to stop
            shared = torch.stack([loss_sum, torch.full((), float(stop_requested), device=device)])
            loss_sum, stop = all_reduce_mean(shared, self.job).unbind()
            stop = stop > 0
        else:
            stop = torch.full((), stop_requested, device=device)
        skip, nonfinite = self.skip_rule.decide(loss_sum, grad_norm)
        masked_step(self.optimizer, skip)
        if self.tie is not None:
            self.tie.after_update(step)
        # a captured graph adds into the gradients where they stand: they are zeroed in place, never dropped
        self.optimizer.zero_grad(set_to_none=self.graph is None)
        values = torch.stack([loss_sum, grad_norm, skip.float(), nonfinite.float(), stop.float()])
        host = self.clock.to_host(values)  # queued before the next step's work, so it waits for nothing later
        return StepRecord(step, lr, self.layout.tokens_at(step, plan), self.loader.data_seconds - data_before, host,
                          start, self.clock.mark(), wall_time)


class MetricsQueue:
    """Step records whose values are on their way to the host; `drain` waits for the newest of them once."""

    def __init__(self, clock: StepClock):
        self.clock = clock
        self.pending: list[StepRecord] = []

    def put(self, record: StepRecord) -> None:
        self.pending.append(record)

    def drain(self, keep_newest: bool = False) -> list[StepStats]:
        """The pending steps' stats, oldest first. `keep_newest`: leave the step just queued for the next drain,
        so the host waits only for the step before it, which the GPU has (nearly) finished."""
        ready, self.pending = (self.pending[:-1], self.pending[-1:]) if keep_newest else (self.pending, [])
        if not ready:
            return []
        ready[-1].values()  # the one wait: the steps before it are done too
        rows = torch.stack([r.host for r in ready]).tolist()
        return [StepStats(r.step, loss, norm, r.lr, self.clock.seconds(r.start, r.end), r.tokens, bool(skipped),
                          r.data_seconds, bool(nonfinite), bool(stop), r.wall_time)
                for r, (loss, norm, skipped, nonfinite, stop) in zip(ready, rows)]

    def previous_stop(self) -> bool:
        """The stop flag of the step before the newest (the GPU has finished it or is about to; every rank reads
        the same all-reduced value); False when there is none."""
        return len(self.pending) >= 2 and self.pending[-2].stop
