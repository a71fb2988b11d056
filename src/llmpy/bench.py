"""`llmpy bench`: the real training step (the code `llmpy train` runs: loader, model, compile, optimizer, clipping)
on random tokens, timed. Warm-up steps (compilation, autotuning) are excluded and each step is CUDA-synchronised, so
the median step time is what a long run will see. `--profile` adds a torch.profiler pass over a few more steps and
says where the GPU time goes: matmuls, attention, other kernels (Inductor's fused Triton code: LayerNorm, GELU,
residuals, cross-entropy), optimizer, communication, copies, and the time the GPU sat idle."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from llmpy.argtypes import non_negative_int, positive_int
from llmpy.config import TrainConfig
from llmpy.errors import LlmpyError
from llmpy.flags import add_flag_arguments
from llmpy.gpt2 import EOT_TOKEN, PADDED_VOCAB_SIZE, VOCAB_SIZE

if TYPE_CHECKING:  # torch, numpy and the trainer are imported where used: `llmpy --help` builds this parser
    import torch

# (category, substrings of CUDA kernel names), first match wins
KERNEL_CATEGORIES = (
    ("communication", ("nccl",)),
    ("loss (llmpy's fused head + cross-entropy kernel)", ("_loss_and_grad_kernel",)),
    ("attention", ("flash", "fmha", "attention", "attn", "sdpa", "cudnn_generated_fort_native_sdpa")),
    ("optimizer", ("adam", "multi_tensor_apply", "foreach")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "sm90_", "sm80_", "wgmma")),
    ("copy", ("memcpy", "memset", "copy_kernel", "cat_")),
    ("fused elementwise / norm / loss (Triton)", ("triton",)),
)


def kernel_category(name: str) -> str:
    """Which part of the step a CUDA kernel belongs to, from its name."""
    lowered = name.lower()
    for category, needles in KERNEL_CATEGORIES:
        if any(needle in lowered for needle in needles):
            return category
    return "other kernels"


def write_random_data(directory: Path, tokens: int, seed: int = 0) -> str:
    """One llm.c shard of uniformly random GPT-2 token ids; returns its glob."""
    import numpy as np

    from llmpy.data.shards import write_shard

    rng = np.random.default_rng(seed)
    write_shard(directory / "bench_train_000001.bin", rng.integers(0, VOCAB_SIZE, tokens))
    return str(directory / "bench_train_*.bin")


# the train flags that shape a step, with bench's own defaults (B=32, no auto-batch); -d is train's (-1: one
# micro-step), so the same flags time the same step in both; llm.c's d12 setting is -d 524288
BENCH_FIELDS = ("model", "batch_size", "seq_len", "total_batch_size", "recompute", "zero_stage", "compile",
                "compile_mode", "attention", "fused_loss", "loss_chunk_rows", "gelu_fusion", "cuda_graphs", "auto_batch", "device", "dtype", "seed",
                "optimizer", "recipe", "family", "arch")
# "" for --optimizer and --family: the recipe's
BENCH_DEFAULTS = {"batch_size": 32, "auto_batch": 0, "optimizer": "", "family": ""}


def bench_config(args: argparse.Namespace, train_data: str) -> TrainConfig:
    """A TrainConfig that trains and does nothing else: no eval, sampling, checkpoints or logs. The recipe's
    settings apply (the classic one at llm.c's d12 LR, warmup and weight decay)."""
    from llmpy.recipes import with_recipe

    values = {name: getattr(args, name) for name in BENCH_FIELDS if getattr(args, name) != ""}
    if values.get("recipe", "classic") == "classic":
        values.update(learning_rate=6e-4, warmup_steps=10, weight_decay=0.1)
    return TrainConfig(**with_recipe(dict(
        values, train_data=train_data, max_steps=args.warmup + args.steps + (args.profile_steps if args.profile else 0),
        val_every=0, sample_every=0, checkpoint_every=0, log_every=0,
    )))


def describe_steps(args: argparse.Namespace, tokens_per_step: int) -> str:
    """What the run header's step count and "tokens/epoch" mean for a bench: warm-up + timed steps, random data."""
    profiled = f" + {args.profile_steps} profiled" if args.profile else ""
    total = args.warmup + args.steps + (args.profile_steps if args.profile else 0)
    return (f"bench: the {total} steps of {tokens_per_step:,} tokens are {args.warmup} warm-up (compilation, not "
            f"timed) + {args.steps} timed{profiled}; the train data is random tokens, two steps' worth, read again "
            f"each epoch (its size does not change the timing)")


def timed_steps(trainer, first_step: int, steps: int) -> list:
    """Run `steps` training steps without reading anything back in between (as training runs between log
    steps), then their stats, timed on the device's clock."""
    from llmpy.train.step import MetricsQueue

    queue = MetricsQueue(trainer.train_step.clock)
    for step in range(first_step, first_step + steps):
        trainer.schedule_model(step)
        queue.put(trainer.train_step(step))
    return queue.drain()


def run_bench(args: argparse.Namespace, print_fn=print) -> dict:
    """Build a trainer on random data, run warm-up then timed steps, optionally profile; returns the result."""
    import torch

    from llmpy.distributed import launch_from_env
    from llmpy.train.build import build_trainer, compile_mode_for

    with tempfile.TemporaryDirectory(prefix="llmpy-bench-") as tmp:
        config = bench_config(args, "-")
        world = launch_from_env().world_size
        step_tokens = config.grad_accum_steps(world) * config.tokens_per_micro_step(world)
        data = write_random_data(Path(tmp), 2 * step_tokens + 1)
        trainer = build_trainer(bench_config(args, data), print_fn=print_fn)
        say = trainer.print_fn  # silent on ranks other than 0
        device = trainer.runtime.device
        layout = trainer.train_step.layout
        say(describe_steps(args, layout.tokens_per_step))
        timed_steps(trainer, 0, args.warmup)
        # a captured graph allocates its memory once, at capture (in warm-up): its peak is the whole run's
        if trainer.runtime.is_cuda and trainer.train_step.graph is None:
            torch.cuda.reset_peak_memory_stats(device)
        stats = timed_steps(trainer, args.warmup, args.steps)
        times, data_times = [s.seconds for s in stats], [s.data_seconds for s in stats]
        step_s = statistics.median(times)
        result = {
            "model": args.model, "num_parameters": sum(p.numel() for p in trainer.model.module.parameters()),
            "batch_size": layout.batch_size, "seq_len": args.seq_len,
            "total_batch_size": layout.tokens_per_step, "grad_accum_steps": layout.grad_accum_steps,
            "world_size": trainer.job.world_size, "zero_stage": args.zero_stage, "recompute": args.recompute,
            "attention": trainer.runtime.attention, "compile_mode": args.compile_mode,
            "fused_loss": loss_is_fused(trainer), "loss_chunk_rows": args.loss_chunk_rows,
            "gelu_fusion": getattr(trainer.model.module, "gelu_fusion", 0),
            "cuda_graphs": trainer.train_step.graph is not None,
            "compile": compile_mode_for(args.compile, args.compile_mode, trainer.runtime) is not None,
            "precision": trainer.runtime.precision, "device": trainer.runtime.device_name(),
            "steps": args.steps, "step_ms_median": 1000 * step_s, "step_ms_min": 1000 * min(times),
            "step_ms_max": 1000 * max(times), "data_ms_median": 1000 * statistics.median(data_times),
            "tokens_per_sec": layout.tokens_per_step / step_s,
            "tokens_per_sec_per_gpu": layout.tokens_per_step / step_s / trainer.job.world_size,
            "torch": str(torch.__version__),
        }
        from llmpy.metrics.mfu import mfu

        result["mfu"] = mfu(result["tokens_per_sec"], trainer.flops_per_token, trainer.peak_flops)
        if trainer.runtime.is_cuda:
            result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        if args.profile:
            result["profile"] = profile_steps(trainer, args.warmup + args.steps, args.profile_steps,
                                              Path(args.profile), say)
    say(format_result(result))
    say(json.dumps(result))
    return result


def loss_is_fused(trainer) -> bool:
    """Whether the run's loss component is the fused kernel."""
    from llmpy.loss import FusedCrossEntropyLoss

    return any(isinstance(m, FusedCrossEntropyLoss) for m in trainer.model.train_module.modules())


def profile_steps(trainer, first_step: int, steps: int, out_dir: Path, say) -> dict:
    """Profile `steps` training steps: a Chrome trace in `out_dir` and GPU time per kernel category."""
    from torch.profiler import ProfilerActivity, profile

    out_dir.mkdir(parents=True, exist_ok=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.runtime.is_cuda else [])
    with profile(activities=activities) as prof:
        wall = sum(s.seconds for s in timed_steps(trainer, first_step, steps))
    trace = out_dir / f"trace_rank{trainer.job.rank}.json"
    prof.export_chrome_trace(str(trace))
    busy: dict[str, float] = {}
    kernels: dict[str, float] = {}
    for event in prof.key_averages():
        if str(getattr(event, "device_type", "")).endswith("CUDA"):
            seconds = getattr(event, "self_device_time_total", 0.0) / 1e6
            busy[kernel_category(event.key)] = busy.get(kernel_category(event.key), 0.0) + seconds
            kernels[event.key] = kernels.get(event.key, 0.0) + seconds
    breakdown = {name: seconds / steps * 1000 for name, seconds in sorted(busy.items(), key=lambda kv: -kv[1])}
    top = {name: seconds / steps * 1000 for name, seconds in sorted(kernels.items(), key=lambda kv: -kv[1])[:20]}
    step_ms = wall / steps * 1000
    if breakdown:
        breakdown["idle (GPU waiting)"] = max(0.0, step_ms - sum(breakdown.values()))
    lines = [f"profile of {steps} step(s), {step_ms:.1f} ms per step (profiler overhead included); trace: {trace}"]
    lines += [f"  {name:<45s} {ms:9.1f} ms  {100 * ms / step_ms:5.1f}%" for name, ms in breakdown.items()]
    if not breakdown:
        lines.append("  (no GPU kernels recorded: the per-category breakdown needs CUDA)")
    else:
        lines.append("  top kernels:")
        lines += [f"    {ms:8.1f} ms  {kernel_category(name)[:12]:<12s} {name[:110]}" for name, ms in top.items()]
    say("\n".join(lines))
    return {"step_ms": step_ms, "ms_per_step": breakdown, "top_kernels_ms": top, "trace": str(trace)}


# --check passes when the fast path is this close to eager fp32 (bf16 keeps 8 bits of mantissa: ~0.4% per rounding)
CHECK_LOSS_RTOL = 1e-2
CHECK_GRAD_RTOL = 5e-2


def _loss_and_grads(module, x, y, context, run=None) -> tuple[float, dict]:
    """One forward and backward of `module` ((idx, targets) -> loss; through `run`, e.g. its compiled wrapper):
    the loss and fp32 gradients by parameter name."""
    module.zero_grad(set_to_none=True)
    with context:
        loss = (module if run is None else run)(x, y)
    loss.backward()
    return loss.item(), {name: p.grad.detach().float().clone() for name, p in module.model.named_parameters()
                         if p.grad is not None}


def check_fast_path(args: argparse.Namespace, print_fn=print) -> dict:
    """--check: the loss and gradients of the configured fast path (precision, compile mode, fused loss, recompute)
    against the eager fp32 model (plain loss, TF32 off) on one fixed random batch, from the same weights."""
    import contextlib

    import torch

    from llmpy.attention import document_index
    from llmpy.loss import ModelWithLoss
    from llmpy.runtime import seed_everything, select_runtime
    from llmpy.train.build import build_loss, build_model, compile_mode_for, gelu_fusion_for, loss_kind
    from llmpy.train.graphs import check_graph_gradients, use_cuda_graphs
    from llmpy.train.parallel import compiled

    runtime = select_runtime(args.device, args.dtype, attention=args.attention)
    runtime.activate(tf32=False)
    seed_everything(args.seed)
    config = bench_config(args, "")
    reference = build_model(args.model, args.seq_len, 0, config.family, config.arch).to(runtime.device)
    fast = build_model(args.model, args.seq_len, args.recompute, config.family, config.arch).to(runtime.device)
    exercise_every_path(reference, args.seed)
    fast.load_state_dict(reference.state_dict())
    window = None
    for model in (reference, fast):  # a window schedule's first (narrowest) window, where training starts
        if getattr(model.config, "window", 0):
            window = model.schedule_window(0.0, args.seq_len)
    gelu_fusion = gelu_fusion_for(args.gelu_fusion, runtime, fast, args.recompute)
    graphs_on = use_cuda_graphs(args.cuda_graphs, runtime.device, 1, fast)
    kind = loss_kind(args.fused_loss, runtime, fast.lm_head)
    reference_run = ModelWithLoss(reference, build_loss("plain", reference.config, runtime))
    fast_run = ModelWithLoss(fast, build_loss(kind, fast.config, runtime, args.loss_chunk_rows))
    compile_mode = compile_mode_for(args.compile, args.compile_mode, runtime)
    use_compile = compile_mode is not None
    x, y = check_batch(args.batch_size, args.seq_len, args.seed)
    x, y = x.to(runtime.device), y.to(runtime.device)
    ref_loss, ref_grads = _loss_and_grads(reference_run, x, y, contextlib.nullcontext())
    fast_call = compiled(fast_run, compile_mode)
    fast_loss, fast_grads = _loss_and_grads(fast_run, x, y, runtime.autocast(), fast_call)
    # a parameter without gradient on either side is not compared below, so it fails the check on its own
    without = sorted(n for n, _ in reference.named_parameters()
                     if n not in ref_grads or not ref_grads[n].any() or n not in fast_grads)
    compared = {n: g for n, g in ref_grads.items() if n not in without}
    diff = torch.sqrt(sum(((fast_grads[n] - g) ** 2).sum() for n, g in compared.items())).item()
    norm = torch.sqrt(sum((g ** 2).sum() for g in compared.values())).item()
    cosines = {n: torch.nn.functional.cosine_similarity(fast_grads[n].flatten(), g.flatten(), dim=0).item()
               for n, g in compared.items()}
    worst = min(cosines, key=cosines.get)
    documents = document_index(x, EOT_TOKEN)
    result = {
        "check": "fast path vs eager fp32", "model": args.model, "batch_size": args.batch_size,
        "seq_len": args.seq_len, "device": runtime.device_name(), "precision": runtime.precision,
        "compile": use_compile, "compile_mode": args.compile_mode, "fused_loss": kind == "fused",
        "gelu_fusion": gelu_fusion, "attention": runtime.attention, "recompute": args.recompute,
        "loss_fp32_eager": ref_loss, "loss_fast": fast_loss,
        "loss_rel_diff": abs(fast_loss - ref_loss) / abs(ref_loss), "grad_norm_fp32_eager": norm,
        "grad_rel_diff": diff / norm, "worst_grad_cosine": cosines[worst], "worst_grad_parameter": worst,
        "parameters_without_gradient": without, "loss_chunk_rows": args.loss_chunk_rows, "window": window,
        "documents_per_row": (documents[:, -1] - documents[:, 0] + 1).float().mean().item(),
    }
    if runtime.is_cuda and kind == "fused":
        result.update(check_loss_kernel(runtime.device, args.seed))
    if graphs_on:  # replayed micro-steps against eager ones
        batches = [check_batch(args.batch_size, args.seq_len, args.seed + i) for i in range(GRAPH_CHECK_MICRO_STEPS)]
        result.update(check_graph_gradients(fast_run, fast_call, runtime.autocast, batches, runtime.device))
    result["passed"] = bool(result["loss_rel_diff"] <= CHECK_LOSS_RTOL and result["grad_rel_diff"] <= CHECK_GRAD_RTOL
                            and not without and result.get("kernel_passed", True)
                            and result.get("graph_passed", True))
    print_fn(f"check {args.model} B={args.batch_size} T={args.seq_len} on {result['device']} "
             f"({runtime.precision}{', compiled ' + args.compile_mode if use_compile else ''}"
             f"{', fused loss' if kind == 'fused' else ''}{f', GELU fusion {gelu_fusion}' if gelu_fusion else ''}"
             f"{f', attention {runtime.attention}' if runtime.attention != 'auto' else ''}, "
             f"-r {args.recompute}) vs eager fp32: loss "
             f"{fast_loss:.6f} vs {ref_loss:.6f} (rel diff {result['loss_rel_diff']:.2e}, limit {CHECK_LOSS_RTOL:g}); "
             f"gradients rel diff {result['grad_rel_diff']:.2e} (limit {CHECK_GRAD_RTOL:g}), worst cosine "
             f"{cosines[worst]:.5f} ({worst}){'; no gradient: ' + ', '.join(without) if without else ''}"
             f"{graph_note(result)} => "
             f"{'PASS' if result['passed'] else 'FAIL'}")
    print_fn(json.dumps(result))
    return result


GRAPH_CHECK_MICRO_STEPS = 4  # --check --cuda-graphs 1: micro-batches accumulated per step, eager and replayed


def graph_note(result: dict) -> str:
    """The check line's part for --cuda-graphs 1: the replayed steps' gradients against the eager ones."""
    if "graph_passed" not in result:
        return ""
    worst = max(result["graph_grad_rel_diff"])
    return (f"; CUDA graph replays vs eager: gradients rel diff {worst:.2e} (eager run-to-run "
            f"{result['graph_grad_noise']:.2e}, limit {result['graph_grad_limit']:.0e}), loss "
            f"{max(result['graph_loss_rel_diff']):.2e}{'' if result['graph_passed'] else ' FAIL'}")


def exercise_every_path(model, seed: int) -> None:
    """--check compares gradients; a weight initialised to zero (the modern family's output projections and head,
    the frontier's gates, tables and the smear's weight) would leave what it multiplies without gradient at step 0,
    so the check would not see it. Such weights get small random values here (the check is about the arithmetic,
    not the initialisation)."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.copy_(0.02 * torch.randn(parameter.shape, generator=generator))


def check_batch(rows: int, length: int, seed: int) -> tuple:
    """--check's fixed batch: random tokens with an EOT about every 200 positions (so a document mask has several
    documents per row to separate) and the first quarter of row 0 without targets (as padding would leave it)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB_SIZE, (rows, length + 1), generator=generator)
    tokens[torch.rand(rows, length + 1, generator=generator) < 1 / 200] = EOT_TOKEN
    x, y = tokens[:, :-1], tokens[:, 1:].clone()
    y[0, : length // 4] = -1
    return x, y


# (columns per chunk, warps, programs per SM, lanewise, pipeline stages) timed by --check on CUDA
LOSS_KERNEL_LAUNCHES = ((4096, 8, 4, 0, 1), (4096, 8, 4, 0, 2), (4096, 8, 4, 0, 3), (4096, 4, 8, 0, 3),
                        (2048, 4, 8, 0, 3), (2048, 8, 4, 0, 3), (8192, 8, 2, 0, 2), (4096, 8, 2, 0, 3),
                        (4096, 16, 2, 0, 3), (4096, 8, 4, 1, 3), (4096, 4, 8, 1, 3), (2048, 4, 8, 1, 3),
                        (65536, 16, 1, 2, 1), (65536, 32, 1, 2, 1))  # the last two: a whole row per program


def check_loss_kernel(device: torch.device, seed: int, rows: int = 8192) -> dict:
    """The Triton loss kernel against its PyTorch reference on GPT-2-sized bf16 logits; every launch configuration
    in LOSS_KERNEL_LAUNCHES timed (ms per call and the memory bandwidth it implies, 2 bytes read + 2 written) and
    compared with the reference too. Only the default launch decides the check; another that fails to compile or
    run is recorded with its error."""
    import torch

    from llmpy.kernels.cross_entropy import kernel_launch_config, reference_loss_and_grad, triton_loss_and_grad_

    generator = torch.Generator(device=device).manual_seed(seed)
    logits = (2 * torch.randn(rows, PADDED_VOCAB_SIZE, generator=generator, device=device)).to(torch.bfloat16)
    targets = torch.randint(0, VOCAB_SIZE, (rows,), generator=generator, device=device)
    targets[::7] = -1
    ref_losses, ref_grad = reference_loss_and_grad(logits, targets, VOCAB_SIZE)
    grad = torch.empty_like(logits)
    default = kernel_launch_config(PADDED_VOCAB_SIZE)  # what training launches (LLMPY_LOSS_KERNEL or the default)
    losses = triton_loss_and_grad_(logits, targets, VOCAB_SIZE, out=grad, launch=default)
    loss_diff = (losses - ref_losses).abs().max().item()
    grad_diff = (grad.float() - ref_grad.float()).abs().max().item()
    timings = {}
    launches = [("reference", None)] + [(",".join(map(str, c)), c) for c in LOSS_KERNEL_LAUNCHES]
    trial = torch.empty_like(logits)
    for name, launch in launches:
        def call():
            if launch is None:
                return reference_loss_and_grad(logits, targets, VOCAB_SIZE)
            return triton_loss_and_grad_(logits, targets, VOCAB_SIZE, out=trial, launch=launch)
        trial.fill_(float("nan"))  # a launch that leaves cells unwritten shows as nan, not as the last one's values
        try:
            launch_losses = call()
            if launch is not None:
                timings[name] = {"loss_max_abs_diff": (launch_losses - ref_losses).abs().max().item(),
                                 "grad_max_abs_diff": (trial.float() - ref_grad.float()).abs().max().item()}
        except Exception as exc:  # e.g. a launch Triton cannot build for this GPU (out of resources)
            timings[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            if isinstance(exc, getattr(torch, "AcceleratorError", ())):  # a fault while running: the CUDA context
                break  # is lost, nothing more can run
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(10):
            call()
        end.record()
        torch.cuda.synchronize(device)
        ms = start.elapsed_time(end) / 10
        timings.setdefault(name, {}).update(ms=ms, tb_per_s=2 * logits.numel() * 2 / ms / 1e9)
    # the padded columns and the ignored rows get exactly zero; the rest within one bf16 rounding of the reference
    return {"kernel_rows": rows, "kernel_loss_max_abs_diff": loss_diff, "kernel_grad_max_abs_diff": grad_diff,
            "kernel_default_launch": ",".join(map(str, default)), "kernel_timings": timings,
            "kernel_passed": bool(loss_diff <= 1e-3 and grad_diff <= 2e-3
                                  and grad[:, VOCAB_SIZE:].abs().max().item() == 0
                                  and grad[::7].abs().max().item() == 0)}


def format_result(result: dict) -> str:
    mfu_text = f" | MFU {100 * result['mfu']:.1f}%" if result.get("mfu") is not None else ""
    memory = f" | peak {result['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in result else ""
    return (f"{result['model']} B={result['batch_size']} T={result['seq_len']} d={result['total_batch_size']:,} "
            f"(accum {result['grad_accum_steps']}, world {result['world_size']}) on {result['device']}: "
            f"{result['step_ms_median']:.1f} ms/step median | {result['tokens_per_sec']:,.0f} tok/s{mfu_text}{memory}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flag_arguments(parser, BENCH_FIELDS, BENCH_DEFAULTS)
    parser.add_argument("--steps", type=positive_int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=non_negative_int, default=5,
                        help="untimed warm-up steps, compilation included")
    parser.add_argument("--profile", metavar="DIR", default="", help="profile extra steps; trace + breakdown")
    parser.add_argument("--profile-steps", type=positive_int, default=2, help="steps profiled with --profile")
    parser.add_argument("--json", metavar="FILE", default="", help="also append the result as a JSON line here")
    parser.add_argument("--check", action="store_true",
                        help="instead of timing: compare the fast path's loss and gradients on one fixed batch of -b "
                             "rows with the eager fp32 model; exit 1 if they differ by more than bf16 tolerance")


def check_appendable(path: str) -> None:
    """Refuse a --json FILE that cannot be appended to before the bench runs, not after (nothing is written)."""
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise LlmpyError(f"--json {path}: cannot write ({exc.strerror or exc})") from None


def run(args: argparse.Namespace) -> int:
    from llmpy.distributed import launch_from_env

    bench_config(args, "-").validate(launch_from_env().world_size)  # a flag no step can take: one line, before work
    if args.json:
        check_appendable(args.json)
    if args.check:
        result = check_fast_path(args)
        if args.json:
            with open(args.json, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(result) + "\n")
        return 0 if result["passed"] else 1
    result = run_bench(args)
    if args.json and launch_from_env().rank == 0:
        with open(args.json, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(result) + "\n")
    return 0

