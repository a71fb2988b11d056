"""The checkpoint manager: resume compares the saved run's flags (math changes refused, others allowed and said),
the LR schedule comes back from the checkpoint, llmpy 0.1 checkpoints still load and continue, auto-batch, and
what unfinished writes left is removed, not trusted."""

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_random_shards
from llmpy.checkpoint import completed_steps, load_model
from llmpy.config import TrainConfig
from llmpy.errors import LlmpyError
from llmpy.train import build
from llmpy.train.build import build_trainer

FIXTURE = Path(__file__).parent / "fixtures" / "v0_1_run"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_random_shards(tmp_path_factory.mktemp("data"), "c", {"train_000001": 5000}, seed=4)


@pytest.fixture(scope="module")
def finished_run(data, tmp_path_factory):
    """A 4-step run with a checkpoint at its end; tests copy it before resuming."""
    run = tmp_path_factory.mktemp("run") / "run"
    config = TrainConfig(train_data=str(data / "c_train_*.bin"), output_dir=str(run), model="d2w64", batch_size=2,
                         seq_len=32, total_batch_size=128, learning_rate=1e-3, warmup_steps=1, final_lr_frac=0.1,
                         max_steps=4, val_every=0, sample_every=0, log_every=0, device="cpu", compile=0, seed=11)
    build_trainer(config, print_fn=lambda *a: None).fit()
    return config


def resumed(config: TrainConfig, tmp_path: Path, **changes):
    """build_trainer with -y 1 on a copy of the finished run, flags changed; returns (trainer, printed lines)."""
    run = tmp_path / "run"
    shutil.copytree(config.output_dir, run)
    lines = []
    trainer = build_trainer(dataclasses.replace(config, output_dir=str(run), resume=1, **changes),
                            print_fn=lambda *a: lines.append(" ".join(map(str, a))))
    return trainer, lines


@pytest.mark.parametrize("changes, flag", [
    ({"learning_rate": 2e-3}, "--learning-rate"),
    ({"total_batch_size": 256}, "-d/--total-batch-size"),
    ({"seq_len": 16, "total_batch_size": 128}, "--seq-len"),
    ({"seed": 12}, "--seed"),
    ({"model": "d2w128"}, "-e asks for"),
])
def test_resume_refuses_a_change_that_alters_the_math(finished_run, tmp_path, changes, flag):
    with pytest.raises(LlmpyError, match=flag.replace("-", r"\-").replace("/", "/")) as error:
        resumed(finished_run, tmp_path, **changes)
    assert "\n" not in str(error.value)


def test_resume_allows_more_steps_and_another_micro_batch_and_keeps_the_saved_schedule(finished_run, tmp_path):
    # past the end of the decayed schedule: --extend-schedule final says to go on at its final LR
    trainer, lines = resumed(finished_run, tmp_path, max_steps=6, batch_size=1, extend_schedule="final")
    assert trainer.start_step == 4 and trainer.total_steps == 6
    assert any("--max-steps was 4 in the saved run, now 6" in line for line in lines), lines
    assert any("--batch-size was 2" in line for line in lines), lines
    schedule = trainer.train_step.schedule
    assert schedule.total_steps == 4  # restored, not rebuilt for -x 6
    # the optimizer got its moments back but still reads the schedule's LR tensor (a saved float would detach it)
    assert all(group["lr"] is trainer.train_step.lr for group in trainer.train_step.optimizer.param_groups)
    trainer.fit()
    lrs = {json.loads(r)["step"]: json.loads(r)["lr"] for r in (tmp_path / "run" / "metrics.jsonl").read_text()
           .splitlines() if json.loads(r)["kind"] == "train"}
    assert lrs[4] == lrs[5] == pytest.approx(1e-4)  # past the saved schedule's end: its final LR
    assert completed_steps(tmp_path / "run", with_state=True)[-1] == 6


