"""Shared by the device-call drivers (gpu_modern_runs.py, gpu_frontier.py): `llmpy train` runs in one process
(CUDA starts once per call), a check of whether the installed llmpy takes a command's flags at all, and each run's
metrics.jsonl summarised into one JSON-ready dict."""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import sys
from pathlib import Path

D12_65K = ["-e", "d12", "-b", "64", "-t", "1024", "-d", "65536", "-r", "0", "-s", "0", "--no-shuffle", "-m", "10",
           "--log-every", "10"]  # issue 16's runs (benchmarks/RESULTS.md): val over 10 x 64 x 1024 = 655,360 tokens


def corpus_flags(corpus: str | Path) -> list[str]:
    """-i/-j of the shared corpus as `llmpy prepare text --name corpus` writes it."""
    return ["-i", f"{corpus}/corpus_train_*.bin", "-j", f"{corpus}/corpus_val_*.bin"]


def train(argv: list[str], checkpoints: bool = False) -> int:
    """`llmpy train ARGV` in this process; the exit code it would give (its one-line errors printed as it prints
    them). Without `checkpoints` the run writes metrics.jsonl and main.log but no checkpoint: a benchmark reads only
    the metrics, and a d12 modern checkpoint is gigabytes to write and hash at every run's end."""
    from llmpy.cli import build_parser, main
    from llmpy.errors import LlmpyError
    from llmpy.flags import train_config_from_args
    from llmpy.train.build import build_trainer

    if checkpoints:
        return main(["train", *argv])
    try:
        config = train_config_from_args(build_parser().parse_args(["train", *argv]))
        config.validate(1)
        trainer = build_trainer(config)
        trainer.checkpoints = None  # the Trainer's "no -o" state for checkpoints; its logger still writes to -o
        trainer.fit()
    except SystemExit as exc:  # the argument parser's one-line error, already printed
        return int(exc.code or 0)
    except LlmpyError as exc:
        print(f"llmpy: error: {exc}", file=sys.stderr)
        return 2
    return 0


def refusal(argv: list[str]) -> str | None:
    """Why the installed llmpy refuses the command `argv` (["train", ...] or ["bench", ...]) before doing any work,
    or None when it takes it: an option it does not have, a bad value, an --arch switch or --optimizer-args setting it
    does not know (found by parsing, validating and building the optimizer over a 2-layer model of the family)."""
    import torch

    from llmpy.cli import build_parser
    from llmpy.errors import LlmpyError
    from llmpy.families import build_model, model_config
    from llmpy.flags import train_config_from_args
    from llmpy.train.optim import build_optimizer

    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = build_parser().parse_args(argv)
    except SystemExit:
        return errors.getvalue().strip().splitlines()[-1] if errors.getvalue().strip() else "refused by the parser"
    try:
        if args.command == "bench":
            from llmpy.bench import bench_config

            config = bench_config(args, "x.bin")
        else:
            config = train_config_from_args(args)
        config.validate(1)
        model = build_model(model_config(config.family, "d2w128", config.arch), config.family)
        build_optimizer(config.optimizer, model, torch.tensor(config.learning_rate), config.weight_decay,
                        config.optimizer_args)
    except LlmpyError as exc:
        return str(exc)
    except Exception as exc:  # a crash in building it: the run would crash too
        return f"{type(exc).__name__} while building a small model with these flags: {exc}"
    return None


def summary(run: Path) -> dict:
    """One run's metrics.jsonl in a few numbers. Training seconds as benchmarks/RESULTS.md counts them: the logged
    step times (the trainer's own clock, evaluations excluded), the first step, which holds torch.compile's work,
    counted at the median step time, its excess reported apart as `compile_s`. Steps after the first that took more
    than 3x the median (a recompilation, a schedule's new shape) stay counted and are listed in `slow_steps`.
    `val_tokens` / `val_seconds`: the training tokens and seconds before each val step, for curves against them."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    config = next((r for r in records if r["kind"] == "config"), {})
    steps = sorted((r for r in records if r["kind"] == "train"), key=lambda r: r["step"])
    losses = {r["step"]: r["loss"] for r in records if r["kind"] == "val"}
    val = {step: round(loss, 4) for step, loss in losses.items()}
    seconds = [r["step_ms"] / 1000 for r in steps]
    tokens = [r.get("tokens", 65536) for r in steps]  # each step's own (a batch-size schedule varies them)
    median = statistics.median(seconds[1:]) if len(seconds) > 1 else (seconds[0] if seconds else 0.0)
    counted = [median, *seconds[1:]] if seconds else []
    before = {r["step"]: (sum(tokens[:i]), sum(counted[:i])) for i, r in enumerate(steps)}
    before[len(steps)] = (sum(tokens), sum(counted))
    after_first = sum(seconds[1:])
    return {
        "device": config.get("device"), "torch": config.get("torch"), "num_parameters": config.get("num_parameters"),
        "val": val, "final_val": [max(val), losses[max(val)]] if val else None,
        "val_tokens": {step: before.get(step, (None,))[0] for step in val},
        "val_seconds": {step: round(before[step][1], 3) if step in before else None for step in val},
        "steps": [[r["step"], round(r["loss"], 4), round(r["grad_norm"], 4), r.get("tokens")] for r in steps],
        "tokens": sum(tokens),
        "first_step_s": round(seconds[0], 2) if seconds else None,
        "compile_s": round(seconds[0] - median, 2) if seconds else None,
        "train_s": round(sum(counted), 3),
        "train_s_after_first": round(after_first, 2),
        "tok_per_s": round(sum(tokens[1:]) / max(after_first, 1e-9)) if len(seconds) > 1 else None,
        "slow_steps": [[r["step"], round(s, 3)] for r, s in zip(steps[1:], seconds[1:]) if s > 3 * median],
    }
