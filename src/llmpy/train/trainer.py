"""The training loop: accumulate, clip, step, evaluate, sample, log, checkpoint. Orchestration only."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from llmpy.config import TrainConfig
from llmpy.data.loader import TokenLoader
from llmpy.eval.hellaswag import evaluate_hellaswag
from llmpy.eval.val_loss import evaluate_loss
from llmpy.infer import generate
from llmpy.metrics.logger import RunLogger
from llmpy.metrics.mfu import mfu as model_flops_utilization
from llmpy.model import GPT
from llmpy.distributed import Distributed, all_reduce_mean, barrier
from llmpy.runtime import Runtime, rng_state, set_rng_state
from llmpy.train.checkpoint import model_path, prune_checkpoints, save_model_checkpoint
from llmpy.train.faults import BadStepCounter, OutlierDetector, Preempted, StopSignal
from llmpy.train.optim import LRSchedule, apply_learning_rate
from llmpy.train.parallel import Parallelism


@dataclass
class StepStats:
    """What one optimizer step reports."""

    step: int
    loss: float
    grad_norm: float
    lr: float
    seconds: float
    tokens: int
    skipped: bool = False
    data_seconds: float = 0.0  # host time spent producing this step's batches
    nonfinite: bool = False  # the loss or the gradient norm was NaN/inf


@dataclass
class Trainer:
    """Runs `total_steps` optimizer steps of `model` over `train_loader`, llm.c style."""

    config: TrainConfig
    model: torch.nn.Module  # what runs the steps (maybe compiled)
    raw_model: GPT  # the plain module: checkpoints and sampling
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    train_loader: TokenLoader
    val_loader: TokenLoader | None
    logger: RunLogger
    runtime: Runtime
    total_steps: int
    grad_accum_steps: int
    flops_per_token: float
    peak_flops: float | None
    tokenizer: object | None = None  # GPT2Tokenizer, for decoding samples
    print_fn: callable = print
    start_step: int = 0
    hellaswag_examples: list | None = None  # tokenized examples when -h 1
    loss_outliers: OutlierDetector = field(default_factory=OutlierDetector)
    norm_outliers: OutlierDetector = field(default_factory=OutlierDetector)
    bad_steps: BadStepCounter = field(default_factory=lambda: BadStepCounter(5))
    last_checkpoint: str | None = None
    job: Distributed = field(default_factory=Distributed)
    parallel: Parallelism | None = None  # how the model is spread over ranks (-z); None: one plain process

    def __post_init__(self) -> None:
        if self.parallel is None:
            self.parallel = Parallelism(self.raw_model, self.model, self.job)

    @property
    def tokens_per_step(self) -> int:
        return self.train_loader.chunk_tokens  # grad_accum * world * B * T: one chunk per optimizer step

    def fit(self) -> dict:
        """Train to the end; returns a summary (first/last val loss, last train loss, mean tok/s)."""
        summary: dict = {"val_loss": {}, "train_loss": None}
        throughput: list[float] = []
        try:
            with StopSignal() as stop:
                self._loop(summary, throughput, stop)
        finally:
            self.logger.close()  # flushes TensorBoard / W&B too, also when the run stops early
        summary["tokens_per_sec"] = sum(throughput) / len(throughput) if throughput else None
        if summary["tokens_per_sec"]:
            self.print_fn(f"mean throughput after the first step: {summary['tokens_per_sec']:,.0f} tok/s")
        if self.runtime.is_cuda:
            summary["peak_memory_gib"] = torch.cuda.max_memory_allocated(self.runtime.device) / 2**30
            self.print_fn(f"peak GPU memory allocated: {summary['peak_memory_gib']:.2f} GiB")
        return summary

    def _loop(self, summary: dict, throughput: list[float], stop: StopSignal) -> None:
        cfg = self.config
        for step in range(self.start_step, self.total_steps + 1):
            last_step = step == self.total_steps
            if self.val_loader is not None and cfg.val_every > 0 and (step % cfg.val_every == 0 or last_step):
                val_loss = evaluate_loss(self.model, self.val_loader, cfg.val_max_steps, self.runtime, self.job,
                                         progress=True)
                self.logger.log_val(step, val_loss)
                summary["val_loss"][step] = val_loss
                self.print_fn(f"val loss {val_loss:.4f}")
            if self.hellaswag_examples and cfg.val_every > 0 and (step % cfg.val_every == 0 or last_step):
                self.evaluate_hellaswag(step, summary)
            if cfg.sample_every > 0 and step > 0 and (step % cfg.sample_every == 0 or last_step) and \
                    (self.job.is_main or self.parallel.sharded):  # FSDP: every rank takes part in each forward
                self.sample(step)
            periodic = cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0
            if cfg.output_dir and periodic and step > self.start_step and not last_step:
                self.save_checkpoint(step)
            if last_step:
                break
            stats = self.train_step(step)
            if step > self.start_step:  # the first step includes compilation and warm-up
                throughput.append(stats.tokens / stats.seconds)
            self.report(stats)
            summary["train_loss"] = stats.loss
            self.bad_steps.record(not stats.nonfinite, step, self.last_checkpoint)
            if self.stop_requested(stop):  # SIGTERM/SIGINT: this step is done; keep it and leave
                if cfg.output_dir:
                    self.save_checkpoint(step + 1)
                raise Preempted(step + 1)
        if cfg.output_dir:
            self.save_checkpoint(self.total_steps)

    def evaluate_hellaswag(self, step: int, summary: dict) -> None:
        """-h 1: HellaSwag acc_norm, logged as llm.c's `eval` line (the uncompiled model: shapes vary per batch)."""
        scores = evaluate_hellaswag(self.raw_model, self.hellaswag_examples, self.runtime.device, self.runtime.autocast,
                                    rank=self.train_loader.rank, world_size=self.train_loader.world_size,
                                    lockstep=self.parallel.sharded, progress=self.job.is_main)
        self.logger.log_eval(step, scores["acc_norm"], acc=scores["acc"], examples=scores["examples"])
        summary.setdefault("hellaswag", {})[step] = scores["acc_norm"]
        self.print_fn(f"HellaSwag: {scores['acc_norm']:.4f} acc_norm ({scores['examples']} examples)")

    def stop_requested(self, stop: StopSignal) -> bool:
        """A signal to any rank stops every rank after the same step."""
        if not self.job.enabled:
            return stop.requested  # one process: no collective, no extra host sync in the loop
        flag = torch.tensor(float(stop.requested), device=self.runtime.device)
        return bool(all_reduce_mean(flag, self.job).item() > 0)

    def training_state(self, optimizer_state: dict) -> dict:
        """Everything besides the weights that the next step depends on (resume must continue identically)."""
        return {
            "optimizer": optimizer_state, "loader": self.train_loader.state_dict(),
            "schedule": self.schedule.state_dict(), "rng": rng_state(),
            "loss_outliers": self.loss_outliers.state_dict(), "norm_outliers": self.norm_outliers.state_dict(),
            "train_config": self.config.to_dict(), "world_size": self.train_loader.world_size,
        }

    def restore(self, step: int, state: dict) -> None:
        """Continue from a checkpoint's training state: the next step is `step`, with exactly the next batch."""
        # the optimizer was loaded with the weights (Parallelism.load_full_state); the loader's position counts whole
        # -d batches, so it holds for any world size
        self.train_loader.load_state_dict(state["loader"])
        self.loss_outliers.load_state_dict(state["loss_outliers"])
        self.norm_outliers.load_state_dict(state["norm_outliers"])
        set_rng_state(state["rng"])
        self.start_step = step

    def save_checkpoint(self, step: int) -> None:
        """Weights, configs and training state for `step`, then rotation (-nk, -nm)."""
        cfg = self.config
        # whole state dicts, gathered on rank 0 (FSDP shards) or taken from it (DDP ranks are identical); rank 0 writes
        path = model_path(cfg.output_dir, step)
        model_state, optimizer_state = self.parallel.full_state(self.optimizer)
        if self.job.is_main:
            save_model_checkpoint(cfg.output_dir, step, self.raw_model, {"train_config": cfg.to_dict()},
                                  training_state=self.training_state(optimizer_state), state_dict=model_state)
            prune_checkpoints(cfg.output_dir, cfg.checkpoint_keep, cfg.checkpoint_keep_every)
        barrier(self.job)  # no rank moves on (or exits) before the checkpoint is complete
        self.last_checkpoint = str(path)
        self.print_fn(f"checkpoint: {path}")

    def train_step(self, step: int) -> StepStats:
        """One optimizer step over grad_accum_steps micro-batches; a non-finite gradient skips the update."""
        t0 = time.perf_counter()
        data_seconds_before = self.train_loader.data_seconds
        self.model.train()
        lr = self.schedule(step)
        apply_learning_rate(self.optimizer, lr)
        loss_sum = torch.zeros((), device=self.runtime.device)
        if self.config.overfit_batch:
            self.train_loader.reset()  # -a 1: the same first batch every step
        for micro_step in range(self.grad_accum_steps):
            self.parallel.set_grad_sync(micro_step, self.grad_accum_steps)
            x, y = self.train_loader.next_batch()
            x = x.to(self.runtime.device, non_blocking=True)
            y = y.to(self.runtime.device, non_blocking=True)
            with self.runtime.autocast():
                _, loss = self.model(x, y, return_logits=False)
            loss = loss / self.grad_accum_steps  # grads of the mean over the whole -d batch
            loss_sum += loss.detach()
            loss.backward()
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        grad_norm = self.parallel.clip_grad_norm(max_norm)  # the unclipped norm is returned
        grad_norm_value = grad_norm.item()  # one host sync per step, needed for logging anyway
        loss_value = all_reduce_mean(loss_sum, self.job).item()  # the loss of the whole -d batch, all ranks
        nonfinite = not (math.isfinite(grad_norm_value) and math.isfinite(loss_value))
        skipped = nonfinite or self.is_outlier(loss_value, grad_norm_value)
        if not skipped:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.runtime.synchronize()
        data_seconds = self.train_loader.data_seconds - data_seconds_before
        return StepStats(step, loss_value, grad_norm_value, lr, time.perf_counter() - t0, self.tokens_per_step,
                         skipped, data_seconds, nonfinite)

    def is_outlier(self, loss: float, grad_norm: float) -> bool:
        """llm.c's -sl/-sg: skip an update whose loss or grad-norm z-score over the last 128 steps is too high."""
        loss_z, norm_z = self.loss_outliers.zscore(loss), self.norm_outliers.zscore(grad_norm)
        self.loss_outliers.add(loss)
        self.norm_outliers.add(grad_norm)
        cfg = self.config
        return (cfg.skip_loss_zscore > 0 and loss_z > cfg.skip_loss_zscore) or \
            (cfg.skip_grad_zscore > 0 and norm_z > cfg.skip_grad_zscore)

    def report(self, stats: StepStats) -> None:
        """Console line like llm.c's, main.log line, and the full JSONL record."""
        tokens_per_sec = stats.tokens / stats.seconds
        mfu = model_flops_utilization(tokens_per_sec, self.flops_per_token, self.peak_flops)
        extra = {"step_ms": stats.seconds * 1000, "data_ms": stats.data_seconds * 1000,
                 "tokens_per_sec": tokens_per_sec, "tokens": stats.tokens}
        if mfu is not None:
            extra["mfu"] = mfu
        if stats.skipped:
            extra["skipped"] = True
        self.logger.log_train(stats.step, stats.loss, stats.lr, stats.grad_norm, **extra)
        if self.config.log_every > 0 and (stats.step % self.config.log_every == 0 or stats.step + 1 == self.total_steps):
            mfu_text = f" | {100 * mfu:4.1f}% {self.runtime.precision} MFU" if mfu is not None else ""
            skip_text = ("" if not stats.skipped else " | SKIPPED (non-finite loss or grad norm)" if stats.nonfinite
                         else " | SKIPPED (outlier z-score, -sl/-sg)")
            self.print_fn(
                f"step {stats.step + 1:5d}/{self.total_steps} | loss {stats.loss:.6f} | norm {stats.grad_norm:.4f} "
                f"| lr {stats.lr:.2e} | {stats.seconds * 1000:.1f} ms{mfu_text} | {tokens_per_sec:,.0f} tok/s{skip_text}"
            )

    def sample(self, step: int) -> None:
        """Generate -g tokens from <|endoftext|> (or --sample-prompt) and print/log them."""
        if self.tokenizer is None:
            return
        cfg = self.config
        prompt_ids = self.tokenizer.encode(cfg.sample_prompt) if cfg.sample_prompt else [self.tokenizer.eot_token]
        prompt = torch.tensor([prompt_ids], dtype=torch.long, device=self.runtime.device)
        # a private generator: sampling must not disturb the training RNG stream
        generator = torch.Generator(device=self.runtime.device).manual_seed(cfg.seed + step)
        self.raw_model.eval()
        out = generate(
            self.raw_model, prompt, cfg.gen_tokens, top_k=cfg.sample_top_k, generator=generator,
            autocast=self.runtime.autocast,
        )
        self.raw_model.train()
        text = self.tokenizer.decode(out[0, len(prompt_ids):].tolist())
        self.print_fn(f"generating:\n---\n{cfg.sample_prompt}{text}\n---")
        self.logger.log_event(step, "sample", text=cfg.sample_prompt + text)
