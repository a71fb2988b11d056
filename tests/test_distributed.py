"""Real torchrun launches on the CPU (gloo): 2 ranks with accumulation 1 do the same math as 1 rank with
accumulation 2 for DDP (-z 0), ZeRO-1 (-z 1) and FSDP2 (-z 3), including val loss and HellaSwag split over the ranks;
2-rank runs checkpoint and resume, also with another world size and -z; misuse fails with one clear line."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import write_random_shards
from llmpy.distributed import Launch, init_distributed, launch_from_env
from llmpy.errors import LlmpyError
from llmpy.checkpoint import completed_steps, load_model

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")

# 7 examples: an odd count, so 2 ranks get 4 and 3 (FSDP ranks must still run the same number of forward passes)
HELLASWAG = [
    {"ctx": "The man picks up the ball and", "endings": ["throws it.", "eats it.", "sings.", "sleeps."], "label": 0},
    {"ctx": "She opens the book and", "endings": ["reads.", "flies.", "melts.", "barks loudly."], "label": 0},
    {"ctx": "A dog runs to the", "endings": ["park.", "moon quickly.", "equation.", "blue."], "label": 0},
    {"ctx": "He turns on the", "endings": ["cat.", "light.", "river.", "seven."], "label": 1},
    {"ctx": "The chef cuts the", "endings": ["sky.", "song.", "onions on the board.", "idea."], "label": 2},
    {"ctx": "They drive the car to", "endings": ["blue.", "the.", "and.", "the store."], "label": 3},
    {"ctx": "The kids play in the", "endings": ["yard.", "of.", "thus.", "seventeen."], "label": 0},
]


STEPS = 4  # every run trains to this step; the resumed ones stop halfway first


@pytest.fixture(scope="module")
def data(tmp_path_factory, bpe_file):
    root = tmp_path_factory.mktemp("data")
    (root / "hellaswag.jsonl").write_text("".join(json.dumps(item) + "\n" for item in HELLASWAG))
    return write_random_shards(root, "d", {"val_000000": 3000, "train_000001": 12000}, seed=1)


def args(data, run, steps=STEPS, val_batches=2, zero=0, fused_loss=0):
    return ["train", "-i", str(data / "d_train_*.bin"), "-j", str(data / "d_val_*.bin"), "-o", str(run),
            "-e", "d2w64", "-b", "2", "-t", "32", "-d", "128", "-x", str(steps), "-n", str(STEPS // 2),
            "-v", str(STEPS // 2),
            "-m", str(val_batches), "-s", "2", "-g", "4", "-l", "0.001", "--device", "cpu", "--compile", "0", "-y", "1",
            "--log-every", "0", "-z", str(zero), "--fused-loss", str(fused_loss), "-h", "1", "--hellaswag-file", str(data / "hellaswag.jsonl")]


def launch(nproc, arguments, bpe_file, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", LLMPY_GPT2_BPE=str(bpe_file), LLMPY_OFFLINE="1",
               LLMPY_DIST_TIMEOUT="120")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "llmpy", *arguments]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def records(run, kind):
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == kind:
            out[record["step"]] = record
    return out


@pytest.fixture(scope="module")
def one_rank(data, bpe_file, tmp_path_factory):
    """The reference: 1 rank, -d 128 = 2*32*2, so accumulation 2."""
    run = tmp_path_factory.mktemp("one") / "run"
    launch(1, args(data, run), bpe_file)
    return run


def assert_same_run(two, one, weight_atol=1e-6, norm_rel=1e-6, loss_abs=1e-6):
    train_one, train_two = records(one, "train"), records(two, "train")
    assert sorted(train_two) == list(range(STEPS))
    for step in range(STEPS):
        assert train_two[step]["loss"] == pytest.approx(train_one[step]["loss"], abs=loss_abs)
        assert train_two[step]["grad_norm"] == pytest.approx(train_one[step]["grad_norm"], rel=norm_rel)
    for step, record in records(one, "val").items():
        assert records(two, "val")[step]["loss"] == pytest.approx(record["loss"], abs=loss_abs)
    for step, record in records(one, "eval").items():  # HellaSwag: all 7 examples counted once over the ranks
        assert records(two, "eval")[step]["examples"] == 7
        assert (records(two, "eval")[step]["accuracy"], records(two, "eval")[step]["acc"]) == (record["accuracy"], record["acc"])
    final_one, final_two = load_model(one)[0].state_dict(), load_model(two)[0].state_dict()
    for key in final_one:
        torch.testing.assert_close(final_two[key], final_one[key], atol=weight_atol, rtol=1e-5)
    assert completed_steps(two, with_state=True)[-1] == STEPS
    assert (two / "main.log").read_text().count("s:0 trl:") == 1  # only rank 0 writes the log


@pytest.mark.parametrize("zero", [0, 1, 3])
def test_two_ranks_match_one_rank_with_accumulation_and_resume(data, bpe_file, one_rank, tmp_path, zero):
    # accumulation 1 per rank, stopped at step STEPS/2, then resumed (-y 1) to step STEPS; -m counts batches per rank
    # (llm.c), so 1 val batch on each of 2 ranks covers the same 128 tokens as 2 batches on 1 rank
    two = tmp_path / "two"
    launch(2, args(data, two, steps=STEPS // 2, val_batches=1, zero=zero), bpe_file)
    if zero == 3:  # resharding: the 2-rank FSDP checkpoint resumes on 1 rank (plain), which must not change the math
        result = launch(1, args(data, two, val_batches=2), bpe_file)
        assert "written by 2 process(es), now 1" in result.stdout
        assert "so from here each val loss covers 128 tokens (1 process(es), before 2)" in result.stdout
        # the remaining val records came from 1 rank with 2 batches: the same tokens
    else:
        launch(2, args(data, two, val_batches=1, zero=zero), bpe_file)
    # the same math to fp32 rounding for every -z: the step-0 norm used to be 8e-6 apart under FSDP (issue 15, item
    # 14) because PyTorch's CPU fp32 norm kernel is that inaccurate and each shard size rounds differently; the
    # norm is now summed in fp64 on the CPU
    assert_same_run(two, one_rank, norm_rel=1e-6)
    # samples (-s 2): under FSDP every rank takes part in each forward pass; rank 0 alone logs the text
    assert sorted(records(two, "sample")) == list(range(2, STEPS + 1, 2))
    assert all(record["text"] for record in records(two, "sample").values())


@pytest.mark.parametrize("zero", [0, 3])
def test_fused_loss_on_two_ranks_matches_the_plain_loss_on_one(data, bpe_file, one_rank, tmp_path, zero):
    # --fused-loss 1 (the head's custom backward under DDP's gradient hooks and FSDP's gathered parameters) against
    # the 1-rank run with the plain loss: the same math up to fp32 summation order, amplified a little by AdamW
    two = tmp_path / "two"
    launch(2, args(data, two, val_batches=1, zero=zero, fused_loss=1), bpe_file)
    assert_same_run(two, one_rank, weight_atol=2e-5, norm_rel=1e-4, loss_abs=1e-5)


MODERN = ["--recipe", "modern", "-l", "0.02"]
# every frontier switch, the tie-then-untie (split after step 1), the auxiliary losses and Muon's frontier settings
FRONTIER = ["--recipe", "frontier", "-l", "0.02", "-c", "1.2",
            "--arch", "bigram=0.05,rope_dims=32,key_offset=1,backout=1,untie_at=0.5",
            "--optimizer-args", "qk_pairs=1,normuon=1,normuon_axis=auto,cautious_wd=1,wd_schedule=lr2,embedding_wd=0.5",
            "--mtp-weights", "0.5", "--prefix-loss", "0.25"]
RECIPES = {"modern": MODERN, "frontier": FRONTIER}


@pytest.fixture(scope="module")
def one_rank_recipe(request, data, bpe_file, tmp_path_factory):
    """A Muon recipe's reference: 1 rank with accumulation 2."""
    run = tmp_path_factory.mktemp(f"one_{request.param}") / "run"
    launch(1, args(data, run) + RECIPES[request.param], bpe_file)
    return request.param, run


