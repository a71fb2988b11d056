"""What `-y 1` says and does at the edges of a run: past the end of its LR schedule (refused unless
--extend-schedule says how), at its end (complete: nothing to train), with flags that change the math (the flags
named are the ones changed), and what a stop says was saved: nothing without -o, the last good checkpoint when
its own could not be written."""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from conftest import write_random_shards
from llmpy.checkpoint import done_path, load_model, model_path, state_path
from llmpy.cli import main
from llmpy.config import TrainConfig
from llmpy.errors import PREEMPTED_EXIT_CODE, LlmpyError
from llmpy.train.build import build_trainer
from llmpy.train.faults import BadStepCounter, Preempted

STEPS, EVERY, LONGER = 8, 4, 12  # the saved run, its checkpoint interval, and -x raised
MAX_LR, WARMUP = 1e-3, 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_random_shards(tmp_path_factory.mktemp("data"), "e", {"val_000000": 2000, "train_000001": 6000},
                               seed=5)


def args(data, run, *flags, steps=STEPS, final="0.1", schedule="cosine"):
    """A tiny classic run (-b 2 -t 8, -d -1: 16 tokens a step), -y 1 so that the same command continues it (a later
    -n wins: the extended runs checkpoint every 2 steps)."""
    return ["train", "-i", str(data / "e_train_*.bin"), "-o", str(run), "-e", "d2w64", "-b", "2", "-t", "8",
            "-x", str(steps), "-n", str(EVERY), "-v", "0", "-s", "0", "-l", str(MAX_LR), "-u", str(WARMUP),
            "-q", final, "-k", schedule, "-c", "0.1", "--seed", "0", "--device", "cpu", "--compile", "0",
            "--log-every", "0", "-y", "1", *flags]


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """finished(final, schedule): a finished 8-step run with that schedule (made once); tests copy it."""
    runs = {}

    def make(final="0.1", schedule="cosine"):
        if (final, schedule) not in runs:
            run = tmp_path_factory.mktemp("finished") / "run"
            assert main(args(data, run, final=final, schedule=schedule)) == 0
            runs[final, schedule] = run
        return runs[final, schedule]

    return make


def copy_of(run, tmp_path, name="run"):
    target = tmp_path / name
    shutil.copytree(run, target)
    return target


def snapshot(run):
    """The run's logs, description and checkpoint files: {name: (bytes, mtime_ns)} (other files, e.g. a lock, left out)."""
    names = re.compile(r"main\.log|metrics\.jsonl|config\.json|(model|state)_\d{8}(_\d{5})?\.pt|DONE_\d{8}")
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir() if names.fullmatch(p.name)}


def train_lrs(run):
    """{step: lr} of every train record, the last one for a step winning."""
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["lr"] for r in records if r["kind"] == "train"}


def train_losses(run):
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


def one_error_line(capsys):
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def cosine(step, total, final_frac):
    """llm.c's cosine, by hand: warmup, then from MAX_LR down to MAX_LR * final_frac at `total`."""
    low = MAX_LR * final_frac
    ratio = min(1.0, (step - WARMUP) / (total - WARMUP))
    return low + 0.5 * (1 + math.cos(math.pi * ratio)) * (MAX_LR - low)


# -------------------------------------------------------------------------------- past the end of the schedule


@pytest.mark.parametrize("final, schedule", [("0", "cosine"), ("0.1", "cosine"), ("0", "wsd")])
def test_extending_a_finished_decayed_schedule_is_refused_and_touches_nothing(data, finished, tmp_path, capsys,
                                                                              final, schedule):
    run = copy_of(finished(final, schedule), tmp_path)
    before = snapshot(run)
    capsys.readouterr()
    assert main(args(data, run, steps=LONGER, final=final, schedule=schedule)) == 2
    error = one_error_line(capsys)
    final_lr = MAX_LR * float(final)
    assert error.startswith(f"llmpy: error: -y 1 -x {LONGER}:"), error
    assert f"planned for {STEPS} steps" in error and f"{final_lr:.2e}" in error, error
    assert "--extend-schedule replan" in error, error
    if final_lr == 0:
        assert "LR 0 changes nothing" in error and "--extend-schedule final" not in error, error
    else:
        assert "--extend-schedule final" in error, error
    assert snapshot(run) == before  # nothing trained, logged or rewritten


