"""The training flags, in one table: llm.c's train_gpt2cu short flags with llm.c's meanings, their long names (the
TrainConfig fields), and their help. `llmpy train` takes them all; `llmpy bench` takes the ones that shape a step."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json

from llmpy.config import TrainConfig, load_config_file
from llmpy.errors import LlmpyError
from llmpy.recipes import with_recipe
from llmpy.resources import GPT2_BPE, HELLASWAG_VAL, default_help

# (short flag as llm.c's train_gpt2cu spells it, long option, TrainConfig field, type, help)
TRAIN_FLAGS: list[tuple[str | None, str, str, type, str]] = [
    ("-i", "--train-data", "train_data", str,
     "train shards glob (llm.c .bin or .npy; comma-separate several) (required)"),
    ("-j", "--val-data", "val_data", str, "val shards glob (default: none, no val loss)"),
    ("-o", "--output-dir", "output_dir", str,
     "run directory: main.log, metrics.jsonl, checkpoints (default: none, no files are written)"),
    ("-e", "--model", "model", str, "model descriptor (d6, d12, d24, d36, d48, dN, dNwC) or checkpoint to start from"),
    ("-b", "--batch-size", "batch_size", int, "micro-batch size B per process"),
    ("-t", "--seq-len", "seq_len", int, "sequence length T"),
    ("-d", "--total-batch-size", "total_batch_size", int, "tokens per optimizer step (-1 = B*T*world, no accumulation)"),
    ("-l", "--learning-rate", "learning_rate", float, "peak learning rate"),
    ("-u", "--warmup-steps", "warmup_steps", int, "linear LR warmup steps"),
    ("-q", "--final-lr-frac", "final_lr_frac", float, "final LR as a fraction of -l (1.0 = no decay)"),
    ("-k", "--lr-schedule", "lr_schedule", str, "cosine | linear | constant | wsd"),
    ("-c", "--weight-decay", "weight_decay", float, "AdamW weight decay on 2-D tensors"),
    ("-x", "--max-steps", "max_steps", int, "optimizer steps (-1 = one epoch of -i)"),
    ("-v", "--val-every", "val_every", int, "val loss every N steps (0 = never)"),
    ("-m", "--val-max-steps", "val_max_steps", int, "val batches per evaluation (-1 = the whole split)"),
    ("-s", "--sample-every", "sample_every", int, "sample text every N steps (0 = never)"),
    ("-g", "--gen-tokens", "gen_tokens", int, "tokens to generate per sample"),
    ("-h", "--hellaswag", "hellaswag", int, "HellaSwag eval at each val step (0/1)"),
    (None, "--hellaswag-file", "hellaswag_file", str, f"hellaswag_val.jsonl for -h 1 {default_help(HELLASWAG_VAL)}"),
    (None, "--hellaswag-limit", "hellaswag_limit", int, "score only the first N HellaSwag examples (-1 = all)"),
    ("-n", "--checkpoint-every", "checkpoint_every", int, "write a checkpoint every N steps (0 = only at the end)"),
    ("-nk", "--checkpoint-keep", "checkpoint_keep", int, "keep only the newest K checkpoints (0 = keep all)"),
    ("-nm", "--checkpoint-keep-every", "checkpoint_keep_every", int, "never delete checkpoints at multiples of M"),
    ("-y", "--resume", "resume", int, "1 = continue the run in -o (append to its logs)"),
    (None, "--extend-schedule", "extend_schedule", str,
     "-y 1 with an -x past the end of the saved run's decaying LR schedule: final (go on at its final LR; refused "
     "when that is 0) | replan (the schedule of a run planned for the new -x: the LR goes back up) (default: none, "
     "such a resume is refused)"),
    ("-z", "--zero-stage", "zero_stage", int, "data-parallel sharding: 0 DDP, 1 ZeRO-1, 3 FSDP"),
    ("-r", "--recompute", "recompute", int,
     "activation recompute: 0 none, 1 GELU, 2 GELU+LayerNorm (llm.c's levels), 3 whole blocks (least memory)"),
    ("-sl", "--skip-loss-zscore", "skip_loss_zscore", float, "skip updates whose loss z-score exceeds this (0 = off)"),
    ("-sg", "--skip-grad-zscore", "skip_grad_zscore", float, "skip updates whose grad-norm z-score exceeds this (0 = off)"),
    ("-a", "--overfit-batch", "overfit_batch", int, "1 = train on the first batch only (debugging)"),
    ("-f", "--tf32", "tf32", int, "TF32 matmuls for fp32 work (0/1)"),
    (None, "--shuffle", "shuffle", int, "shuffle train shards and chunks each epoch, seeded (0 = sequential)"),
    (None, "--max-bad-steps", "max_bad_steps", int, "stop after N non-finite steps in a row (0 = never)"),
    (None, "--grad-clip", "grad_clip", float, "global grad-norm clip (0 = off)"),
    (None, "--wsd-cooldown-frac", "wsd_cooldown_frac", float, "fraction of steps the wsd schedule spends decaying"),
    (None, "--batch-ramp", "batch_ramp", int,
     "batch-size schedule: over the first N steps a step's tokens grow from one micro-step's to -d's (0 = off)"),
    (None, "--seq-len-warmup", "seq_len_warmup", int,
     "sequence-length schedule: the same tokens as rows of T/4 for N steps, then T/2 for N, then T (0 = off)"),
    (None, "--batch-stages", "batch_stages", str,
     "batch-size schedule in steps: W1,W2,... splits the LR schedule's steps (-x) into equal parts, part k training "
     "on -d x W_k / max(W) tokens per step (the speedrun's 1,2,3; each stage a whole number of micro-steps; not "
     "with --batch-ramp) (default: none, off)"),
    (None, "--batch-stages-lr-power", "batch_stages_lr_power", float,
     "with --batch-stages: the LR of stage k is multiplied by (W_k / W_1) ** P (the speedrun's 0.5-0.6)"),
    (None, "--mtp-weights", "mtp_weights", str,
     "multi-token prediction, an auxiliary training loss: weights of the cross-entropy of each position's logits "
     "with the token 2, 3, ... ahead, e.g. '0.5,0.25' (the speedrun's); they fade out by --aux-loss-until "
     "(default: none, off)"),
    (None, "--prefix-loss", "prefix_loss", float,
     "prefix-token prediction, an auxiliary training loss: weight of the cross-entropy with the token whose bytes "
     "are the longest proper prefix of the target's (GPT-2's ranks, see --tokenizer), e.g. 0.25; it fades out by "
     "--aux-loss-until (0 = off)"),
    (None, "--aux-loss-until", "aux_loss_until", float,
     "the --mtp-weights and --prefix-loss weights fall linearly from their values at step 0 to 0 at this fraction "
     "of the LR schedule's steps, in (0, 1]; the logged loss is the next-token loss alone"),
    (None, "--seed", "seed", int, "random seed"),
    (None, "--device", "device", str, "auto | cpu | cuda | cuda:N"),
    (None, "--dtype", "dtype", str, "auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32"),
    (None, "--compile", "compile", int, "torch.compile the model (-1 = on CUDA only, 0 off, 1 on)"),
    (None, "--compile-mode", "compile_mode", str,
     "default | tuned (+ coordinate-descent tuning of the fused kernels) | max-autotune-no-cudagraphs"),
    (None, "--fused-loss", "fused_loss", int,
     "output head + cross-entropy with the gradient written in the forward pass (-1 = on CUDA, 0 off, 1 on)"),
    (None, "--loss-chunk-rows", "loss_chunk_rows", int,
     "the fused loss's logits N rows at a time, so a micro-batch's whole (B*T, vocab) logits never exist at once "
     "(less memory; 0 = all rows)"),
    ("-ge", "--gelu-fusion", "gelu_fusion", int,
     "GELU inside the MLP matmuls' cuBLASLt epilogues, as llm.c's -ge: 0 off, 1 forward, 2 forward and backward "
     "(-1 = 2 where it runs: bf16 on a CUDA GPU of compute capability 9.0+, the GPT-2 family, -r 0, 1 or 3)"),
    (None, "--tensorboard", "tensorboard", str,
     "also log every metric to TensorBoard event files in this directory (default: off)"),
    (None, "--wandb", "wandb", str,
     "also log every metric to Weights & Biases project W (WANDB_MODE=offline works) (default: off)"),
    (None, "--attention", "attention", str, "attention kernel preference: auto | flash | cudnn | efficient | math | "
     "fa4 (FlashAttention-4, the flash-attn-4 package, Hopper/Blackwell) | cudnn+fa4 (cuDNN's forward kernel, "
     "FA4's backward)"),
    (None, "--cuda-graphs", "cuda_graphs", int,
     "1: capture one micro-step (forward, backward, loss) as a CUDA graph and replay it (single-process CUDA, "
     "no sliding-window schedule; 0 off)"),
    (None, "--auto-batch", "auto_batch", int,
     "1: on CUDA, halve -b until a step fits in memory, keeping -d by more accumulation (0: fail on OOM)"),
    (None, "--overwrite", "overwrite", int,
     "1: -o holds another run's checkpoints and this is a new run (no -y 1): move that run aside to -o.oldN"),
    (None, "--log-every", "log_every", int, "print a console line every N steps (main.log gets every step)"),
    (None, "--sample-prompt", "sample_prompt", str,
     "prompt for samples during training (default: none, start from <|endoftext|>)"),
    (None, "--sample-top-k", "sample_top_k", int, "top-k for samples during training (0 = full distribution)"),
    (None, "--tokenizer", "tokenizer", str, f"gpt2.tiktoken {default_help(GPT2_BPE)}"),
    (None, "--optimizer", "optimizer", str,
     "adamw (llm.c's AdamW) | muon (Muon on hidden matrices, Adam on embeddings, head, scalars; -l is Muon's LR)"),
    (None, "--optimizer-args", "optimizer_args", str,
     "the optimizer's settings, 'name=value,...'; muon: embedding head scalar (Adam LRs as multiples of -l), "
     "normuon normuon_beta normuon_axis momentum momentum_start momentum_warmup ns_steps orthogonalizer nesterov; "
     "frontier: qk_pairs cautious_wd wd_schedule embedding_wd head_wd (docs/recipes.md)"),
    (None, "--recipe", "recipe", str,
     "classic (GPT-2 + GPT-3's AdamW recipe, as llm.c) | modern (modern architecture + Muon) | frontier (modern + "
     "the speedrun's bigram, smear, gates and sigmoid cap): sets the defaults of --family --optimizer -l -u -k -q -c "
     "--grad-clip --wsd-cooldown-frac --arch; flags given win (--arch per switch)"),
    (None, "--family", "family", str, "model family of a fresh -e dN: gpt2 | modern (see docs/recipes.md)"),
    (None, "--arch", "arch", str,
     "modern family switches, e.g. 'softcap=0,value_embeds=0' (rotary qk_norm relu2 rmsnorm bias zero_init tie "
     "softcap value_embeds unet rope_base doc_mask window fp8_head)"),
]

# llm.c flags with no counterpart here: accepted so its run scripts work, explained once.
COMPAT_FLAGS = {
    "-w": "fp32 master weights are always kept",
}
# llm.c's MPI/NCCL launch flags: llmpy is launched by torchrun instead.
LAUNCH_FLAGS = ("-pn", "-pr", "-pg", "-pm", "-ps", "-pp")


def flag_name(field: str) -> str:
    """A TrainConfig field as its flags: "-t/--seq-len", "--recipe"."""
    for short, long, name, _, _ in TRAIN_FLAGS:
        if name == field:
            return f"{short}/{long}" if short else long
    return f"--{field.replace('_', '-')}"


def add_flag_arguments(parser: argparse.ArgumentParser, fields: tuple[str, ...] | None = None,
                       defaults: dict | None = None) -> None:
    """The flags of TRAIN_FLAGS for `fields` (all when None). With `defaults` (a command of its own, e.g. bench)
    each flag gets its default from it, else TrainConfig's; without, defaults are suppressed so that a --config
    file can sit underneath the command line."""
    base = TrainConfig()
    for short, long, field, kind, help_text in TRAIN_FLAGS:
        if fields is not None and field not in fields:
            continue
        names = [short, long] if short else [long]
        if defaults is None:
            default, shown = argparse.SUPPRESS, getattr(base, field)
        else:
            default = shown = defaults.get(field, getattr(base, field))
        parser.add_argument(*names, dest=field, type=kind, default=default, help=_with_default(help_text, shown))


def _with_default(help_text: str, default) -> str:
    """The help with its default said once: a help that says it itself (or "required") is left as it is."""
    if "(default" in help_text or "(required)" in help_text:
        return help_text
    return f"{help_text} (default: {'none' if default == '' else default})"


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """`llmpy train`: llm.c's flags and their long names, llm.c's accepted no-ops, --config and --auto-restart."""
    add_flag_arguments(parser)
    for flag, reason in COMPAT_FLAGS.items():
        parser.add_argument(flag, dest=f"compat_{flag[1:]}", default=argparse.SUPPRESS, help=f"accepted, no effect: {reason}")
    for flag in LAUNCH_FLAGS:
        parser.add_argument(flag, dest=f"launch_{flag[1:]}", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--no-shuffle", dest="shuffle", action="store_const", const=0, default=argparse.SUPPRESS,
                        help="read train shards in order (same as --shuffle 0)")
    parser.add_argument("--auto-restart", metavar="N", type=int, default=argparse.SUPPRESS,
                        help="relaunch with -y 1 after a crash, kill or preemption, at most N launches in all")
    parser.add_argument("--config", help="TOML or YAML file of long option names (flags on the command line win)")


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Merge defaults <- the recipe's (--recipe) <- --config file <- command-line flags into one TrainConfig."""
    values: dict = {}
    field_names = {f.name for f in dataclasses.fields(TrainConfig)}
    if getattr(args, "config", None) is not None:
        values.update(config_file_values(args.config))
    launch = [name for name in vars(args) if name.startswith("launch_")]
    if launch:
        raise LlmpyError(
            f"-{launch[0][7:]}: llm.c's MPI launch flags are not used; launch several processes with "
            "`torchrun --nproc_per_node=N -m llmpy train ...`"
        )
    values.update({k: v for k, v in vars(args).items() if k in field_names})
    values = with_recipe(values)
    try:
        return TrainConfig(**values)
    except TypeError as exc:
        raise LlmpyError(f"bad training options: {exc}") from None


