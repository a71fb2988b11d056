"""--batch-stages and --batch-stages-lr-power: the speedrun's piecewise-constant batch schedule with the LR tied to the
batch (docs/frontier_research.md §3.21). Checked by hand (micro-steps, LR factors, stage boundaries, one epoch's
steps), against a run whose -d is a stage's tokens and whose -l is the stage's LR, across a resume, and in the
tokens and LRs a run logs."""

import json
import math
import re

import pytest
import torch

from conftest import write_random_shards
from llmpy.checkpoint import load_model
from llmpy.cli import main
from llmpy.config import TrainConfig
from llmpy.metrics.rundata import load_run
from llmpy.plot import x_values
from llmpy.train.build import build_trainer
from llmpy.train.step import BatchLayout
from llmpy.train.trainer import Trainer


def test_the_stages_by_hand():
    layout = BatchLayout(2, 32, 1, 3, batch_stages=(1, 2, 3), stage_lr_power=0.5)
    assert [layout.micro_steps_at(s, 9) for s in range(9)] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert [layout.tokens_at(s, 9) for s in (0, 3, 6)] == [64, 128, 192]
    assert [layout.lr_factor_at(s, 9) for s in range(9)] == [1.0] * 3 + [2 ** 0.5] * 3 + [3 ** 0.5] * 3
    assert layout.micro_steps_at(12, 9) == 3 and layout.lr_factor_at(12, 9) == 3 ** 0.5  # past the plan: the last
    # 10 steps: stages start at round(10/3) = 3 and round(20/3) = 7
    assert [layout.micro_steps_at(s, 10) for s in range(10)] == [1, 1, 1, 2, 2, 2, 2, 3, 3, 3]
    # 1 step: round(1/3) = 0 and round(2/3) = 1, so step 0 is in the second stage (the first is empty)
    assert layout.micro_steps_at(0, 1) == 2
    # 3 steps in 2 stages: round(1.5) = 2 (Python rounds halves to even, as the speedrun's round does)
    assert [BatchLayout(2, 32, 1, 2, batch_stages=(1, 2)).micro_steps_at(s, 3) for s in range(3)] == [1, 1, 2]
    # an epoch of 5 steps of all of -d is 15 micro-batches: 7 steps read 2x1 + 3x2 + 2x3 = 14, 8 read 3 + 4 + 9 = 16
    assert layout.steps_to_cover(5) == 8
    assert BatchLayout(2, 32, 1, 3).micro_steps_at(0) == 3 and BatchLayout(2, 32, 1, 3).lr_factor_at(0, 9) == 1.0
    decreasing = BatchLayout(2, 32, 1, 6, batch_stages=(3, 1), stage_lr_power=0.6)
    assert [decreasing.micro_steps_at(s, 4) for s in range(4)] == [6, 6, 2, 2]
    assert decreasing.lr_factor_at(3, 4) == (1 / 3) ** 0.6


@pytest.mark.parametrize("stages, accum", [((1, 2, 3), 3), ((1, 2, 3), 6), ((2, 3), 3), ((1, 1, 4, 2), 4), ((5,), 2)])
@pytest.mark.parametrize("epoch", [1, 2, 7, 40, 333])
def test_one_epoch_of_steps_is_the_fewest_that_read_it(stages, accum, epoch):
    """Against an explicit loop: for S = 1, 2, ... the micro-batches read by S steps split into stages."""
    layout = BatchLayout(1, 8, 1, accum, batch_stages=stages)

    def reads(total):
        n, micro = len(stages), [accum * w // max(stages) for w in stages]
        return sum(micro[k] for k in range(n) for _ in range(round(k * total / n), round((k + 1) * total / n)))

    fewest = next(total for total in range(1, epoch * accum + 1) if reads(total) >= epoch * accum)
    assert layout.steps_to_cover(epoch) == fewest


@pytest.fixture
def data(tmp_path):
    return write_random_shards(tmp_path, "s", {"val_000000.bin": 2000, "train_000001.bin": 30000}, seed=7)


def train(data, run, *flags, code=0):
    args = ["train", "-i", str(data / "s_train_*.bin"), "-o", str(run), "-e", "d2w64", "-b", "2", "-t", "32",
            "-u", "0", "-v", "0", "-s", "0", "--device", "cpu", "--compile", "0", "--log-every", "0",
            "--shuffle", "0", *flags]
    assert main(args) == code
    if code:
        return None, None
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if r["kind"] == "train"}, load_model(run)[0].state_dict()