def test_extend_schedule_final_is_refused_when_the_final_lr_is_0(data, finished, tmp_path, capsys):
    run = copy_of(finished("0"), tmp_path)
    before = snapshot(run)
    capsys.readouterr()
    assert main(args(data, run, "--extend-schedule", "final", steps=LONGER, final="0")) == 2
    error = one_error_line(capsys)
    assert "--extend-schedule final" in error and "LR 0 changes nothing" in error, error
    assert "--extend-schedule replan" in error, error
    assert snapshot(run) == before


@pytest.mark.parametrize("final, schedule, mode, expected", [
    # final: the saved schedule's last LR, MAX_LR * 0.1, held
    ("0.1", "cosine", "final", {step: 1e-4 for step in range(STEPS, LONGER)}),
    # replan: the cosine of a 12-step run from step 8 on (it jumped back up from 1e-4)
    ("0.1", "cosine", "replan", {step: cosine(step, LONGER, 0.1) for step in (8, 10, 11)}),
    # replan of wsd (-q 0, the last 20% decaying): flat at MAX_LR until int(0.8 * 12) = 9, then linear to 0 at 12
    ("0", "wsd", "replan", {8: 1e-3, 9: 1e-3, 10: 2e-3 / 3, 11: 1e-3 / 3}),
])
def test_each_extend_schedule_mode_trains_at_the_lr_computed_by_hand(data, finished, tmp_path, capsys, final,
                                                                     schedule, mode, expected):
    run = copy_of(finished(final, schedule), tmp_path)
    saved = train_lrs(run)
    capsys.readouterr()
    assert main(args(data, run, "--extend-schedule", mode, steps=LONGER, final=final, schedule=schedule)) == 0
    out = capsys.readouterr().out
    lrs = train_lrs(run)
    assert {step: lrs[step] for step in range(STEPS)} == saved  # the steps before are the saved run's
    assert {step: pytest.approx(lrs[step], rel=1e-6, abs=1e-12) for step in expected} == expected
    assert f"--extend-schedule {mode}" in out and f"step {STEPS}" in out, out


@pytest.mark.parametrize("mode", ["final", "replan"])
def test_an_extended_run_resumes_bitwise_without_asking_again(data, finished, tmp_path, mode):
    straight = copy_of(finished("0.1"), tmp_path, "straight")
    assert main(args(data, straight, "--extend-schedule", mode, "-n", "2", steps=LONGER)) == 0
    # the extended run stopped after its step-10 checkpoint (as a kill leaves it: nothing after it)...
    run = copy_of(straight, tmp_path, "resumed")
    for path in (done_path(run, LONGER), model_path(run, LONGER), state_path(run, LONGER)):
        path.unlink()
    lines = [line for line in (run / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] < 10]
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    # ...continues with -y 1 and no --extend-schedule: the decision is in the checkpoint
    assert main(args(data, run, steps=LONGER)) == 0
    assert train_losses(run) == train_losses(straight) and train_lrs(run) == train_lrs(straight)
    final, reference = load_model(run)[0].state_dict(), load_model(straight)[0].state_dict()
    assert all(torch.equal(final[k], reference[k]) for k in reference)


# ----------------------------------------------------------------------------------------------- a complete run


def test_resuming_a_complete_run_says_so_and_trains_nothing(data, finished, tmp_path, capsys):
    run = copy_of(finished("0.1"), tmp_path)
    before = snapshot(run)
    capsys.readouterr()
    assert main(args(data, run)) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if "complete" in line]
    assert lines == [f"llmpy: the run in {run} is complete: its checkpoint at step 8 is the last of -x 8; "
                     "nothing to train"], captured.out
    assert snapshot(run) == before  # not a byte and not a file time: no eval, no log line, no checkpoint rewritten


def test_a_run_stopped_at_its_last_step_still_gets_its_end_of_run_evaluation(data, finished, tmp_path, capsys):
    """A checkpoint at -x that the end of the run did not write (here: -x lowered to a periodic checkpoint's step,
    as after a stop at the last step) is not complete: -y 1 runs the last step's evaluation and saves, once."""
    run = copy_of(finished("0.1"), tmp_path)
    for path in (done_path(run, STEPS), model_path(run, STEPS), state_path(run, STEPS)):
        path.unlink()
    capsys.readouterr()
    assert main(args(data, run, "-v", "100", "-j", str(data / "e_val_*.bin"), "-m", "1", steps=EVERY)) == 0
    assert "is complete" not in capsys.readouterr().out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "val"] == [EVERY]
    assert main(args(data, run, "-v", "100", "-j", str(data / "e_val_*.bin"), "-m", "1", steps=EVERY)) == 0
    assert "is complete" in capsys.readouterr().out


