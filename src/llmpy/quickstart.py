"""`llmpy quickstart`: tiny Shakespeare -> a small GPT-2 trained for a few minutes -> val loss and a sample."""

from __future__ import annotations

import json
import math
from pathlib import Path

from llmpy.config import TrainConfig, default_cache_dir
from llmpy.gpt2 import VOCAB_SIZE
from llmpy.runtime import select_runtime
from llmpy.tokenizer import get_tokenizer


def quickstart_config(is_cuda: bool, data_dir: Path, out_dir: str, steps: int | None) -> TrainConfig:
    """A run sized to finish in minutes: GPT-2 124M on a GPU, a 4-layer 128-wide GPT-2 on a CPU."""
    common = dict(
        train_data=str(data_dir / "tinyshakespeare_train_*.bin"), val_data=str(data_dir / "tinyshakespeare_val_*.bin"),
        output_dir=out_dir, overwrite=1, lr_schedule="cosine", final_lr_frac=0.1, weight_decay=0.1, seed=42,
    )
    if is_cuda:
        return TrainConfig(
            model="d12", batch_size=16, seq_len=512, learning_rate=6e-4, warmup_steps=20, max_steps=steps or 300,
            val_every=50, val_max_steps=-1, sample_every=100, gen_tokens=128, log_every=10, **common,
        )
    return TrainConfig(
        model="d4w128", batch_size=8, seq_len=128, learning_rate=2e-3, warmup_steps=10, max_steps=steps or 200,
        val_every=50, val_max_steps=8, sample_every=0, gen_tokens=96, log_every=10, device="cpu", **common,
    )


def run_quickstart(out_dir: str = "runs/quickstart", steps: int | None = None, device: str = "auto",
                   data_dir: str | None = None) -> dict:
    """Prepare the data if needed, train, print val loss before/after and a sample; returns the fit summary."""
    from llmpy.data.prepare import prepare_tinyshakespeare
    from llmpy.sample import run_sample
    from llmpy.train.build import build_trainer

    runtime = select_runtime(device)
    get_tokenizer()  # resolve the GPT-2 BPE first: it says where it came from, or what to do
    data = Path(data_dir) if data_dir else default_cache_dir() / "data" / "tinyshakespeare"
    manifest = data / "manifest.json"
    if not (manifest.is_file() and json.loads(manifest.read_text()).get("complete")):
        print(f"preparing tiny Shakespeare into {data}")
        prepare_tinyshakespeare(data)
    config = quickstart_config(runtime.is_cuda, data, out_dir, steps)
    print(f"training {config.model} for {config.max_steps} steps on {runtime.device_name()}; run directory {out_dir}")
    trainer = build_trainer(config)
    summary = trainer.fit()
    val = summary["val_loss"]
    first, last = val[min(val)], val[max(val)]
    print(
        f"\nval loss: {first:.4f} at step 0 (uniform guess: ln({VOCAB_SIZE}) = {math.log(VOCAB_SIZE):.2f}) -> "
        f"{last:.4f} at step {max(val)}"
    )
    print(f"logs: {Path(out_dir) / 'main.log'}, {Path(out_dir) / 'metrics.jsonl'}\n")
    run_sample(out_dir, "First Citizen:\n", max_new_tokens=config.gen_tokens, top_k=40, seed=1337,
               device=str(runtime.device))
    print(f"\nnext: llmpy sample --model {out_dir} --prompt 'ROMEO:'")
    return summary