def config_file_values(path: str) -> dict:
    """The --config file's values by TrainConfig field, each of the type its flag takes: an int flag an integer (not
    512.0 and not true, as on the command line), a float flag an integer or a float (made a float), a string flag a
    string. An unknown key or a value of another type is one LlmpyError naming the file, the key and the value."""
    where = f"--config {path}"
    kinds = {field: kind for _, _, field, kind, _ in TRAIN_FLAGS}
    from_file = {key.replace("-", "_"): (key, value) for key, value in load_config_file(path).items()}
    unknown = sorted(set(from_file) - set(kinds))
    if unknown:
        raise LlmpyError(f"{where}: unknown option(s) {', '.join(unknown)}")
    return {field: _typed_value(value, kinds[field], f"{where}: {key} = {_shown(value)}: {flag_name(field)}")
            for field, (key, value) in from_file.items()}


_TAKES = {int: "an integer", float: "a number", str: "a string"}


def _typed_value(value, kind: type, said: str):
    """`value` as a `kind` flag takes it, else an LlmpyError: "`said` takes an integer, not a float"."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is float and is_number:
        try:
            return float(value)
        except OverflowError:  # an integer of 400 digits
            raise LlmpyError(f"{said} is beyond a float's range") from None
    if isinstance(value, kind) and (kind is str or is_number):
        return value
    whole = kind is int and isinstance(value, float) and value.is_integer() and abs(value) < 2**53
    hint = f" (write {int(value)})" if whole else ""
    raise LlmpyError(f"{said} takes {_TAKES[kind]}, not {_type_name(value)}{hint}")


def _shown(value) -> str:
    """A config value as a file would spell it, on one line and at most 60 characters."""
    try:
        text = json.dumps(value, default=str, ensure_ascii=False)
    except (ValueError, RecursionError):  # a YAML anchor that holds itself
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value) -> str:
    """What a TOML/YAML value is, in the files' words."""
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "a list",
             dict: "a table", datetime.datetime: "a date-time", datetime.date: "a date", datetime.time: "a time"}
    return next((name for kind, name in names.items() if isinstance(value, kind)), f"a {type(value).__name__}")
