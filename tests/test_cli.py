"""CLI: llm.c's train_gpt2cu flags, long options, --config files, and one-line errors."""

import argparse
import os
import re
import shlex
import subprocess
import sys

import pytest

from llmpy.cli import build_parser, main, train_config_from_args
from llmpy.errors import LlmpyError

# llm.c's scripts/run_gpt2_124M.sh flags, verbatim
LLMC_124M = (
    'train -i "dev/data/fineweb10B/fineweb_train_*.bin" -j "dev/data/fineweb10B/fineweb_val_*.bin" '
    '-o log124M -v 250 -s 20000 -g 144 -h 1 -b 64 -t 1024 -d 524288 -r 0 -z 1 -c 0.1 -l 0.0006 '
    '-q 0.0 -u 700 -n 5000 -y 1 -e "d12"'
)


def parse(command: str):
    return train_config_from_args(build_parser().parse_args(shlex.split(command)))


def test_llmc_run_script_flags_map_to_config():
    cfg = parse(LLMC_124M)
    assert cfg.train_data == "dev/data/fineweb10B/fineweb_train_*.bin"
    assert cfg.val_data == "dev/data/fineweb10B/fineweb_val_*.bin"
    assert cfg.output_dir == "log124M"
    assert (cfg.val_every, cfg.sample_every, cfg.gen_tokens, cfg.hellaswag) == (250, 20000, 144, 1)
    assert (cfg.batch_size, cfg.seq_len, cfg.total_batch_size) == (64, 1024, 524288)
    assert (cfg.recompute, cfg.zero_stage, cfg.weight_decay, cfg.learning_rate) == (0, 1, 0.1, 0.0006)
    assert (cfg.final_lr_frac, cfg.warmup_steps, cfg.checkpoint_every, cfg.resume, cfg.model) == (0.0, 700, 5000, 1, "d12")
    assert cfg.grad_accum_steps(world_size=8) == 1
    assert cfg.grad_accum_steps(world_size=1) == 8


def test_remaining_llmc_flags_and_negative_values():
    cfg = parse("train -i x.bin -x -1 -m -1 -k wsd -nk 3 -nm 1000 -sl 5.0 -sg 4.5 -a 1 -f 0 -w 1 -ge 2")
    assert (cfg.max_steps, cfg.val_max_steps, cfg.lr_schedule) == (-1, -1, "wsd")
    assert (cfg.checkpoint_keep, cfg.checkpoint_keep_every) == (3, 1000)
    assert (cfg.skip_loss_zscore, cfg.skip_grad_zscore, cfg.overfit_batch, cfg.tf32) == (5.0, 4.5, 1, 0)


def test_long_options_equal_short_flags():
    assert parse("train --train-data a.bin --batch-size 8 --seq-len 64 --learning-rate 1e-3") == parse(
        "train -i a.bin -b 8 -t 64 -l 1e-3"
    )


def test_dash_h_is_hellaswag_and_help_is_long(capsys):
    assert parse("train -i a.bin -h 1").hellaswag == 1
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "-sl SKIP_LOSS_ZSCORE" in out and "--total-batch-size" in out