def test_a_stage_step_is_a_step_of_a_run_with_the_stages_tokens_at_the_stages_lr(data, tmp_path):
    # -x 1 in 3 stages: step 0 is in the second stage (round(1/3) = 0, round(2/3) = 1): 2 of -d's 3 micro-steps,
    # at the LR x 2^0.6; a constant schedule so that -l x 2^0.6 is the same float either way
    staged, staged_weights = train(data, tmp_path / "staged", "-d", "192", "--batch-stages", "1,2,3",
                                   "--batch-stages-lr-power", "0.6", "-k", "constant", "-l", "1e-3", "-x", "1")
    by_hand, by_hand_weights = train(data, tmp_path / "by_hand", "-d", "128", "-k", "constant",
                                     "-l", repr(1e-3 * 2 ** 0.6), "-x", "1")
    assert staged[0]["tokens"] == by_hand[0]["tokens"] == 128
    assert staged[0]["lr"] == by_hand[0]["lr"] == 1e-3 * 2 ** 0.6
    assert staged[0]["loss"] == by_hand[0]["loss"] and staged[0]["grad_norm"] == by_hand[0]["grad_norm"]
    assert all(torch.equal(staged_weights[k], by_hand_weights[k]) for k in by_hand_weights)


def test_a_resume_across_a_stage_boundary_is_bitwise_and_the_log_has_each_steps_tokens_and_lr(data, tmp_path, capsys,
                                                                                             monkeypatch):
    flags = ["-d", "192", "--batch-stages", "1,2,3", "--batch-stages-lr-power", "0.5", "-l", "1e-3", "-k", "cosine",
             "-q", "0.1", "-x", "6"]
    straight, weights = train(data, tmp_path / "straight", *flags)
    assert [straight[s]["tokens"] for s in range(6)] == [64, 64, 128, 128, 192, 192]

    def lr(step):  # cosine from 1e-3 to 1e-4 over 6 steps, times (W_k / W_1) ** 0.5
        return (1e-4 + 0.5 * (1 + math.cos(math.pi * step / 6)) * 9e-4) * (1, 1, 2, 2, 3, 3)[step] ** 0.5

    assert [straight[s]["lr"] for s in range(6)] == pytest.approx([lr(s) for s in range(6)], rel=1e-12)
    logged = re.findall(r"^s:(\d+) trl:\S+ lr:(\S+)", (tmp_path / "straight" / "main.log").read_text(), re.M)
    assert [float(value) for _, value in logged] == pytest.approx([lr(s) for s in range(6)], abs=1e-6)
    assert x_values(load_run(tmp_path / "straight"), [0, 2, 4, 5], "tokens") == [0.0, 128.0, 384.0, 576.0]

    scheduled = Trainer.schedule_model

    def ctrl_c_at_step_4(trainer, step):  # called as each step begins, after the step before was checkpointed
        if step == 4:
            raise KeyboardInterrupt
        scheduled(trainer, step)

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(Trainer, "schedule_model", ctrl_c_at_step_4)
    train(data, resumed, *flags, "-n", "3", code=130)  # its checkpoint at step 3: 4 micro-batches in, mid -d chunk
    monkeypatch.setattr(Trainer, "schedule_model", scheduled)
    train(data, resumed, *flags, "-y", "1", "--batch-stages-lr-power", "0.6", code=2)  # another run's math
    assert "--batch-stages-lr-power was 0.5 in the saved run, now 0.6" in capsys.readouterr().err
    train(data, resumed, *flags, "-y", "1", "-b", "3", code=2)  # -d 192 is 2 micro-steps of -b 3: no 1/3 of it
    assert "stages 1,2,3 need a multiple of 3" in capsys.readouterr().err
    again, again_weights = train(data, resumed, *flags, "-y", "1")  # steps 3-5, across the stage boundary at 4
    assert {s: (r["loss"], r["lr"], r["tokens"]) for s, r in again.items()} == \
        {s: (r["loss"], r["lr"], r["tokens"]) for s, r in straight.items()}
    assert all(torch.equal(again_weights[k], weights[k]) for k in weights)


