"""`llmpy plan`: wall time, GPU-hours and cost of a training run before paying for it, beside llm.c's numbers."""

from __future__ import annotations

import argparse
import json
import math
import re
import dataclasses
from dataclasses import asdict, dataclass, field

from llmpy.argtypes import fraction, non_negative_float, positive_float, positive_int
from llmpy.config import ModelConfig
from llmpy.errors import LlmpyError
from llmpy.gpt2 import BLOCK_SIZE
from llmpy.metrics.mfu import known_gpus, parameter_count, peak_flops, training_flops_per_token
from llmpy.metrics.units import format_duration
from llmpy.suggest import did_you_mean



@dataclass(frozen=True)
class Measured:
    """One measured classic step: `llmpy bench -t 1024 -d 524288` (compiled bf16, fused loss) on one GPU."""

    gpu: str
    model: str
    tokens_per_sec: float
    flags: str  # the micro-batch and recompute that were measured
    date: str
    seq_len: int = 1024
    gelu_fusion: bool = False  # measured with -ge 2 (GELU in the MLP matmuls' epilogues)


# benchmarks/RESULTS.md: "Larger models (call D ...)" (H100 SXM, 2026-11-25) and "GELU in the matmul epilogues"
# (H200, 2026-12-02, GELU fusion on: -ge 2).
# Throughput for a measured GPU and model is taken as measured; other models on a measured GPU take the MFU of its
# measured model nearest in size; other GPUs take the MFU of the nearest H200 row, at their own peak.
MEASURED_RUNS = (
    Measured("H200", "d12", 590_228.0, "-b 64 -r 0", "2026-12-02", gelu_fusion=True),
    Measured("H200", "d24", 225_356.0, "-b 64 -r 0", "2026-12-02", gelu_fusion=True),
    Measured("H200", "d36", 103_161.0, "-b 64 -r 0", "2026-12-02", gelu_fusion=True),
    Measured("H200", "d48", 53_211.0, "-b 32 -r 0", "2026-12-02", gelu_fusion=True),
    Measured("H100", "d12", 545_470.0, "-b 128 -r 0", "2026-11-25"),
    Measured("H100", "d24", 204_900.0, "-b 64 -r 0", "2026-11-25"),
    Measured("H100", "d36", 92_572.0, "-b 32 -r 1", "2026-11-25"),
    Measured("H100", "d48", 48_819.0, "-b 16 -r 0", "2026-11-25"),
)
REFERENCE_GPU = "H200"  # whose rows derive GPUs without measurements of their own
# Measured (benchmarks/RESULTS.md, "The modern recipe", 2026-12-02, one H200): d12, B=64, T=1024, -d 65536, compiled
# bf16, the classic recipe (fused loss) and the modern one in two calls. The modern recipe's throughput is taken as
# this ratio of the classic one; its token need as a tenth of the classic run's (it reached the classic 300-step val
# loss in 30 steps there; the published speedrun needs ~1/25 of llm.c's 10B tokens at full scale).
# The classic step has since become faster by GELU fusion (-ge 2, which the modern family's ReLU^2 MLP does not
# use): d12 -b 64 -r 0 590,228 tok/s against 574,354 and 575,651 without it, in one H200 call; the ratio is divided by it.
MODERN_MEASURED = {"gpu": "H200", "classic_tok_per_sec": 546_942.0, "modern_tok_per_sec": 504_139.0,
                   "token_ratio": 0.1, "date": "2026-12-02", "classic_speedup_since": 590_228.0 / 575_002.5}
