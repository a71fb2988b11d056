"""Typed configuration: model descriptors (d6..d48, any dN) and the training run, validated once."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from llmpy.errors import LlmpyError

GPT2_VOCAB_SIZE = 50257
# llm.c pads the vocab to a multiple of 128 so the lm_head matmul tiles evenly; the padded rows are never predicted.
GPT2_PADDED_VOCAB_SIZE = 50304
GPT2_BLOCK_SIZE = 1024

# llm.c's widths for the GPT-2 family, keyed by depth; any other depth uses width 64 * depth (llm.c's dN rule).
_DEPTH_TO_WIDTH = {6: 384, 12: 768, 24: 1024, 36: 1280, 48: 1600}
# Hugging Face / OpenAI names for the same four checkpoints.
GPT2_NAMES = {"gpt2": "d12", "gpt2-medium": "d24", "gpt2-large": "d36", "gpt2-xl": "d48"}
# torch.compile's modes, plus "tuned": the default mode with Inductor's coordinate-descent tuning of its kernels.
# The CUDA-graph modes (reduce-overhead, max-autotune) are left out: their graphs break on the accumulation step
# ("Gradient addition node due to multiple use of tensor", H100 2026-11-25), and the GPU idles only ~1.5% anyway.
COMPILE_MODES = ("default", "tuned", "max-autotune-no-cudagraphs")
DESCRIPTOR_RE = re.compile(r"d(\d+)(?:w(\d+))?")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a GPT-2 model; `n_embd` must divide evenly into `n_head` heads."""

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = GPT2_BLOCK_SIZE
    vocab_size: int = GPT2_VOCAB_SIZE
    padded_vocab_size: int = GPT2_PADDED_VOCAB_SIZE

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

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

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


