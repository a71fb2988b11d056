"""Exact resume after a real SIGKILL or SIGTERM of a training process; outlier and NaN handling."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from llmpy.cli import main
from llmpy.config import TrainConfig
from conftest import children_of, write_random_shards
from llmpy.checkpoint import completed_steps, load_model
from llmpy.errors import PREEMPTED_EXIT_CODE, LlmpyError
from llmpy.train.build import build_trainer
from llmpy.train.faults import OutlierWindow

STEPS = 24
EVERY = 4  # -n: checkpoint interval
STOP = 8  # the interrupted runs are stopped once this checkpoint exists (after the first epoch wrapped)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_random_shards(tmp_path_factory.mktemp("data"), "r",
                               {"val_000000": 3000, "train_000001": 100, "train_000002": 80}, seed=0)


def train_args(data, run):
    # shuffled, several epochs (3 + 2 chunks of -d 32 tokens: an epoch is 5 steps, so epochs wrap before and after
    # the interruption), accumulation 2, checkpoints every EVERY steps
    return ["train", "-i", str(data / "r_train_*.bin"), "-j", str(data / "r_val_*.bin"), "-o", str(run),
            "-e", "d2w64", "-b", "2", "-t", "8", "-d", "32", "-x", str(STEPS), "-n", str(EVERY), "-v", "6", "-m", "2",
            "-s", "0", "-l", "0.001", "-u", "5", "-q", "0.1", "-c", "0.1", "--device", "cpu", "--compile", "0",
            "-y", "1", "--log-every", "0"]


def losses(run):
    """Last logged loss per step (a resumed run re-logs steps after its checkpoint)."""
    result = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] in ("train", "val"):
            result[(record["kind"], record["step"])] = record["loss"]
    return result


def main_log_series(run):
    """main.log read the way llm.c's tools read it: {(key, step): value}, the last line for a step winning."""
    series = {}
    for line in (run / "main.log").read_text().splitlines():
        try:
            step, *fields = line.split()
            pairs = [field.split(":") for field in fields]
            values = {(key, int(step.removeprefix("s:"))): float(value) for key, value in pairs}
        except ValueError:  # a line cut short by the kill: the resumed run logs its step again
            continue
        series.update(values)
    return series