# The frontier recipe. Its throughput is NOT measured yet: while `tok_per_sec_vs_modern` is None the modern recipe's
# measured throughput (MODERN_MEASURED) stands in for it. Once measured, set it to the frontier recipe's tok/s over
# the modern recipe's, d12, both in one call on one GPU (benchmarks/gpu_frontier.py matched), with that GPU and date.
FRONTIER_MEASURED = {"tok_per_sec_vs_modern": None, "gpu": None, "date": None}
# Published, not measured here: the NanoGPT speedrun's record of July 2026 (prefix-token prediction / FP8
# down-projection, 8xH100) reached val 3.28 on FineWeb in ~0.34B tokens against llm.c's 10B (issue 27); the frontier
# recipe's default token budget is the classic default scaled by that ratio.
FRONTIER_PUBLISHED = {"tokens": 0.34e9, "baseline_tokens": 10e9, "val_loss": 3.28,
                      "record": "NanoGPT speedrun, 8xH100 record, July 2026"}
# Measured (benchmarks/RESULTS.md, "FlashAttention-4's backward pass", 2026-12-02, one H200, each pair in one call):
# the classic step with flash-attn-4 installed (--attention auto -> cudnn+fa4 on Hopper) against cuDNN alone. The
# rows above are cuDNN's (the default install); a plan on Hopper says what the package adds, without counting it.
FA4_SPEEDUP = {"d12": 598_826.0 / 578_250.0, "d24": 228_910.0 / 221_215.0, "d36": 107_190.0 / 103_820.0,
               "d48": 54_088.0 / 52_706.0}
# Assumed on-demand cloud prices in $ per GPU-hour (rough list prices, not quotes): pass --price-per-gpu-hour.
DEFAULT_PRICE_PER_GPU_HOUR = {"H100": 2.99, "H200": 3.79, "A100": 1.29, "B200": 5.99, "L40S": 1.25, "L4": 0.80,
                              "A10G": 1.01, "A10": 0.75}
DEFAULT_MULTI_GPU_EFFICIENCY = 0.9  # assumed throughput per GPU with N > 1 GPUs, relative to one GPU
PLAN_RECIPES = ("classic", "modern", "frontier")
LLMC_BATCH_TOKENS = 524_288  # llm.c's tokens per step for GPT-2 (2**19, the GPT-3 paper's 0.5M)
_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


@dataclass(frozen=True)
class Reference:
    """A published llm.c data point."""

    name: str
    gpus: str
    tokens: float
    seconds: float
    cost: float | None
    source: str


# llm.c discussion #481 (GPT-2 124M in 90 minutes for $20) and llm.c's README (8xH100: ~140 ms per 524,288-token step)
LLMC_REFERENCES = (
    Reference("llm.c GPT-2 124M", "8x A100 80GB", 10e9, 90 * 60, 20.0,
              "~90 min, ~$20 on an ~$14/hr 8xA100 node (at $1.29/GPU-hr it would be ~$15)"),
    Reference("llm.c GPT-2 124M", "8x H100", 10e9, math.ceil(10e9 / LLMC_BATCH_TOKENS) * 0.140, None,
              "140 ms per 524,288-token step, 10B tokens"),
)


@dataclass
class PlanInputs:
    """What to estimate: a model, a token budget and the hardware."""

    model: str = "d12"
    tokens: float = 10e9
    gpu: str = "H100"
    gpus: int = 1
    seq_len: int = BLOCK_SIZE
    total_batch_size: int = LLMC_BATCH_TOKENS
    tok_per_sec: float | None = None  # per GPU, measured
    mfu: float | None = None  # fraction of peak, instead of tok_per_sec
    price_per_gpu_hour: float | None = None
    scaling_efficiency: float | None = None
    recipe: str = "classic"  # classic | modern | frontier (llmpy.recipes)
    tokens_given: bool = True  # False: `tokens` is the default budget, which the modern and frontier recipes scale


@dataclass
class Plan:
    """The estimate and every number that went into it."""

    inputs: PlanInputs
    num_parameters: int
    flops_per_token: float
    peak_flops: float | None
    tok_per_sec_per_gpu: float
    tok_per_sec_total: float
    mfu: float | None
    scaling_efficiency: float
    steps: int
    seconds_per_step: float
    seconds: float
    gpu_hours: float
    price_per_gpu_hour: float | None
    cost: float | None
    assumptions: list[str] = field(default_factory=list)


