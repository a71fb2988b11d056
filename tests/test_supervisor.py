"""`--auto-restart`: a SIGTERM to the supervisor reaches the trainer, which checkpoints and exits; no relaunch."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import children_of, write_random_shards
from llmpy.errors import PREEMPTED_EXIT_CODE


def wait_for(condition, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find the training process")
def test_sigterm_to_the_supervisor_checkpoints_and_stops_without_relaunching(tmp_path):
    data = write_random_shards(tmp_path, "s", {"train_000001": 9000}, seed=0)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "llmpy", "train", "-i", str(data / "s_train_*.bin"), "-o", str(run),
               "-e", "d2w64", "-b", "2", "-t", "32", "-x", "100000", "-n", "0", "-v", "0", "-s", "0",
               "--device", "cpu", "--compile", "0", "--auto-restart", "3"]
    supervisor = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    trainers = []
    try:
        main_log = run / "main.log"
        assert wait_for(lambda: main_log.is_file() and main_log.stat().st_size > 0, 60), "training never started"
        trainers = children_of(supervisor.pid)
        assert len(trainers) == 1
        supervisor.send_signal(signal.SIGTERM)
        _, stderr = supervisor.communicate(timeout=60)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
        for pid in trainers:
            if os.path.exists(f"/proc/{pid}"):
                os.kill(pid, signal.SIGKILL)
    assert supervisor.returncode == PREEMPTED_EXIT_CODE, stderr
    assert not os.path.exists(f"/proc/{trainers[0]}"), "the trainer outlived its supervisor"
    assert "SIGTERM: training stopped (exit code 75) and is not relaunched" in stderr
    assert "relaunching" not in stderr
    markers = [path.name for path in run.glob("DONE_*")]  # the marker is written last, after every checkpoint file
    assert len(markers) == 1 and 0 < int(markers[0].removeprefix("DONE_")) < 100000
