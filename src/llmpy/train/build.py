"""From one validated TrainConfig to a ready Trainer: small `build_*` functions, one component each, wired by
`build_trainer`. Nothing here changes the config; what the run derives from it (the micro-batch auto-batch settles
on, accumulation, total steps) is returned as values (BatchLayout, ...)."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from llmpy.atomic import atomic_write_bytes
from llmpy.checkpoint import CheckpointManager
from llmpy.config import DESCRIPTOR_RE, GPT2_NAMES, ModelConfig, TrainConfig, batch_stage_list, mtp_weight_list
from llmpy.data.loader import TokenLoader
from llmpy.data.manifest import describe_source
from llmpy.distributed import Distributed, all_reduce_mean, check_same_everywhere, init_distributed
from llmpy.errors import LlmpyError
from llmpy.families import DEFAULT_FAMILY, build_model as build_family_model, family_of, model_config
from llmpy.frontier.untie import TiedUntil
from llmpy.loss import CrossEntropyLoss, build_loss as build_loss_component
from llmpy.metrics.logger import RunLogger
from llmpy.metrics.mfu import matmul_parameters, peak_flops, training_flops_per_token
from llmpy.resume_rules import RunComplete, continue_schedule
from llmpy.rundir import claim_run_dir
from llmpy.runtime import Runtime, seed_everything, select_runtime
from llmpy.train.evaluation import Evaluator
from llmpy.train.faults import BadStepCounter, OutlierWindow, SkipRule
from llmpy.train.graphs import use_cuda_graphs
from llmpy.train.memory import find_micro_batch, step_fits
from llmpy.train.optim import LRSchedule, build_optimizer
from llmpy.train.parallel import ModelState, OptimizerState, ParallelModel, parallelize
from llmpy.train.step import BatchLayout, TrainStep
from llmpy.train.trainer import Trainer


def _silent(*args, **kwargs) -> None:
    """print_fn of ranks other than 0."""


def build_job(config: TrainConfig, print_fn: Callable[..., None]) -> tuple[Distributed, Callable[..., None]]:
    """Join the torchrun/srun job (if any), check every rank has the same flags; rank 0 speaks for the job."""
    use_cuda = config.device in ("auto", "cuda") or config.device.startswith("cuda:")
    job = init_distributed(use_cuda=use_cuda and torch.cuda.is_available(), group_of_one=config.zero_stage in (1, 3))
    config.validate(job.world_size)
    check_same_everywhere(config.to_dict(), "training configuration")
    if config.zero_stage in (1, 3) and not torch.distributed.is_initialized():
        print_fn(f"note: -z {config.zero_stage} shards over ranks; a single process started without torchrun has "
                 "nothing to shard over, so it trains unsharded")
    return job, (print_fn if job.is_main else _silent)


def build_runtime(config: TrainConfig, job: Distributed) -> Runtime:
    """The device and precision, made current for this process (device, TF32)."""
    runtime = select_runtime(config.device, config.dtype, job.local_rank, config.attention)
    runtime.activate(tf32=bool(config.tf32))
    return runtime


def build_model(spec: str, seq_len: int, recompute: int = 0, family: str = DEFAULT_FAMILY, arch: str = "") -> nn.Module:
    """`-e`: a descriptor (d12, gpt2-medium, ...) for a fresh model of `family` (with the `--arch` switches), or a
    model file to start from (its own family and architecture; `--family`/`--arch` must then agree or be left)."""
    if DESCRIPTOR_RE.fullmatch(spec) or spec in GPT2_NAMES:
        model = build_family_model(model_config(family, spec, arch), family, recompute)
    else:  # llm.c's -e also takes a model file to start from: an llm.c .bin, an llmpy checkpoint, HF weights
        from llmpy.convert.load import load_any_model, unknown_model_error

        if not Path(spec).exists() and not spec.startswith("openai-community/"):
            raise unknown_model_error(spec, "-e/--model", descriptors=True)
        loaded = load_any_model(spec, flag="-e/--model")
        if family_of(loaded) != family or arch:
            raise LlmpyError(f"-e {spec} is a {family_of(loaded)} model; a run started from it keeps its family "
                             f"and architecture (give --family {family_of(loaded)} and no --arch, or the recipe "
                             f"that uses that family)")
        model = build_family_model(loaded.config, family_of(loaded), recompute)
        model.load_state_dict(loaded.state_dict())
    if seq_len > model.config.block_size:
        raise LlmpyError(f"-t/--seq-len {seq_len} exceeds the model's max positions {model.config.block_size}")
    return model


def loss_kind(flag: int, runtime: Runtime, head: nn.Module | None = None, aux: bool = False) -> str:
    """--fused-loss: 1 fused, 0 plain, -1 fused where its Triton kernel runs (CUDA with Triton installed) and the
    head is a plain linear layer (the modern family's soft-capped head is not: it takes the plain loss). `aux`: the
    run adds auxiliary loss terms (--mtp-weights, --prefix-loss), which only the plain loss computes: -1 is then
    plain and 1 is refused."""
    from llmpy.kernels.cross_entropy import triton

    plain_head = head is None or type(head) is nn.Linear
    if flag == 1 and not plain_head:
        raise LlmpyError(f"--fused-loss 1: the fused loss needs a plain linear head, and this model's is a "
                         f"{type(head).__name__}; leave --fused-loss at -1 or give 0")
    if flag == 1 and aux:
        raise LlmpyError("--fused-loss 1: the fused loss computes the next-token loss only, without the terms of "
                         "--mtp-weights/--prefix-loss; leave --fused-loss at -1 or give 0 (the plain loss)")
    fused_here = runtime.is_cuda and triton is not None and plain_head and not aux
    return "fused" if (bool(flag) if flag != -1 else fused_here) else "plain"


def build_loss(kind: str, model_config: ModelConfig, runtime: Runtime, chunk_rows: int = 0,
               config: TrainConfig | None = None) -> CrossEntropyLoss:
    """The head + cross-entropy component `kind` (see llmpy.loss.LOSSES), on the run's device; `chunk_rows`
    (--loss-chunk-rows) only for the fused one. A `config` with auxiliary losses on (--mtp-weights, --prefix-loss)
    gets the plain loss with their terms (llmpy.frontier.aux_loss)."""
    if chunk_rows and kind != "fused":
        raise LlmpyError("--loss-chunk-rows splits the fused loss, and this run's loss is the plain one (--fused-loss "
                         "0, no CUDA, the modern family's soft-capped head, or --mtp-weights/--prefix-loss); leave "
                         "--loss-chunk-rows at 0, or give --fused-loss 1 with a gpt2-family model")
    if config is not None and config.aux_losses:
        return build_aux_loss(config, model_config).to(runtime.device)
    return build_loss_component(kind, model_config.vocab_size, model_config.padded_vocab_size,
                                chunk_rows).to(runtime.device)


def build_aux_loss(config: TrainConfig, model_config: ModelConfig) -> CrossEntropyLoss:
    """The plain loss with --mtp-weights and --prefix-loss terms, their weights fading out by --aux-loss-until; the
    prefix table comes from GPT-2's ranks (--tokenizer, resolved as the tokenizer's)."""
    from llmpy.frontier.aux_loss import AuxiliaryLoss, gpt2_prefix_table

    prefix_of = None
    if config.prefix_loss:
        from llmpy.tokenizer import resolve_bpe_file

        bpe_file = resolve_bpe_file(config.tokenizer or None, flag="--tokenizer").resolve()
        prefix_of = gpt2_prefix_table(bpe_file, model_config.vocab_size)
    return AuxiliaryLoss(model_config.vocab_size, model_config.padded_vocab_size, mtp_weight_list(config.mtp_weights),
                         config.prefix_loss, prefix_of, config.aux_loss_until)


def gelu_fusion_for(flag: int, runtime: Runtime, module: nn.Module, recompute: int) -> int:
    """-ge: the level of GELU fusion (llmpy.kernels.cublaslt) this run gets, after checking it can run. -1 (auto) is 2
    where the cuBLASLt epilogues run and pay (bf16 on CUDA, compute capability 9.0+, as llm.c's default), else 0;
    an explicit 1 or 2 that cannot run is an error. On a CPU in bf16 an explicit level runs the same math in
    PyTorch ops (a test of the autograd, not a speed-up)."""
    if flag == 0:
        return 0
    reason = _gelu_fusion_refusal(runtime, module, recompute)
    if flag == -1:
        on_hopper = runtime.is_cuda and torch.cuda.get_device_capability(runtime.device.index or 0) >= (9, 0)
        if reason or not on_hopper:
            return 0
        flag = 2
    elif reason:
        raise LlmpyError(f"-ge/--gelu-fusion {flag}: {reason}; leave -ge at -1 or give -ge 0")
    return module.set_gelu_fusion(flag)


def _gelu_fusion_refusal(runtime: Runtime, module: nn.Module, recompute: int) -> str | None:
    """Why GELU fusion cannot run in this run (None: it can)."""
    if not hasattr(module, "set_gelu_fusion"):
        return f"the {family_of(module)} family's MLP is not GPT-2's"
    if recompute == 2:
        return "-r 2 recomputes GELU as its own op (give -r 0, 1 or 3)"
    if runtime.precision != "bf16":
        return f"the epilogues run in bf16 and this run is {runtime.precision} (--dtype)"
    if runtime.is_cuda:
        from llmpy.kernels.cublaslt import gelu_fusion_supported, unsupported_reason

        index = runtime.device.index or 0
        if not gelu_fusion_supported(index):
            return f"cuBLASLt's GELU epilogues do not run on {runtime.device_name()}: {unsupported_reason(index)}"
    return None


def compile_mode_for(flag: int, mode: str, runtime: Runtime) -> str | None:
    """--compile (-1 = on CUDA only, 0 off, 1 on) and --compile-mode: the mode to compile in, None for eager."""
    return mode if flag == 1 or (flag == -1 and runtime.is_cuda) else None


def can_probe_memory(runtime: Runtime) -> bool:
    """Whether running out of memory can be caught and retried smaller: CUDA raises OutOfMemoryError; a CPU swaps."""
    return runtime.is_cuda


def build_layout(config: TrainConfig, model: ParallelModel, runtime: Runtime, print_fn) -> BatchLayout:
    """-b, -t and -d over this job's ranks; --auto-batch (CUDA) halves -b until a step fits beside the optimizer
    state. Every rank must fit; not probed under FSDP, whose gathers make a probe on one rank alone impossible."""
    world = model.job.world_size
    batch_size = config.batch_size
    if config.auto_batch and can_probe_memory(runtime) and not model.sharded:
        num_params = sum(p.numel() for p in model.module.parameters())
        reserve = 8 * num_params  # AdamW's two fp32 moments, allocated by the first optimizer step
        total = config.grad_accum_steps(world) * config.tokens_per_micro_step(world)

        def fits(candidate: int) -> bool:
            model.set_grad_sync(0, 2)  # DDP: no gradient all-reduce in the probe
            ok = step_fits(model.train_module, runtime.autocast, runtime.device, candidate, config.seq_len, reserve)
            return bool(all_reduce_mean(torch.tensor(float(ok), device=runtime.device), model.job).item() == 1.0)

        batch_size = find_micro_batch(fits, batch_size, config.seq_len * world, total, print_fn)
    layout = BatchLayout(batch_size, config.seq_len, world, config.grad_accum_steps(world, batch_size),
                         config.batch_ramp, config.seq_len_warmup, batch_stage_list(config.batch_stages),
                         config.batch_stages_lr_power)
    if config.batch_ramp and layout.grad_accum_steps == 1:
        raise LlmpyError(f"--batch-ramp grows a step from one micro-step (-b {batch_size} x -t {config.seq_len} x "
                         f"{world} rank(s)) to -d's tokens, but -d {layout.tokens_per_step:,} is one micro-step: "
                         "give a larger -d or a smaller -b")
    return layout


def build_data(config: TrainConfig, layout: BatchLayout, job: Distributed) -> tuple[TokenLoader, TokenLoader | None]:
    """The train loader (one -d chunk per step, shuffled per epoch unless --no-shuffle) and the val loader."""
    train = TokenLoader(config.train_data, layout.batch_size, layout.seq_len, job.rank, job.world_size,
                        grad_accum_steps=layout.grad_accum_steps,
                        shuffle=bool(config.shuffle) and not config.overfit_batch, seed=config.seed)
    val = None
    if config.val_data:
        val = TokenLoader(config.val_data, layout.batch_size, layout.seq_len, job.rank, job.world_size)
    return train, val


def build_optimization(config: TrainConfig, model: nn.Module, runtime: Runtime,
                       total_steps: int) -> tuple[torch.optim.Optimizer, torch.Tensor, LRSchedule]:
    """The optimizer family (--optimizer), the device tensor it reads its learning rate from, and the schedule."""
    lr = torch.tensor(config.learning_rate, dtype=torch.float32, device=runtime.device)
    optimizer = build_optimizer(config.optimizer, model, lr, config.weight_decay, config.optimizer_args)
    schedule = LRSchedule(max_lr=config.learning_rate, warmup_steps=config.warmup_steps, total_steps=total_steps,
                          final_lr_frac=config.final_lr_frac, schedule=config.lr_schedule,
                          cooldown_frac=config.wsd_cooldown_frac)
    return optimizer, lr, schedule


def build_skip_rule(config: TrainConfig, runtime: Runtime) -> SkipRule:
    """-sl/-sg thresholds with their 128-step windows on the device."""
    return SkipRule(config.skip_loss_zscore, config.skip_grad_zscore, OutlierWindow(device=runtime.device),
                    OutlierWindow(device=runtime.device))


def build_logger(config: TrainConfig, job: Distributed) -> RunLogger:
    return RunLogger(config.output_dir or None, enabled=job.is_main, resume=bool(config.resume),
                     tensorboard_dir=config.tensorboard or None, wandb_project=config.wandb or None,
                     run_config=config.to_dict())


def build_evaluator(config: TrainConfig, model: ParallelModel, runtime: Runtime, job: Distributed,
                    logger: RunLogger, val_loader: TokenLoader | None, print_fn) -> Evaluator:
    """Val loss, HellaSwag (-h 1, its file resolved now: a missing file fails before training) and samples."""
    tokenizer, examples = None, None
    if config.sample_every > 0 or config.hellaswag:
        from llmpy.tokenizer import get_tokenizer

        try:
            tokenizer = get_tokenizer(config.tokenizer or None, flag="--tokenizer")
        except LlmpyError as exc:
            if config.hellaswag:
                raise
            print_fn(f"warning: sampling disabled, no GPT-2 tokenizer: {exc}")  # a run can train without one
    if config.hellaswag:
        from llmpy.data.hellaswag import resolve_hellaswag
        from llmpy.eval.hellaswag import load_examples

        limit = None if config.hellaswag_limit < 0 else config.hellaswag_limit
        examples = load_examples(resolve_hellaswag(config.hellaswag_file or None), tokenizer, limit)
    return Evaluator(model, runtime, job, logger, print_fn, val_loader, config.val_max_steps, examples,
                     tokenizer if config.sample_every > 0 else None, config.gen_tokens, config.sample_prompt,
                     config.sample_top_k, config.seed)


def run_header(config: TrainConfig, runtime: Runtime, model: ParallelModel, layout: BatchLayout, loss: str,
               compile_mode: str | None, total_steps: int, train: TokenLoader, gelu_fusion: int = 0,
               cuda_graphs: bool = False) -> tuple[dict, str]:
    """config.json's run description, and the console header."""
    module = model.module
    num_params = sum(p.numel() for p in module.parameters())
    header = {
        "device": runtime.device_name(), "precision": runtime.precision, "compile": compile_mode is not None,
        "compile_mode": compile_mode, "fused_loss": loss == "fused", "gelu_fusion": gelu_fusion,
        "cuda_graphs": cuda_graphs, "num_parameters": num_params,
        "model_config": module.config.to_dict(), "batch_size": layout.batch_size,
        "grad_accum_steps": layout.grad_accum_steps, "total_steps": total_steps, "world_size": layout.world_size,
        "parallelism": model.description, "torch": str(torch.__version__), "argv": sys.argv,
        "recipe": config.recipe, "family": family_of(module), "train_source": describe_source(config.train_data),
    }
    if config.aux_losses:
        header["aux_losses"] = {"mtp_weights": list(mtp_weight_list(config.mtp_weights)),
                                "prefix_loss": config.prefix_loss, "aux_loss_until": config.aux_loss_until}
    compile_note = {None: "", "default": ", compiled"}.get(compile_mode, f", compiled {compile_mode}")
    text = (
        f"recipe {config.recipe} | model {config.model} ({family_of(module)}"
        + (f", {config.optimizer}" if config.optimizer != "adamw" else "") + f"): {module.config.n_layer} layers, {module.config.n_head} heads, "
        f"{module.config.n_embd} channels | num_parameters: {num_params:,}\n"
        f"device {header['device']} ({runtime.precision}{compile_note}{', fused loss' if loss == 'fused' else ''}"
        f"{f', GELU fusion {gelu_fusion}' if gelu_fusion else ''}"
        f"{f', attention {runtime.attention}' if runtime.attention != 'auto' else ''}"
        f"{', CUDA graphs' if cuda_graphs else ''}) "
        f"| B={layout.batch_size} T={layout.seq_len} | total batch {layout.tokens_per_step:,} tokens "
        f"=> grad accumulation {layout.grad_accum_steps} | {total_steps:,} steps x {layout.tokens_per_step:,} "
        f"tokens | train data: {train.tokens_per_epoch:,} tokens per epoch"
        + schedule_note(layout, total_steps) + aux_loss_note(config, total_steps)
        + (f"\nparallelism: {model.description}" if layout.world_size > 1 or model.sharded else "")
        + (f"\ntrain data: {header['train_source']}" if header["train_source"] else "")
    )
    return header, text


def schedule_note(layout: BatchLayout, total_steps: int = 0) -> str:
    """The header's lines for the batch-size and sequence-length schedules ("" when they are off)."""
    parts = [stages_note(layout, total_steps)] if layout.batch_stages else []
    if layout.batch_ramp:
        parts.append(f"batch ramp: {layout.tokens_at(0):,} tokens at step 0, growing linearly; all "
                     f"{layout.tokens_per_step:,} from step {layout.batch_ramp} on")
    if layout.seq_len_warmup:
        n = layout.seq_len_warmup
        parts.append(f"sequence-length warmup: rows of {layout.seq_len // 4} for steps 0-{n - 1}, "
                     f"{layout.seq_len // 2} for {n}-{2 * n - 1}, then {layout.seq_len}")
    return "".join(f"\n{part}" for part in parts)


def stages_note(layout: BatchLayout, total_steps: int) -> str:
    """--batch-stages: each stage's steps, tokens and LR multiplier, and the mean tokens per step."""
    stages, n = layout.batch_stages, len(layout.batch_stages)
    bounds = layout.stage_starts(total_steps)
    parts = []
    for k in range(n):
        steps = f"steps {bounds[k]}-{bounds[k + 1] - 1}" if bounds[k + 1] > bounds[k] else "no steps"
        factor = f", LR x{layout.stage_lr_factor(k):.4g}" if layout.stage_lr_power else ""
        parts.append(f"{steps}: {layout.tokens_per_step * stages[k] // max(stages):,} tokens{factor}")
    mean = layout.tokens_per_step * sum(stages) / n / max(stages)
    return (f"batch stages {','.join(map(str, stages))} over the LR schedule's {total_steps:,} steps: "
            f"{'; '.join(parts)} | on average {mean:,.0f} tokens per step (-d x mean(W) / max(W))")


def aux_loss_note(config: TrainConfig, total_steps: int) -> str:
    """The header's line for --mtp-weights and --prefix-loss ("" when both are off)."""
    if not config.aux_losses:
        return ""
    weights = mtp_weight_list(config.mtp_weights)
    ahead = ", ".join(str(k + 2) for k in range(len(weights)))
    parts = [f"multi-token prediction {', '.join(f'{w:g}' for w in weights)} (the tokens {ahead} ahead)"
             ] if weights else []
    parts += [f"prefix-token prediction {config.prefix_loss:g}"] if config.prefix_loss else []
    return (f"\nauxiliary losses: {', '.join(parts)}; weights falling linearly to 0 at step "
            f"{math.ceil(config.aux_loss_until * total_steps):,} of {total_steps:,} (--aux-loss-until "
            f"{config.aux_loss_until:g}); the loss logged is the next-token loss alone")


def build_trainer(config: TrainConfig, print_fn: Callable[..., None] = print) -> Trainer:
    """Construct every component from the config, print the run's header, resume on -y 1, return the Trainer. It
    holds the lock on -o (rank 0), released when `fit` ends; a build that fails releases it."""
    with contextlib.ExitStack() as if_failed:
        trainer = _build_trainer(config, print_fn, if_failed)
        if_failed.pop_all()
    return trainer


def _build_trainer(config: TrainConfig, print_fn: Callable[..., None], if_failed: contextlib.ExitStack) -> Trainer:
    job, print_fn = build_job(config, print_fn)
    runtime = build_runtime(config, job)
    seed_everything(config.seed)
    module = build_model(config.model, config.seq_len, config.recompute, config.family, config.arch).to(runtime.device)
    gelu_fusion = gelu_fusion_for(config.gelu_fusion, runtime, module, config.recompute)
    kind = loss_kind(config.fused_loss, runtime, module.lm_head, config.aux_losses)
    loss = build_loss(kind, module.config, runtime, config.loss_chunk_rows, config)
    compile_mode = compile_mode_for(config.compile, config.compile_mode, runtime)
    cuda_graphs = use_cuda_graphs(config.cuda_graphs, runtime.device, job.world_size, module)
    model = parallelize(module, loss, runtime, job, config.zero_stage, compile_mode)
    layout = build_layout(config, model, runtime, print_fn)
    train_loader, val_loader = build_data(config, layout, job)
    total_steps = config.max_steps if config.max_steps > 0 else layout.steps_to_cover(train_loader.steps_per_epoch)
    optimizer, lr, schedule = build_optimization(config, module, runtime, total_steps)
    run_lock = None  # rank 0's lock on -o
    if config.output_dir:
        run_lock = claim_run_dir(config.output_dir, bool(config.resume), bool(config.overwrite), job, print_fn)
    if run_lock is not None:
        if_failed.callback(run_lock.release)
    logger = build_logger(config, job)
    header, text = run_header(config, runtime, model, layout, kind, compile_mode, total_steps, train_loader,
                              gelu_fusion, cuda_graphs)
    print_fn(text)
    peak = peak_flops(runtime.device_name(), runtime.precision) if runtime.is_cuda else None
    checkpoints = None
    if config.output_dir:
        checkpoints = CheckpointManager(config.output_dir, job, keep=config.checkpoint_keep,
                                        keep_every=config.checkpoint_keep_every, sharded=model.sharded,
                                        print_fn=print_fn)
    trainer = Trainer(
        config=config, runtime=runtime, job=job, model=model,
        train_step=TrainStep(model, optimizer, lr, schedule, build_skip_rule(config, runtime), train_loader, layout,
                             runtime, job, config.grad_clip, bool(config.overfit_batch), cuda_graphs,
                             TiedUntil.for_model(module, optimizer, schedule.total_steps)),
        evaluator=build_evaluator(config, model, runtime, job, logger, val_loader, print_fn),
        logger=logger, checkpoints=checkpoints, run_lock=run_lock, total_steps=total_steps,
        flops_per_token=training_flops_per_token(module.config, config.seq_len, matmul_parameters(module)),
        peak_flops=peak * job.world_size if peak else None,  # tokens/s is the whole job's: every GPU's peak
        print_fn=print_fn, bad_steps=BadStepCounter(config.max_bad_steps), loss=loss,
    )
    if config.resume and checkpoints is not None:
        restored = checkpoints.restore(module.config, config, layout.tokens_per_step, ModelState(model),
                                       OptimizerState(model, optimizer), trainer.stateful())
        if restored is not None and restored.step > total_steps:
            raise LlmpyError(f"-x/--max-steps {total_steps} is below the step of the checkpoint in "
                             f"{config.output_dir} ({restored.step}): give -x {restored.step} or more")
        if restored is not None and restored.step == total_steps and restored.complete:
            raise RunComplete(config.output_dir, restored.step)  # before a byte is written
        if restored is not None:
            schedule_note = continue_schedule(schedule, restored.step, total_steps, config.extend_schedule,
                                              config.output_dir)  # refused before a byte is written
            trainer.start_step = restored.step
            print_fn(f"{'warning: ' if restored.skipped else ''}resuming from the checkpoint at step {restored.step} "
                     f"of {total_steps} in {config.output_dir} ({restored.path.name})"
                     + (f" (written by {restored.saved_world_size} process(es), now {job.world_size})"
                        if restored.saved_world_size != job.world_size else "") + restored.skipped_note)
            if restored.saved_world_size != job.world_size and config.val_data and config.val_max_steps > 0:
                tokens = config.val_max_steps * layout.batch_size * layout.seq_len * job.world_size
                print_fn(f"note: -m counts val batches per process (llm.c's meaning), so from here each val loss "
                         f"covers {tokens:,} tokens ({job.world_size} process(es), before {restored.saved_world_size}): "
                         f"the val curve changes its sample at step {restored.step}")
            if schedule_note:
                print_fn(schedule_note)
    elif config.resume:
        print_fn("note: -y 1 continues the run in -o, and no -o was given: this run starts at step 0 and saves nothing")
    if config.output_dir and job.is_main:  # only now: a refused resume must not rewrite the run's description
        atomic_write_bytes(Path(config.output_dir) / "config.json",
                           json.dumps({"train": config.to_dict(), **header}, indent=2, default=str).encode())
        logger.log_event(0, "config", **header)
    return trainer