def parse_token_count(text: str, flag: str = "--tokens") -> float:
    """'10B' -> 1e10, '500M', '1.5T', '2e9', '65536' (suffixes K/M/B(G)/T, powers of 1000)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMBGT]?)\s*", str(text), re.IGNORECASE)
    if not match:
        raise LlmpyError(f"{flag} {text!r}: expected a number with an optional K/M/B/T suffix, e.g. 10B")
    value = float(match.group(1)) * _SUFFIXES[match.group(2).upper()]
    if not math.isfinite(value):
        raise LlmpyError(f"{flag} {text!r}: must be a finite number")
    if value <= 0:
        raise LlmpyError(f"{flag} {text!r}: must be positive")
    return value


def _check(inputs: PlanInputs) -> None:
    """Fail on values that cannot describe a run, naming the flag."""
    if inputs.gpus <= 0:
        raise LlmpyError(f"--gpus must be positive, got {inputs.gpus}")
    if inputs.seq_len <= 0:
        raise LlmpyError(f"-t/--seq-len must be positive, got {inputs.seq_len}")
    if inputs.total_batch_size <= 0:
        raise LlmpyError(f"--total-batch-size must be positive, got {inputs.total_batch_size}")
    if inputs.tok_per_sec is not None and inputs.mfu is not None:
        raise LlmpyError("--tok-per-sec and --mfu both given: pass one (a measured tok/s wins over an assumed MFU)")
    if inputs.tok_per_sec is not None and inputs.tok_per_sec <= 0:
        raise LlmpyError(f"--tok-per-sec must be positive, got {inputs.tok_per_sec}")
    if inputs.mfu is not None and not 0 < inputs.mfu <= 1:
        raise LlmpyError(f"--mfu is a fraction in (0, 1], got {inputs.mfu}")
    if inputs.scaling_efficiency is not None and not 0 < inputs.scaling_efficiency <= 1:
        raise LlmpyError(f"--scaling-efficiency must be in (0, 1], got {inputs.scaling_efficiency}")
    if inputs.recipe not in PLAN_RECIPES:
        raise LlmpyError(f"--recipe must be classic, modern or frontier, got {inputs.recipe!r}")
    if inputs.price_per_gpu_hour is not None and inputs.price_per_gpu_hour < 0:
        raise LlmpyError(f"--price-per-gpu-hour must be >= 0, got {inputs.price_per_gpu_hour}")


def _gpu_key(gpu: str, keys) -> str | None:
    """The longest of `keys` that is a whole word of `gpu` ('H100' in 'H100 SXM'), or None."""
    name = gpu.upper()
    for key in sorted(keys, key=len, reverse=True):
        if re.search(rf"(?<![A-Z0-9]){re.escape(key)}(?![A-Z0-9])", name):
            return key
    return None


def run_mfu(run: Measured) -> float:
    """MFU of a measured run by the 6N + 6LCT formula that derives every other setup."""
    config = ModelConfig.from_descriptor(run.model)
    return run.tokens_per_sec * training_flops_per_token(config, run.seq_len) / peak_flops(run.gpu)


def reference_run(gpu: str, config: ModelConfig, seq_len: int) -> tuple[Measured, bool]:
    """The measured run a plan for `config` on `gpu` rests on, and whether it is that very setup: the same GPU and
    model at the measured sequence length; else the same GPU's (or, for an unmeasured GPU, the H200's) measured
    model nearest in parameter count."""
    measured_gpu = _gpu_key(gpu, {run.gpu for run in MEASURED_RUNS})
    rows = [run for run in MEASURED_RUNS if run.gpu == (measured_gpu or REFERENCE_GPU)]
    for run in rows:
        if measured_gpu and ModelConfig.from_descriptor(run.model) == config and run.seq_len == seq_len:
            return run, True
    size = parameter_count(config)
    nearest = min(rows, key=lambda run: abs(math.log(parameter_count(ModelConfig.from_descriptor(run.model)) / size)))
    return nearest, False


def _per_gpu_throughput(inputs: PlanInputs, config: ModelConfig, flops: float, peak: float | None,
                        notes: list[str]) -> float:
    """Tokens/s per GPU: given, from a given MFU, measured for this GPU and model, or derived from the MFU of the
    nearest measured run."""
    if inputs.tok_per_sec is not None:
        notes.append(f"{inputs.tok_per_sec:,.0f} tok/s per GPU as given (--tok-per-sec)")
        return inputs.tok_per_sec
    if peak is None:
        raise LlmpyError(f"--gpu {inputs.gpu}: no peak FLOP/s known for this GPU"
                         f"{did_you_mean(inputs.gpu.upper(), known_gpus())} (known: {', '.join(known_gpus())}); "
                         "pass --tok-per-sec (measured) for another")
    if inputs.mfu is not None:
        notes.append(f"MFU {inputs.mfu:.1%} as given (--mfu) of {peak / 1e12:,.0f} TFLOP/s dense bf16 peak")
        return inputs.mfu * peak / flops
    run, exact = reference_run(inputs.gpu, config, inputs.seq_len)
    source = (f"{run.model} on one {run.gpu}, `llmpy bench -e {run.model} -t {run.seq_len} -d {LLMC_BATCH_TOKENS} {run.flags}`, {run.tokens_per_sec:,.0f} tok/s, compiled "
              f"bf16, {run.date}, benchmarks/RESULTS.md")
    if exact:
        per_gpu = run.tokens_per_sec
        notes.append(f"classic throughput measured: {source}")
    else:
        per_gpu = run_mfu(run) * peak / flops
        notes.append(f"classic throughput derived at the MFU ({run_mfu(run):.1%}) of the nearest measured run: "
                     f"{source} (pass --tok-per-sec or --mfu when you know better)")
    fa4 = FA4_SPEEDUP.get(run.model)
    if fa4 is not None and _gpu_key(inputs.gpu, {"H100", "H200"}) and inputs.recipe == "classic":  # Hopper only
        notes.append(f"not counted: with the flash-attn-4 package installed (llmpy's fa4 extra), attention becomes "
                     f"cudnn+fa4, measured {100 * (fa4 - 1):+.1f}% for {run.model} on one H200")
    if inputs.recipe in ("modern", "frontier"):
        speedup = MODERN_MEASURED["classic_speedup_since"] if run.gelu_fusion else 1.0
        ratio = MODERN_MEASURED["modern_tok_per_sec"] / MODERN_MEASURED["classic_tok_per_sec"] / speedup
        m = MODERN_MEASURED
        measured = (f"as measured for d12 on one {m['gpu']} ({m['modern_tok_per_sec']:,.0f} vs "
                    f"{m['classic_tok_per_sec']:,.0f} tok/s, {m['date']})"
                    + (f", less the {100 * (speedup - 1):.1f}% GELU fusion later gave the classic step (the modern "
                       f"MLP has no GELU)" if run.gelu_fusion else ""))
        if inputs.recipe == "modern":
            notes.append(f"modern recipe: {ratio:.3f} of the classic throughput, {measured}")
        elif FRONTIER_MEASURED["tok_per_sec_vs_modern"] is None:
            notes.append(f"frontier throughput not yet measured: modern's measured {ratio:.3f} of the classic "
                         f"throughput used, {measured}")
        else:
            vs_modern = FRONTIER_MEASURED["tok_per_sec_vs_modern"]
            notes.append(f"frontier recipe: {vs_modern:.3f} of the modern recipe's throughput, as measured for d12 on "
                         f"one {FRONTIER_MEASURED['gpu']} ({FRONTIER_MEASURED['date']}), times modern's {ratio:.3f} "
                         f"of the classic throughput, {measured}")
            ratio *= vs_modern
        per_gpu *= ratio
    return per_gpu


def make_plan(inputs: PlanInputs) -> Plan:
    """Steps, wall time, GPU-hours and cost of training `inputs.model` on `inputs.tokens` tokens."""
    _check(inputs)
    try:
        config = ModelConfig.from_descriptor(inputs.model)
    except LlmpyError as exc:
        raise LlmpyError(f"--model: {exc}") from None
    if inputs.seq_len > config.block_size:
        raise LlmpyError(f"-t/--seq-len {inputs.seq_len} exceeds the model's {config.block_size} positions")
    num_parameters = parameter_count(config)
    flops = training_flops_per_token(config, inputs.seq_len)
    peak = peak_flops(inputs.gpu)
    notes: list[str] = []
    if inputs.recipe == "modern" and not inputs.tokens_given:
        inputs = dataclasses.replace(inputs, tokens=inputs.tokens * MODERN_MEASURED["token_ratio"])
        notes.append(f"modern recipe: {inputs.tokens / 1e9:g}B tokens, a tenth of the classic default (measured on a "
                     f"15.6M-token corpus at d12 size; unmeasured at this scale, where the published speedrun needs "
                     f"~1/25): pass --tokens for your own budget")
    if inputs.recipe == "frontier" and not inputs.tokens_given:
        published = FRONTIER_PUBLISHED
        scale = published["tokens"] / published["baseline_tokens"]
        inputs = dataclasses.replace(inputs, tokens=inputs.tokens * scale)
        notes.append(f"frontier recipe: {inputs.tokens / 1e9:g}B tokens, the classic default scaled by the published "
                     f"~{published['tokens'] / 1e9:g}B tokens to val {published['val_loss']} of the "
                     f"{published['record']} (llm.c: {published['baseline_tokens'] / 1e9:g}B); this token count is "
                     f"published, not measured here: pass --tokens for your own budget")
    per_gpu = _per_gpu_throughput(inputs, config, flops, peak, notes)
    efficiency = inputs.scaling_efficiency
    if efficiency is None:
        efficiency = 1.0 if inputs.gpus == 1 else DEFAULT_MULTI_GPU_EFFICIENCY
        if inputs.gpus > 1:
            notes.append(f"scaling efficiency {efficiency:.0%} on {inputs.gpus} GPUs (assumed; --scaling-efficiency)")
    total = per_gpu * inputs.gpus * efficiency
    seconds = inputs.tokens / total
    gpu_hours = seconds * inputs.gpus / 3600
    price = inputs.price_per_gpu_hour
    if price is None:
        price = _default_price(inputs.gpu)
        if price is None:
            notes.append(f"no default price for {inputs.gpu}: pass --price-per-gpu-hour for a cost")
        else:
            notes.append(f"${price:.2f} per GPU-hour for {inputs.gpu} (assumed on-demand price; --price-per-gpu-hour)")
    return Plan(
        inputs=inputs, num_parameters=num_parameters, flops_per_token=flops, peak_flops=peak,
        tok_per_sec_per_gpu=per_gpu, tok_per_sec_total=total, mfu=per_gpu * flops / peak if peak else None,
        scaling_efficiency=efficiency, steps=math.ceil(inputs.tokens / inputs.total_batch_size),
        seconds_per_step=inputs.total_batch_size / total, seconds=seconds, gpu_hours=gpu_hours,
        price_per_gpu_hour=price, cost=gpu_hours * price if price is not None else None, assumptions=notes,
    )


def _default_price(gpu: str) -> float | None:
    """The assumed price of the longest table key that is a whole word of `gpu` (A100 in 'A100 80GB')."""
    key = _gpu_key(gpu, DEFAULT_PRICE_PER_GPU_HOUR)
    return None if key is None else DEFAULT_PRICE_PER_GPU_HOUR[key]


def format_plan(plan: Plan) -> str:
    """This plan beside llm.c's published runs, then the assumptions."""
    i = plan.inputs
    columns = [(f"this plan: {i.model} on {i.gpus}x {i.gpu}", i.tokens, plan.tok_per_sec_total,
                LLMC_BATCH_TOKENS / plan.tok_per_sec_total * 1000, plan.seconds, plan.gpu_hours, plan.cost)]
    for ref in LLMC_REFERENCES:
        gpus = int(ref.gpus.split("x")[0])
        columns.append((f"{ref.name}, {ref.gpus}", ref.tokens, ref.tokens / ref.seconds,
                        LLMC_BATCH_TOKENS / (ref.tokens / ref.seconds) * 1000, ref.seconds,
                        ref.seconds * gpus / 3600, ref.cost))
    rows = [("", [c[0] for c in columns]),
            ("tokens", [f"{c[1] / 1e9:,.2f}B" for c in columns]),
            ("tok/s (all GPUs)", [f"{c[2]:,.0f}" for c in columns]),
            (f"ms / {LLMC_BATCH_TOKENS:,} tokens", [f"{c[3]:,.0f}" for c in columns]),
            ("wall time", [format_duration(c[4]) for c in columns]),
            ("GPU-hours", [f"{c[5]:,.1f}" for c in columns]),
            ("cost", ["-" if c[6] is None else f"${c[6]:,.2f}" for c in columns])]
    widths = [max(len(row[1][k]) for row in rows) for k in range(len(columns))]
    table = [f"{label:<21}" + "  ".join(cell.rjust(width) for cell, width in zip(cells, widths))
             for label, cells in rows]
    head = (f"{i.model}: {plan.num_parameters:,} parameters, {plan.flops_per_token / 1e9:.3f} GFLOP/token (6N+6LCT, "
            f"T={i.seq_len}) | {plan.steps:,} steps of {i.total_batch_size:,} tokens | "
            f"{plan.tok_per_sec_per_gpu:,.0f} tok/s per GPU" + (f" ({plan.mfu:.1%} MFU)" if plan.mfu else ""))
    refs = [f"  {ref.name}, {ref.gpus}: {ref.source}" for ref in LLMC_REFERENCES]
    return "\n".join([head, "", *table, "", "llm.c reference points:", *refs, "assumptions:",
                      *(f"  - {note}" for note in plan.assumptions)])