# (modern -z 0 is left out: its Muon exchange under DDP is the frontier's, and tests/test_muon.py has both)
@pytest.mark.parametrize("one_rank_recipe, zero", [("modern", 3), ("frontier", 0), ("frontier", 3)],
                         indirect=["one_rank_recipe"])
def test_the_muon_recipes_on_two_ranks_match_one_rank_with_accumulation(data, bpe_file, one_rank_recipe, tmp_path,
                                                                        zero):
    # Muon's orthogonalisation is split over the ranks (DDP: every world-th matrix; FSDP: each matrix gathered on
    # its owner and its rows sent back), and must still do one rank's math; the frontier adds the tie's gradient
    # merge and state copy on replicas and shards, Q/K row blocks, and the bigram table and gates in Adam
    recipe, one_rank = one_rank_recipe
    two = tmp_path / "two"
    launch(2, args(data, two, val_batches=1, zero=zero) + RECIPES[recipe], bpe_file)
    config = json.loads((two / "config.json").read_text())
    assert (config["recipe"], config["family"]) == (recipe, "modern")
    assert_same_run(two, one_rank)


def test_ranks_with_different_flags_fail_clearly(data, bpe_file, tmp_path):
    # torchrun passes every rank the same argv, so make rank 1 differ through the config file it reads
    script = ("import os, sys\nfrom llmpy.cli import main\n"
              "sys.exit(main(sys.argv[1:] + (['-l', '0.002'] if os.environ['RANK'] == '1' else [])))\n")
    (tmp_path / "entry.py").write_text(script)
    env = dict(os.environ, OMP_NUM_THREADS="1", LLMPY_GPT2_BPE=str(bpe_file), LLMPY_OFFLINE="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(tmp_path / "entry.py"), *args(data, tmp_path / "run", steps=2)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "rank 1 was started with another training configuration than rank 0 (differs in: learning_rate)" in \
        result.stderr


# --- where rank and world come from: torchrun's variables or SLURM's, read without changing the environment ---

SLURM_TASK = {"SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "MASTER_ADDR": "node0"}


def test_launch_from_torchrun_slurm_or_nothing():
    assert launch_from_env({}) == Launch()
    assert launch_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", **SLURM_TASK}) == \
        Launch(rank=1, world_size=2, local_rank=1, launched=True)  # torchrun under srun: torchrun's env:// wins
    assert launch_from_env(SLURM_TASK) == Launch(rank=3, world_size=4, local_rank=1, launched=True,
                                                 init_method="tcp://node0:29500")
    assert launch_from_env({**SLURM_TASK, "MASTER_PORT": "1234"}).init_method == "tcp://node0:1234"
    assert launch_from_env({**SLURM_TASK, "SLURM_NTASKS": "1"}) == Launch()  # one task: no process group
    with pytest.raises(LlmpyError, match="srun without torchrun: export MASTER_ADDR"):
        launch_from_env({k: v for k, v in SLURM_TASK.items() if k != "MASTER_ADDR"})


def test_srun_joins_over_tcp_and_leaves_the_environment_alone(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in SLURM_TASK.items():
        monkeypatch.setenv(name, value)
    calls = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **kw: calls.append((a, kw)))
    before = dict(os.environ)
    job = init_distributed(use_cuda=False)
    assert (job.rank, job.world_size, job.local_rank) == (3, 4, 1)
    assert len(calls) == 1 and calls[0][0] == ("gloo",)
    assert {k: v for k, v in calls[0][1].items() if k != "timeout"} == \
        dict(init_method="tcp://node0:29500", rank=3, world_size=4)
    assert dict(os.environ) == before
