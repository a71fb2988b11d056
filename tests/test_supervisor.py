"""`--auto-restart`: the first launch is the command as typed, relaunches continue it with -y 1; a SIGTERM to the
supervisor reaches the trainer, which checkpoints and exits, with no relaunch; a supervisor killed outright takes its
trainer with it."""

import contextlib
import os
import re
import signal
import subprocess
import sys

import pytest

from conftest import children_of, wait_for, write_random_shards
from llmpy import supervisor
from llmpy.errors import PREEMPTED_EXIT_CODE

needs_proc = pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find the training process")


def train_command(tmp_path, run, *flags: str) -> list[str]:
    data = write_random_shards(tmp_path, "s", {"train_000001": 9000}, seed=0)
    return [sys.executable, "-m", "llmpy", "train", "-i", str(data / "s_train_*.bin"), "-o", str(run), "-e", "d2w64",
            "-b", "2", "-t", "32", "-v", "0", "-s", "0", "--device", "cpu", "--compile", "0", *flags]


@contextlib.contextmanager
def supervised_run(tmp_path, run, stderr):
    """A long `--auto-restart 3` run, once it trains: yields the supervisor and its one trainer's pid in a list; on
    leaving, whatever is still alive of them is killed."""
    supervisor = subprocess.Popen(train_command(tmp_path, run, "-x", "100000", "-n", "0", "--auto-restart", "3"),
                                  stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    trainers = []
    try:
        main_log = run / "main.log"
        assert wait_for(lambda: main_log.is_file() and main_log.stat().st_size > 0, 300), "training never started"
        trainers += children_of(supervisor.pid)
        assert len(trainers) == 1
        yield supervisor, trainers
    finally:
        trainers += children_of(supervisor.pid) if supervisor.poll() is None else []
        if supervisor.poll() is None:
            supervisor.kill()
        for pid in trainers:
            if not is_gone(pid):
                os.kill(pid, signal.SIGKILL)


@needs_proc
def test_sigterm_to_the_supervisor_checkpoints_and_stops_without_relaunching(tmp_path):
    run = tmp_path / "run"
    with supervised_run(tmp_path, run, subprocess.PIPE) as (supervisor, trainers):
        supervisor.send_signal(signal.SIGTERM)
        _, stderr = supervisor.communicate(timeout=300)
    assert supervisor.returncode == PREEMPTED_EXIT_CODE, stderr
    assert not os.path.exists(f"/proc/{trainers[0]}"), "the trainer outlived its supervisor"
    assert "SIGTERM: training stopped (exit code 75) and is not relaunched" in stderr
    # the command as typed (no -y 1) would be refused now that -o holds the run: the advice says -y 1
    assert stderr.strip().splitlines()[-1].endswith("the same command with -y 1 continues it from its last "
                                                    "checkpoint, if it wrote one"), stderr
    assert re.search(r"stopped by a signal at step \d+; checkpoint written in ", stderr), stderr
    assert "relaunching" not in stderr
    markers = [path.name for path in run.glob("DONE_*")]  # the marker is written last, after every checkpoint file
    assert len(markers) == 1 and 0 < int(markers[0].removeprefix("DONE_")) < 100000


def another_runs_checkpoint(run):
    """`run` as another run left it, as far as a new run's claim on -o looks: a DONE marker."""
    run.mkdir()
    (run / "DONE_00000008").write_text("{}")
    return run


def is_gone(pid: int) -> bool:
    """The process has exited (a zombie its new parent has not reaped yet counts)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("typed, relaunch", [
    (["--overwrite", "1"], []), (["--overwrite=1", "-y", "0"], []), (["-y0", "--resume=0"], []),
    (["-y", "1", "-n", "5"], ["-n", "5"]),
])
def test_the_first_launch_is_the_command_as_typed_and_only_relaunches_continue_it(monkeypatch, typed, relaunch):
    # the first launch had -y 1 added: a run dir holding another run was continued, --overwrite 1 ignored
    launched, codes = [], iter([1, 0])  # a crash, then success

    class Child:
        def __init__(self, command, **kwargs):
            launched.append(command[3:])  # after `python -m llmpy`

        def wait(self):
            return next(codes)

        def send_signal(self, signum):
            pass

    monkeypatch.setattr(supervisor.subprocess, "Popen", Child)
    base = ["train", "-i", "x.bin", "-o", "run"]
    assert supervisor.auto_restart([*base, "--auto-restart", "3", *typed]) == 0
    assert launched == [[*base, *typed], [*base, *relaunch, "-y", "1"]]


@needs_proc
def test_auto_restart_refuses_a_run_dir_holding_another_run_as_the_plain_command_does(tmp_path):
    run = another_runs_checkpoint(tmp_path / "run")
    done = subprocess.run(train_command(tmp_path, run, "-x", "2", "--auto-restart", "2"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert re.fullmatch(rf"llmpy: error: -o {re.escape(str(run))} holds another run's checkpoints \(DONE_00000008\): "
                        r"continue that run with -y 1, give a new -o, or add --overwrite 1 to move it aside\n",
                        done.stderr), done.stderr
    assert sorted(p.name for p in run.iterdir()) == ["DONE_00000008"]


@needs_proc
def test_overwrite_moves_the_old_run_aside_once_and_a_relaunch_continues_the_new_run(tmp_path):
    run = another_runs_checkpoint(tmp_path / "run")
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    command = train_command(tmp_path, run, "-x", "100000", "-n", "0", "--overwrite", "1", "--auto-restart", "2")
    with open(out, "w") as stdout, open(err, "w") as stderr:
        supervised = subprocess.Popen(command, stdout=stdout, stderr=stderr)
    trainers = []
    try:
        assert wait_for(lambda: (tmp_path / "run.old1").exists() and children_of(supervised.pid), 300), err.read_text()
        trainers = children_of(supervised.pid)
        os.kill(trainers[0], signal.SIGKILL)  # a crash right after the old run was moved aside: relaunch with -y 1
        main_log = run / "main.log"
        assert wait_for(lambda: "relaunching" in err.read_text() and main_log.is_file() and main_log.stat().st_size, 300)
        trainers += children_of(supervised.pid)
        supervised.send_signal(signal.SIGTERM)
        supervised.wait(timeout=300)
    finally:
        trainers += children_of(supervised.pid)
        if supervised.poll() is None:
            supervised.kill()
        for pid in trainers:
            if not is_gone(pid):
                os.kill(pid, signal.SIGKILL)
    assert supervised.returncode == PREEMPTED_EXIT_CODE, err.read_text()
    assert "training exited with code -9; relaunching with -y 1 (1/2)" in err.read_text()
    moved = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("run."))
    assert moved == ["run.old1"] and (tmp_path / "run.old1" / "DONE_00000008").exists()  # moved once, not twice
    assert out.read_text().count("--overwrite 1: the run that was in") == 1
    assert len(list(run.glob("DONE_*"))) == 1  # the relaunch trained on in -o and checkpointed when stopped


@needs_proc
def test_a_trainer_does_not_outlive_its_supervisor_killed_outright(tmp_path):
    # a `kill -9` of the supervisor left the trainer training on, orphaned, with nobody to stop or relaunch it
    run = tmp_path / "run"
    with supervised_run(tmp_path, run, subprocess.DEVNULL) as (supervised, trainers):
        supervised.kill()
        supervised.wait(timeout=300)
        assert wait_for(lambda: is_gone(trainers[0]), 300), "the trainer outlived its supervisor"
    markers = [path.name for path in run.glob("DONE_*")]  # it stopped as on a preemption: with a checkpoint
    assert len(markers) == 1, markers
