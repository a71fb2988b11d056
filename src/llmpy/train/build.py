"""From one validated TrainConfig to a ready Trainer: model, loaders, optimizer, schedule, logger."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from llmpy.config import DESCRIPTOR_RE, GPT2_NAMES, ModelConfig, TrainConfig
from llmpy.data.loader import TokenLoader
from llmpy.distributed import all_reduce_mean, broadcast_object, check_same_everywhere, init_distributed
from llmpy.errors import LlmpyError
from llmpy.metrics.logger import RunLogger
from llmpy.metrics.mfu import peak_flops, training_flops_per_token
from llmpy.model import GPT
from llmpy.runtime import Runtime, seed_everything, select_runtime
from llmpy.train.checkpoint import completed_steps, load_model, load_training_state, model_path
from llmpy.train.optim import LRSchedule, build_optimizer
from llmpy.train.faults import BadStepCounter
from llmpy.train.memory import find_micro_batch, static_shapes, step_fits
from llmpy.train.parallel import parallelize
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


def compile_mode_for(flag: int, mode: str, runtime: Runtime) -> str | None:
    """--compile (-1 = on CUDA only, 0 off, 1 on) and --compile-mode: the mode to compile in, None for eager."""
    return mode if flag == 1 or (flag == -1 and runtime.is_cuda) else None


def fused_loss_wanted(flag: int, runtime: Runtime) -> bool:
    """--fused-loss: 1 on, 0 off, -1 on where its Triton kernel runs (CUDA with Triton installed)."""
    from llmpy.kernels.cross_entropy import kernel_launch_config, triton

    wanted = bool(flag) if flag != -1 else runtime.is_cuda and triton is not None
    if wanted and runtime.is_cuda:
        kernel_launch_config()  # a bad LLMPY_LOSS_KERNEL fails here, in one line, not at the first step
    return wanted


def check_options_available(config: TrainConfig, print_fn) -> None:
    """Say plainly which accepted llm.c options this version does not act on."""
    if config.zero_stage in (1, 3) and not torch.distributed.is_initialized():
        print_fn(f"note: -z {config.zero_stage} shards over ranks; a single process started without torchrun has "
                 "nothing to shard over, so it trains unsharded")


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
    """Load weights and training state of the newest readable checkpoint into a freshly built trainer. Rank 0 reads
    and decides; the others follow its choice (for FSDP they receive their shards from it)."""
    run_dir = Path(config.output_dir)
    job = trainer.job
    chosen, model_state, state = None, None, None
    if job.is_main:
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
            chosen, model_state = step, saved.state_dict()
            break
    chosen = broadcast_object(chosen)
    if chosen is None:
        print_fn(f"warning: no readable checkpoint in {run_dir}; starting from step 0")
        return
    if not trainer.parallel.sharded and not job.is_main:  # DDP: every rank loads the same files itself
        model_state = load_model(model_path(run_dir, chosen))[0].state_dict()
        state = load_training_state(run_dir, chosen)
    trainer.parallel.load_full_state(trainer.optimizer, model_state, state["optimizer"] if state else None)
    if trainer.parallel.sharded:  # the other ranks read nothing: rank 0 sends the loader, schedule and RNG state
        state = broadcast_object(None if state is None else {k: v for k, v in state.items() if k != "optimizer"})
    trainer.restore(chosen, state)
    trainer.last_checkpoint = str(model_path(run_dir, chosen))
    print_fn(f"resuming from the checkpoint at step {chosen} of {trainer.total_steps} in {run_dir}"
             + (f" (written by {state['world_size']} process(es), now {job.world_size})"
                if state and state.get("world_size") != job.world_size else ""))


def fit_micro_batch(config: TrainConfig, parallel, runtime: Runtime, num_params: int, print_fn) -> int:
    """--auto-batch: the largest -b (halving) whose forward + backward fits beside the optimizer state; every rank
    must fit. Not probed under FSDP, whose gathers make a probe on one rank alone impossible."""
    if parallel.sharded:
        return config.batch_size
    world_size = parallel.job.world_size
    total = config.grad_accum_steps(world_size) * config.tokens_per_micro_step(world_size)
    reserve = 8 * num_params  # AdamW's two fp32 moments, allocated by the first optimizer step

    def fits(batch_size: int) -> bool:
        parallel.set_grad_sync(0, 2)  # DDP: no gradient all-reduce in the probe
        ok = step_fits(parallel.model, runtime.autocast, runtime.device, batch_size, config.seq_len, reserve)
        return bool(all_reduce_mean(torch.tensor(float(ok), device=runtime.device), parallel.job).item() == 1.0)

    with static_shapes():
        return find_micro_batch(fits, config.batch_size, config.seq_len * world_size, total, print_fn)


def _silent(*args, **kwargs) -> None:
    """print_fn of ranks other than 0."""


def build_trainer(config: TrainConfig, runtime: Runtime | None = None, print_fn=print) -> Trainer:
    """Construct every component from the config, print the run's header, and return the Trainer."""
    use_cuda = config.device in ("auto", "cuda") and torch.cuda.is_available()
    job = init_distributed(use_cuda=use_cuda, group_of_one=config.zero_stage in (1, 3))
    world_size, rank = job.world_size, job.rank
    if not job.is_main:
        print_fn = _silent  # rank 0 speaks for the job
    config.validate(world_size)
    check_same_everywhere(config.to_dict(), "training configuration")
    check_options_available(config, print_fn)
    runtime = runtime or select_runtime(config.device, config.dtype, bool(config.tf32), job.local_rank,
                                        config.attention)
    seed_everything(config.seed)
    grad_accum_steps = config.grad_accum_steps(world_size)

    raw_model = build_model(config.model, config.seq_len).to(runtime.device)
    raw_model.set_recompute(config.recompute)
    raw_model.fused_loss = fused_loss_wanted(config.fused_loss, runtime)
    num_params = raw_model.num_parameters()
    compile_mode = compile_mode_for(config.compile, config.compile_mode, runtime)
    use_compile = compile_mode is not None
    parallel = parallelize(raw_model, runtime, job, config.zero_stage, compile_mode)
    if config.auto_batch and runtime.is_cuda:
        config.batch_size = fit_micro_batch(config, parallel, runtime, num_params, print_fn)
        grad_accum_steps = config.grad_accum_steps(world_size)

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
    logger = RunLogger(config.output_dir or None, enabled=rank == 0, resume=bool(config.resume),
                       tensorboard_dir=config.tensorboard or None, wandb_project=config.wandb or None,
                       run_config=config.to_dict())
    flops = training_flops_per_token(raw_model.config, config.seq_len, num_params)
    peak = peak_flops(runtime.device_name(), runtime.precision) if runtime.is_cuda else None
    peak = peak * world_size if peak else None  # tokens/s is the whole job's, so compare with every GPU's peak

    header = {
        "device": runtime.device_name(), "precision": runtime.precision, "compile": use_compile,
        "compile_mode": compile_mode, "fused_loss": raw_model.fused_loss,
        "num_parameters": num_params, "model_config": raw_model.config.to_dict(),
        "grad_accum_steps": grad_accum_steps, "total_steps": total_steps, "world_size": world_size,
        "parallelism": parallel.description,
        "torch": str(torch.__version__), "argv": sys.argv,
    }
    compile_note = {None: "", "default": ", compiled"}.get(compile_mode, f", compiled {compile_mode}")
    print_fn(
        f"model {config.model}: {raw_model.config.n_layer} layers, {raw_model.config.n_head} heads, "
        f"{raw_model.config.n_embd} channels | num_parameters: {num_params:,}\n"
        f"device {header['device']} ({runtime.precision}{compile_note}{', fused loss' if raw_model.fused_loss else ''}) "
        f"| B={config.batch_size} "
        f"T={config.seq_len} | total batch {grad_accum_steps * config.tokens_per_micro_step(world_size):,} tokens "
        f"=> grad accumulation {grad_accum_steps} | {total_steps} steps | "
        f"train {train_loader.tokens_per_epoch:,} tokens/epoch"
        + (f"\nparallelism: {parallel.description}" if world_size > 1 or parallel.sharded else "")
    )
    if config.output_dir and job.is_main:
        run_dir = Path(config.output_dir)
        (run_dir / "config.json").write_text(json.dumps({"train": config.to_dict(), **header}, indent=2, default=str))
        logger.log_event(0, "config", **header)

    trainer = Trainer(
        config=config, model=parallel.model, raw_model=raw_model, optimizer=optimizer, schedule=schedule,
        train_loader=train_loader, val_loader=val_loader, logger=logger, runtime=runtime, total_steps=total_steps,
        grad_accum_steps=grad_accum_steps, flops_per_token=flops, peak_flops=peak,
        tokenizer=load_tokenizer_for_samples(config, print_fn), print_fn=print_fn,
        hellaswag_examples=load_hellaswag_examples(config), bad_steps=BadStepCounter(config.max_bad_steps),
        job=job, parallel=parallel,
    )
    candidates = resume_candidates(config, print_fn)
    if candidates:
        restore_from_checkpoint(trainer, config, candidates, print_fn)
    return trainer
