"""What a resume (`-y 1`) may change: the saved run's flags against the new command's. A flag that alters the math
is refused, the others are allowed and said; a checkpoint of another architecture is described in words."""

from __future__ import annotations

from llmpy.config import ModelConfig, TrainConfig


# flags whose change alters what the run computes: a resume with another value would not continue the same run.
# -e is checked as the architecture it builds (the weights come from the checkpoint either way).
MATH_FIELDS = ("recipe", "family", "arch", "seq_len", "optimizer", "optimizer_args", "learning_rate", "warmup_steps",
               "final_lr_frac", "lr_schedule", "wsd_cooldown_frac", "weight_decay", "grad_clip", "seed", "shuffle",
               "overfit_batch", "skip_loss_zscore", "skip_grad_zscore", "batch_ramp", "seq_len_warmup")
# flags that are saved but are the run's bookkeeping, not something a reader of the log needs told
_QUIET_FIELDS = ("resume", "output_dir", "overwrite")


def run_changes(saved: dict, saved_tokens: int, new: TrainConfig, new_tokens: int) -> tuple[list[str], list[str]]:
    """(refused, allowed): one line per flag whose value differs between the saved run's config and the new one.
    Tokens per step (-d) are compared as the runs resolved them (-d -1 means B*T*world, auto-batch may change B)."""
    defaults = TrainConfig().to_dict()  # a field the saved run predates had its default value
    current = new.to_dict()
    refused, allowed = [], []

    def line(name: str, before, after) -> str:
        return f"--{name.replace('_', '-')} was {before!r} in the saved run, now {after!r}"

    before_tokens, after_tokens = saved_tokens, new_tokens
    if before_tokens != after_tokens:
        refused.append(f"-d/--total-batch-size: the saved run took {before_tokens:,} tokens per step, now "
                       f"{after_tokens:,}")
    for name, value in current.items():
        before = saved.get(name, defaults[name])
        if before == value or name in _QUIET_FIELDS or name == "total_batch_size":
            continue
        (refused if name in MATH_FIELDS else allowed).append(line(name, before, value))
    return refused, allowed


def describe_model(config: ModelConfig) -> str:
    """"a 12-layer, 768-wide GPT-2 model" (or ... modern model with softcap=15.0, ...: its switches)."""
    switches = {k: v for k, v in config.to_dict().items() if k not in ModelConfig().to_dict()}
    kind = "modern model" if switches else "GPT-2 model"
    detail = f" ({', '.join(f'{k}={v}' for k, v in switches.items())})" if switches else ""
    return f"a {config.n_layer}-layer, {config.n_embd}-wide {kind}{detail}"