@dataclass
class TrainConfig:
    """One training run. Field names are the long CLI options; comments give llm.c's short flag."""

    train_data: str = ""  # -i: shard glob of the training split
    val_data: str = ""  # -j: shard glob of the val split ("" = no val loss)
    output_dir: str = ""  # -o: run directory ("" = no files)
    model: str = "d12"  # -e: descriptor (dN) or a checkpoint to start from
    batch_size: int = 4  # -b: micro-batch per process
    seq_len: int = 1024  # -t
    total_batch_size: int = -1  # -d: tokens per optimizer step (-1 = B*T*world, no accumulation)
    learning_rate: float = 3e-4  # -l
    warmup_steps: int = 0  # -u
    final_lr_frac: float = 1.0  # -q: lr at the end as a fraction of -l
    lr_schedule: str = "cosine"  # -k
    wsd_cooldown_frac: float = 0.2  # fraction of steps spent decaying in the wsd schedule
    weight_decay: float = 0.0  # -c
    grad_clip: float = 1.0
    max_steps: int = -1  # -x: -1 = one epoch of the training data
    val_every: int = 20  # -v
    val_max_steps: int = 20  # -m: -1 = the whole val split
    sample_every: int = 20  # -s
    gen_tokens: int = 64  # -g
    hellaswag: int = 0  # -h
    hellaswag_file: str = ""  # "" = resolve (cache, then download)
    hellaswag_limit: int = -1  # -1 = all 10,042 examples
    checkpoint_every: int = 0  # -n
    checkpoint_keep: int = 0  # -nk
    checkpoint_keep_every: int = 0  # -nm
    resume: int = 0  # -y
    zero_stage: int = 0  # -z
    recompute: int = 1  # -r
    skip_loss_zscore: float = 0.0  # -sl
    max_bad_steps: int = 5  # stop after this many non-finite steps in a row (0 = never)
    skip_grad_zscore: float = 0.0  # -sg
    overfit_batch: int = 0  # -a
    shuffle: int = 1  # shuffle train shards and chunks per epoch (0 = llm.c's sequential order)
    tf32: int = 1  # -f
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere) | bf16 | fp32
    compile: int = -1  # -1 = on for CUDA, off elsewhere
    compile_mode: str = "default"  # torch.compile mode, or "tuned" (default + Inductor's coordinate-descent tuning)
    fused_loss: int = -1  # head + cross-entropy in one kernel pass (-1 = on CUDA when Triton is there, 0 off, 1 on)
    tensorboard: str = ""  # TensorBoard log directory ("" = off)
    wandb: str = ""  # Weights & Biases project ("" = off)
    attention: str = "auto"  # SDPA kernel preference: auto | flash | cudnn | efficient | math
    auto_batch: int = 1  # on CUDA: halve -b (more accumulation, same -d) until a step fits in memory
    log_every: int = 1
    sample_prompt: str = ""  # "" = start sampling from <|endoftext|>
    sample_top_k: int = 40
    tokenizer: str = ""  # path to gpt2.tiktoken ("" = resolve automatically)
    extra: dict = field(default_factory=dict)

    def validate(self, world_size: int = 1) -> None:
        """Fail fast, naming the flag, on values that cannot work."""
        def need(cond: bool, message: str) -> None:
            if not cond:
                raise LlmpyError(message)

        need(bool(self.train_data), "-i/--train-data: no training data given (a shard glob, e.g. 'data/x_train_*.bin')")
        need(self.batch_size > 0, f"-b/--batch-size must be positive, got {self.batch_size}")
        need(self.seq_len > 0, f"-t/--seq-len must be positive, got {self.seq_len}")
        need(self.learning_rate >= 0, f"-l/--learning-rate must be >= 0, got {self.learning_rate}")
        need(self.warmup_steps >= 0, f"-u/--warmup-steps must be >= 0, got {self.warmup_steps}")
        need(0.0 <= self.final_lr_frac <= 1.0, f"-q/--final-lr-frac must be in [0, 1], got {self.final_lr_frac}")
        need(self.lr_schedule in LR_SCHEDULES, f"-k/--lr-schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        need(0.0 < self.wsd_cooldown_frac <= 1.0, f"--wsd-cooldown-frac must be in (0, 1], got {self.wsd_cooldown_frac}")
        need(self.weight_decay >= 0, f"-c/--weight-decay must be >= 0, got {self.weight_decay}")
        need(self.grad_clip >= 0, f"--grad-clip must be >= 0 (0 = off), got {self.grad_clip}")
        need(self.max_steps == -1 or self.max_steps > 0, f"-x/--max-steps must be -1 (one epoch) or > 0, got {self.max_steps}")
        need(self.val_max_steps == -1 or self.val_max_steps > 0, f"-m/--val-max-steps must be -1 or > 0, got {self.val_max_steps}")
        need(self.dtype in ("auto", "bf16", "fp32"), f"--dtype must be auto, bf16 or fp32, got {self.dtype!r}")
        need(self.recompute in (0, 1, 2, 3), f"-r/--recompute must be 0 (none), 1 (GELU), 2 (GELU+LayerNorm) or 3 "
             f"(whole blocks), got {self.recompute}")
        need(self.compile_mode in COMPILE_MODES, f"--compile-mode must be one of {', '.join(COMPILE_MODES)}, got "
             f"{self.compile_mode!r}")
        need(self.fused_loss in (-1, 0, 1), f"--fused-loss must be -1 (on CUDA), 0 or 1, got {self.fused_loss}")
        need(self.zero_stage in (0, 1, 3), f"-z/--zero-stage must be 0 (DDP), 1 (sharded optimizer state) or 3 "
             f"(FSDP full sharding), got {self.zero_stage}")
        self.grad_accum_steps(world_size)  # raises on a -d that does not divide

    def tokens_per_micro_step(self, world_size: int = 1) -> int:
        return self.batch_size * self.seq_len * world_size

    def grad_accum_steps(self, world_size: int = 1) -> int:
        """The one place `-d` turns into gradient accumulation: total // (B * T * world)."""
        per_micro_step = self.tokens_per_micro_step(world_size)
        total = per_micro_step if self.total_batch_size == -1 else self.total_batch_size
        if total <= 0 or total % per_micro_step:
            raise LlmpyError(
                f"-d/--total-batch-size {total} is not a positive multiple of B*T*world = "
                f"{self.batch_size}*{self.seq_len}*{world_size} = {per_micro_step}"
            )
        return total // per_micro_step

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def default_cache_dir() -> Path:
    """Where llmpy keeps downloaded resources: $LLMPY_CACHE, else ~/.cache/llmpy."""
    import os

    return Path(os.environ.get("LLMPY_CACHE") or Path.home() / ".cache" / "llmpy")


def load_config_file(path: str | Path) -> dict:
    """Read a TOML (.toml) or YAML (.yaml/.yml) file of long option names -> values."""
    path = Path(path)
    if not path.is_file():
        raise LlmpyError(f"--config {path}: no such file")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            values = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            raise LlmpyError(f"--config {path}: use a .toml, .yaml or .yml file")
    except LlmpyError:
        raise
    except Exception as exc:  # a syntax error in the user's file: point at it, briefly
        raise LlmpyError(f"--config {path}: cannot parse ({exc})") from None
    if not isinstance(values, dict):
        raise LlmpyError(f"--config {path}: expected a mapping of option names to values")
    return {str(key).replace("-", "_"): value for key, value in values.items()}