def test_config_file_toml_and_yaml_under_command_line(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('train-data = "t.bin"\nbatch_size = 16\nlearning_rate = 0.001\nlr-schedule = "linear"\n')
    cfg = parse(f"train --config {toml} -b 32")
    assert (cfg.train_data, cfg.batch_size, cfg.learning_rate, cfg.lr_schedule) == ("t.bin", 32, 0.001, "linear")
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("train_data: y.bin\nseq_len: 128\n")
    cfg = parse(f"train --config {yaml_file}")
    assert (cfg.train_data, cfg.seq_len) == ("y.bin", 128)


@pytest.mark.parametrize(
    "content, message",
    [("bogus_option = 1\n", "unknown option(s) bogus_option"),
     ("batch_size = 'big'\n", "takes an integer, not a string"),
     ("batch_size = [\n", "cannot parse")],
)
def test_config_file_errors(tmp_path, content, message):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(LlmpyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(f"train --config {path}")


def test_inconsistent_values_fail_fast():
    with pytest.raises(LlmpyError, match="-d/--total-batch-size 1000 is not a positive multiple of B\\*T\\*world"):
        parse("train -i a.bin -b 4 -t 64 -d 1000").validate()
    with pytest.raises(LlmpyError, match="-k/--lr-schedule"):
        parse("train -i a.bin -k triangle").validate()
    with pytest.raises(LlmpyError, match="-i/--train-data"):
        parse("train -b 4").validate()


def test_errors_print_one_line_and_exit_2(capsys, tmp_path):
    code = main(["train", "-i", str(tmp_path / "nothing_*.bin"), "-t", "2048", "-e", "d2"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("llmpy: error: ") and "\n" not in err
    assert "-t/--seq-len 2048 exceeds the model's max positions 1024" in err
    assert main(["train", "-i", "a.bin", "-pn", "2"]) == 2
    assert "torchrun" in capsys.readouterr().err


def test_debug_is_accepted_after_the_subcommand(capsys):
    assert main(["eval", "--model", "no/such/model", "--no-hellaswag", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("llmpy: error: --model no/such/model")


def test_a_closed_pipe_stops_the_command_without_a_traceback(monkeypatch, capsys):
    import io

    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["plan"]) == 141  # what a program killed by SIGPIPE returns, as llm.c would under `| head`
    err = capsys.readouterr().err
    assert err == "llmpy: stopped: its output was closed (broken pipe)\n"


@pytest.mark.parametrize("flags, named", [("-l inf", "--learning-rate"), ("-l nan", "--learning-rate"),
                                          ("-v -5", "-v/--val-every"), ("-n -3", "-n/--checkpoint-every"),
                                          ("-g -5", "-g/--gen-tokens"), ("-sl -1", "-sl/--skip-loss-zscore"),
                                          ("-y 2", "-y/--resume"), ("--overwrite 3", "--overwrite"),
                                          ("--seed -1", "--seed must be in [0, 2**32), got -1"),
                                          ("--seed 4294967296", "--seed must be in [0, 2**32), got 4294967296")])
def test_numeric_flags_that_can_only_produce_garbage_are_refused(flags, named):
    with pytest.raises(LlmpyError, match=re.escape(named)):
        parse(f"train -i a.bin {flags}").validate()


@pytest.mark.parametrize("flags, world_size, named", [
    ("-x 0", None, "-x/--max-steps must be -1 (one epoch) or > 0, got 0"),
    ("-l inf", None, "--learning-rate must be a finite number, got inf"),
    ("--seed -1", None, "--seed must be in [0, 2**32)"),
    ("-b 2 -t 32 -d 64", "2", "-d/--total-batch-size 64 is not a positive multiple of B*T*world = 2*32*2 = 128"),
])
def test_a_bad_training_flag_is_refused_before_torch_is_imported(flags, world_size, named):
    # validation ran after build_trainer's imports: 3 s for a one-line range error
    env = {key: value for key, value in os.environ.items() if key not in ("WORLD_SIZE", "RANK")}
    if world_size is not None:
        env["WORLD_SIZE"] = world_size  # torchrun's: -d must divide over every rank
    script = "import sys; from llmpy.cli import main; code = main(sys.argv[1:]); print(code, 'torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", script, "train", "-i", "x.bin", *flags.split()], capture_output=True,
                         text=True, timeout=300, check=False, env=env)
    assert run.stdout.split() == ["2", "False"], run.stdout + run.stderr
    assert run.stderr.startswith(f"llmpy: error: {named}") and run.stderr.count("\n") == 1, run.stderr


def every_option_help():
    """(command, option strings, help) of every option of every subcommand."""
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, command in commands.items():
        for action in command._actions:
            if action.help and action.help != argparse.SUPPRESS:
                yield name, action.option_strings, command._get_formatter()._expand_help(action)


def test_every_default_is_said_once_and_names_the_resolution_order():
    helps = list(every_option_help())
    assert len(helps) > 100
    for command, options, text in helps:
        assert text.count("(default") <= 1, (command, options, text)
        assert "(default: '')" not in text and "cache or download" not in text, (command, options, text)
    by_option = {(command, option): text for command, options, text in helps for option in options}
    for command in ("train", "eval"):
        assert "$LLMPY_HELLASWAG, else data/hellaswag/hellaswag_val.jsonl" in by_option[command, "--hellaswag-file"]
    for command in ("train", "eval", "sample", "convert"):
        assert "$LLMPY_GPT2_BPE, else data/gpt2.tiktoken" in by_option[command, "--tokenizer"]
    assert by_option["train", "--lr-schedule"].endswith("(default: cosine)")
    assert by_option["bench", "--batch-size"].endswith("(default: 32)")  # bench's own default, not train's
