"""What a resume (`-y 1`) may change: the saved run's flags against the new command's. A flag that alters the math
is refused, the others are allowed and said; a checkpoint of another architecture is described in words. An -x past
the end of a decaying LR schedule is the user's decision (--extend-schedule); a run already at its -x is complete."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from llmpy.config import ModelConfig, TrainConfig
from llmpy.errors import LlmpyError
from llmpy.flags import flag_name

if TYPE_CHECKING:
    from llmpy.train.optim import LRSchedule


# flags whose change alters what the run computes: a resume with another value would not continue the same run.
# -e is checked as the architecture it builds (the weights come from the checkpoint either way).
MATH_FIELDS = ("recipe", "family", "arch", "seq_len", "optimizer", "optimizer_args", "learning_rate", "warmup_steps",
               "final_lr_frac", "lr_schedule", "wsd_cooldown_frac", "weight_decay", "grad_clip", "seed", "shuffle",
               "overfit_batch", "skip_loss_zscore", "skip_grad_zscore", "batch_ramp", "seq_len_warmup",
               "batch_stages", "batch_stages_lr_power",
               "mtp_weights", "prefix_loss", "aux_loss_until")
# flags that are saved but are the run's bookkeeping, not something a reader of the log needs told
_QUIET_FIELDS = ("resume", "output_dir", "overwrite", "extend_schedule")
# flags that set a step's tokens: allowed while -d's tokens per step stay the same
_STEP_SIZE_FIELDS = ("total_batch_size", "batch_size")


def run_changes(saved: dict, saved_tokens: int, new: TrainConfig, new_tokens: int) -> tuple[list[str], list[str]]:
    """(refused, allowed): one line per flag whose value differs between the saved run's config and the new one,
    naming the flag that was changed. Tokens per step are compared as the runs resolved them (-d -1 means
    B*T*world, auto-batch may change B): -d is named only when -d itself changed."""
    defaults = TrainConfig().to_dict()  # a field the saved run predates had its default value
    current = new.to_dict()
    changed = {name: saved.get(name, defaults[name]) for name, value in current.items()
               if saved.get(name, defaults[name]) != value and name not in _QUIET_FIELDS}
    refused, allowed = [], []
    for name, before in changed.items():
        line = f"{flag_name(name)} was {before!r} in the saved run, now {current[name]!r}"
        if name in MATH_FIELDS:
            refused.append(line)
        elif name not in _STEP_SIZE_FIELDS or saved_tokens == new_tokens:
            allowed.append(line)
    if saved_tokens != new_tokens:
        refused += _step_size_change(changed, current, saved_tokens, new_tokens)
    return refused, allowed


def _step_size_change(changed: dict, current: dict, saved_tokens: int, new_tokens: int) -> list[str]:
    """Why a step now has other tokens than the saved run's: -d itself, else the -b that -d -1 multiplies (a changed
    -t is named already), else the number of processes."""
    tokens = f"{saved_tokens:,} tokens per step then, {new_tokens:,} now"
    if "total_batch_size" in changed:
        return [f"-d/--total-batch-size was {changed['total_batch_size']!r} in the saved run, now "
                f"{current['total_batch_size']!r}: {tokens}"]
    if "batch_size" in changed:
        return [f"-b/--batch-size was {changed['batch_size']!r} in the saved run, now {current['batch_size']!r}, and "
                f"with -d -1 a step is -b x -t x processes: {tokens} (-d {saved_tokens} keeps the saved step with "
                "any -b that divides it)"]
    if "seq_len" in changed:
        return []
    return [f"-d -1 makes a step -b x -t x processes, and the number of processes differs: {tokens} (-d "
            f"{saved_tokens} keeps the saved step)"]


def describe_model(config: ModelConfig) -> str:
    """"a 12-layer, 768-wide GPT-2 model" (or ... modern model with softcap=15.0, ...: its switches)."""
    switches = {k: v for k, v in config.to_dict().items() if k not in ModelConfig().to_dict()}
    kind = "modern model" if switches else "GPT-2 model"
    detail = f" ({', '.join(f'{k}={v}' for k, v in switches.items())})" if switches else ""
    return f"a {config.n_layer}-layer, {config.n_embd}-wide {kind}{detail}"


class RunComplete(Exception):
    """-y 1 of a run that has done every step of its -x, end-of-run evaluation included: nothing to train."""

    def __init__(self, run_dir: str | Path, step: int):
        super().__init__(f"the run in {run_dir} is complete: its checkpoint at step {step} is the last of -x {step}; "
                         "nothing to train")


def continue_schedule(schedule: LRSchedule, step: int, total_steps: int, mode: str, run_dir: str | Path) -> str | None:
    """-y 1 at `step` with -x `total_steps`: how the restored LR `schedule` goes on; the line to print (None: nothing
    to say). An -x past the end of the schedule, where its LR differs from that of a run planned for that -x, is
    refused unless --extend-schedule (`mode`) says how to go on: "final" holds the saved final LR (not 0: training at
    LR 0 changes nothing), "replan" makes the schedule the one a run planned for -x would have had. The decision is
    kept in `schedule` (changed in place), so the checkpoints of the extended run resume without asking again."""
    if total_steps < schedule.total_steps:
        return (f"resume: -x {total_steps} ends the run before its LR schedule ends (planned for {schedule.total_steps} "
                f"steps): its last step trains at LR {schedule(total_steps - 1):.2e}, not the final "
                f"{schedule.final_lr:.2e}")
    final = schedule.final_lr
    replanned = dataclasses.replace(schedule, total_steps=total_steps, extended_to=0)
    if total_steps <= max(schedule.total_steps, schedule.extended_to) or final == schedule.max_lr \
            or all(schedule(s) == replanned(s) for s in range(step, total_steps)):
        return None  # within what was planned (or decided), or an LR that never decays: the same either way
    told = (f"-y 1 -x {total_steps}: the LR schedule of the run in {run_dir} was planned for {schedule.total_steps} "
            f"steps and ends at LR {final:.2e}")
    replan = (f"--extend-schedule replan for the schedule of a {total_steps}-step run (LR {replanned(step):.2e} at "
              f"step {step}, where the saved one has {schedule(step):.2e})")
    if final == 0 and mode != "replan":
        raise LlmpyError(f"{'--extend-schedule final: ' if mode else ''}{told}, and training at LR 0 changes nothing: "
                         f"give {replan}, or a new -o for a new run")
    if not mode:
        raise LlmpyError(f"{told}: give --extend-schedule final to go on at {final:.2e}, or {replan}")
    if mode == "final":
        schedule.extended_to = total_steps
        return (f"resume: --extend-schedule final: the saved LR schedule ends at step {schedule.total_steps}; from "
                f"there to -x {total_steps} the run trains at its final LR {final:.2e}")
    lr_before = schedule(step)
    schedule.total_steps, schedule.extended_to = total_steps, 0
    return (f"resume: --extend-schedule replan: the LR schedule is now that of a {total_steps}-step run: LR "
            f"{schedule(step):.2e} at step {step}, where the saved one had {lr_before:.2e}")