def test_a_checkpoint_written_by_llmpy_0_1_loads_and_continues(tmp_path):
    expected = json.loads((FIXTURE / "expected.json").read_text())
    shutil.copytree(FIXTURE, tmp_path / "fixture")
    run = tmp_path / "fixture" / "run"
    model, payload = load_model(run)
    assert model.config.to_dict() == expected["model_config"] and payload["step"] == 2
    assert model.transformer.wte.weight.double().sum().item() == pytest.approx(expected["wte_sum"], rel=1e-12)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = {k: v for k, v in expected["train_config"].items() if k in known}
    config = TrainConfig(**dict(saved, train_data=str(tmp_path / "fixture" / "tiny_train_*.bin"), output_dir=str(run),
                                model=str(run / "model_00000002.pt"), resume=1, log_every=0))
    trainer = build_trainer(config, print_fn=lambda *a: None)
    assert trainer.start_step == 2
    trainer.fit()
    records = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in records if r["kind"] == "train"}
    for step, want in expected["steps_after_resume"].items():
        # the same steps as llmpy 0.1 took (its AdamW was unfused: a last-bit difference per update)
        assert train[int(step)]["loss"] == pytest.approx(want["loss"], rel=1e-5), step
        assert train[int(step)]["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4), step


def test_auto_batch_halves_the_micro_batch_and_keeps_tokens_per_step(data, monkeypatch):
    tried = []

    def fits(train_module, autocast, device, batch_size, seq_len, reserve):
        tried.append(batch_size)
        loss = train_module(torch.zeros(batch_size, seq_len, dtype=torch.long),
                            torch.zeros(batch_size, seq_len, dtype=torch.long))  # a real forward of that size
        return bool(torch.isfinite(loss)) and batch_size <= 2

    monkeypatch.setattr(build, "can_probe_memory", lambda runtime: True)
    monkeypatch.setattr(build, "step_fits", fits)
    lines = []
    config = TrainConfig(train_data=str(data / "c_train_*.bin"), model="d2w64", batch_size=8, seq_len=32,
                         total_batch_size=512, max_steps=2, val_every=0, sample_every=0, device="cpu", compile=0,
                         auto_batch=1)
    trainer = build_trainer(config, print_fn=lines.append)
    layout = trainer.train_step.layout
    assert tried == [8, 4, 2]
    assert (layout.batch_size, layout.grad_accum_steps, layout.tokens_per_step) == (2, 8, 512)
    assert config.batch_size == 8  # the config is not changed; the layout holds what the run uses
    assert any("using -b 2 with grad accumulation 8" in line for line in lines)
    summary = trainer.fit()
    assert summary["train_loss"] is not None


def flip_middle(path: Path, count: int = 64) -> None:
    """Overwrite `count` bytes in the middle of a file: the same size, other contents (a disk or copy error)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle: middle + count] = bytes(255 - b for b in data[middle: middle + count])
    path.write_bytes(bytes(data))


def test_a_corrupt_file_of_the_right_size_is_caught_by_its_checksum(finished_run, tmp_path, capsys):
    from llmpy.cli import main

    run = tmp_path / "run"
    shutil.copytree(finished_run.output_dir, run)
    marker = json.loads((run / "DONE_00000004").read_text())
    assert set(marker["model_00000004.pt"]) == {"size", "sha256"}
    flip_middle(run / "model_00000004.pt")
    assert completed_steps(run) == [4]  # the sizes still match: only the checksum can tell
    with pytest.raises(LlmpyError, match="model_00000004.pt is damaged: its contents do not match the digest"):
        load_model(run)
    code = main(["sample", "--model", str(run), "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is damaged" in err


def test_resume_skips_a_corrupt_state_file_and_never_writes_non_finite_weights(data, tmp_path):
    config = TrainConfig(train_data=str(data / "c_train_*.bin"), output_dir=str(tmp_path / "run"), model="d2w64",
                         batch_size=2, seq_len=32, total_batch_size=128, max_steps=4, checkpoint_every=2,
                         val_every=0, sample_every=0, log_every=0, device="cpu", compile=0)
    build_trainer(config, print_fn=lambda *a: None).fit()
    assert completed_steps(tmp_path / "run", with_state=True) == [2, 4]
    flip_middle(tmp_path / "run" / "state_00000004_00000.pt")
    lines = []
    trainer = build_trainer(dataclasses.replace(config, resume=1, max_steps=6), print_fn=lines.append)
    assert trainer.start_step == 2
    assert any("skipped the newer checkpoint 4" in line and "is damaged" in line for line in lines), lines
    with torch.no_grad():
        trainer.model.module.transformer.ln_f.weight.fill_(float("nan"))
    trainer.save_checkpoint(6)
    assert any("checkpoint 6 not written: NaN or inf in transformer.ln_f.weight" in line for line in lines), lines
    assert 6 not in completed_steps(tmp_path / "run")
    assert trainer.last_checkpoint.endswith("model_00000002.pt")  # the last good one, not a NaN model


def test_a_new_run_never_mixes_with_another_runs_checkpoints(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run.output_dir, run)
    again = dataclasses.replace(finished_run, output_dir=str(run), max_steps=2, seed=7)
    with pytest.raises(LlmpyError, match=r"holds another run's checkpoints \(DONE_00000004\).*-y 1.*--overwrite 1"):
        build_trainer(again, print_fn=lambda *a: None)
    assert completed_steps(run) == [4]  # untouched
    lines = []
    build_trainer(dataclasses.replace(again, overwrite=1), print_fn=lines.append).fit()
    assert completed_steps(run) == [2] and completed_steps(tmp_path / "run.old1") == [4]
    assert any("is now in" in line and "run.old1" in line for line in lines)
    assert load_model(run)[1]["step"] == 2  # what sample/eval/convert now read is the new run's model
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(LlmpyError, match="a_file: a file, not a run directory"):
        build_trainer(dataclasses.replace(again, output_dir=str(tmp_path / "a_file")), print_fn=lambda *a: None)


def test_resume_removes_what_unfinished_checkpoint_writes_left(finished_run, tmp_path):
    # what a kill or a full disk leaves: files of step 6 without its DONE marker, temp files of a writer now dead
    run = tmp_path / "run"
    shutil.copytree(finished_run.output_dir, run)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    orphans = ["model_00000006.pt", "state_00000006_00000.pt", f".model_00000008.pt.tmp{dead_pid}",
               f".DONE_00000006.tmp{dead_pid}"]
    for name in orphans:
        shutil.copyfile(run / "model_00000004.pt", run / name)
    alive = run / ".state_00000008_00000.pt.tmp1"  # pid 1 runs: it may still be writing
    alive.write_bytes(b"in progress")
    lines = []
    trainer = build_trainer(dataclasses.replace(finished_run, output_dir=str(run), resume=1, max_steps=6,
                                                extend_schedule="final"),
                            print_fn=lambda *a: lines.append(" ".join(map(str, a))))
    assert trainer.start_step == 4
    assert any(line.startswith("resume: removed 4 file(s) of unfinished checkpoint writes") for line in lines), lines
    assert not any((run / name).exists() for name in orphans) and alive.exists()
    trainer.fit()
    assert completed_steps(run, with_state=True) == [4, 6]
    assert load_model(run)[1]["step"] == 6  # the step-6 files are this run's, vouched for by its own marker
