"""`llmpy bench`: the real training step (the code `llmpy train` runs: loader, model, compile, optimizer, clipping)
on random tokens, timed. Warm-up steps (compilation, autotuning) are excluded and each step is CUDA-synchronised, so
the median step time is what a long run will see. `--profile` adds a torch.profiler pass over a few more steps and
says where the GPU time goes: matmuls, attention, other kernels (Inductor's fused Triton code: LayerNorm, GELU,
residuals, cross-entropy), optimizer, communication, copies, and the time the GPU sat idle."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from llmpy.config import TrainConfig
from llmpy.data.shards import write_shard

# (category, substrings of CUDA kernel names), first match wins
KERNEL_CATEGORIES = (
    ("communication", ("nccl",)),
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
    rng = np.random.default_rng(seed)
    write_shard(directory / "bench_train_000001.bin", rng.integers(0, 50257, tokens))
    return str(directory / "bench_train_*.bin")


def bench_config(args: argparse.Namespace, train_data: str) -> TrainConfig:
    """A TrainConfig that trains and does nothing else: no eval, sampling, checkpoints or logs."""
    return TrainConfig(
        train_data=train_data, model=args.model, batch_size=args.batch_size, seq_len=args.seq_len,
        total_batch_size=args.total_batch_size, learning_rate=6e-4, warmup_steps=10, weight_decay=0.1,
        max_steps=args.warmup + args.steps + (args.profile_steps if args.profile else 0), val_every=0,
        sample_every=0, checkpoint_every=0, log_every=0, recompute=args.recompute, zero_stage=args.zero_stage,
        device=args.device, dtype=args.dtype, compile=args.compile, attention=args.attention,
        auto_batch=args.auto_batch, seed=args.seed,
    )


def run_bench(args: argparse.Namespace, print_fn=print) -> dict:
    """Build a trainer on random data, run warm-up then timed steps, optionally profile; returns the result."""
    from llmpy.train.build import build_trainer

    with tempfile.TemporaryDirectory(prefix="llmpy-bench-") as tmp:
        probe = TrainConfig(train_data="-", batch_size=args.batch_size, seq_len=args.seq_len,
                            total_batch_size=args.total_batch_size)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        step_tokens = probe.grad_accum_steps(world) * probe.tokens_per_micro_step(world)
        data = write_random_data(Path(tmp), 2 * step_tokens + 1)
        trainer = build_trainer(bench_config(args, data), print_fn=print_fn)
        say = trainer.print_fn  # silent on ranks other than 0
        device = trainer.runtime.device
        say(f"bench: {args.warmup} warm-up steps (compilation), then {args.steps} timed steps")
        for step in range(args.warmup):
            trainer.train_step(step)
        if trainer.runtime.is_cuda:
            torch.cuda.reset_peak_memory_stats(device)
        times, data_times = [], []
        for step in range(args.warmup, args.warmup + args.steps):
            stats = trainer.train_step(step)
            times.append(stats.seconds)
            data_times.append(stats.data_seconds)
        step_s = statistics.median(times)
        result = {
            "model": args.model, "num_parameters": trainer.raw_model.num_parameters(),
            "batch_size": trainer.config.batch_size, "seq_len": args.seq_len,
            "total_batch_size": trainer.tokens_per_step, "grad_accum_steps": trainer.grad_accum_steps,
            "world_size": trainer.job.world_size, "zero_stage": args.zero_stage, "recompute": args.recompute,
            "attention": args.attention,
            "compile": args.compile == 1 or (args.compile == -1 and trainer.runtime.is_cuda),
            "precision": trainer.runtime.precision, "device": trainer.runtime.device_name(),
            "steps": args.steps, "step_ms_median": 1000 * step_s, "step_ms_min": 1000 * min(times),
            "step_ms_max": 1000 * max(times), "data_ms_median": 1000 * statistics.median(data_times),
            "tokens_per_sec": trainer.tokens_per_step / step_s,
            "tokens_per_sec_per_gpu": trainer.tokens_per_step / step_s / trainer.job.world_size,
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


def profile_steps(trainer, first_step: int, steps: int, out_dir: Path, say) -> dict:
    """Profile `steps` training steps: a Chrome trace in `out_dir` and GPU time per kernel category."""
    from torch.profiler import ProfilerActivity, profile

    out_dir.mkdir(parents=True, exist_ok=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.runtime.is_cuda else [])
    wall = 0.0
    with profile(activities=activities) as prof:
        for step in range(first_step, first_step + steps):
            wall += trainer.train_step(step).seconds
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


def format_result(result: dict) -> str:
    mfu_text = f" | MFU {100 * result['mfu']:.1f}%" if result.get("mfu") is not None else ""
    memory = f" | peak {result['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in result else ""
    return (f"{result['model']} B={result['batch_size']} T={result['seq_len']} d={result['total_batch_size']:,} "
            f"(accum {result['grad_accum_steps']}, world {result['world_size']}) on {result['device']}: "
            f"{result['step_ms_median']:.1f} ms/step median | {result['tokens_per_sec']:,.0f} tok/s{mfu_text}{memory}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-e", default="d12", help="dN, dNwC or gpt2[-medium,-large,-xl] (d12)")
    parser.add_argument("-b", "--batch-size", type=int, default=32, help="micro-batch per GPU (32)")
    parser.add_argument("-t", "--seq-len", type=int, default=1024)
    parser.add_argument("-d", "--total-batch-size", type=int, default=524288, help="tokens per step (524288)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps, compilation included (5)")
    parser.add_argument("-r", "--recompute", type=int, default=1, help="0 none, 1 GELU, 2 +LayerNorm, 3 blocks")
    parser.add_argument("-z", "--zero-stage", type=int, default=0)
    parser.add_argument("--compile", type=int, default=-1, help="-1 on CUDA, 0 off, 1 on")
    parser.add_argument("--attention", default="auto", help="auto | flash | cudnn | efficient | math")
    parser.add_argument("--auto-batch", type=int, default=0, help="1: halve -b until it fits (off in bench)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--profile", metavar="DIR", default="", help="profile extra steps; trace + breakdown")
    parser.add_argument("--profile-steps", type=int, default=2)
    parser.add_argument("--json", metavar="FILE", default="", help="also append the result as a JSON line here")


def run(args: argparse.Namespace) -> int:
    result = run_bench(args)
    if args.json and int(os.environ.get("RANK", "0")) == 0:
        with open(args.json, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(result) + "\n")
    return 0

