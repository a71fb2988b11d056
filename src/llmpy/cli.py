"""The `llmpy` command: subcommands, llm.c's short flags -> TrainConfig, one-line errors. Nothing else."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import traceback
from pathlib import Path

from llmpy.config import TrainConfig, load_config_file
from llmpy.errors import LlmpyError

# (short flag as llm.c's train_gpt2cu spells it, long option, TrainConfig field, type, help)
TRAIN_FLAGS: list[tuple[str | None, str, str, type, str]] = [
    ("-i", "--train-data", "train_data", str, "train shards glob (llm.c .bin or .npy; comma-separate several)"),
    ("-j", "--val-data", "val_data", str, "val shards glob ('' = no val loss)"),
    ("-o", "--output-dir", "output_dir", str, "run directory: main.log, metrics.jsonl, checkpoints"),
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
    (None, "--hellaswag-file", "hellaswag_file", str, "hellaswag_val.jsonl for -h 1 (default: cache or download)"),
    (None, "--hellaswag-limit", "hellaswag_limit", int, "score only the first N HellaSwag examples (-1 = all)"),
    ("-n", "--checkpoint-every", "checkpoint_every", int, "write a checkpoint every N steps (0 = only at the end)"),
    ("-nk", "--checkpoint-keep", "checkpoint_keep", int, "keep only the newest K checkpoints (0 = keep all)"),
    ("-nm", "--checkpoint-keep-every", "checkpoint_keep_every", int, "never delete checkpoints at multiples of M"),
    ("-y", "--resume", "resume", int, "1 = continue the run in -o (append to its logs)"),
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
    (None, "--seed", "seed", int, "random seed"),
    (None, "--device", "device", str, "auto | cpu | cuda | cuda:N"),
    (None, "--dtype", "dtype", str, "auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32"),
    (None, "--compile", "compile", int, "torch.compile the model (-1 = on CUDA only, 0 off, 1 on)"),
    (None, "--compile-mode", "compile_mode", str,
     "default | tuned (+ coordinate-descent tuning of the fused kernels) | max-autotune-no-cudagraphs"),
    (None, "--fused-loss", "fused_loss", int,
     "output head + cross-entropy with the gradient written in the forward pass (-1 = on CUDA, 0 off, 1 on)"),
    (None, "--tensorboard", "tensorboard", str, "also log every metric to TensorBoard event files in this directory"),
    (None, "--wandb", "wandb", str, "also log every metric to Weights & Biases project W (WANDB_MODE=offline works)"),
    (None, "--attention", "attention", str, "attention kernel preference: auto | flash | cudnn | efficient | math"),
    (None, "--auto-batch", "auto_batch", int,
     "1: on CUDA, halve -b until a step fits in memory, keeping -d by more accumulation (0: fail on OOM)"),
    (None, "--log-every", "log_every", int, "print a console line every N steps (main.log gets every step)"),
    (None, "--sample-prompt", "sample_prompt", str, "prompt for samples during training ('' = <|endoftext|>)"),
    (None, "--sample-top-k", "sample_top_k", int, "top-k for samples during training (0 = full distribution)"),
    (None, "--tokenizer", "tokenizer", str, "path to gpt2.tiktoken (default: resolve automatically)"),
]

# llm.c flags with no counterpart here: accepted so its run scripts work, explained once.
COMPAT_FLAGS = {
    "-w": "fp32 master weights are always kept",
    "-ge": "GELU fusion is left to torch.compile",
}
# llm.c's MPI/NCCL launch flags: llmpy is launched by torchrun instead.
LAUNCH_FLAGS = ("-pn", "-pr", "-pg", "-pm", "-ps", "-pp")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """llm.c's flags and their long names; defaults are suppressed so a --config file can sit underneath."""
    defaults = TrainConfig()
    for short, long, field, kind, help_text in TRAIN_FLAGS:
        names = [short, long] if short else [long]
        parser.add_argument(
            *names, dest=field, type=kind, default=argparse.SUPPRESS,
            help=f"{help_text} (default: {getattr(defaults, field)!r})",
        )
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
    """Merge defaults <- --config file <- command-line flags into one TrainConfig."""
    values: dict = {}
    field_names = {f.name for f in dataclasses.fields(TrainConfig)} - {"extra"}
    if getattr(args, "config", None):
        from_file = load_config_file(args.config)
        unknown = sorted(set(from_file) - field_names)
        if unknown:
            raise LlmpyError(f"--config {args.config}: unknown option(s) {', '.join(unknown)}")
        values.update(from_file)
    launch = [name for name in vars(args) if name.startswith("launch_")]
    if launch:
        raise LlmpyError(
            f"-{launch[0][7:]}: llm.c's MPI launch flags are not used; launch several processes with "
            "`torchrun --nproc_per_node=N -m llmpy train ...`"
        )
    values.update({k: v for k, v in vars(args).items() if k in field_names})
    try:
        config = TrainConfig(**values)
    except TypeError as exc:
        raise LlmpyError(f"bad training options: {exc}") from None
    for name, value in list(values.items()):
        expected = type(getattr(TrainConfig(), name))
        if expected in (int, float) and not isinstance(value, (int, float)):
            raise LlmpyError(f"--{name.replace('_', '-')}: expected a number, got {value!r}")
    return config


