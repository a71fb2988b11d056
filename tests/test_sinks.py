"""Live monitoring: RunLogger's records reach TensorBoard event files and a (fake) wandb module; off by default."""

import sys
import types

import pytest

from llmpy.errors import LlmpyError
from llmpy.metrics.logger import RunLogger
from llmpy.metrics.sinks import scalar_metrics


def log_a_few_steps(logger):
    logger.log_event(0, "config", num_parameters=1234, model_config={"n_layer": 2})
    logger.log_val(0, 10.5)
    logger.log_train(0, 10.25, 1e-4, 3.5, tokens_per_sec=1000.0, mfu=0.25, tokens=512, skipped=True)
    logger.log_train(1, 9.75, 2e-4, float("nan"), tokens_per_sec=1500.0, mfu=0.375, tokens=512)
    logger.log_eval(1, 0.265, acc=0.25)
    logger.log_event(1, "sample", text="To be or not")


def test_scalar_metrics_keeps_finite_numbers_only():
    fields = {"loss": 2.0, "grad_norm": None, "skipped": True, "text": "x", "tokens": 512, "time": 1.0}
    assert scalar_metrics("train", fields) == {"train/loss": 2.0, "train/tokens": 512.0}


def test_tensorboard_event_files_hold_the_logged_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with RunLogger(tmp_path / "run", tensorboard_dir=tmp_path / "tb", run_config={"model": "d2"}) as logger:
        log_a_few_steps(logger)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()

    def scalars(tag):
        return [(event.step, pytest.approx(event.value)) for event in events.Scalars(tag)]

    assert scalars("train/loss") == [(0, 10.25), (1, 9.75)]
    assert scalars("train/lr") == [(0, 1e-4), (1, 2e-4)]
    assert scalars("train/grad_norm") == [(0, 3.5)]  # the NaN norm is left out, as in metrics.jsonl (null)
    assert scalars("train/mfu") == [(0, 0.25), (1, 0.375)]
    assert scalars("train/tokens_per_sec") == [(0, 1000.0), (1, 1500.0)]
    assert scalars("val/loss") == [(0, 10.5)]
    assert scalars("eval/accuracy") == [(1, 0.265)]
    assert scalars("eval/acc") == [(1, 0.25)]
    assert "train/skipped" not in events.Tags()["scalars"]
    # the files are written as before
    assert (tmp_path / "run" / "main.log").read_text().splitlines()[1] == "s:0 trl:10.250000 lr:0.000100 norm:3.500000"


class FakeRun:
    def __init__(self, calls):
        self.calls = calls
        self.config = types.SimpleNamespace(update=lambda values, **kw: calls.append(("config.update", values)))

    def define_metric(self, name, **kwargs):
        self.calls.append(("define_metric", name, kwargs))

    def log(self, values):
        self.calls.append(("log", values))

    def finish(self):
        self.calls.append(("finish",))


def fake_wandb(calls):
    module = types.ModuleType("wandb")

    def init(**kwargs):
        calls.append(("init", kwargs))
        return FakeRun(calls)

    module.init = init
    return module


def test_wandb_receives_every_metric(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(calls))
    monkeypatch.setenv("WANDB_MODE", "offline")
    with RunLogger(tmp_path / "run", wandb_project="llmpy-test", run_config={"model": "d2"}) as logger:
        log_a_few_steps(logger)
    assert calls[0] == ("init", {"project": "llmpy-test", "config": {"model": "d2"}, "dir": str(tmp_path / "run"),
                                 "name": "run"})
    assert ("define_metric", "*", {"step_metric": "step"}) in calls
    logs = [call[1] for call in calls if call[0] == "log"]
    assert logs == [
        {"step": 0, "val/loss": 10.5},
        {"step": 0, "train/loss": 10.25, "train/lr": 1e-4, "train/grad_norm": 3.5, "train/tokens_per_sec": 1000.0,
         "train/mfu": 0.25, "train/tokens": 512.0},
        {"step": 1, "train/loss": 9.75, "train/lr": 2e-4, "train/tokens_per_sec": 1500.0, "train/mfu": 0.375,
         "train/tokens": 512.0},
        {"step": 1, "eval/accuracy": 0.265, "eval/acc": 0.25},
    ]
    assert ("config.update", {"num_parameters": 1234, "model_config": {"n_layer": 2}}) in calls
    assert calls[-1] == ("finish",)


def test_missing_wandb_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(LlmpyError, match=r"--wandb needs the wandb package: pip install wandb"):
        RunLogger(tmp_path, wandb_project="p")


def test_sinks_are_off_by_default_and_on_other_ranks(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb(calls))
    with RunLogger(tmp_path / "quiet", enabled=False, wandb_project="p", tensorboard_dir=tmp_path / "tb") as logger:
        log_a_few_steps(logger)
    with RunLogger(tmp_path / "plain") as logger:
        log_a_few_steps(logger)
    assert calls == []
    assert not (tmp_path / "tb").exists()
    assert sorted(path.name for path in (tmp_path / "plain").iterdir()) == ["main.log", "metrics.jsonl"]


def test_llmpy_train_tensorboard_flag_logs_every_step(tmp_path):
    """`llmpy train --tensorboard DIR`: the flag reaches the logger and the run's steps land in the event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from conftest import write_random_shards
    from llmpy.cli import main

    data = write_random_shards(tmp_path, "d", {"val_000000": 600, "train_000001": 3000}, seed=3)
    code = main(["train", "-i", str(data / "d_train_*.bin"), "-j", str(data / "d_val_*.bin"), "-o", str(tmp_path / "run"),
                 "-e", "d2w64", "-b", "2", "-t", "32", "-d", "64", "-x", "3", "-v", "3", "-m", "1", "-s", "0",
                 "--device", "cpu", "--compile", "0", "--log-every", "0", "--tensorboard", str(tmp_path / "tb")])
    assert code == 0
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == [0, 1, 2]
    assert [event.step for event in events.Scalars("val/loss")] == [0, 3]