def interrupted(data, run, sig):
    """Start training in a subprocess, stop it with `sig` once the step-STOP checkpoint exists; return its exit code."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, "-m", "llmpy", *train_args(data, run)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / f"DONE_{STOP:08d}").exists():
        time.sleep(0.002)
    process.send_signal(sig)
    return process.wait(timeout=300)


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("straight")
    assert main(train_args(data, run)) == 0
    return run


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_resumed_run_is_bitwise_identical(data, straight, tmp_path, sig):
    run = tmp_path / "run"
    code = interrupted(data, run, sig)
    done = completed_steps(run, with_state=True)
    assert STEPS not in done, "the process finished before it was stopped"
    if sig == signal.SIGTERM:  # finished its step, checkpointed it, and said so with the distinct code
        assert code == PREEMPTED_EXIT_CODE and done[-1] > STOP
    else:
        assert code == -signal.SIGKILL
    assert main(train_args(data, run)) == 0  # the same command again (-y 1)
    assert losses(run) == losses(straight)  # every train and val loss, to the last bit
    final, reference = load_model(run)[0].state_dict(), load_model(straight)[0].state_dict()
    assert all(torch.equal(final[k], reference[k]) for k in reference)
    # main.log was appended to, not restarted; read llm.c-style (last value per step) it equals the straight run's
    assert main_log_series(run) == main_log_series(straight)
    assert (run / "main.log").read_text().count("s:0 trl:") == 1


def test_resume_refuses_a_different_model(data, straight, tmp_path, capsys):
    args = train_args(data, straight)
    args[args.index("d2w64")] = "d3w64"
    assert main(args) == 2
    assert "is a 2-layer, 64-wide GPT-2 model but -e asks for a 3-layer, 64-wide GPT-2 model" in capsys.readouterr().err


def test_outlier_zscore_by_hand():
    detector = OutlierWindow(window=4)
    keep = torch.tensor(True)
    for value in (1.0, 2.0, 3.0, 4.0):
        assert math.isnan(detector.zscore(torch.tensor(value)))  # window not full yet
        detector.add(torch.tensor(value), keep)
    # mean 2.5, population std sqrt(1.25) = 1.1180: z(6) = 3.5 / 1.1180 = 3.1305
    assert detector.zscore(torch.tensor(6.0)).item() == pytest.approx(3.1305, abs=1e-4)
    detector.add(torch.tensor(6.0), keep)  # window is now 2, 3, 4, 6
    assert detector.zscore(torch.tensor(3.75)).item() == pytest.approx(0.0)
    assert detector.state_dict() == {"values": [2.0, 3.0, 4.0, 6.0], "window": 4}


def test_runs_of_nonfinite_steps_stop_with_the_last_good_checkpoint(data, tmp_path):
    config = TrainConfig(train_data=str(data / "r_train_*.bin"), model="d2w64", batch_size=2, seq_len=32,
                         max_steps=10, val_every=0, sample_every=0, log_every=0, device="cpu", compile=0,
                         max_bad_steps=3, output_dir=str(tmp_path / "run"), checkpoint_every=2)
    trainer = build_trainer(config, print_fn=lambda *a: None)
    steps_run = []

    class NanLossFromStep4(torch.nn.Module):
        """The train module ((x, y) -> loss), its loss NaN from the 5th call (step 4: one micro-step per step)."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, y):
            steps_run.append(len(steps_run))
            loss = self.inner(x, y)
            return loss * float("nan") if len(steps_run) > 4 else loss

    trainer.model.train_module = NanLossFromStep4(trainer.model.train_module)
    with pytest.raises(LlmpyError, match=r"step 6: 3 steps in a row .* the last good checkpoint is .*model_00000006.pt"):
        trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # each skip is logged; the metrics are read at the step-8 checkpoint (no log steps with --log-every 0), so step 7
    # (skipped too) has run by then, and the run stops there before writing that checkpoint
    assert [r["step"] for r in records if r.get("skipped")] == [4, 5, 6, 7]
    assert len(steps_run) == 8 and not (tmp_path / "run" / "DONE_00000008").exists()
    # the skipped steps never touched the weights: the step-6 checkpoint equals the step-4 one
    four, six = load_model(tmp_path / "run" / "model_00000004.pt")[0], load_model(tmp_path / "run" / "model_00000006.pt")[0]
    assert all(torch.equal(a, b) for a, b in zip(four.state_dict().values(), six.state_dict().values()))


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find the training process")
def test_auto_restart_relaunches_after_preemption(data, straight, tmp_path):
    run = tmp_path / "run"
    wrapper = subprocess.Popen([sys.executable, "-m", "llmpy", *train_args(data, run), "--auto-restart", "3"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / f"DONE_{STOP:08d}").exists():
        time.sleep(0.002)
    for child in children_of(wrapper.pid):
        os.kill(child, signal.SIGTERM)  # preempt the training process, not the wrapper
    _, stderr = wrapper.communicate(timeout=300)
    assert wrapper.returncode == 0
    assert "training exited with code 75; relaunching with -y 1 (1/3)" in stderr
    assert losses(run) == losses(straight)


def test_damaged_newest_checkpoint_falls_back_to_the_previous_with_a_warning(data, straight, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(straight, run)
    last, newest, older, good = STEPS, STEPS - EVERY, STEPS - 2 * EVERY, STEPS - 3 * EVERY
    for name in (f"DONE_{last:08d}", f"model_{last:08d}.pt", f"state_{last:08d}_00000.pt"):
        (run / name).unlink()  # as if the run had stopped at step `newest`
    state = run / f"state_{newest:08d}_00000.pt"
    state.write_bytes(state.read_bytes()[:-100])  # a half-written state file for `newest`
    corrupt = run / f"state_{older:08d}_00000.pt"
    corrupt.write_bytes(b"\x00" * corrupt.stat().st_size)  # `older`: right size, garbage content
    args = train_args(data, run)
    args[args.index("-x") + 1] = str(STEPS)
    assert main(args) == 0
    out = capsys.readouterr().out
    said = [line for line in out.splitlines() if "resuming from" in line]  # one line: which, and why not the newer
    assert len(said) == 1 and said[0].startswith(f"warning: resuming from the checkpoint at step {good} "), out
    assert f"skipped the newer checkpoint {newest} (state_{newest:08d}_00000.pt is truncated: " in said[0]
    assert f"; checkpoint {older} (" in said[0] and "do not match the SHA-256" in said[0]
    assert losses(run) == losses(straight)


def test_failed_checkpoint_write_leaves_the_previous_one_usable(data, tmp_path, monkeypatch):
    config = TrainConfig(train_data=str(data / "r_train_*.bin"), model="d2w64", batch_size=2, seq_len=32,
                         max_steps=6, val_every=0, sample_every=0, log_every=0, device="cpu", compile=0,
                         output_dir=str(tmp_path / "run"), checkpoint_every=2)
    trainer = build_trainer(config, print_fn=lambda *a: None)
    real_save = torch.save

    def disk_full_at_step_4(payload, path, *args, **kwargs):
        name = str(getattr(path, "name", path))  # a path, or the handle of the file being written
        if "00000004" in name and "state" in name:
            real_save(payload, path, *args, **kwargs)
            if hasattr(path, "truncate"):
                path.truncate(10)
            else:
                with open(path, "r+b") as handle:
                    handle.truncate(10)
            raise OSError(28, "No space left on device")
        return real_save(payload, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_step_4)
    with pytest.raises(OSError):
        trainer.fit()
    run = tmp_path / "run"
    assert completed_steps(run, with_state=True) == [2] and not (run / "DONE_00000004").exists()
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]  # no temp file left behind
    assert load_model(run)[1]["step"] == 2