def explain(plan: Plan) -> str:
    """The formulas with this plan's numbers substituted."""
    i, config = plan.inputs, ModelConfig.from_descriptor(plan.inputs.model)
    lines = [
        f"N (parameters, llm.c count)  = {plan.num_parameters:,}",
        f"FLOPs/token = 6N + 6*L*C*T   = 6*{plan.num_parameters:,} + 6*{config.n_layer}*{config.n_embd}*{i.seq_len}"
        f" = {plan.flops_per_token:,.0f}",
    ]
    if i.tok_per_sec is None and plan.peak_flops:
        lines.append(f"tok/s per GPU = MFU * peak / FLOPs/token = {plan.mfu:.4f} * {plan.peak_flops:.4g} / "
                     f"{plan.flops_per_token:,.0f} = {plan.tok_per_sec_per_gpu:,.0f}")
    lines += [
        f"tok/s total = per GPU * GPUs * efficiency = {plan.tok_per_sec_per_gpu:,.0f} * {i.gpus} * "
        f"{plan.scaling_efficiency:g} = {plan.tok_per_sec_total:,.0f}",
        f"steps = ceil(tokens / total batch) = ceil({i.tokens:,.0f} / {i.total_batch_size:,}) = {plan.steps:,}",
        f"time = tokens / tok/s total = {i.tokens:,.0f} / {plan.tok_per_sec_total:,.0f} = {plan.seconds:,.1f} s "
        f"({format_duration(plan.seconds)})",
        f"GPU-hours = time * GPUs / 3600 = {plan.seconds:,.1f} * {i.gpus} / 3600 = {plan.gpu_hours:,.2f}",
    ]
    if plan.cost is not None:
        lines.append(f"cost = GPU-hours * $/GPU-hour = {plan.gpu_hours:,.2f} * {plan.price_per_gpu_hour:g} "
                     f"= ${plan.cost:,.2f}")
    return "\n".join(lines)


