"""Real torchrun launches on the CPU (gloo): 2 ranks with accumulation 1 do the same math as 1 rank with
accumulation 2; a 2-rank run checkpoints and resumes."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import write_random_shards
from llmpy.train.checkpoint import completed_steps, load_model

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_random_shards(tmp_path_factory.mktemp("data"), "d",
                               {"val_000000": 3000, "train_000001": 12000}, seed=1)


def args(data, run, steps=8, val_batches=2):
    return ["train", "-i", str(data / "d_train_*.bin"), "-j", str(data / "d_val_*.bin"), "-o", str(run),
            "-e", "d2w64", "-b", "2", "-t", "32", "-d", "128", "-x", str(steps), "-n", "4", "-v", "4", "-m", str(val_batches),
            "-s", "0", "-l", "0.001", "--device", "cpu", "--compile", "0", "-y", "1", "--log-every", "0"]


def launch(nproc, arguments):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "llmpy", *arguments]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def records(run, kind):
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == kind:
            out[record["step"]] = record
    return out


def test_two_ranks_match_one_rank_with_accumulation_and_resume(data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    launch(1, args(data, one))  # -d 128 = 2*32*2: accumulation 2
    # accumulation 1 per rank, stopped at step 4, then resumed (-y 1) to step 8; -m counts batches per rank (llm.c),
    # so 1 val batch on each of 2 ranks covers the same 128 tokens as 2 batches on 1 rank
    launch(2, args(data, two, steps=4, val_batches=1))
    launch(2, args(data, two, val_batches=1))
    train_one, train_two = records(one, "train"), records(two, "train")
    assert sorted(train_two) == list(range(8))
    for step in range(8):
        assert train_two[step]["loss"] == pytest.approx(train_one[step]["loss"], abs=1e-6)
        assert train_two[step]["grad_norm"] == pytest.approx(train_one[step]["grad_norm"], rel=1e-5)
    for step, record in records(one, "val").items():
        assert records(two, "val")[step]["loss"] == pytest.approx(record["loss"], abs=1e-6)
    final_one, final_two = load_model(one)[0].state_dict(), load_model(two)[0].state_dict()
    for key in final_one:
        torch.testing.assert_close(final_two[key], final_one[key], atol=1e-6, rtol=1e-5)
    assert completed_steps(two, with_state=True)[-1] == 8
    assert (two / "main.log").read_text().count("s:0 trl:") == 1  # only rank 0 writes the log
