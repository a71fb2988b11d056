"""Trainer: gradient accumulation equivalence, logs in llm.c's format, checkpoints, and learning on real text."""

import json
import re

import numpy as np
import pytest
import torch

from llmpy.config import ModelConfig, TrainConfig
from llmpy.checkpoint import load_model
from llmpy.data.shards import write_shard
from llmpy.loss import ModelWithLoss, build_loss
from llmpy.model import GPT
from llmpy.runtime import select_runtime
from llmpy.train.build import build_trainer
from llmpy.train.step import MetricsQueue

TINY_MODEL = "d2w64"  # 2 layers, 64 wide, 1 head


@pytest.fixture()
def shard_dir(tmp_path):
    """A train and a val shard of random tokens, written through the shard writer."""
    rng = np.random.default_rng(0)
    write_shard(tmp_path / "toy_val_000000.bin", rng.integers(0, 50257, 4096))
    write_shard(tmp_path / "toy_train_000001.bin", rng.integers(0, 50257, 20000))
    return tmp_path


def tiny_config(shard_dir, **overrides) -> TrainConfig:
    values = dict(
        train_data=str(shard_dir / "toy_train_*.bin"), val_data=str(shard_dir / "toy_val_*.bin"), model=TINY_MODEL,
        batch_size=4, seq_len=32, learning_rate=1e-3, max_steps=3, val_every=0, sample_every=0, log_every=0,
        device="cpu", compile=0, seed=7,
    )
    values.update(overrides)
    return TrainConfig(**values)


def run_steps(trainer, steps):
    """Run `steps` training steps and read their stats back from the device (StepStats, oldest first)."""
    queue = MetricsQueue(trainer.train_step.clock)
    for step in range(steps):
        queue.put(trainer.train_step(step))
    return queue.drain()


def test_grad_accumulation_matches_one_big_batch():
    """Mechanics: the mean loss over 4 micro-batches of 2 gives the gradients of one batch of 8."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=4, n_embd=64, block_size=64))
    step = ModelWithLoss(model, build_loss("plain", model.config.vocab_size, model.config.padded_vocab_size))
    x = torch.randint(0, 50257, (8, 32))
    y = torch.randint(0, 50257, (8, 32))
    loss = step(x, y)
    loss.backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for i in range(4):
        loss = step(x[2 * i: 2 * i + 2], y[2 * i: 2 * i + 2])
        (loss / 4).backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, full[name], atol=1e-6, rtol=1e-4)


def test_trainer_accumulation_4x1_equals_1x4(shard_dir):
    """Through the real trainer: B=1 with -d 4*T and B=4 without accumulation take identical steps."""
    losses = {}
    for batch_size in (4, 1):
        cfg = tiny_config(shard_dir, batch_size=batch_size, total_batch_size=4 * 32)
        trainer = build_trainer(cfg, print_fn=lambda *a: None)
        assert trainer.train_step.layout.grad_accum_steps == 4 // batch_size
        losses[batch_size] = run_steps(trainer, 3)
    for big, small in zip(losses[4], losses[1]):
        assert big.loss == pytest.approx(small.loss, abs=1e-5)
        assert big.grad_norm == pytest.approx(small.grad_norm, rel=1e-4)
        assert big.lr == small.lr and big.tokens == small.tokens == 128


def test_run_directory_logs_and_checkpoint(shard_dir, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(shard_dir, output_dir=str(out), max_steps=4, val_every=2, val_max_steps=2,
                      warmup_steps=2, lr_schedule="linear", final_lr_frac=0.0)
    summary = build_trainer(cfg, print_fn=lambda *a: None).fit()
    lines = (out / "main.log").read_text().splitlines()
    train = [l for l in lines if " trl:" in l]
    assert [l.split()[0] for l in train] == ["s:0", "s:1", "s:2", "s:3"]
    assert all(re.fullmatch(r"s:\d+ trl:\d+\.\d{6} lr:\d+\.\d{6} norm:\d+\.\d{6}", l) for l in train)
    assert [l for l in lines if "tel:" in l][0].startswith("s:0 tel:")
    assert sorted(summary["val_loss"]) == [0, 2, 4]
    # linear schedule with warmup 2 over 4 steps, by hand: 5e-4, 1e-3, 1e-3, 5e-4
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if r["kind"] == "train"]
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 5e-4])
    assert all("tokens_per_sec" in r for r in records if r["kind"] == "train")
    assert (out / "DONE_00000004").exists()
    model, payload = load_model(out)
    assert payload["step"] == 4 and model.config.n_layer == 2


def test_overfit_one_batch_drives_loss_down(shard_dir):
    cfg = tiny_config(shard_dir, overfit_batch=1, max_steps=30, learning_rate=3e-3)
    trainer = build_trainer(cfg, print_fn=lambda *a: None)
    stats = run_steps(trainer, 30)
    assert stats[-1].loss < stats[0].loss - 3.0


def test_non_finite_gradients_never_reach_the_weights(shard_dir):
    trainer = build_trainer(tiny_config(shard_dir), print_fn=lambda *a: None)
    model = trainer.model.module
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        model.transformer.ln_f.weight.fill_(float("nan"))
    before["transformer.ln_f.weight"] = model.transformer.ln_f.weight.detach().clone()
    [stats] = run_steps(trainer, 1)
    assert stats.skipped and stats.nonfinite
    for name, param in model.named_parameters():
        torch.testing.assert_close(param, before[name], equal_nan=True)


def test_one_epoch_default_and_too_little_data(shard_dir):
    trainer = build_trainer(tiny_config(shard_dir, max_steps=-1), print_fn=lambda *a: None)
    assert trainer.total_steps == trainer.train_step.loader.steps_per_epoch
    from llmpy.errors import LlmpyError

    with pytest.raises(LlmpyError, match=r"no shard holds one step of grad_accum\*world\*B\*T\+1 = 128001"):
        build_trainer(tiny_config(shard_dir, max_steps=-1, total_batch_size=4 * 32 * 1000), print_fn=lambda *a: None)


def test_runtime_defaults_on_cpu():
    runtime = select_runtime("cpu")
    assert runtime.precision == "fp32" and runtime.device.type == "cpu"
