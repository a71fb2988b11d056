"""`llmpy eval`: val loss over a fixed token budget and HellaSwag, next to OpenAI's GPT-2 and GPT-3 numbers."""

from __future__ import annotations

import json
import sys
import time

from llmpy.config import ModelConfig
from llmpy.errors import LlmpyError
from llmpy.gpt2 import reference_for
from llmpy.runtime import Runtime


def val_loss_over_budget(model, pattern: str, tokens: int, batch_size: int, seq_len: int, runtime: Runtime,
                         progress: bool = False) -> dict:
    """Mean loss over the first `tokens` tokens (whole B x T batches) of a shard glob, unshuffled (`progress`: a bar
    on a terminal)."""
    from llmpy.data.loader import TokenLoader
    from llmpy.eval.val_loss import evaluate_loss
    from llmpy.loss import ModelWithLoss, build_loss

    loader = TokenLoader(pattern, batch_size, seq_len)
    steps = max(1, min(tokens // (batch_size * seq_len), loader.steps_per_epoch))
    loss = build_loss("plain", model.config.vocab_size, model.config.padded_vocab_size).to(runtime.device)
    with_loss = ModelWithLoss(model, loss)
    return {"val_loss": evaluate_loss(with_loss, loader, steps, runtime, progress=progress),
            "val_tokens": steps * batch_size * seq_len}


def token_count(tokens: int) -> str:
    """A token count for a label: 65,536 below a million (where "0.1M" would hide it), else 10.5M."""
    return f"{tokens:,}" if tokens < 1_000_000 else f"{tokens / 1e6:.1f}M"


def format_table(spec: str, model_config: ModelConfig, num_params: int, results: dict) -> str:
    """A plain-text table of this model's numbers beside the reference checkpoints of its size."""
    match = reference_for(model_config.n_layer, model_config.n_embd)
    size, ref = match if match else ("", {})
    header = f"{'metric':<22}{'this model':>12}" + (f"{'GPT-2 ' + size:>14}{'GPT-3 ' + size:>14}" if ref else "")
    lines = [f"model {spec}: {model_config.n_layer} layers, {model_config.n_embd} channels, {num_params:,} parameters",
             header, "-" * len(header)]

    def row(name: str, value, gpt2=None, gpt3=None) -> None:
        cells = f"{name:<22}{value:>12.4f}"
        if ref:
            cells += f"{gpt2:>14.4f}" if gpt2 is not None else f"{'-':>14}"
            cells += f"{gpt3:>14.4f}" if gpt3 is not None else f"{'-':>14}"
        lines.append(cells)

    if "val_loss" in results:
        row(f"val loss ({token_count(results['val_tokens'])} tok)", results["val_loss"], ref.get("gpt2_val_loss"))
    if "hellaswag_acc_norm" in results:
        row("HellaSwag acc_norm", results["hellaswag_acc_norm"], ref.get("gpt2_hellaswag"), ref.get("gpt3_hellaswag"))
        row("HellaSwag acc", results["hellaswag_acc"])
        lines.append(f"{'HellaSwag examples':<22}{results['hellaswag_examples']:>12,}")
    if ref:
        lines.append("(GPT-2 val loss is on llm.c's FineWeb val split: compare only on the same tokens)")
    return "\n".join(lines)


def run_eval(spec: str, *, val_data: str | None, val_tokens: int, batch_size: int, seq_len: int,
             hellaswag: str | None, skip_hellaswag: bool, limit: int | None, runtime: Runtime, as_json: bool,
             tokenizer: str | None = None) -> dict:
    """Load the model, compute what was asked for, print a table (or one JSON line); returns the results."""
    from llmpy.convert.load import load_any_model

    if limit is not None and limit < 1:
        raise LlmpyError(f"eval: --limit must be at least 1 HellaSwag example, got {limit} (leave it out for all)")
    model = load_any_model(spec).to(runtime.device).eval()
    results: dict = {"model": spec}
    if val_data:
        if seq_len > model.config.block_size:
            raise LlmpyError(f"-t/--seq-len {seq_len} exceeds the model's {model.config.block_size} positions")
        results.update(val_loss_over_budget(model, val_data, val_tokens, batch_size, seq_len, runtime,
                                            progress=not as_json))
    elif not skip_hellaswag:
        print("eval: val loss skipped: no -j/--val-data given (a val shard glob, e.g. 'fineweb_val_*.bin')",
              file=sys.stderr)
    if not skip_hellaswag:
        from llmpy.data.hellaswag import resolve_hellaswag
        from llmpy.eval.hellaswag import evaluate_hellaswag, load_examples
        from llmpy.tokenizer import get_tokenizer

        examples = load_examples(resolve_hellaswag(hellaswag, flag="--hellaswag-file"),
                                 get_tokenizer(tokenizer, flag="--tokenizer"), limit)
        started = time.perf_counter()
        scores = evaluate_hellaswag(model, examples, runtime.device, runtime.autocast, progress=not as_json)
        results.update(hellaswag_acc_norm=scores["acc_norm"], hellaswag_acc=scores["acc"],
                       hellaswag_examples=scores["examples"], hellaswag_seconds=time.perf_counter() - started)
    if not val_data and skip_hellaswag:
        raise LlmpyError("eval: nothing to compute; give --val-data GLOB and/or drop --no-hellaswag")
    num_params = sum(p.numel() for p in model.parameters())
    if as_json:
        print(json.dumps(results))
    else:
        print(format_table(spec, model.config, num_params, results))
    return results
