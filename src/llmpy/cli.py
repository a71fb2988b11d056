"""The `llmpy` command: subcommands, llm.c's short flags -> TrainConfig, one-line errors. Nothing else."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from llmpy.argtypes import positive_int, seed_int
from llmpy.config import HUB_FORMS, MODEL_FILE_FORMS
from llmpy.flags import COMPAT_FLAGS, add_train_arguments, train_config_from_args
from llmpy.errors import PREEMPTED_EXIT_CODE, LlmpyError
from llmpy.resources import GPT2_BPE, HELLASWAG_VAL, default_help
from llmpy.suggest import SuggestingParser
from llmpy.supervisor import auto_restart

def cmd_train(args: argparse.Namespace) -> int:
    for name in vars(args):
        if name.startswith("compat_"):
            print(f"note: -{name[7:]} accepted for llm.c compatibility; {COMPAT_FLAGS['-' + name[7:]]}")
    config = train_config_from_args(args)
    # a bad flag is refused before torch is imported (seconds); the trainer checks again, in the job it joined.
    # torchrun's WORLD_SIZE only: a world of one never refuses a -d that a larger world would take
    world_size = os.environ.get("WORLD_SIZE", "1")
    config.validate(int(world_size) if world_size.isdigit() and int(world_size) > 0 else 1)

    from llmpy.train.build import build_trainer
    from llmpy.train.faults import Preempted
    from llmpy.resume_rules import RunComplete

    from llmpy.distributed import leave_distributed

    code = 0
    try:
        build_trainer(config).fit()
    except RunComplete as complete:  # -y 1 of a finished run: not an error, and nothing was touched
        print(f"llmpy: {complete}")
    except Preempted as stopped:  # every rank stopped after the same step; 75 with or without a checkpoint
        print(f"llmpy: {stopped}{'; continue with the same command and -y 1' if stopped.checkpoint else ''}",
              file=sys.stderr)
        code = PREEMPTED_EXIT_CODE
    leave_distributed(code)  # a rank of a torchrun job ends here
    return code


def cmd_prepare(args: argparse.Namespace) -> int:
    from llmpy.data import prepare
    from llmpy.data.manifest import describe_text_source

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
    from llmpy.data.textfiles import check_encoding, is_utf8

    encoding = check_encoding(args.encoding)
    if args.source == "hellaswag":
        from llmpy.data.hellaswag import prepare_hellaswag

        if not is_utf8(encoding):
            raise LlmpyError("prepare hellaswag: --encoding does not apply (eval reads the file as UTF-8)")
        out = args.out or "data/hellaswag"
        info = prepare_hellaswag(out, args.input[0] if args.input else None)
        print(f"{Path(out) / 'hellaswag_val.jsonl'}: {info['examples']:,} examples"
              f"{' (the official val set)' if info['official'] else ' (not byte-identical to the official file)'}")
        return 0
    if args.source == "tinyshakespeare":
        manifest = prepare.prepare_tinyshakespeare(args.out or "data/tinyshakespeare",
                                                   input_path=args.input[0] if args.input else None, encoding=encoding)
    elif args.source == "text":
        if not args.input:
            raise LlmpyError("prepare text: give --input FILE [FILE ...] (.txt, .jsonl, .jsonl.gz, .parquet)")
        manifest = prepare.prepare_text(
            args.input, args.out or f"data/{args.name}", name=args.name, shard_size=args.shard_size,
            val_inputs=args.val_input, val_tokens=args.val_tokens, quiet=args.quiet, encoding=encoding,
        )
    else:
        from llmpy.data.sources import TINYSTORIES, fineweb_spec

        spec = fineweb_spec(args.type, args.version) if args.source == "fineweb" else TINYSTORIES
        manifest = prepare.prepare_stream(
            spec, args.out or spec.default_out, inputs=args.input, val_inputs=args.val_input,
            shard_size=args.shard_size, workers=args.workers, max_tokens=args.max_tokens, quiet=args.quiet,
            encoding=encoding,
        )
    shards = manifest["shards"]
    for shard in shards[:3] + ([{"split": "...", "tokens": 0, "file": ""}] if len(shards) > 6 else []) + shards[3:][-3:]:
        print(f"{shard['split']:5s} {shard['tokens']:>12,} tokens  {shard['file']}" if shard["file"] else "...")
    totals = manifest["total_tokens"]
    print(f"{len(shards)} shards: {totals['val']:,} val + {totals['train']:,} train tokens "
          f"of {describe_text_source(manifest['settings'].get('source'))}")
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

    runtime = select_runtime(args.device, args.dtype)
    runtime.activate(tf32=True)
    run_eval(
        args.model, val_data=args.val_data, val_tokens=args.val_tokens, batch_size=args.batch_size,
        seq_len=args.seq_len, hellaswag=args.hellaswag_file, skip_hellaswag=args.no_hellaswag, limit=args.limit,
        runtime=runtime, as_json=args.json, tokenizer=args.tokenizer,
    )
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from llmpy.convert.load import load_any_model
    from llmpy.convert.output import check_output

    out = Path(args.out)
    replaces = check_output(out, args.to)  # before loading: a refused --out costs nothing
    model = load_any_model(args.model)
    try:
        _write_conversion(model, out, args)
    except LlmpyError:  # DiskFullError included: it says more
        raise
    except OSError as exc:  # an --out that cannot be created (/proc/x, a read-only directory)
        raise LlmpyError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    print(f"{args.model} -> {out} ({args.to}{', replacing the earlier conversion there' if replaces else ''})")
    return 0


def _write_conversion(model, out: Path, args: argparse.Namespace) -> None:
    """Write `model` to `out` in the format of --to."""
    from llmpy.families import family_of

    modern_hf = args.to == "hf" and family_of(model) == "modern"
    if args.dtype != "fp32" and args.to != "llmc" and not modern_hf:
        raise LlmpyError(f"--dtype {args.dtype}: --to {args.to} writes a {family_of(model)} model in fp32 only "
                         f"(--dtype is for --to llmc, and --to hf of a modern-family model); leave --dtype out")
    if modern_hf:
        import torch

        from llmpy.convert.hf_modern import save_hf_modern

        dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        save_hf_modern(model, out, bpe_file=_bpe_file_if_available(args.tokenizer), dtype=dtype)
    elif args.to == "hf":
        from llmpy.convert.hf import save_hf_model

        save_hf_model(model, out, bpe_file=_bpe_file_if_available(args.tokenizer))
    elif args.to == "llmc":
        from llmpy.convert.llmc import TOKENIZER_FILE_NAME, write_llmc_model, write_llmc_tokenizer

        write_llmc_model(model, out, dtype=args.dtype)
        bpe_file = _bpe_file_if_available(args.tokenizer)
        if bpe_file is not None:
            write_llmc_tokenizer(out.parent / TOKENIZER_FILE_NAME, bpe_file)
    else:
        from llmpy.checkpoint import export_model

        export_model(out, model, {"converted_from": args.model})


def _bpe_file_if_available(path: str | None):
    """The GPT-2 ranks file for writing tokenizer files next to a converted model; None (with a note) if none is
    found. A --tokenizer file that is missing or wrong is an error: it was asked for."""
    from llmpy.tokenizer import resolve_bpe_file

    if path:
        return resolve_bpe_file(path, flag="--tokenizer")
    try:
        return resolve_bpe_file(flag="--tokenizer")
    except LlmpyError as exc:
        print(f"note: tokenizer files not written ({exc})", file=sys.stderr)
        return None


def cmd_quickstart(args: argparse.Namespace) -> int:
    from llmpy.quickstart import run_quickstart
    from llmpy.train.faults import Preempted

    try:
        run_quickstart(out_dir=args.out, steps=args.steps, device=args.device, data_dir=args.data)
    except Preempted as stopped:  # as `llmpy train` stops: the checkpoint is written, one line, exit 75
        sample = f"`llmpy sample --model {args.out}` samples from it, and " if stopped.checkpoint else ""
        print(f"llmpy: {stopped}; {sample}the next quickstart moves it aside and starts over", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    return 0


DEFAULT_VAL_TOKENS = 10_485_760  # llm.c's 124M setting: -m 20 batches of 64 x 1024 on 8 GPUs
MODEL_HELP = f"{MODEL_FILE_FORMS}, or {HUB_FORMS}"
DEVICE_HELP = "auto | cpu | cuda | cuda:N"


def device_flag(value: str) -> str:
    """An eval/sample --device: the devices llmpy runs on (torch knows more, e.g. mps, that autocast here cannot)."""
    kind, _, index = value.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise argparse.ArgumentTypeError(f"{value!r} is not one of {DEVICE_HELP}")
    return value


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """--help that shows each option's default, unless its help says it already or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        if ("(default" in text or "(required)" in text or not action.option_strings or default is None
                or default is False or default == argparse.SUPPRESS):
            return text
        return f"{text} (default: {'none' if default == '' else '%(default)s'})"


