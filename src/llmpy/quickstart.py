"""`llmpy quickstart`: tiny Shakespeare -> a small GPT-2 trained for a few minutes -> val loss and a sample."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from llmpy.atomic import sha256_of
from llmpy.config import TrainConfig, default_cache_dir
from llmpy.data.manifest import MANIFEST, describe_text_source, read_manifest
from llmpy.data.shakespeare import TINYSHAKESPEARE_SHA256, find_tinyshakespeare, resolve_tinyshakespeare
from llmpy.errors import LlmpyError
from llmpy.gpt2 import VOCAB_SIZE
from llmpy.resources import offline, offline_note
from llmpy.runtime import select_runtime
from llmpy.tokenizer import GPT2Tokenizer, get_tokenizer


def quickstart_config(is_cuda: bool, data_dir: Path, out_dir: str, steps: int | None) -> TrainConfig:
    """A run sized to finish in minutes: GPT-2 124M on a GPU, a 4-layer 128-wide GPT-2 on a CPU."""
    common = dict(
        train_data=str(data_dir / "tinyshakespeare_train_*.bin"), val_data=str(data_dir / "tinyshakespeare_val_*.bin"),
        output_dir=out_dir, overwrite=1, lr_schedule="cosine", final_lr_frac=0.1, weight_decay=0.1, seed=42,
    )
    if is_cuda:
        return TrainConfig(
            model="d12", batch_size=16, seq_len=512, learning_rate=6e-4, warmup_steps=20,
            max_steps=300 if steps is None else steps, val_every=50, val_max_steps=-1, sample_every=100,
            gen_tokens=128, log_every=10, **common,
        )
    return TrainConfig(
        model="d4w128", batch_size=8, seq_len=128, learning_rate=2e-3, warmup_steps=10,
        max_steps=200 if steps is None else steps, val_every=50, val_max_steps=8, sample_every=0, gen_tokens=96,
        log_every=10, device="cpu", **common,
    )


def _why_not_reusable(data: Path, tokenizer: GPT2Tokenizer) -> tuple[dict | None, str | None]:
    """(the source record of the shards in `data`, None) when they can be trained on, else (None, why not)."""
    from llmpy.data.pipeline import verify_output

    path = data / MANIFEST
    if not path.is_file():
        return None, "no shards there yet"
    try:
        manifest = read_manifest(path, fix=None)
    except LlmpyError as exc:
        return None, str(exc)
    source = manifest["settings"].get("source")
    if not isinstance(source, dict) or not isinstance(source.get("sha256"), str):
        return None, "their manifest does not record which text they hold"
    if source.get("name") != "tinyshakespeare":
        return None, f"they hold {describe_text_source(source)}, not tiny Shakespeare"
    if manifest["settings"].get("tokenizer_sha256") != sha256_of(tokenizer.bpe_file):
        return None, "they were made with another tokenizer file"
    problems = verify_output(data)
    if problems:
        return None, problems[0]
    return source, None


def tinyshakespeare_shards(data: Path, tokenizer: GPT2Tokenizer) -> dict:
    """The source record of the shards in `data` to train on: the ones there when they verify and hold the text that
    resolution picks now (a local file first; without one, the real char-rnn text needs no lookup), else shards
    prepared again from the text of now."""
    from llmpy.data.prepare import prepare_tinyshakespeare

    source, stale = _why_not_reusable(data, tokenizer)
    local = find_tinyshakespeare()  # $LLMPY_TINYSHAKESPEARE, ./data, the cache: what the user put there wins
    if local is None and source is not None and not source.get("substitute") \
            and source["sha256"] == TINYSHAKESPEARE_SHA256:
        return source  # nothing is better than the real text: no network
    text_path, is_substitute = (local, False) if local is not None else resolve_tinyshakespeare(flag=None)
    if source is not None and source["sha256"] == sha256_of(text_path):
        return source
    reason = stale or f"they hold {describe_text_source(source)}; the text now is {text_path}"
    print(f"preparing tiny Shakespeare into {data} ({reason})")
    return prepare_tinyshakespeare(data, tokenizer=tokenizer, text=(text_path, is_substitute))["settings"]["source"]


def run_quickstart(out_dir: str = "runs/quickstart", steps: int | None = None, device: str = "auto",
                   data_dir: str | None = None) -> dict:
    """Prepare the data if needed, train, print val loss before/after and a sample; returns the fit summary."""
    from llmpy.sample import run_sample
    from llmpy.train.build import build_trainer

    if offline():
        print(offline_note(), file=sys.stderr)
    runtime = select_runtime(device)
    tokenizer = get_tokenizer()  # resolve the GPT-2 BPE first: it says where it came from, or what to do
    data = Path(data_dir) if data_dir else default_cache_dir() / "data" / "tinyshakespeare"
    source = tinyshakespeare_shards(data, tokenizer)
    print(f"training text: {describe_text_source(source)}; shards in {data}")
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
