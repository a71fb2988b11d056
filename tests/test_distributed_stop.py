"""Signals under torchrun (gloo, CPU): a SIGTERM to one rank stops every rank after the same step with a complete
checkpoint that resumes. (Sampling under FSDP is checked in test_distributed.py.)"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import children_of, write_random_shards
from llmpy.checkpoint import completed_steps

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_random_shards(tmp_path_factory.mktemp("data"), "g", {"train_000001": 40000}, seed=2)


def command(data, run, *extra):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "llmpy",
            "train", "-i", str(data / "g_train_*.bin"), "-o", str(run), "-e", "d2w64", "-b", "2", "-t", "32",
            "-d", "128", "-v", "0", "-s", "0", "-l", "0.001", "--device", "cpu", "--compile", "0", "-y", "1", *extra]


def environment():
    return dict(os.environ, OMP_NUM_THREADS="1", LLMPY_OFFLINE="1", LLMPY_DIST_TIMEOUT="120")


def train_steps(run: Path) -> list[int]:
    if not (run / "main.log").is_file():
        return []
    return [int(line.split()[0][2:]) for line in (run / "main.log").read_text().splitlines() if "trl:" in line]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find torchrun's workers")
def test_sigterm_to_one_rank_stops_both_after_the_same_step_and_the_run_resumes(data, tmp_path):
    run = tmp_path / "run"
    launcher = subprocess.Popen(command(data, run, "-x", "2000", "--log-every", "1"), env=environment(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while len(train_steps(run)) < 3 and time.time() < deadline and launcher.poll() is None:
            time.sleep(0.2)
        workers = children_of(launcher.pid)
        assert len(workers) == 2 and len(train_steps(run)) >= 3, launcher.poll()
        os.kill(max(workers), signal.SIGTERM)  # one rank only
        _, stderr = launcher.communicate(timeout=300)
    finally:
        launcher.kill()
    assert "stopped by a signal" in stderr, stderr[-2000:]
    steps = train_steps(run)
    saved = completed_steps(run, with_state=True)
    assert saved and saved[-1] == steps[-1] + 1 < 2000  # the checkpoint holds every step both ranks took
    resumed = subprocess.run(command(data, run, "-x", str(saved[-1] + 2), "--log-every", "0"), env=environment(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from the checkpoint at step {saved[-1]}" in resumed.stdout
    assert train_steps(run)[-2:] == [saved[-1], saved[-1] + 1]