def cmd_train(args: argparse.Namespace) -> int:
    from llmpy.train.build import build_trainer
    from llmpy.train.faults import PREEMPTED_EXIT_CODE, Preempted

    for name in vars(args):
        if name.startswith("compat_"):
            print(f"note: -{name[7:]} accepted for llm.c compatibility; {COMPAT_FLAGS['-' + name[7:]]}")
    config = train_config_from_args(args)
    trainer = build_trainer(config)
    try:
        trainer.fit()
    except Preempted as stopped:
        print(f"llmpy: {stopped}; continue with the same command and -y 1", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from llmpy.data import prepare

    if args.verify:
        from llmpy.data.pipeline import verify_output

        problems = verify_output(args.verify)
        for line in problems:
            print(line, file=sys.stderr)
        print(f"{args.verify}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        return 0 if not problems else 1
    if args.source is None:
        raise LlmpyError("prepare: name a source (tinyshakespeare, text, fineweb, tinystories, hellaswag) "
                         "or give --verify DIR")
    if args.source == "hellaswag":
        from llmpy.data.hellaswag import prepare_hellaswag

        out = args.out or "data/hellaswag"
        info = prepare_hellaswag(out, args.input[0] if args.input else None)
        print(f"{Path(out) / 'hellaswag_val.jsonl'}: {info['examples']:,} examples"
              f"{' (the official val set)' if info['official'] else ' (not byte-identical to the official file)'}")
        return 0
    if args.source == "tinyshakespeare":
        manifest = prepare.prepare_tinyshakespeare(args.out or "data/tinyshakespeare",
                                                   input_path=args.input[0] if args.input else None)
    elif args.source == "text":
        if not args.input:
            raise LlmpyError("prepare text: give --input FILE [FILE ...] (.txt, .jsonl, .jsonl.gz, .parquet)")
        manifest = prepare.prepare_text(
            args.input, args.out or f"data/{args.name}", name=args.name, shard_size=args.shard_size,
            val_inputs=args.val_input, val_tokens=args.val_tokens, quiet=args.quiet,
        )
    else:
        from llmpy.data.sources import TINYSTORIES, fineweb_spec

        spec = fineweb_spec(args.type, args.version) if args.source == "fineweb" else TINYSTORIES
        manifest = prepare.prepare_stream(
            spec, args.out or spec.default_out, inputs=args.input, val_inputs=args.val_input,
            shard_size=args.shard_size, workers=args.workers, max_tokens=args.max_tokens, quiet=args.quiet,
        )
    shards = manifest["shards"]
    for shard in shards[:3] + ([{"split": "...", "tokens": 0, "file": ""}] if len(shards) > 6 else []) + shards[3:][-3:]:
        print(f"{shard['split']:5s} {shard['tokens']:>12,} tokens  {shard['file']}" if shard["file"] else "...")
    totals = manifest["total_tokens"]
    print(f"{len(shards)} shards: {totals['val']:,} val + {totals['train']:,} train tokens")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from llmpy.sample import run_sample

    return run_sample(
        args.model, args.prompt, num_samples=args.num_samples, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed, device=args.device,
        tokenizer_path=args.tokenizer,
    )


def cmd_eval(args: argparse.Namespace) -> int:
    from llmpy.eval.report import run_eval
    from llmpy.runtime import select_runtime

    run_eval(
        args.model, val_data=args.val_data, val_tokens=args.val_tokens, batch_size=args.batch_size,
        seq_len=args.seq_len, hellaswag=args.hellaswag_file, skip_hellaswag=args.no_hellaswag, limit=args.limit,
        runtime=select_runtime(args.device, args.dtype), as_json=args.json,
    )
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from llmpy.convert.load import load_any_model

    model = load_any_model(args.model)
    out = Path(args.out)
    if args.to == "hf":
        from llmpy.convert.hf import save_hf_model

        save_hf_model(model, out, bpe_file=_bpe_file_if_available())
    elif args.to == "llmc":
        from llmpy.convert.llmc import write_llmc_model, write_llmc_tokenizer

        write_llmc_model(model, out, dtype=args.dtype)
        bpe_file = _bpe_file_if_available()
        if bpe_file is not None:
            write_llmc_tokenizer(out.parent / "gpt2_tokenizer.bin", bpe_file)
    else:
        from llmpy.train.checkpoint import save_model_checkpoint

        save_model_checkpoint(out, 0, model, {"converted_from": args.model})
    print(f"{args.model} -> {out} ({args.to})")
    return 0


def _bpe_file_if_available():
    """The GPT-2 ranks file for writing tokenizer files next to a converted model; None (with a note) if missing."""
    from llmpy.tokenizer import resolve_bpe_file

    try:
        return resolve_bpe_file()
    except LlmpyError as exc:
        print(f"note: tokenizer files not written ({exc})", file=sys.stderr)
        return None


def cmd_quickstart(args: argparse.Namespace) -> int:
    from llmpy.quickstart import run_quickstart

    run_quickstart(out_dir=args.out, steps=args.steps, device=args.device, data_dir=args.data)
    return 0


MODEL_HELP = ("llmpy run directory or checkpoint, llm.c model .bin, Hugging Face GPT-2 directory, "
              "or a hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmpy", description="Reproduce GPT-2 from scratch, the llm.c way, in PyTorch.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from llmpy import bench, plan, plot

    for module, name, help_text in (
        (bench, "bench", "time the real training step on random tokens (tok/s, MFU, memory, --profile)"),
        (plot, "plot", "plot runs (main.log / metrics.jsonl): loss, HellaSwag, LR, grad norm, tok/s, MFU"),
        (plan, "plan", "estimate the time and cost of a run before paying for it"),
    ):
        command = sub.add_parser(name, help=help_text)
        module.add_arguments(command)
        command.set_defaults(func=module.run)

    quick = sub.add_parser("quickstart", help="prepare tiny Shakespeare, train a small GPT-2, sample from it")
    quick.add_argument("--out", default="runs/quickstart", help="run directory (default: runs/quickstart)")
    quick.add_argument("--steps", type=int, default=None, help="optimizer steps (default: 200 on CPU, 300 on GPU)")
    quick.add_argument("--device", default="auto", help="auto | cpu | cuda")
    quick.add_argument("--data", default=None, help="where to put the shards (default: the llmpy cache)")
    quick.set_defaults(func=cmd_quickstart)

    prep = sub.add_parser("prepare", help="tokenize a data set into llm.c token shards (or --verify them)")
    prep.add_argument("source", nargs="?", choices=["tinyshakespeare", "text", "fineweb", "tinystories", "hellaswag"],
                      help="what to prepare")
    prep.add_argument("--input", nargs="+", help="local input file(s): .txt, .jsonl, .jsonl.gz, .parquet")
    prep.add_argument("--val-input", nargs="+", help="files for the val split")
    prep.add_argument("--val-tokens", type=int, default=None, help="(text) tokens of leading documents for val")
    prep.add_argument("--name", default="text", help="(text) shard name prefix")
    prep.add_argument("--type", default="classic", choices=["classic", "edu"], help="(fineweb) FineWeb or FineWeb-Edu")
    prep.add_argument("--version", default="10B", choices=["10B", "100B"], help="(fineweb) sample-10BT or sample-100BT")
    prep.add_argument("--out", default=None, help="output directory (default: data/<name>)")
    prep.add_argument("--shard-size", type=int, default=100_000_000, help="tokens per shard (default 100M)")
    prep.add_argument("--workers", type=int, default=None, help="tokenizer processes (default: all cores but one)")
    prep.add_argument("--max-tokens", type=int, default=None, help="stop after this many tokens in all")
    prep.add_argument("--quiet", action="store_true", help="no progress bar (for logs)")
    prep.add_argument("--verify", metavar="DIR", help="check every shard in DIR against its manifest and exit")
    prep.set_defaults(func=cmd_prepare)

    train = sub.add_parser(
        "train", add_help=False, allow_abbrev=False,
        help="train a GPT-2 (llm.c's train_gpt2cu flags; --help for the list)",
        description="Train GPT-2. Takes llm.c's train_gpt2cu flags with llm.c's meanings, long options, and --config.",
    )
    train.add_argument("--help", action="help", help="show this help and exit")
    add_train_arguments(train)
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("eval", help="val loss and HellaSwag of a model, beside OpenAI's GPT-2 and GPT-3")
    evaluate.add_argument("--model", required=True, help=MODEL_HELP)
    evaluate.add_argument("--val-data", "-j", default=None, help="val shards glob for the loss (e.g. fineweb_val_*.bin)")
    evaluate.add_argument("--val-tokens", type=int, default=10_485_760, help="token budget for the val loss")
    evaluate.add_argument("--batch-size", "-b", type=int, default=8)
    evaluate.add_argument("--seq-len", "-t", type=int, default=1024)
    evaluate.add_argument("--hellaswag-file", default=None, help="hellaswag_val.jsonl (default: cache or download)")
    evaluate.add_argument("--no-hellaswag", action="store_true", help="skip HellaSwag")
    evaluate.add_argument("--limit", type=int, default=None, help="only the first N HellaSwag examples")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--dtype", default="auto", help="auto | bf16 | fp32")
    evaluate.add_argument("--json", action="store_true", help="one JSON line instead of the table")
    evaluate.set_defaults(func=cmd_eval)

    convert = sub.add_parser("convert", help="llmpy <-> Hugging Face GPT-2 <-> llm.c model files")
    convert.add_argument("--model", required=True, help=MODEL_HELP)
    convert.add_argument("--to", required=True, choices=["hf", "llmc", "llmpy"], help="output format")
    convert.add_argument("--out", required=True, help="hf/llmpy: a directory; llmc: the .bin file")
    convert.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="(llmc) parameter precision")
    convert.set_defaults(func=cmd_convert)

    sample = sub.add_parser("sample", help="generate text from a trained model")
    sample.add_argument("--model", required=True, help=MODEL_HELP)
    sample.add_argument("--prompt", default="", help="prompt text ('' = start from <|endoftext|>)")
    sample.add_argument("--num-samples", type=int, default=1)
    sample.add_argument("--max-new-tokens", type=int, default=128)
    sample.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    sample.add_argument("--top-k", type=int, default=50, help="0 = off")
    sample.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (1.0 = off)")
    sample.add_argument("--seed", type=int, default=1337)
    sample.add_argument("--device", default="auto")
    sample.add_argument("--tokenizer", default=None, help="path to gpt2.tiktoken")
    sample.set_defaults(func=cmd_sample)
    return parser


def auto_restart(argv: list[str]) -> int:
    """`llmpy train ... --auto-restart N`: rerun the same training with -y 1 until it finishes (at most N launches).

    A crash, a kill or a preemption (exit 75) relaunches; success or a usage error (exit 2) ends the loop."""
    import subprocess

    index = argv.index("--auto-restart")
    try:
        launches = int(argv[index + 1])
    except (IndexError, ValueError):
        print("llmpy: error: --auto-restart takes a number of launches", file=sys.stderr)
        return 2
    command = argv[:index] + argv[index + 2:]
    for flag in ("-y", "--resume"):
        if flag in command:
            position = command.index(flag)
            del command[position: position + 2]
    command += ["-y", "1"]
    code = 1
    for launch in range(1, launches + 1):
        code = subprocess.call([sys.executable, "-m", "llmpy", *command])
        if code in (0, 2):
            return code
        print(f"llmpy: training exited with code {code}; relaunching with -y 1 ({launch}/{launches})", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"] and "--auto-restart" in argv:
        return auto_restart(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LlmpyError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"llmpy: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llmpy: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
