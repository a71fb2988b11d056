"""One writer per run directory (llmpy.runlock): a live run's lock refuses a second run, `-y 1` and `--overwrite 1`
in one line naming its holder and touching nothing; a lock left by a killed process is taken over, and said; every
way a run ends releases it."""

import dataclasses
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from conftest import wait_for, write_random_shards
from llmpy.checkpoint import load_model
from llmpy.cli import main
from llmpy.config import TrainConfig
from llmpy.distributed import Distributed
from llmpy.errors import PREEMPTED_EXIT_CODE, LlmpyError
from llmpy.rundir import claim_run_dir
from llmpy.runlock import LOCK_FILE, RunLock
from llmpy.train.build import build_trainer

HOST = socket.gethostname()
# a process that takes the lock, says so, and holds it until its stdin closes (then exits without releasing it)
HOLD = textwrap.dedent("""
    import sys
    from llmpy.runlock import RunLock
    lock = RunLock.acquire(sys.argv[1])
    print("locked", flush=True)
    sys.stdin.read()
""")


@pytest.fixture()
def holder(tmp_path):
    """A real process holding the lock on tmp_path/run; killed at the end if still alive."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "locked\n"  # a blocking read: no timeout to race
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def record(run_dir):
    return json.loads((run_dir / LOCK_FILE).read_text())


def refusal_of(call) -> str:
    with pytest.raises(LlmpyError) as error:
        call()
    return str(error.value)


def test_a_live_lock_refuses_in_one_line_naming_its_holder_and_an_exit_releases_it(tmp_path, holder):
    run = tmp_path / "run"
    before = (run / LOCK_FILE).read_bytes()
    message = refusal_of(lambda: RunLock.acquire(run, print))
    assert "\n" not in message and f"pid {holder.pid} on host {HOST} since {record(run)['started']}" in message
    assert (run / LOCK_FILE).read_bytes() == before and os.listdir(run) == [LOCK_FILE]
    holder.stdin.close()  # the holder exits (without calling release): its lock goes with it
    assert holder.wait() == 0 and not (run / LOCK_FILE).exists()
    said = []
    lock = RunLock.acquire(run, said.append)
    assert said == [] and record(run)["pid"] == os.getpid() and record(run)["host"] == HOST
    lock.release()
    lock.release()
    assert not (run / LOCK_FILE).exists()


def test_a_lock_left_by_a_killed_process_is_taken_over_and_said(tmp_path, holder):
    run = tmp_path / "run"
    holder.kill()  # SIGKILL: nothing of the holder runs again, its lock file stays
    holder.wait()
    assert record(run)["pid"] == holder.pid
    said = []
    lock = RunLock.acquire(run, said.append)
    assert len(said) == 1 and f"took over a stale lock from pid {holder.pid} on host {HOST}" in said[0]
    assert record(run)["pid"] == os.getpid()
    lock.release()


def test_a_second_lock_in_the_same_process_is_refused_too(tmp_path):
    lock = RunLock.acquire(tmp_path / "run", print)
    assert f"pid {os.getpid()} on host {HOST}" in refusal_of(lambda: RunLock.acquire(tmp_path / "run", print))
    lock.release()


def test_without_flock_the_pid_and_host_file_stands_in(tmp_path, monkeypatch):
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr("llmpy.runlock.fcntl.flock", no_flock)
    run = tmp_path / "run"
    said = []
    lock = RunLock.acquire(run, said.append)
    assert len(said) == 1 and "no flock" in said[0] and "two hosts" in said[0]
    assert f"pid {os.getpid()} on host {HOST}" in refusal_of(lambda: RunLock.acquire(run, print))  # our pid runs
    lock.release()
    assert not (run / LOCK_FILE).exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"pid": int(dead.stdout), "host": HOST, "started": "2026-12-07T10:00:00+00:00", "command": []}
    (run / LOCK_FILE).write_text(json.dumps(stale))
    said = []
    RunLock.acquire(run, said.append).release()
    assert f"took over a stale lock from pid {stale['pid']} on host {HOST}" in said[-1]
    (run / LOCK_FILE).write_text(json.dumps({**stale, "host": "elsewhere"}))  # cannot be checked from here
    message = refusal_of(lambda: RunLock.acquire(run, print))
    assert f"pid {stale['pid']} on host elsewhere" in message and f"delete {run / LOCK_FILE}" in message


def test_overwrite_and_resume_never_claim_a_live_run(tmp_path, holder):
    run = tmp_path / "run"
    (run / "DONE_00000008").write_text("{}")  # the live run's checkpoint
    for resume, overwrite in ((False, True), (True, False), (False, False)):
        message = refusal_of(lambda: claim_run_dir(run, resume, overwrite, Distributed(), print))
        assert f"pid {holder.pid}" in message
    assert sorted(os.listdir(run)) == ["DONE_00000008", LOCK_FILE] and not (tmp_path / "run.old1").exists()
    holder.kill()
    holder.wait()
    lines = []
    lock = claim_run_dir(run, False, True, Distributed(), lines.append)  # a dead run's: moved aside, and said
    assert any("stale lock" in line for line in lines) and any("now in" in line for line in lines)
    assert os.listdir(tmp_path / "run.old1") == ["DONE_00000008"]  # its lock file went, not the checkpoint
    assert record(run)["pid"] == os.getpid()
    lock.release()
    assert os.listdir(run) == []


def tiny_config(data, run, **overrides) -> TrainConfig:
    config = TrainConfig(train_data=str(data / "l_train_*.bin"), output_dir=str(run), model="d2w64", batch_size=2,
                         seq_len=32, total_batch_size=64, max_steps=1, val_every=0, sample_every=0, log_every=0,
                         device="cpu", compile=0, seed=3)
    return dataclasses.replace(config, **overrides)


def test_the_lock_is_held_for_the_run_and_released_however_it_ends(tmp_path):
    data = write_random_shards(tmp_path, "l", {"train_000001": 3000}, seed=1)
    run = tmp_path / "run"
    trainer = build_trainer(tiny_config(data, run), print_fn=lambda *a: None)
    assert record(run)["pid"] == os.getpid()  # held from the build on
    trainer.fit()  # done
    assert not (run / LOCK_FILE).exists()
    with pytest.raises(LlmpyError, match="--seed"):  # a refused resume fails the build after the lock was taken
        build_trainer(tiny_config(data, run, resume=1, seed=4), print_fn=lambda *a: None)
    assert not (run / LOCK_FILE).exists()
    trainer = build_trainer(tiny_config(data, run, resume=1, max_steps=3), print_fn=lambda *a: None)
    assert (run / LOCK_FILE).exists()

    def interrupted(step):
        raise KeyboardInterrupt

    trainer.schedule_model = interrupted  # called as each step begins
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C
        trainer.fit()
    assert not (run / LOCK_FILE).exists()


# --------------------------------------------------------------------------------------------- real processes


def train_lines(run):
    log = run / "main.log"
    return [line for line in log.read_text().splitlines() if " trl:" in line] if log.is_file() else []


def test_two_real_trainings_on_one_run_directory_the_second_is_refused_and_the_first_keeps_its_files(tmp_path,
                                                                                                       capsys):
    data = write_random_shards(tmp_path, "s", {"train_000001": 9000}, seed=0)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def train(*flags):
        return ["train", "-i", str(data / "s_train_*.bin"), "-o", str(run), "-e", "d2w64", "-b", "2", "-t", "32",
                "-v", "0", "-s", "0", "--device", "cpu", "--compile", "0", *flags]

    with open(tmp_path / "first.out", "w") as out:  # a file, not a pipe: a full pipe would block the first run
        first = subprocess.Popen([sys.executable, "-m", "llmpy", *train("-x", "100000", "-n", "0", "--seed", "1")],
                                 stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        assert wait_for(lambda: train_lines(run) or first.poll() is not None) and first.poll() is None, \
            (tmp_path / "first.out").read_text()
        second = subprocess.run([sys.executable, "-m", "llmpy", *train("-x", "2", "--seed", "2")], env=env,
                                capture_output=True, text=True, timeout=300)
        capsys.readouterr()
        resumed = main(train("-x", "2", "--seed", "1", "-y", "1"))  # in this process: no second start-up to wait for
        for code, err in ((second.returncode, second.stderr), (resumed, capsys.readouterr().err)):
            assert code == 2, err
            assert err.count("\n") == 1 and err.startswith("llmpy: error: run directory")
            assert f"pid {first.pid} on host {HOST}" in err
        assert record(run)["pid"] == first.pid  # the refused runs left the lock as it was
        first.send_signal(signal.SIGTERM)  # the first run checkpoints and stops (exit 75), its lock released
        assert first.wait(timeout=300) == PREEMPTED_EXIT_CODE
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert not (run / LOCK_FILE).exists()
    [marker] = sorted(run.glob("DONE_*"))
    _, payload = load_model(run)  # checked against its marker's SHA-256s
    step = payload["step"]
    assert marker.name == f"DONE_{step:08d}" and step > 0
    assert f"checkpoint: {run / f'model_{step:08d}.pt'}" in (tmp_path / "first.out").read_text()
    # main.log is the first run's alone: steps 0 .. step-1 once each, in order (another writer would restart at 0)
    assert [int(line.split()[0][2:]) for line in train_lines(run)] == list(range(step))
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 1
