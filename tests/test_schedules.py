"""The batch-size and sequence-length schedules. Each is checked against a run that gets the same batches without
the schedule: a ramped step 0 is a run whose -d is one micro-step, a warmup step of rows T/4 is a run with -t T/4 and
4x the rows. Both resume bitwise, log each step's real tokens, and `plot --x tokens` adds those up."""

import json

import pytest
import torch

from conftest import write_random_shards
from llmpy.checkpoint import load_model
from llmpy.cli import main
from llmpy.metrics.rundata import load_run
from llmpy.plot import x_values
from llmpy.train.step import BatchLayout


def test_the_schedules_by_hand():
    layout = BatchLayout(batch_size=2, seq_len=32, world_size=1, grad_accum_steps=4, batch_ramp=4)
    assert [layout.micro_steps_at(s) for s in range(6)] == [1, 1, 2, 3, 4, 4]  # 1 + floor(3 s / 4)
    assert [layout.tokens_at(s) for s in range(5)] == [64, 64, 128, 192, 256]
    # one epoch of 5 full steps is 20 micro-batches: 7 in the 4 ramp steps, 13 more take 4 full steps
    assert layout.steps_to_cover(5) == 8 and BatchLayout(2, 32, 1, 4).steps_to_cover(5) == 5
    ramp3 = BatchLayout(2, 32, 1, 16, batch_ramp=3)  # 1 + floor(15 s / 3)
    assert [ramp3.micro_steps_at(s) for s in range(4)] == [1, 6, 11, 16]
    warm = BatchLayout(2, 32, 1, 1, seq_len_warmup=2)
    assert [warm.row_length_at(s) for s in range(6)] == [8, 8, 16, 16, 32, 32]
    plain = BatchLayout(2, 32, 1, 4)
    assert plain.micro_steps_at(0) == 4 and plain.row_length_at(0) == 32


@pytest.fixture
def data(tmp_path):
    return write_random_shards(tmp_path, "r", {"val_000000.bin": 2000, "train_000001.bin": 30000}, seed=3)


def train(data, run, *flags):
    args = ["train", "-i", str(data / "r_train_*.bin"), "-j", str(data / "r_val_*.bin"), "-o", str(run), "-e", "d2w64",
            "-l", "1e-3", "-u", "0", "-v", "0", "-s", "0", "--device", "cpu", "--compile", "0", "--log-every", "0",
            "--shuffle", "0", *flags]
    assert main(args) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if r["kind"] == "train"}, load_model(run)[0].state_dict()


def test_a_ramped_first_step_is_a_step_of_one_micro_batch(data, tmp_path):
    ramped, ramped_weights = train(data, tmp_path / "ramped", "-b", "2", "-t", "32", "-d", "256", "--batch-ramp", "4",
                                   "-x", "1")
    one, one_weights = train(data, tmp_path / "one", "-b", "2", "-t", "32", "-d", "64", "-x", "1")
    assert ramped[0]["tokens"] == one[0]["tokens"] == 64
    assert ramped[0]["loss"] == one[0]["loss"] and ramped[0]["grad_norm"] == one[0]["grad_norm"]
    assert all(torch.equal(ramped_weights[k], one_weights[k]) for k in one_weights)


def test_warmup_rows_are_a_run_with_a_quarter_of_the_length_and_four_times_the_rows(data, tmp_path):
    warm, warm_weights = train(data, tmp_path / "warm", "-b", "2", "-t", "32", "--seq-len-warmup", "2", "-x", "2")
    short, short_weights = train(data, tmp_path / "short", "-b", "8", "-t", "8", "-x", "2")
    assert [warm[s]["loss"] for s in (0, 1)] == [short[s]["loss"] for s in (0, 1)]
    assert all(torch.equal(warm_weights[k], short_weights[k]) for k in short_weights)


def test_both_schedules_resume_bitwise_and_plot_adds_up_the_real_tokens(data, tmp_path):
    flags = ["-b", "2", "-t", "32", "-d", "128", "--batch-ramp", "3", "--seq-len-warmup", "2", "-x", "6"]
    straight, weights = train(data, tmp_path / "straight", *flags)
    assert [straight[s]["tokens"] for s in range(6)] == [64, 64, 64, 128, 128, 128]
    resumed = tmp_path / "resumed"
    train(data, resumed, *flags, "-n", "3", "-x", "3")  # a run stopped after its step-3 checkpoint...
    again, again_weights = train(data, resumed, *flags, "-y", "1")  # ...continued to 6
    assert {s: r["loss"] for s, r in again.items()} == {s: r["loss"] for s, r in straight.items()}
    assert all(torch.equal(again_weights[k], weights[k]) for k in weights)
    run = load_run(tmp_path / "straight")
    assert x_values(run, [0, 1, 2, 5], "tokens") == [0.0, 64.0, 128.0, 448.0]


def test_a_resume_inside_a_ramped_batch_takes_only_micro_steps_that_divide_it(data, tmp_path, capsys):
    run = tmp_path / "run"
    flags = ["-t", "32", "-d", "256", "--batch-ramp", "3"]
    train(data, run, *flags, "-b", "2", "-x", "1")  # step 0 read 1 of 4 micro-batches: 64 tokens into the chunk
    capsys.readouterr()
    args = ["train", "-i", str(data / "r_train_*.bin"), "-o", str(run), "-e", "d2w64", "-l", "1e-3", "-u", "0",
            "-v", "0", "-s", "0", "--device", "cpu", "--compile", "0", "--shuffle", "0", *flags, "-x", "2", "-y", "1"]
    assert main(args + ["-b", "4"]) == 2  # micro-steps of 128 tokens cannot start 64 tokens in
    assert "stopped 64 tokens into a -d batch (a --batch-ramp or --batch-stages step), which is not a whole number of this run's " \
           "micro-steps (128 tokens" in capsys.readouterr().err
    assert main(args + ["-b", "1"]) == 0  # 2 micro-steps of 32 tokens: the same place


def test_a_ramp_with_nothing_to_ramp_is_one_line(data, tmp_path, capsys):
    args = ["train", "-i", str(data / "r_train_*.bin"), "-e", "d2w64", "-b", "2", "-t", "32", "-d", "64",
            "--batch-ramp", "4", "--device", "cpu", "--compile", "0", "-x", "1"]
    assert main(args) == 2
    assert "--batch-ramp grows a step from one micro-step (-b 2 x -t 32 x 1 rank(s)) to -d's tokens, but -d 64 is " \
           "one micro-step" in capsys.readouterr().err
    assert main(args[:-6] + ["--seq-len-warmup", "2", "-t", "30", "--device", "cpu", "-x", "1"]) == 2
    assert "-t/--seq-len must be a multiple of 4, got 30" in capsys.readouterr().err