def add_command(sub, name: str, help_text: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand whose --help starts with a one-line description and shows the defaults."""
    kwargs.setdefault("description", f"{help_text[0].upper()}{help_text[1:]}.")
    return sub.add_parser(name, help=help_text, formatter_class=DefaultsHelpFormatter, **kwargs)


# OSErrors that a second try may not meet (a network filesystem's hiccup): exit 1, not 2, so that --auto-restart
# relaunches the run (2 says "the same command fails the same way")
TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.EAGAIN, errno.EINTR, errno.ECONNRESET})


def one_line(message: str) -> str:
    """A message as the one line llmpy prints (a newline in a user's value, e.g. a path, shown escaped)."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


class OneLineParser(SuggestingParser):
    """argparse whose usage errors are one line, as every llmpy error is: `llmpy: error: MESSAGE (`llmpy eval
    --help`)` and exit 2, instead of a usage block above the error. Subcommands' parsers are of this class too."""

    def error(self, message: str):
        hint = "" if "--help" in message else f" (`{self.prog} --help`)"
        self.exit(2, f"llmpy: error: {one_line(message)}{hint}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="llmpy", description="Reproduce GPT-2 from scratch, the llm.c way, in PyTorch.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from llmpy import bench, plan, plot

    for module, name, help_text in (
        (bench, "bench", "time the real training step on random tokens (tok/s, MFU, memory, --profile)"),
        (plot, "plot", "plot runs (main.log / metrics.jsonl): loss, HellaSwag, LR, grad norm, tok/s, MFU"),
        (plan, "plan", "estimate the time and cost of a run before paying for it"),
    ):
        command = add_command(sub, name, help_text)
        module.add_arguments(command)
        command.set_defaults(func=module.run)

    quick = add_command(sub, "quickstart", "prepare tiny Shakespeare, train a small GPT-2, sample from it")
    quick.add_argument("--out", default="runs/quickstart", help="run directory (default: runs/quickstart)")
    quick.add_argument("--steps", type=positive_int, default=None,
                       help="optimizer steps (default: 200 on CPU, 300 on GPU)")
    quick.add_argument("--device", default="auto", help="auto | cpu | cuda")
    quick.add_argument("--data", default=None, help="where to put the shards (default: the llmpy cache)")
    quick.set_defaults(func=cmd_quickstart)

    prep = add_command(sub, "prepare", "tokenize a data set into llm.c token shards (or --verify them)")
    prep.add_argument("source", nargs="?", choices=["tinyshakespeare", "text", "fineweb", "tinystories", "hellaswag"],
                      help="what to prepare")
    prep.add_argument("--input", nargs="+", help="local input file(s): .txt, .jsonl, .jsonl.gz, .parquet")
    prep.add_argument("--val-input", nargs="+", help="files for the val split")
    prep.add_argument("--val-tokens", type=positive_int, default=None,
                      help="(text) tokens of leading documents for val")
    prep.add_argument("--encoding", default="utf-8",
                      help="of the .txt/.jsonl inputs, e.g. latin-1 or cp1252 (default: utf-8; text that does not "
                           "decode is refused)")
    prep.add_argument("--name", default="text", help="(text) shard name prefix")
    prep.add_argument("--type", default="classic", choices=["classic", "edu"], help="(fineweb) FineWeb or FineWeb-Edu")
    prep.add_argument("--version", default="10B", choices=["10B", "100B"], help="(fineweb) sample-10BT or sample-100BT")
    prep.add_argument("--out", default=None, help="output directory (default: data/<name>)")
    prep.add_argument("--shard-size", type=positive_int, default=100_000_000, help="tokens per shard (default 100M)")
    prep.add_argument("--workers", type=positive_int, default=None,
                      help="tokenizer processes (default: all cores but one)")
    prep.add_argument("--max-tokens", type=positive_int, default=None, help="stop after this many tokens in all")
    prep.add_argument("--quiet", action="store_true", help="no progress bar (for logs)")
    prep.add_argument("--verify", metavar="DIR", help="check every shard in DIR against its manifest and exit")
    prep.set_defaults(func=cmd_prepare)

    train = add_command(
        sub, "train", "train a GPT-2 (llm.c's train_gpt2cu flags; --help for the list)", add_help=False,
        allow_abbrev=False,
        description="Train GPT-2. Takes llm.c's train_gpt2cu flags with llm.c's meanings, long options, and --config.",
    )
    train.add_argument("--help", action="help", help="show this help and exit")
    add_train_arguments(train)
    train.set_defaults(func=cmd_train)

    evaluate = add_command(sub, "eval", "val loss and HellaSwag of a model, beside OpenAI's GPT-2 and GPT-3")
    evaluate.add_argument("--model", required=True, help=MODEL_HELP)
    evaluate.add_argument("--val-data", "-j", default=None, help="val shards glob for the loss (e.g. fineweb_val_*.bin)")
    evaluate.add_argument("--val-tokens", type=positive_int, default=DEFAULT_VAL_TOKENS,
                          help=f"token budget for the val loss (default: {DEFAULT_VAL_TOKENS:,})")
    evaluate.add_argument("--batch-size", "-b", type=positive_int, default=8, help="sequences per forward pass (default: 8)")
    evaluate.add_argument("--seq-len", "-t", type=positive_int, default=1024, help="sequence length (default: 1024)")
    evaluate.add_argument("--hellaswag-file", default=None, help=f"hellaswag_val.jsonl {default_help(HELLASWAG_VAL)}")
    evaluate.add_argument("--tokenizer", default=None, help=f"gpt2.tiktoken {default_help(GPT2_BPE)}")
    evaluate.add_argument("--no-hellaswag", action="store_true", help="skip HellaSwag")
    evaluate.add_argument("--limit", type=int, default=None, help="only the first N HellaSwag examples")
    evaluate.add_argument("--device", default="auto", type=device_flag, help=DEVICE_HELP)
    evaluate.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                          help="auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32")
    evaluate.add_argument("--json", action="store_true", help="one JSON line instead of the table")
    evaluate.set_defaults(func=cmd_eval)

    convert = add_command(sub, "convert", "llmpy <-> Hugging Face <-> llm.c (GPT-2 only) model files")
    convert.add_argument("--model", required=True, help=MODEL_HELP)
    convert.add_argument("--to", required=True, choices=["hf", "llmc", "llmpy"], help="output format")
    convert.add_argument("--out", required=True, help="hf/llmpy: a directory; llmc: the .bin file")
    convert.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                         help="(llmc; hf of a modern-family model) parameter precision (default: fp32)")
    convert.add_argument("--tokenizer", default=None,
                         help=f"gpt2.tiktoken, for the tokenizer files beside the model {default_help(GPT2_BPE)}")
    convert.set_defaults(func=cmd_convert)

    sample = add_command(sub, "sample", "generate text from a trained model")
    sample.add_argument("--model", required=True, help=MODEL_HELP)
    sample.add_argument("--prompt", default="", help="prompt text ('' = start from <|endoftext|>)")
    sample.add_argument("--num-samples", type=int, default=1, help="samples, generated as one batch")
    sample.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate per sample")
    sample.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    sample.add_argument("--top-k", type=int, default=50, help="0 = off")
    sample.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (1.0 = off)")
    sample.add_argument("--seed", type=seed_int, default=1337, help="random seed of the sampling")
    sample.add_argument("--device", default="auto", type=device_flag, help=DEVICE_HELP)
    sample.add_argument("--tokenizer", default=None, help=f"gpt2.tiktoken {default_help(GPT2_BPE)}")
    sample.set_defaults(func=cmd_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"] and any(arg.split("=", 1)[0] == "--auto-restart" for arg in argv):
        return auto_restart(argv)
    if "--debug" in argv[1:]:  # accepted after the subcommand too
        argv = ["--debug"] + [arg for arg in argv if arg != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `llmpy train ... | head`: the reader left, so the command stops, as a C program would
        with contextlib.suppress(OSError, ValueError, AttributeError):  # no second error when Python flushes at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("llmpy: stopped: its output was closed (broken pipe)", file=sys.stderr)
        return 141  # 128 + SIGPIPE
    except LlmpyError as exc:
        return _error(str(exc), args.debug)
    except OSError as exc:  # the net under the checks made where files are used: one line naming the path
        path = f"{exc.filename}{f' -> {exc.filename2}' if exc.filename2 else ''}: " if exc.filename else ""
        code = _error(f"{path}{exc.strerror or exc}", args.debug)
        return 1 if exc.errno in TRANSIENT_ERRNOS else code
    except KeyboardInterrupt:
        print("llmpy: interrupted", file=sys.stderr)
        return 130


def _error(message: str, debug: bool) -> int:
    """Print a user's error as one line (the traceback above it with --debug); exit code 2."""
    if debug:
        traceback.print_exc()
    print(f"llmpy: error: {one_line(message)}", file=sys.stderr)
    return 2


def entry() -> None:
    """The `llmpy` program (console script and `python -m llmpy`). Once the command is over, a Ctrl-C has nothing
    left to stop: it is ignored while Python shuts down, else it turns a finished command into a KeyboardInterrupt."""
    code = main()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise SystemExit(code)


if __name__ == "__main__":
    entry()
