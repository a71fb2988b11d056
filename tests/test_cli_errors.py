"""Bad input of every kind gets one line (`llmpy: error: ...`, exit 2), never a traceback: --config values of the
wrong type and config files that cannot be read (issue 26, item 10), paths that cannot be created or read and the
numeric arguments of every subcommand (item 11), eval --val-tokens and quickstart --steps that were not honoured
(item 9)."""

import errno
from pathlib import Path

import pytest

from conftest import write_random_shards
from llmpy.cli import main

# a tiny run that fails, or finishes, in a few seconds on a CPU
TINY_RUN = ["-e", "d2w64", "-b", "2", "-t", "32", "-x", "1", "--device", "cpu", "--compile", "0", "-v", "0", "-s", "0"]


def exit_code(argv: list[str]) -> int:
    """What `llmpy ARGV` exits with: main's return, or argparse's SystemExit (as the console script sees it)."""
    try:
        return main(argv)
    except SystemExit as stopped:
        return stopped.code


def the_error(capsys) -> str:
    """stderr's error line, checked to be its last line and its only error, with no traceback (a note may come
    before it, e.g. which checkpoint of a run directory was loaded)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip("\n").split("\n")
    assert lines[-1].startswith("llmpy: error: ") and err.count("llmpy: error: ") == 1, err
    return lines[-1]


# ------------------------------------------------------------------------------------------- item 10: --config

@pytest.mark.parametrize("text, named", [
    ("batch-size = 4.5", "batch-size = 4.5: -b/--batch-size takes an integer, not a float"),
    ("total-batch-size = 512.0", "total-batch-size = 512.0: -d/--total-batch-size takes an integer, not a float "
                                 "(write 512)"),
    ("seed = 1.5", "seed = 1.5: --seed takes an integer, not a float"),
    ("model = 12", "model = 12: -e/--model takes a string, not an integer"),
    ('train-data = ["a"]', 'train-data = ["a"]: -i/--train-data takes a string, not a list'),
    ("batch-size = true", "batch-size = true: -b/--batch-size takes an integer, not a boolean"),
    ("learning-rate = true", "learning-rate = true: -l/--learning-rate takes a number, not a boolean"),
    ('learning-rate = "3e-4"', 'learning-rate = "3e-4": -l/--learning-rate takes a number, not a string'),
    ("[batch-size]\nx = 1", 'batch-size = {"x": 1}: -b/--batch-size takes an integer, not a table'),
    ("seed = 4294967296", "--seed must be in [0, 2**32), got 4294967296"),
    ("max-steps = 99999999999999999999", "--max-steps must be an integer in [-2**63, 2**63)"),
    pytest.param("learning-rate = 1" + "0" * 400, "...: -l/--learning-rate is beyond a float's range", id="1e400"),
])
def test_a_toml_value_of_the_wrong_type_is_one_line_naming_file_key_value_and_type(tmp_path, capsys, text, named):
    config = tmp_path / "run.toml"
    data = "" if text.startswith("train-data") else f'train-data = "{tmp_path}/none_*.bin"\n'
    config.write_text(f"{data}{text}\n")
    assert exit_code(["train", "--config", str(config)]) == 2
    error = the_error(capsys)
    assert named in error
    if "takes" in named:
        assert str(config) in error


@pytest.mark.parametrize("text, named", [
    ("batch_size: null", "batch_size = null: -b/--batch-size takes an integer, not null"),
    ("batch_size: [1, 2]", "batch_size = [1, 2]: -b/--batch-size takes an integer, not a list"),
    ("lr_schedule: 3", "lr_schedule = 3: -k/--lr-schedule takes a string, not an integer"),
    ("model: 2024-01-01", 'model = "2024-01-01": -e/--model takes a string, not a date'),
    ("batch_size: &a [*a]", "batch_size = [[...]]: -b/--batch-size takes an integer, not a list"),  # holds itself
])
def test_a_yaml_value_of_the_wrong_type_is_one_line(tmp_path, capsys, text, named):
    config = tmp_path / "run.yaml"
    config.write_text(f"train_data: {tmp_path}/none_*.bin\n{text}\n")
    assert exit_code(["train", "--config", str(config)]) == 2
    assert named in the_error(capsys)


def test_config_values_of_the_right_type_are_taken_and_an_integer_is_a_float_flags_number(tmp_path):
    from llmpy.cli import build_parser
    from llmpy.flags import train_config_from_args

    config = tmp_path / "run.toml"
    config.write_text('train-data = "t.bin"\nbatch-size = 8\nlearning-rate = 1\nmodel = "d6"\n')
    values = train_config_from_args(build_parser().parse_args(["train", "--config", str(config)]))
    assert (values.batch_size, values.learning_rate, values.model) == (8, 1.0, "d6")
    assert type(values.learning_rate) is float


def test_a_config_file_that_cannot_be_read_is_one_line(tmp_path, capsys, monkeypatch):
    def fails(path, text):
        assert exit_code(["train", "--config", str(path)]) == 2
        assert text in the_error(capsys)

    fails(tmp_path / "missing.toml", "missing.toml: no such file")
    fails(tmp_path, "is a directory, not a config file")
    (tmp_path / "run.json").write_text("{}")
    fails(tmp_path / "run.json", "run.json: use a .toml, .yaml or .yml file")
    (tmp_path / "bad.toml").write_text("batch-size = [\n")
    fails(tmp_path / "bad.toml", "bad.toml: cannot parse")
    (tmp_path / "bad.yaml").write_text("a: [\n")
    fails(tmp_path / "bad.yaml", "bad.yaml: cannot parse")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    fails(tmp_path / "list.yaml", "expected a mapping of option names to values")
    (tmp_path / "latin1.toml").write_bytes('model = "caf\xe9"\n'.encode("latin-1"))
    fails(tmp_path / "latin1.toml", "latin1.toml: not UTF-8 text (byte 12)")
    (tmp_path / "twice.toml").write_text("batch-size = 2\nbatch_size = 4\n")
    fails(tmp_path / "twice.toml", "twice.toml: batch-size and batch_size name the same option")
    (tmp_path / "locked.toml").write_text("batch-size = 2\n")

    def denied(self):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)  # a file this user may not read (root may read them all)
    fails(tmp_path / "locked.toml", "locked.toml: cannot read (Permission denied)")


# ------------------------------------------------------------------------------- item 11: filesystem errors

@pytest.mark.parametrize("output", ["/proc/llmpy_test/run", "somefile/run"])
def test_an_output_dir_that_cannot_be_created_is_one_line(tmp_path, capsys, monkeypatch, output):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "somefile").write_text("a file, not a directory\n")
    write_random_shards(tmp_path, "c", {"train_000001.bin": 4096}, seed=0)
    assert exit_code(["train", "-i", "c_train_*.bin", *TINY_RUN, "-o", output]) == 2
    error = the_error(capsys)
    assert output in error and ("No such file or directory" in error or "Not a directory" in error)


def test_a_tensorboard_dir_that_cannot_be_created_is_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch.utils.tensorboard")
    monkeypatch.chdir(tmp_path)
    write_random_shards(tmp_path, "c", {"train_000001.bin": 4096}, seed=0)
    assert exit_code(["train", "-i", "c_train_*.bin", *TINY_RUN, "--tensorboard", "/proc/llmpy_test/tb"]) == 2
    assert "/proc/llmpy_test" in the_error(capsys)


def test_an_os_error_anywhere_is_one_line_naming_the_path(monkeypatch, capsys):
    def unreadable(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", "/some/model.pt")

    monkeypatch.setattr("llmpy.sample.run_sample", unreadable)
    assert exit_code(["sample", "--model", "/some/model.pt"]) == 2
    assert the_error(capsys) == "llmpy: error: /some/model.pt: Permission denied"


def test_convert_to_an_out_that_cannot_be_created_is_one_line(tmp_path, capsys):
    import torch

    from llmpy.checkpoint import export_model
    from llmpy.config import ModelConfig
    from llmpy.model import GPT

    torch.manual_seed(0)
    export_model(tmp_path / "run", GPT(ModelConfig(n_layer=1, n_head=1, n_embd=64, block_size=16)), {})
    for to in ("llmpy", "hf", "llmc"):
        assert exit_code(["convert", "--model", str(tmp_path / "run"), "--to", to, "--out", "/proc/llmpy_test/m"]) == 2
        error = the_error(capsys)
        assert "--out /proc/llmpy_test/m" in error and "No such file or directory" in error


def test_bench_json_that_cannot_be_written_is_refused_before_the_bench(capsys):
    assert exit_code(["bench", "-e", "d2w64", "-t", "32", "-b", "2", "--device", "cpu", "--steps", "1", "--warmup", "0",
                      "--json", "/proc/llmpy_test/bench.jsonl"]) == 2
    assert "--json /proc/llmpy_test/bench.jsonl: cannot write (No such file or directory)" in the_error(capsys)


# ------------------------------------------------------------------- item 11: numbers of every subcommand

@pytest.mark.parametrize("argv, named", [
    (["bench", "-e", "d2w64", "-t", "32", "--device", "cpu", "-b", "0"], "-b/--batch-size must be positive, got 0"),
    (["bench", "-e", "d2w64", "-t", "32", "--device", "cpu", "--steps", "0"], "argument --steps: must be a positive"),
    (["bench", "-e", "d2w64", "-t", "32", "--device", "cpu", "--warmup", "-1"], "argument --warmup: must be an"),
    (["bench", "--profile", "p", "--profile-steps", "0"], "argument --profile-steps: must be a positive integer"),
    (["bench", "-e", "d2w64", "-t", "32", "--device", "cpu", "--seed", "-3"], "--seed must be in [0, 2**32)"),
    (["train", "-i", "x.bin", "-b", "0"], "-b/--batch-size must be positive, got 0"),
    (["train", "-i", "x.bin", "-t", "0"], "-t/--seq-len must be positive, got 0"),
    (["train", "-i", "x.bin", "-x", "-5"], "-x/--max-steps must be -1 (one epoch) or > 0, got -5"),
    (["train", "-i", "x.bin", "-v", "-1"], "-v/--val-every must be >= 0, got -1"),
    (["train", "-i", "x.bin", "-n", "-1"], "-n/--checkpoint-every must be >= 0, got -1"),
    (["train", "-i", "x.bin", "--log-every", "-1"], "--log-every must be >= 0, got -1"),
    (["train", "-i", "x.bin", "-l", "nan"], "--learning-rate must be a finite number, got nan"),
    (["train", "-i", "x.bin", "-l", "inf"], "--learning-rate must be a finite number, got inf"),
    (["train", "-i", "x.bin", "-l", "1e300"], "--learning-rate must be a finite number within float32's range"),
    (["train", "-i", "x.bin", "-sl", "-2"], "-sl/--skip-loss-zscore must be >= 0, got -2.0"),
    (["train", "-i", "x.bin", "--grad-clip", "nan"], "--grad-clip must be a finite number, got nan"),
    (["train", "-i", "x.bin", "-b", "99999999999999999999"], "--batch-size must be an integer in [-2**63, 2**63)"),
    (["train", "-i", "x.bin", "-b", "x"], "argument -b/--batch-size: invalid int value: 'x'"),
    (["eval", "--model", "m", "--val-tokens", "0"], "argument --val-tokens: must be a positive integer, got '0'"),
    (["eval", "--model", "m", "--val-tokens", "-512"], "argument --val-tokens: must be a positive integer"),
    (["eval", "--model", "m", "-b", "0"], "argument --batch-size/-b: must be a positive integer, got '0'"),
    (["eval", "--model", "m", "-t", "-1"], "argument --seq-len/-t: must be a positive integer, got '-1'"),
    (["quickstart", "--steps", "0"], "argument --steps: must be a positive integer, got '0'"),
    (["quickstart", "--steps", "-3"], "argument --steps: must be a positive integer, got '-3'"),
    (["sample", "--model", "m", "--seed", "-1"], "argument --seed: must be an integer in [0, 2**32), got '-1'"),
    (["sample", "--model", "m", "--seed", str(2**64)], "argument --seed: must be an integer in [0, 2**32)"),
    (["prepare", "text", "--input", "x.txt", "--shard-size", "0"], "argument --shard-size: must be a positive"),
    (["prepare", "text", "--input", "x.txt", "--val-tokens", "0"], "argument --val-tokens: must be a positive"),
    (["prepare", "fineweb", "--workers", "0"], "argument --workers: must be a positive integer, got '0'"),
    (["prepare", "fineweb", "--max-tokens", "-1"], "argument --max-tokens: must be a positive integer"),
    (["plan", "--tok-per-sec", "nan"], "argument --tok-per-sec: must be a finite number > 0, got 'nan'"),
    (["plan", "--tok-per-sec", "inf"], "argument --tok-per-sec: must be a finite number > 0, got 'inf'"),
    (["plan", "--price-per-gpu-hour", "nan"], "argument --price-per-gpu-hour: must be a finite number >= 0"),
    (["plan", "--gpus", "0"], "argument --gpus: must be a positive integer, got '0'"),
    (["plan", "--total-batch-size", "-1"], "argument --total-batch-size: must be a positive integer"),
    (["plan", "--tokens", "1e999"], "--tokens '1e999': must be a finite number"),
    (["plot", "r", "--dpi", "0"], "argument --dpi: must be a positive integer, got '0'"),
    (["plot", "r", "--smooth", "-1"], "argument --smooth: must be an integer >= 0, got '-1'"),
])
def test_every_numeric_argument_out_of_range_is_one_line(argv, named, capsys, monkeypatch):
    def refused_before(*args, **kwargs):
        raise AssertionError(f"{argv} was not refused")

    for heavy in ("llmpy.bench.run_bench", "llmpy.bench.check_fast_path", "llmpy.quickstart.run_quickstart",
                  "llmpy.train.build.build_trainer"):
        monkeypatch.setattr(heavy, refused_before)
    assert exit_code(argv) == 2
    error = the_error(capsys)
    assert named in error, error


def test_an_argparse_error_is_one_line_with_a_pointer_to_help(capsys):
    assert exit_code(["eval", "--model"]) == 2
    assert the_error(capsys) == "llmpy: error: argument --model: expected one argument (`llmpy eval --help`)"
    assert exit_code(["plot"]) == 2
    assert "the following arguments are required: RUN_DIR" in the_error(capsys)


# ------------------------------------------------------------------------ item 9: what was asked is what runs

def test_quickstart_steps_are_the_steps_it_trains():
    from llmpy.quickstart import quickstart_config

    for is_cuda, default in ((False, 200), (True, 300)):
        assert quickstart_config(is_cuda, Path("d"), "o", None).max_steps == default
        assert quickstart_config(is_cuda, Path("d"), "o", 7).max_steps == 7
        assert quickstart_config(is_cuda, Path("d"), "o", 0).max_steps == 0  # refused by validate, never 200


def test_quickstart_steps_zero_never_starts_a_run(monkeypatch, capsys):
    started = []
    monkeypatch.setattr("llmpy.quickstart.run_quickstart", lambda **kwargs: started.append(kwargs))
    assert exit_code(["quickstart", "--steps", "0"]) == 2
    assert "--steps" in the_error(capsys) and not started
