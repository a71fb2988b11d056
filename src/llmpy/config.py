"""Typed configuration: model descriptors (d6..d48, any dN) and the training run, validated once."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path

from llmpy.errors import LlmpyError
from llmpy.gpt2 import BLOCK_SIZE, HUB_NAMES, PADDED_VOCAB_SIZE, VOCAB_SIZE
from llmpy.suggest import did_you_mean

# llm.c's widths for the GPT-2 family, keyed by depth; any other depth uses width 64 * depth (llm.c's dN rule).
_DEPTH_TO_WIDTH = {6: 384, 12: 768, 24: 1024, 36: 1280, 48: 1600}
# Hugging Face / OpenAI names for the same four checkpoints.
GPT2_NAMES = dict(zip(HUB_NAMES, ("d12", "d24", "d36", "d48")))
# torch.compile's modes, plus "tuned": the default mode with Inductor's coordinate-descent tuning of its kernels.
# The CUDA-graph modes (reduce-overhead, max-autotune) are left out: their graphs break on the accumulation step
# ("Gradient addition node due to multiple use of tensor", H100 2026-11-25), and the GPU idles only ~1.5% anyway.
COMPILE_MODES = ("default", "tuned", "max-autotune-no-cudagraphs")
# SDPA kernel preferences (--attention, see llmpy.attention); "auto" lets PyTorch pick per shape
# (fa4: FlashAttention-4, the flash-attn-4 package, Hopper/Blackwell: called directly on the packed q/k/v and through
# SDPA elsewhere; cudnn+fa4: cuDNN's forward kernel and FA4's backward on the packed q/k/v, PyTorch's choice
# elsewhere, and what auto becomes in bf16 on Hopper when flash-attn-4 is installed: llmpy.runtime.auto_attention)
ATTENTION_BACKENDS = ("auto", "flash", "cudnn", "efficient", "math", "fa4", "cudnn+fa4")
DESCRIPTOR_RE = re.compile(r"d(\d+)(?:w(\d+))?")
# what -e/--model may name, in one wording for help and errors
DESCRIPTOR_FORMS = "dN (d6, d12, d24, d36, d48, any depth N), dNwC (depth N, width C, a multiple of 64)"
MODEL_FILE_FORMS = ("an llmpy run directory or model_*.pt checkpoint, an llm.c model .bin, a Hugging Face GPT-2 "
                    "directory or llmpy's own (convert --to hf)")
HUB_FORMS = f"a hub name ({', '.join(HUB_NAMES)})"


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a GPT-2 model; `n_embd` must divide evenly into `n_head` heads."""

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = BLOCK_SIZE
    vocab_size: int = VOCAB_SIZE
    padded_vocab_size: int = PADDED_VOCAB_SIZE

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            if getattr(self, name) <= 0:
                raise LlmpyError(f"model config: {name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise LlmpyError(f"model config: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.padded_vocab_size < self.vocab_size:
            raise LlmpyError(
                f"model config: padded_vocab_size={self.padded_vocab_size} < vocab_size={self.vocab_size}"
            )

    @classmethod
    def from_descriptor(cls, descriptor: str, **overrides: int) -> "ModelConfig":
        """`d12` -> GPT-2 124M; `gpt2-medium` -> d24; any `dN` like llm.c; `dNwC` sets the width C too."""
        name = GPT2_NAMES.get(descriptor, descriptor)
        match = DESCRIPTOR_RE.fullmatch(name)
        if not match:
            raise LlmpyError(
                f"unknown model descriptor {descriptor!r}: use dN (d6, d12, d24, d36, d48, ...), dNwC "
                f"(depth N, width C, a multiple of 64) or one of {', '.join(GPT2_NAMES)}"
            )
        depth = int(match.group(1))
        if depth <= 0:
            raise LlmpyError(f"model descriptor {descriptor!r}: depth must be positive")
        width = int(match.group(2)) if match.group(2) else _DEPTH_TO_WIDTH.get(depth, 64 * depth)
        if width <= 0 or width % 64:
            raise LlmpyError(f"model descriptor {descriptor!r}: width must be a positive multiple of 64")
        # heads are 64 wide, except GPT-2 XL (1600 = 25 x 64)
        n_head = width // 64
        return cls(n_layer=depth, n_head=n_head, n_embd=width, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise LlmpyError(f"model config: unknown keys {sorted(unknown)}")
        return cls(**values)


LR_SCHEDULES = ("cosine", "linear", "constant", "wsd")
# -y 1 with -x past the end of a decaying LR schedule: "" refuses, else how to go on (llmpy.resume_rules)
EXTEND_SCHEDULE_MODES = ("", "final", "replan")
ZERO_STAGES = (0, 1, 3)  # DDP, sharded optimizer state (FSDP2 without resharding), FSDP2 full sharding
RECOMPUTE_LEVELS = (0, 1, 2, 3)  # none, GELU, GELU + LayerNorm (llm.c's levels), whole blocks
RECIPE_NAMES = ("classic", "modern", "frontier")  # their settings: llmpy.recipes.RECIPES
FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class TrainConfig:
    """One training run, validated once (`validate`) and never changed afterwards. Field names are the long CLI
    options; comments give llm.c's short flag. Values the run derives from it (the micro-batch auto-batch settles
    on, accumulation, steps) live in llmpy.train.step.BatchLayout, not here."""

    # the recipe: a named set of defaults for the fields below (llmpy.recipes); flags given explicitly win
    recipe: str = "classic"  # classic (GPT-2 + GPT-3 hyperparameters, as llm.c) | modern (Muon, rotary, ...) | frontier
    # data
    train_data: str = ""  # -i: shard glob of the training split
    val_data: str = ""  # -j: shard glob of the val split ("" = no val loss)
    shuffle: int = 1  # shuffle train shards and chunks per epoch (0 = llm.c's sequential order)
    overfit_batch: int = 0  # -a
    # model
    model: str = "d12"  # -e: descriptor (dN) or a checkpoint to start from
    family: str = "gpt2"  # model family of a fresh -e dN (llmpy.families): gpt2 | modern
    arch: str = ""  # the modern family's architecture switches, "name=value,..." ("" = its defaults)
    seq_len: int = 1024  # -t
    # batch
    batch_size: int = 4  # -b: micro-batch per process
    total_batch_size: int = -1  # -d: tokens per optimizer step (-1 = B*T*world, no accumulation)
    auto_batch: int = 1  # on CUDA: halve -b (more accumulation, same -d) until a step fits in memory
    batch_ramp: int = 0  # steps over which a step's tokens grow from one micro-step's to -d's (0 = off)
    seq_len_warmup: int = 0  # rows of T/4 for this many steps, then T/2 as long, then T (0 = off)
    batch_stages: str = ""  # "W1,W2,...": equal parts of the LR schedule's steps at -d x W_k / max(W) ("" = off)
    batch_stages_lr_power: float = 0.0  # the LR in stage k is multiplied by (W_k / W_1) ** this
    # optimizer and schedule
    optimizer: str = "adamw"  # see llmpy.train.optim.OPTIMIZERS
    optimizer_args: str = ""  # the optimizer's own settings, "name=value,..." (see its builder)
    learning_rate: float = 3e-4  # -l
    warmup_steps: int = 0  # -u
    final_lr_frac: float = 1.0  # -q: lr at the end as a fraction of -l
    lr_schedule: str = "cosine"  # -k
    wsd_cooldown_frac: float = 0.2  # fraction of steps spent decaying in the wsd schedule
    weight_decay: float = 0.0  # -c
    grad_clip: float = 1.0
    max_steps: int = -1  # -x: -1 = one epoch of the training data
    seed: int = 42
    # auxiliary losses (llmpy.frontier.aux_loss), off by default
    mtp_weights: str = ""  # multi-token prediction: weights of the tokens 2, 3, ... ahead, "w2,w3,..." ("" = off)
    prefix_loss: float = 0.0  # prefix-token prediction: weight of the longest-proper-prefix token (0 = off)
    aux_loss_until: float = 0.667  # both weights fall linearly to 0 at this fraction of the LR schedule's steps
    # faults
    skip_loss_zscore: float = 0.0  # -sl
    skip_grad_zscore: float = 0.0  # -sg
    max_bad_steps: int = 5  # stop after this many non-finite steps in a row (0 = never)
    # evaluation and sampling
    val_every: int = 20  # -v
    val_max_steps: int = 20  # -m: -1 = the whole val split
    sample_every: int = 20  # -s
    gen_tokens: int = 64  # -g
    sample_prompt: str = ""  # "" = start sampling from <|endoftext|>
    sample_top_k: int = 40
    hellaswag: int = 0  # -h
    hellaswag_file: str = ""  # "" = resolve (cache, then download)
    hellaswag_limit: int = -1  # -1 = all 10,042 examples
    tokenizer: str = ""  # path to gpt2.tiktoken ("" = resolve automatically)
    # checkpoints and logs
    output_dir: str = ""  # -o: run directory ("" = no files)
    checkpoint_every: int = 0  # -n
    checkpoint_keep: int = 0  # -nk
    checkpoint_keep_every: int = 0  # -nm
    resume: int = 0  # -y
    extend_schedule: str = ""  # -y 1 past the end of a decaying LR schedule: "final" | "replan" ("" = refused)
    overwrite: int = 0  # 1: a new run in an -o that holds another run's checkpoints moves that run aside
    log_every: int = 1
    tensorboard: str = ""  # TensorBoard log directory ("" = off)
    wandb: str = ""  # Weights & Biases project ("" = off)
    # execution: how the math runs, not what it is
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere) | bf16 | fp32
    tf32: int = 1  # -f
    zero_stage: int = 0  # -z
    recompute: int = 1  # -r
    compile: int = -1  # -1 = on for CUDA, off elsewhere
    compile_mode: str = "default"  # torch.compile mode, or "tuned" (default + Inductor's coordinate-descent tuning)
    fused_loss: int = -1  # head + cross-entropy in one kernel pass (-1 = on CUDA when Triton is there, 0 off, 1 on)
    loss_chunk_rows: int = 0  # the fused loss's logits this many rows at a time (0 = all rows of a micro-batch)
    gelu_fusion: int = -1  # -ge: GELU in the MLP matmuls' cuBLASLt epilogues (-1 auto, 0 off, 1 forward, 2 both)
    attention: str = "auto"  # SDPA kernel preference: auto | flash | cudnn | efficient | math
    cuda_graphs: int = 0  # 1: the steady-state micro-step as a captured CUDA graph (single-process CUDA)

    def validate(self, world_size: int = 1) -> "TrainConfig":
        """Fail fast, naming the flag, on values that cannot work; returns self."""
        def need(cond: bool, message: str) -> None:
            if not cond:
                raise LlmpyError(message)

        for f in dataclasses.fields(self):  # a NaN or inf anywhere can only train garbage
            value = getattr(self, f.name)
            need(not isinstance(value, float) or math.isfinite(value),
                 f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
            # numbers reach numpy and torch as int64 and float32 (the LR is a tensor): beyond those, a traceback
            need(not isinstance(value, float) or abs(value) <= FLOAT32_MAX,
                 f"--{f.name.replace('_', '-')} must be a finite number within float32's range (|x| <= 3.4e38), "
                 f"got {value}")
            need(not isinstance(value, int) or -2**63 <= value < 2**63,
                 f"--{f.name.replace('_', '-')} must be an integer in [-2**63, 2**63), got {value}")

        def at_least(flag: str, low: float, value) -> None:
            need(value >= low, f"{flag} must be >= {low}, got {value}")

        def one_of(flag: str, allowed, value) -> None:
            hint = did_you_mean(value, allowed) if isinstance(value, str) and value not in allowed else ""
            need(value in allowed, f"{flag} must be one of {', '.join(map(str, allowed))}, got {value!r}{hint}")

        one_of("--recipe", RECIPE_NAMES, self.recipe)
        need(bool(self.train_data), "-i/--train-data: no training data given (a shard glob, e.g. 'data/x_train_*.bin')")
        need(self.batch_size > 0, f"-b/--batch-size must be positive, got {self.batch_size}")
        need(self.seq_len > 0, f"-t/--seq-len must be positive, got {self.seq_len}")
        at_least("-l/--learning-rate", 0, self.learning_rate)
        at_least("-u/--warmup-steps", 0, self.warmup_steps)
        need(0.0 <= self.final_lr_frac <= 1.0, f"-q/--final-lr-frac must be in [0, 1], got {self.final_lr_frac}")
        one_of("-k/--lr-schedule", LR_SCHEDULES, self.lr_schedule)
        need(0.0 < self.wsd_cooldown_frac <= 1.0, f"--wsd-cooldown-frac must be in (0, 1], got {self.wsd_cooldown_frac}")
        at_least("-c/--weight-decay", 0, self.weight_decay)
        at_least("--batch-ramp", 0, self.batch_ramp)
        at_least("--seq-len-warmup", 0, self.seq_len_warmup)
        stages = batch_stage_list(self.batch_stages)  # raises on a bad list
        need(not (stages and self.batch_ramp),
             "--batch-stages and --batch-ramp are two batch-size schedules: give one of them")
        need(stages or not self.batch_stages_lr_power, "--batch-stages-lr-power ties the LR to the stages of "
             "--batch-stages, and no --batch-stages was given")
        mtp_weight_list(self.mtp_weights)  # raises on a bad list
        at_least("--prefix-loss", 0, self.prefix_loss)
        need(0.0 < self.aux_loss_until <= 1.0, f"--aux-loss-until must be in (0, 1], got {self.aux_loss_until}")
        need(not self.seq_len_warmup or self.seq_len % 4 == 0,
             f"--seq-len-warmup trains on rows of T/4 and T/2 first: -t/--seq-len must be a multiple of 4, got {self.seq_len}")
        # numpy's generators take 32-bit seeds; a negative or larger one would only fail later, deep in the loader
        need(0 <= self.seed < 2**32, f"--seed must be in [0, 2**32), got {self.seed}")
        need(self.grad_clip >= 0, f"--grad-clip must be >= 0 (0 = off), got {self.grad_clip}")
        need(self.max_steps == -1 or self.max_steps > 0, f"-x/--max-steps must be -1 (one epoch) or > 0, got {self.max_steps}")
        need(self.val_max_steps == -1 or self.val_max_steps > 0, f"-m/--val-max-steps must be -1 or > 0, got {self.val_max_steps}")
        need(self.hellaswag_limit == -1 or self.hellaswag_limit > 0,
             f"--hellaswag-limit must be -1 (all) or > 0, got {self.hellaswag_limit}")
        for flag, value in (("-v/--val-every", self.val_every), ("-s/--sample-every", self.sample_every),
                            ("-g/--gen-tokens", self.gen_tokens), ("-n/--checkpoint-every", self.checkpoint_every),
                            ("-nk/--checkpoint-keep", self.checkpoint_keep),
                            ("-nm/--checkpoint-keep-every", self.checkpoint_keep_every),
                            ("-sl/--skip-loss-zscore", self.skip_loss_zscore),
                            ("-sg/--skip-grad-zscore", self.skip_grad_zscore),
                            ("--max-bad-steps", self.max_bad_steps), ("--log-every", self.log_every),
                            ("--sample-top-k", self.sample_top_k), ("--loss-chunk-rows", self.loss_chunk_rows)):
            at_least(flag, 0, value)
        for flag, value in (("-y/--resume", self.resume), ("--overwrite", self.overwrite), ("-h/--hellaswag", self.hellaswag),
                            ("-a/--overfit-batch", self.overfit_batch), ("--shuffle", self.shuffle),
                            ("-f/--tf32", self.tf32), ("--auto-batch", self.auto_batch)):
            one_of(flag, (0, 1), value)
        need(self.extend_schedule in EXTEND_SCHEDULE_MODES, "--extend-schedule must be final or replan (or not given), "
             f"got {self.extend_schedule!r}")
        one_of("--dtype", ("auto", "bf16", "fp32"), self.dtype)
        one_of("-r/--recompute (0 none, 1 GELU, 2 GELU+LayerNorm, 3 whole blocks)", RECOMPUTE_LEVELS, self.recompute)
        one_of("--compile", (-1, 0, 1), self.compile)
        one_of("--compile-mode", COMPILE_MODES, self.compile_mode)
        one_of("--fused-loss (-1 on CUDA)", (-1, 0, 1), self.fused_loss)
        one_of("-ge/--gelu-fusion (-1 auto, 0 off, 1 forward, 2 forward and backward)", (-1, 0, 1, 2), self.gelu_fusion)
        one_of("--attention", ATTENTION_BACKENDS, self.attention)
        one_of("--cuda-graphs", (0, 1), self.cuda_graphs)
        one_of("-z/--zero-stage (0 DDP, 1 sharded optimizer state, 3 FSDP full sharding)", ZERO_STAGES, self.zero_stage)
        # raises on a -d that does not divide, or whose stages do not (auto-batch's smaller -b keeps them whole)
        stage_micro_steps(stages, self.grad_accum_steps(world_size), self.batch_size, self.seq_len, world_size)
        return self

    def tokens_per_micro_step(self, world_size: int = 1, batch_size: int | None = None) -> int:
        return (batch_size or self.batch_size) * self.seq_len * world_size

    def grad_accum_steps(self, world_size: int = 1, batch_size: int | None = None) -> int:
        """The one place `-d` turns into gradient accumulation: total // (B * T * world)."""
        batch_size = batch_size or self.batch_size
        per_micro_step = self.tokens_per_micro_step(world_size, batch_size)
        total = per_micro_step if self.total_batch_size == -1 else self.total_batch_size
        if total <= 0 or total % per_micro_step:
            raise LlmpyError(
                f"-d/--total-batch-size {total} is not a positive multiple of B*T*world = "
                f"{batch_size}*{self.seq_len}*{world_size} = {per_micro_step}"
            )
        return total // per_micro_step

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def aux_losses(self) -> bool:
        """Whether --mtp-weights or --prefix-loss add training terms."""
        return any(mtp_weight_list(self.mtp_weights)) or self.prefix_loss > 0


def mtp_weight_list(text: str) -> tuple[float, ...]:
    """--mtp-weights "0.5,0.25" -> (0.5, 0.25): the weights of the tokens 2, 3, ... ahead ("" -> none); each must
    be a finite number >= 0."""
    weights = []
    for item in text.split(",") if text.strip() else []:
        try:
            weight = float(item)
        except ValueError:
            weight = float("nan")
        if not (math.isfinite(weight) and 0 <= weight <= FLOAT32_MAX):
            raise LlmpyError(f"--mtp-weights takes comma-separated finite numbers >= 0 (e.g. 0.5,0.25), got {text!r}")
        weights.append(weight)
    return tuple(weights)


def batch_stage_list(text: str) -> tuple[int, ...]:
    """--batch-stages "1,2,3" -> (1, 2, 3): each stage's tokens per step relative to the others ("" -> none)."""
    if not text.strip():
        return ()
    items = [item.strip() for item in text.split(",")]
    if not all(item.isascii() and item.isdigit() and int(item) > 0 for item in items):
        raise LlmpyError(f"--batch-stages takes comma-separated whole numbers >= 1, each stage's share of -d (e.g. "
                         f"1,2,3: a third, two thirds, all of -d), got {text!r}")
    return tuple(int(item) for item in items)


def stage_micro_steps(stages: tuple[int, ...], accum: int, batch_size: int, seq_len: int,
                      world_size: int = 1) -> tuple[int, ...]:
    """Each --batch-stages stage's micro-steps, accum x W_k / max(W) (accum: -d's); an LlmpyError unless all are
    whole. () without stages."""
    if not stages:
        return ()
    largest = max(stages)
    if all(accum * w % largest == 0 for w in stages):
        return tuple(accum * w // largest for w in stages)
    needed = math.lcm(*(largest // math.gcd(w, largest) for w in stages))
    micro = batch_size * seq_len * world_size
    ranks = f" on {world_size} ranks" if world_size > 1 else ""
    raise LlmpyError(
        f"--batch-stages {','.join(map(str, stages))}: -d {accum * micro} -b {batch_size} -t {seq_len}{ranks} is "
        f"{accum} micro-step(s), and stage k trains {accum} x W_k / {largest} of them: stages "
        f"{','.join(map(str, stages))} need a multiple of {needed} (e.g. -d {-(-accum // needed) * needed * micro})")


def default_cache_dir() -> Path:
    """Where llmpy keeps downloaded resources: $LLMPY_CACHE, else ~/.cache/llmpy."""
    import os

    return Path(os.environ.get("LLMPY_CACHE") or Path.home() / ".cache" / "llmpy")


CONFIG_SUFFIXES = (".toml", ".yaml", ".yml")


def load_config_file(path: str | Path) -> dict:
    """Read a TOML (.toml) or YAML (.yaml/.yml) file of long option names -> values, keys as written (their names
    and the values' types are checked against the flags by llmpy.flags). Every way the file can be unusable is one
    LlmpyError naming it."""
    if str(path) == "":
        raise LlmpyError("--config: an empty path; give a .toml, .yaml or .yml file")
    path = Path(path)
    where = f"--config {path}"
    if path.is_dir():
        raise LlmpyError(f"{where}: is a directory, not a config file")
    if not path.exists():
        raise LlmpyError(f"{where}: no such file")
    if path.suffix not in CONFIG_SUFFIXES:
        raise LlmpyError(f"{where}: use a .toml, .yaml or .yml file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LlmpyError(f"{where}: cannot read ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LlmpyError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    values = _parse_config(text, path.suffix, where)
    if not isinstance(values, dict):
        raise LlmpyError(f"{where}: expected a mapping of option names to values, got a {type(values).__name__}")
    seen: dict[str, str] = {}  # TrainConfig field -> the key that named it
    for key in map(str, values):
        field = key.replace("-", "_")
        if field in seen:
            raise LlmpyError(f"{where}: {seen[field]} and {key} name the same option; keep one")
        seen[field] = key
    return {str(key): value for key, value in values.items()}


def _parse_config(text: str, suffix: str, where: str):
    """The TOML or YAML document in `text`; a syntax error is one line pointing at it."""
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            return tomllib.loads(text)
        import yaml

        values = yaml.safe_load(text)
        return {} if values is None else values
    except Exception as exc:  # a syntax error in the user's file: point at it, briefly
        reason = " ".join(str(exc).split())  # YAML's messages span lines, with a caret under the spot
        raise LlmpyError(f"{where}: cannot parse ({reason})") from None
