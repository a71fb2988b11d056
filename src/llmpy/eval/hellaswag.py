"""HellaSwag, "completion style" as llm.c and build-nanogpt score it: the context followed by each of the 4 endings
(" " + ending); the predicted ending has the lowest mean cross-entropy over its own tokens (acc_norm, the number llm.c
reports) or the lowest summed cross-entropy (acc). Many examples go through the model in one padded, masked batch, and
ranks split the examples and sum their counts."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from llmpy.errors import LlmpyError


@dataclass(frozen=True)
class Example:
    """One tokenized HellaSwag item."""

    context: list[int]
    endings: tuple[list[int], list[int], list[int], list[int]]
    label: int


def load_examples(path: str | Path, tokenizer, limit: int | None = None) -> list[Example]:
    """Tokenize a HellaSwag jsonl (official format: ctx, endings, label); a file without examples is an error."""
    examples = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if limit is not None and len(examples) >= limit:
                break
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                context = tokenizer.encode(item["ctx"])
                endings = tuple(tokenizer.encode(" " + ending) for ending in item["endings"])
                label = int(item["label"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise LlmpyError(f"{path}:{line_number}: not a HellaSwag example ({type(exc).__name__})") from None
            if len(endings) != 4 or label not in range(4):
                raise LlmpyError(f"{path}:{line_number}: needs 4 endings and a label 0-3")
            examples.append(Example(context, endings, label))
    if not examples and limit != 0:  # scoring nothing would report an accuracy of 0
        raise LlmpyError(f"{path}: no HellaSwag examples in this file (one JSON object per line with ctx, endings, "
                         "label); give the hellaswag_val.jsonl file")
    return examples


def _batch_rows(examples: list[Example], block_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4 rows per example: tokens (R, T) right-padded, targets (R, T) with -1 outside the endings, ending lengths."""
    rows, spans = [], []
    for example in examples:
        for ending in example.endings:
            tokens = (example.context + ending)[-block_size:]  # keep the ending; trim the context's start if needed
            rows.append(tokens)
            spans.append(min(len(ending), len(tokens) - 1))
    width = max(len(r) for r in rows)
    tokens = np.zeros((len(rows), width), dtype=np.int64)
    targets = np.full((len(rows), width), -1, dtype=np.int64)
    for i, (row, span) in enumerate(zip(rows, spans)):
        tokens[i, : len(row)] = row
        # position t predicts token t+1: the ending's tokens are predicted at positions len-span-1 .. len-2
        targets[i, len(row) - span - 1: len(row) - 1] = row[len(row) - span:]
    return torch.from_numpy(tokens), torch.from_numpy(targets), torch.tensor(spans)


@torch.no_grad()
def score_batch(model: torch.nn.Module, examples: list[Example], device: torch.device, autocast) -> torch.Tensor:
    """[examples, correct by summed loss, correct by mean loss] for a list of examples, in one forward pass."""
    tokens, targets, spans = _batch_rows(examples, getattr(getattr(model, "config", None), "block_size", 1 << 30))
    tokens, targets, spans = (t.to(device, non_blocking=True) for t in (tokens, targets, spans))
    with autocast():
        logits = model(tokens, output=model.logits)
    scored = targets != -1
    # the softmax only where an ending token is predicted: a tenth of the positions, in fp32
    losses = F.cross_entropy(logits[scored].float(), targets[scored], reduction="none")
    summed = torch.zeros(len(spans), device=device).index_add_(0, scored.nonzero()[:, 0], losses)
    labels = torch.tensor([e.label for e in examples], device=device)
    by_sum = summed.view(-1, 4).argmin(1)
    by_mean = (summed / spans).view(-1, 4).argmin(1)
    # counts stay on the device: no host sync per batch
    return torch.stack([torch.tensor(len(examples), device=device), (by_sum == labels).sum(), (by_mean == labels).sum()])


def evaluate_hellaswag(
    model: torch.nn.Module, examples: list[Example], device: torch.device, autocast, *, batch_examples: int = 32,
    rank: int = 0, world_size: int = 1, progress: bool = False, lockstep: bool = False,
) -> dict:
    """Accuracy over `examples` (rank r scores every world_size-th one; counts are summed across ranks).
    `lockstep`: every rank runs the same number of forward passes (FSDP's gathers are collectives); a rank whose share
    is used up scores a repeat of an example and discards it."""
    was_training = model.training
    model.eval()
    mine = examples[rank::world_size]
    counts = torch.zeros(3, dtype=torch.long, device=device)  # examples, correct (sum), correct (mean)
    most = -(-len(examples) // world_size)  # rank 0's share, the largest
    batches = range(0, most if lockstep else len(mine), batch_examples)
    for start in tqdm(batches, desc="hellaswag", unit="batch", disable=not progress or not sys.stderr.isatty(),
                      leave=False):
        batch = mine[start: start + batch_examples]
        if batch:
            counts += score_batch(model, batch, device, autocast)
        else:
            score_batch(model, examples[:1], device, autocast)  # keeps this rank in step with the others
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(counts)
    model.train(was_training)
    total, correct, correct_norm = (int(c) for c in counts)
    return {"examples": total, "acc": correct / max(total, 1), "acc_norm": correct_norm / max(total, 1)}