def plan_json(plan: Plan) -> dict:
    """Everything in the plan as one JSON-ready dict."""
    record = asdict(plan)
    record["references"] = [asdict(ref) for ref in LLMC_REFERENCES]
    return record


# ------------------------------------------------------------------------------------------------------------ CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `llmpy plan`."""
    parser.add_argument("--model", default="d12", help="dN, dNwC or gpt2, gpt2-medium, ... (default: d12)")
    parser.add_argument("--tokens", default=None,
                        help="training tokens, e.g. 10B, 500M (default: 10B; with --recipe modern, 1B; with "
                             "--recipe frontier, 0.34B, the speedrun's published count)")
    parser.add_argument("--recipe", default="classic", choices=list(PLAN_RECIPES),
                        help="classic (llm.c's GPT-2 recipe), modern (its measured throughput and token need) or "
                             "frontier (modern's throughput until its own is measured; the speedrun's published "
                             "token count) (default: classic)")
    parser.add_argument("--gpu", default="H100", help="GPU type: H100, H200, A100, B200, L4, ... (default: H100)")
    parser.add_argument("--gpus", type=positive_int, default=1, help="number of GPUs (default: 1)")
    parser.add_argument("--price-per-gpu-hour", type=non_negative_float, default=None, metavar="USD",
                        help="$ per GPU-hour (default: an assumed on-demand price per GPU type, printed)")
    throughput = parser.add_mutually_exclusive_group()
    throughput.add_argument("--tok-per-sec", type=positive_float, default=None, metavar="X",
                            help="measured tokens/s per GPU (default: the measured run of this GPU and model, else derived from the nearest measured run's MFU)")
    throughput.add_argument("--mfu", type=fraction, default=None, metavar="X", help="assumed MFU, a fraction (0.4)")
    parser.add_argument("-t", "--seq-len", type=positive_int, default=BLOCK_SIZE,
                        help=f"sequence length (default: {BLOCK_SIZE})")
    parser.add_argument("--total-batch-size", type=positive_int, default=LLMC_BATCH_TOKENS,
                        help=f"tokens per step (default: {LLMC_BATCH_TOKENS})")
    parser.add_argument("--scaling-efficiency", type=fraction, default=None, metavar="X",
                        help=f"per-GPU throughput kept on N GPUs (default: 1.0 for one, {DEFAULT_MULTI_GPU_EFFICIENCY} "
                             "for more)")
    parser.add_argument("--explain", action="store_true", help="print the formulas with the numbers substituted")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def run(args: argparse.Namespace) -> int:
    """Estimate and print the plan."""
    inputs = PlanInputs(
        model=args.model, tokens=parse_token_count(args.tokens or "10B"), tokens_given=args.tokens is not None,
        recipe=args.recipe, gpu=args.gpu, gpus=args.gpus, seq_len=args.seq_len,
        total_batch_size=args.total_batch_size, tok_per_sec=args.tok_per_sec, mfu=args.mfu,
        price_per_gpu_hour=args.price_per_gpu_hour, scaling_efficiency=args.scaling_efficiency,
    )
    plan = make_plan(inputs)
    if args.json:
        record = plan_json(plan)
        if args.explain:
            record["explain"] = explain(plan).splitlines()
        print(json.dumps(record))
        return 0
    print(format_plan(plan))
    if args.explain:
        print("\n" + explain(plan))
    return 0