# ------------------------------------------------------------------------------------- the flags a refusal names


@pytest.mark.parametrize("flags, named", [
    (["-t", "32", "-b", "4"], {"-t/--seq-len", "-b/--batch-size"}),  # -d is -1 in both: not a flag they changed
    (["-t", "32"], {"-t/--seq-len"}),
    (["-b", "4"], {"-b/--batch-size"}),  # with -d -1, a larger -b is a larger step
    (["-d", "32"], {"-d/--total-batch-size"}),
    (["-b", "4", "-d", "64"], {"-d/--total-batch-size"}),  # with -d given, -b only changes the accumulation
    (["-t", "16", "-b", "1"], {"-t/--seq-len"}),  # the same 16 tokens a step: only -t changes the math
    (["-l", "2e-3", "-b", "4"], {"-l/--learning-rate", "-b/--batch-size"}),
])
def test_a_refused_resume_names_the_flags_that_were_changed(data, finished, tmp_path, capsys, flags, named):
    run = copy_of(finished("0.1"), tmp_path)
    capsys.readouterr()
    assert main(args(data, run, *flags)) == 2
    error = one_error_line(capsys)
    assert set(re.findall(r"(-[a-z]+/--[a-z-]+) was \S+ in the saved run", error)) == named, error
    if "-d/--total-batch-size" not in named:
        assert "-d/--total-batch-size" not in error, error


@pytest.mark.parametrize("flags", [["-b", "1", "-d", "16"], ["-d", "16"]])
def test_a_resume_with_the_same_tokens_per_step_is_allowed(data, finished, tmp_path, capsys, flags):
    run = copy_of(finished("0.1"), tmp_path)
    capsys.readouterr()
    assert main(args(data, run, *flags)) == 0
    assert "is complete" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ a stop without -o


def test_sigterm_without_an_output_dir_says_nothing_was_saved(data, tmp_path):
    command = args(data, tmp_path / "unused", steps=100000)
    for flag in ("-o", "-y"):  # a plain run without a run directory
        at = command.index(flag)
        del command[at:at + 2]
    command[command.index("--log-every") + 1] = "1"
    process = subprocess.Popen([sys.executable, "-m", "llmpy", *command], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        for line in process.stdout:  # wait until it steps
            if line.startswith("step "):
                break
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == PREEMPTED_EXIT_CODE, stderr
    last = stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"llmpy: stopped by a signal at step \d+; no -o was given, so nothing was saved", last), stderr
    assert "checkpoint" not in stderr and "-y 1" not in stderr, stderr
    assert not list(tmp_path.iterdir())  # and indeed nothing was written


def test_a_stop_whose_checkpoint_cannot_be_written_names_the_last_good_one(data, tmp_path):
    run = tmp_path / "run"
    config = TrainConfig(train_data=str(data / "e_train_*.bin"), output_dir=str(run), model="d2w64", batch_size=2,
                         seq_len=8, max_steps=100, checkpoint_every=2, val_every=0, sample_every=0, log_every=0,
                         device="cpu", compile=0)
    lines = []
    trainer = build_trainer(config, print_fn=lines.append)
    calls = []

    class NanWeightsAndStopAtStep2(torch.nn.Module):
        """The train module ((x, y) -> loss); at step 2 a weight turns NaN and a SIGTERM arrives."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, y):
            calls.append(1)
            if len(calls) == 3:
                with torch.no_grad():
                    trainer.model.module.transformer.ln_f.weight.fill_(float("nan"))
                os.kill(os.getpid(), signal.SIGTERM)
            return self.inner(x, y)

    trainer.model.train_module = NanWeightsAndStopAtStep2(trainer.model.train_module)
    with pytest.raises(Preempted) as stopped:
        trainer.fit()
    good = str(model_path(run, 2))
    assert str(stopped.value) == ("stopped by a signal at step 3; its checkpoint was not written (see the warning "
                                  f"above); the last good one is {good}")
    assert stopped.value.checkpoint == good and not done_path(run, 3).exists()
    assert any("checkpoint 3 not written: NaN or inf" in str(line) for line in lines), lines


def test_too_many_bad_steps_without_a_checkpoint_do_not_point_at_one():
    counter = BadStepCounter(2)
    counter.record(False, 5, None)
    with pytest.raises(LlmpyError) as error:
        counter.record(False, 6, None)
    assert "no checkpoint was written" in str(error.value) and "model file" not in str(error.value)
