"""From one validated TrainConfig to a ready Trainer: model, loaders, optimizer, schedule, logger."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from llmpy.config import DESCRIPTOR_RE, GPT2_NAMES, ModelConfig, TrainConfig
from llmpy.data.loader import TokenLoader
from llmpy.distributed import init_distributed
from llmpy.errors import LlmpyError
from llmpy.metrics.logger import RunLogger
from llmpy.metrics.mfu import peak_flops, training_flops_per_token
from llmpy.model import GPT
from llmpy.runtime import Runtime, seed_everything, select_runtime
from llmpy.train.checkpoint import completed_steps, load_model, load_training_state, model_path
from llmpy.train.optim import LRSchedule, build_optimizer
from llmpy.train.faults import BadStepCounter
from llmpy.train.trainer import Trainer


def build_model(spec: str, seq_len: int) -> GPT:
    """`-e`: a descriptor (d12, gpt2-medium, ...) for a fresh GPT-2, or an llmpy checkpoint to start from."""
    if DESCRIPTOR_RE.fullmatch(spec) or spec in GPT2_NAMES:
        model = GPT(ModelConfig.from_descriptor(spec))
    else:  # llm.c's -e also takes a model file to start from: an llm.c .bin, an llmpy checkpoint, HF weights
        from llmpy.convert.load import load_any_model

        model = load_any_model(spec)
    if seq_len > model.config.block_size:
        raise LlmpyError(f"-t/--seq-len {seq_len} exceeds the model's max positions {model.config.block_size}")
    return model


def load_tokenizer_for_samples(config: TrainConfig, print_fn) -> object | None:
    """The tokenizer decodes samples only; a run can train without one, so failure is a warning."""
    if config.sample_every <= 0:
        return None
    from llmpy.tokenizer import get_tokenizer

    try:
        return get_tokenizer(config.tokenizer or None)
    except LlmpyError as exc:
        print_fn(f"warning: sampling disabled, no GPT-2 tokenizer: {exc}")
        return None


def load_hellaswag_examples(config: TrainConfig) -> list | None:
    """-h 1: the tokenized HellaSwag val set, resolved before training starts (a missing file fails now, not later)."""
    if not config.hellaswag:
        return None
    from llmpy.data.hellaswag import resolve_hellaswag
    from llmpy.eval.hellaswag import load_examples
    from llmpy.tokenizer import get_tokenizer

    limit = None if config.hellaswag_limit < 0 else config.hellaswag_limit
    return load_examples(resolve_hellaswag(config.hellaswag_file or None), get_tokenizer(config.tokenizer or None), limit)


def total_steps_for(config: TrainConfig, loader: TokenLoader) -> int:
    """-x steps, or (-x -1) as many full -d batches as one epoch of the training split holds."""
    return config.max_steps if config.max_steps > 0 else loader.steps_per_epoch


def check_options_available(config: TrainConfig, print_fn) -> None:
    """Say plainly which accepted llm.c options this version does not act on."""
    if config.recompute not in (0, 1):
        print_fn("note: -r 2 (recompute LayerNorm too) is not available in this version and is ignored")


def resume_candidates(config: TrainConfig, print_fn) -> list[int]:
    """-y 1: complete checkpoints in -o with their training state, newest first; warns about damaged ones."""
    if not (config.resume and config.output_dir and Path(config.output_dir).is_dir()):
        return []
    run_dir = Path(config.output_dir)
    complete = completed_steps(run_dir, with_state=True)
    for marker in sorted(run_dir.glob("DONE_*")):
        step = int(marker.name[5:]) if marker.name[5:].isdigit() else None
        if step is not None and step not in complete:
            print_fn(f"warning: checkpoint {step} in {run_dir} is incomplete or damaged (a file is missing or has "
                     "another size than its DONE marker records); skipping it")
    return complete[::-1]


def restore_from_checkpoint(trainer: Trainer, config: TrainConfig, candidates: list[int], print_fn) -> None:
    """Load weights and training state of the newest readable checkpoint into a freshly built trainer."""
    run_dir = Path(config.output_dir)
    for step in candidates:
        try:
            saved, _ = load_model(model_path(run_dir, step))
            state = load_training_state(run_dir, step)
        except LlmpyError as exc:
            print_fn(f"warning: skipping checkpoint {step}: {exc}")
            continue
        if saved.config != trainer.raw_model.config:
            raise LlmpyError(
                f"-y 1: the checkpoint at step {step} in {run_dir} is a {saved.config.n_layer}-layer, "
                f"{saved.config.n_embd}-wide model but -e asks for {trainer.raw_model.config.n_layer} layers, "
                f"{trainer.raw_model.config.n_embd} wide"
            )
        trainer.raw_model.load_state_dict(saved.state_dict())
        trainer.restore(step, state)
        trainer.last_checkpoint = str(model_path(run_dir, step))
        print_fn(f"resuming from the checkpoint at step {step} of {trainer.total_steps} in {run_dir}")
        return
    print_fn(f"warning: no readable checkpoint in {run_dir}; starting from step 0")


def _silent(*args, **kwargs) -> None:
    """print_fn of ranks other than 0."""


def build_trainer(config: TrainConfig, runtime: Runtime | None = None, print_fn=print) -> Trainer:
    """Construct every component from the config, print the run's header, and return the Trainer."""
    job = init_distributed(use_cuda=config.device in ("auto", "cuda") and torch.cuda.is_available())
    world_size, rank = job.world_size, job.rank
    if not job.is_main:
        print_fn = _silent  # rank 0 speaks for the job
    config.validate(world_size)
    if job.enabled and config.zero_stage != 0:
        raise LlmpyError(f"-z {config.zero_stage}: only -z 0 (DDP) is available with several processes in this version")
    check_options_available(config, print_fn)
    runtime = runtime or select_runtime(config.device, config.dtype, bool(config.tf32), job.local_rank)
    seed_everything(config.seed)
    grad_accum_steps = config.grad_accum_steps(world_size)

    raw_model = build_model(config.model, config.seq_len).to(runtime.device)
    use_compile = config.compile == 1 or (config.compile == -1 and runtime.is_cuda)
    ddp = None
    if job.enabled:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(raw_model, device_ids=[runtime.device.index] if runtime.is_cuda else None)
    model = torch.compile(ddp or raw_model) if use_compile else (ddp or raw_model)

    train_loader = TokenLoader(
        config.train_data, config.batch_size, config.seq_len, rank, world_size,
        grad_accum_steps=grad_accum_steps, shuffle=bool(config.shuffle) and not config.overfit_batch, seed=config.seed,
    )
    val_loader = None
    if config.val_data:
        val_loader = TokenLoader(config.val_data, config.batch_size, config.seq_len, rank, world_size)
    total_steps = total_steps_for(config, train_loader)

    optimizer = build_optimizer(raw_model, config.learning_rate, config.weight_decay)
    schedule = LRSchedule(
        max_lr=config.learning_rate, warmup_steps=config.warmup_steps, total_steps=total_steps,
        final_lr_frac=config.final_lr_frac, schedule=config.lr_schedule, cooldown_frac=config.wsd_cooldown_frac,
    )
    logger = RunLogger(config.output_dir or None, enabled=rank == 0, resume=bool(config.resume))
    num_params = raw_model.num_parameters()
    flops = training_flops_per_token(raw_model.config, config.seq_len, num_params)
    peak = peak_flops(runtime.device_name(), runtime.precision) if runtime.is_cuda else None
    peak = peak * world_size if peak else None  # tokens/s is the whole job's, so compare with every GPU's peak

    header = {
        "device": runtime.device_name(), "precision": runtime.precision, "compile": use_compile,
        "num_parameters": num_params, "model_config": raw_model.config.to_dict(),
        "grad_accum_steps": grad_accum_steps, "total_steps": total_steps, "world_size": world_size,
        "torch": str(torch.__version__), "argv": sys.argv,
    }
    print_fn(
        f"model {config.model}: {raw_model.config.n_layer} layers, {raw_model.config.n_head} heads, "
        f"{raw_model.config.n_embd} channels | num_parameters: {num_params:,}\n"
        f"device {header['device']} ({runtime.precision}{', compiled' if use_compile else ''}) | B={config.batch_size} "
        f"T={config.seq_len} | total batch {grad_accum_steps * config.tokens_per_micro_step(world_size):,} tokens "
        f"=> grad accumulation {grad_accum_steps} | {total_steps} steps | "
        f"train {train_loader.tokens_per_epoch:,} tokens/epoch"
    )
    if config.output_dir and job.is_main:
        run_dir = Path(config.output_dir)
        (run_dir / "config.json").write_text(json.dumps({"train": config.to_dict(), **header}, indent=2, default=str))
        logger.log_event(0, "config", **header)

    trainer = Trainer(
        config=config, model=model, raw_model=raw_model, optimizer=optimizer, schedule=schedule,
        train_loader=train_loader, val_loader=val_loader, logger=logger, runtime=runtime, total_steps=total_steps,
        grad_accum_steps=grad_accum_steps, flops_per_token=flops, peak_flops=peak,
        tokenizer=load_tokenizer_for_samples(config, print_fn), print_fn=print_fn,
        hellaswag_examples=load_hellaswag_examples(config), bad_steps=BadStepCounter(config.max_bad_steps),
        job=job, ddp=ddp,
    )
    candidates = resume_candidates(config, print_fn)
    if candidates:
        restore_from_checkpoint(trainer, config, candidates, print_fn)
    return trainer
