"""The training loop: steps, evals, logging, checkpoints, stopping. Orchestration only: each part is a component
built by llmpy.train.build."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from llmpy.checkpoint import CheckpointManager, RngState, Stateful
from llmpy.config import TrainConfig
from llmpy.distributed import Distributed
from llmpy.families import family_of
from llmpy.metrics.logger import RunLogger
from llmpy.metrics.mfu import mfu as model_flops_utilization
from llmpy.runlock import RunLock
from llmpy.runtime import Runtime
from llmpy.train.evaluation import Evaluator
from llmpy.train.faults import BadStepCounter, Preempted, StopSignal
from llmpy.train.parallel import ModelState, OptimizerState, ParallelModel
from llmpy.train.step import MetricsQueue, StepStats, TrainStep

# metrics wait on the host side for at most this many steps before main.log gets them (also with --log-every 0)
READ_EVERY = 16


@dataclass
class Trainer:
    """Runs steps `start_step` .. `total_steps - 1` of a run, llm.c style."""

    config: TrainConfig
    runtime: Runtime
    job: Distributed
    model: ParallelModel
    train_step: TrainStep
    evaluator: Evaluator
    logger: RunLogger
    checkpoints: CheckpointManager | None  # None: no -o, no files
    total_steps: int
    flops_per_token: float
    peak_flops: float | None
    print_fn: Callable[..., None]
    bad_steps: BadStepCounter
    start_step: int = 0  # set by a resume
    run_lock: RunLock | None = None  # rank 0's lock on -o (llmpy.runlock), held until fit ends
    loss: torch.nn.Module | None = None  # the loss component, for its own schedule (llmpy.frontier.aux_loss)

    def stateful(self) -> dict[str, Stateful]:
        """Everything besides the weights and the optimizer that the next step depends on."""
        step = self.train_step
        return {"loader": step.loader, "schedule": step.schedule, "rng": RngState(),
                "loss_outliers": step.skip_rule.loss_window, "norm_outliers": step.skip_rule.norm_window}

    def fit(self) -> dict:
        """Train to the end; returns a summary (val losses, last train loss, mean tok/s, HellaSwag). However the run
        ends, its lock on -o is released."""
        try:
            return self._fit()
        finally:
            if self.run_lock is not None:
                self.run_lock.release()

    def _fit(self) -> dict:
        summary: dict = {"val_loss": {}, "train_loss": None}
        throughput: list[float] = []
        try:
            with StopSignal() as stop:
                self._loop(summary, throughput, stop)
        except BaseException:
            with contextlib.suppress(Exception):  # the error that stopped the run is the one to tell, not an echo of it
                self.logger.close()  # flushes TensorBoard / W&B too, also when the run stops early
            raise
        self.logger.close()
        summary["tokens_per_sec"] = sum(throughput) / len(throughput) if throughput else None
        if summary["tokens_per_sec"]:
            self.print_fn(f"mean throughput after the first step: {summary['tokens_per_sec']:,.0f} tok/s")
        if self.runtime.is_cuda:
            summary["peak_memory_gib"] = torch.cuda.max_memory_allocated(self.runtime.device) / 2**30
            self.print_fn(f"peak GPU memory allocated: {summary['peak_memory_gib']:.2f} GiB")
        return summary

    def _loop(self, summary: dict, throughput: list[float], stop: StopSignal) -> None:
        queue = MetricsQueue(self.train_step.clock)

        def drain(keep_newest: bool = False) -> bool:
            """Log the steps whose metrics are read now; True when some rank asked to stop."""
            stats = queue.drain(keep_newest)
            for s in stats:
                self.report(s)
                if s.step > self.start_step:  # the first step includes compilation and warm-up
                    throughput.append(s.tokens / s.seconds)
                summary["train_loss"] = s.loss
            for s in stats:
                self.bad_steps.record(not s.nonfinite, s.step, self.last_checkpoint)
            return any(s.stop for s in stats)

        try:
            self._steps(queue, drain, summary, stop)
        except BaseException:
            with contextlib.suppress(Exception):  # the steps that ran are what a crash report needs
                for s in queue.drain():
                    self.report(s)
            raise

    def _steps(self, queue: MetricsQueue, drain, summary: dict, stop: StopSignal) -> None:
        cfg = self.config
        for step in range(self.start_step, self.total_steps + 1):
            self.schedule_model(step)
            last_step = step == self.total_steps
            evals_due = cfg.val_every > 0 and (step % cfg.val_every == 0 or last_step)
            sample_due = cfg.sample_every > 0 and step > 0 and (step % cfg.sample_every == 0 or last_step)
            checkpoint_due = (self.checkpoints is not None and cfg.checkpoint_every > 0 and not last_step
                              and step % cfg.checkpoint_every == 0 and step > self.start_step)
            if evals_due or sample_due or checkpoint_due or last_step:
                drain()
            if evals_due:
                val_loss = self.evaluator.val_loss(step)
                if val_loss is not None:
                    summary["val_loss"][step] = val_loss
                accuracy = self.evaluator.hellaswag(step)
                if accuracy is not None:
                    summary.setdefault("hellaswag", {})[step] = accuracy
            if sample_due:
                self.evaluator.sample(step)
            if checkpoint_due:
                self.save_checkpoint(step)
            if last_step:
                break
            queue.put(self.train_step(step, stop.requested))
            stopping = False
            if self.is_log_step(step) or (step + 1) % READ_EVERY == 0:
                # every rank reads at the same steps. The step just queued is left for the next read (the host then
                # waits only for the one before, which the GPU has finished), except on a console step of
                # --log-every N > 1, whose own line is due now
                stopping = drain(keep_newest=cfg.log_every == 1 or not self.is_log_step(step))
            if self.job.enabled:  # the step before's all-reduced flag: the same on every rank, and nothing waits
                stopping = stopping or queue.previous_stop()
            else:  # one process: the signal handler's flag is right here
                stopping = stop.requested
            if stopping:  # SIGTERM/SIGINT: the steps queued are done; keep them and leave
                drain()
                written = self.save_checkpoint(step + 1) if self.checkpoints is not None else None
                raise Preempted(step + 1, self.config.output_dir, written, self.last_checkpoint)
        if self.checkpoints is not None:
            self.save_checkpoint(self.total_steps, run_complete=True)

    def flops_per_token_at(self, step: int) -> float:
        """`flops_per_token` (counted at -t) for the rows of step `step`: shorter under --seq-len-warmup, whose
        attention term 6LCT is then smaller."""
        layout, config = self.train_step.layout, self.model.module.config
        return self.flops_per_token - 6.0 * config.n_layer * config.n_embd * (layout.seq_len - layout.row_length_at(step))

    def schedule_model(self, step: int) -> None:
        """The model's own step-dependent settings (the modern recipe's sliding window, the auxiliary losses'
        weights), for step `step`'s training and the evaluations before it: a function of the step, so a resume
        continues the schedule exactly."""
        # over the LR schedule's steps: a resume with another -x keeps both the schedule and these as saved
        progress = step / max(1, self.train_step.schedule.total_steps)
        schedule_window = getattr(self.model.module, "schedule_window", None)
        if schedule_window is not None:
            schedule_window(progress, self.config.seq_len)
        schedule_weights = getattr(self.loss, "schedule_weights", None)
        if schedule_weights is not None:
            schedule_weights(progress)

    def is_log_step(self, step: int) -> bool:
        """Steps that get a console line (main.log and metrics.jsonl get every step)."""
        every = self.config.log_every
        return every > 0 and (step % every == 0 or step + 1 == self.total_steps)

    @property
    def last_checkpoint(self) -> str | None:
        saved = self.checkpoints.last_saved if self.checkpoints is not None else None
        return str(saved) if saved is not None else None

    def save_checkpoint(self, step: int, run_complete: bool = False) -> Path | None:
        """Weights, optimizer and every Stateful piece for `step` (the next step to run), then rotation; the model
        file written (None: not written). `run_complete`: the end of the run, after its last evaluation."""
        model = self.model.module
        path = self.checkpoints.save(
            step, model.config, family_of(model), ModelState(self.model), OptimizerState(self.model, self.train_step.optimizer),
            self.stateful(), {"train_config": self.config.to_dict(), "world_size": self.job.world_size,
                              "run_complete": run_complete},
        )
        if path is not None:
            self.print_fn(f"checkpoint: {path}")
        return path

    def report(self, stats: StepStats) -> None:
        """main.log line and the full JSONL record for every step; a console line like llm.c's at log steps."""
        tokens_per_sec = stats.tokens / stats.seconds
        mfu = model_flops_utilization(tokens_per_sec, self.flops_per_token_at(stats.step), self.peak_flops)
        extra = {"step_ms": stats.seconds * 1000, "data_ms": stats.data_seconds * 1000,
                 "tokens_per_sec": tokens_per_sec, "tokens": stats.tokens}
        if mfu is not None:
            extra["mfu"] = mfu
        if stats.skipped:
            extra["skipped"] = True
        if stats.wall_time is not None:
            extra["time"] = stats.wall_time
        self.logger.log_train(stats.step, stats.loss, stats.lr, stats.grad_norm, **extra)
        if self.is_log_step(stats.step):
            mfu_text = f" | {100 * mfu:4.1f}% {self.runtime.precision} MFU" if mfu is not None else ""
            skip_text = ("" if not stats.skipped else " | SKIPPED (non-finite loss or grad norm)" if stats.nonfinite
                         else " | SKIPPED (outlier z-score, -sl/-sg)")
            self.print_fn(
                f"step {stats.step + 1:5d}/{self.total_steps} | loss {stats.loss:.6f} | norm {stats.grad_norm:.4f} "
                f"| lr {stats.lr:.2e} | {stats.seconds * 1000:.1f} ms{mfu_text} | {tokens_per_sec:,.0f} tok/s{skip_text}"
            )