def test_the_header_says_each_stage_and_one_epoch_takes_the_fewest_steps_that_read_it(data):
    config = TrainConfig(train_data=str(data / "s_train_*.bin"), model="d2w64", batch_size=2, seq_len=32,
                         total_batch_size=192, batch_stages="1,2,3", batch_stages_lr_power=0.5, val_every=0,
                         sample_every=0, device="cpu", compile=0)
    lines = []
    trainer = build_trainer(config, print_fn=lines.append)
    epoch = trainer.train_step.loader.steps_per_epoch * 3  # micro-batches
    total = trainer.total_steps
    # the 3 stages of `total` steps read at least the epoch's micro-batches, and one step fewer would not
    assert sum(k + 1 for k in range(3) for _ in range(round(k * total / 3), round((k + 1) * total / 3))) >= epoch
    assert sum(k + 1 for k in range(3) for _ in range(round(k * (total - 1) / 3), round((k + 1) * (total - 1) / 3))) \
        < epoch
    bounds = [round(k * total / 3) for k in range(4)]
    assert any(f"batch stages 1,2,3 over the LR schedule's {total} steps: steps 0-{bounds[1] - 1}: 64 tokens, LR x1; "
               f"steps {bounds[1]}-{bounds[2] - 1}: 128 tokens, LR x1.414; steps {bounds[2]}-{total - 1}: 192 tokens, "
               "LR x1.732 | on average 128 tokens per step" in line for line in lines)


@pytest.mark.parametrize("flags, message", [
    (["--batch-stages", "1,x"], "--batch-stages takes comma-separated whole numbers >= 1, each stage's share of -d"),
    (["--batch-stages", "0,1"], "--batch-stages takes comma-separated whole numbers >= 1"),
    (["--batch-stages", "1,,2"], "--batch-stages takes comma-separated whole numbers >= 1"),
    (["--batch-stages", "1.5,2"], "--batch-stages takes comma-separated whole numbers >= 1"),
    (["--batch-stages", "1,2", "--batch-ramp", "3"],
     "--batch-stages and --batch-ramp are two batch-size schedules: give one of them"),
    (["--batch-stages", "1,2,4", "-d", "192"],
     "--batch-stages 1,2,4: -d 192 -b 2 -t 32 is 3 micro-step(s), and stage k trains 3 x W_k / 4 of them: stages "
     "1,2,4 need a multiple of 4 (e.g. -d 256)"),
    (["--batch-stages", "2,3", "-d", "128"], "stages 2,3 need a multiple of 3 (e.g. -d 192)"),
    (["--batch-stages", "1,2", "--batch-stages-lr-power", "nan"], "--batch-stages-lr-power must be a finite number"),
    (["--batch-stages-lr-power", "0.5"], "--batch-stages-lr-power ties the LR to the stages of --batch-stages, and no "
     "--batch-stages was given"),
])
def test_bad_values_are_one_line(data, flags, message, capsys):
    args = ["train", "-i", str(data / "s_train_*.bin"), "-e", "d2w64", "-b", "2", "-t", "32", "--device", "cpu",
            "--compile", "0", "-x", "1", *flags]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
