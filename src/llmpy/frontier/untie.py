"""A head tied to the token embedding for the first part of training, untied after it (modded-nanogpt records of
2025-12-19, "RetieLMHead", and 2025-12-22, untied at 2/3; docs/frontier_research.md §3.14).

The model keeps two parameters, the embedding E and the head W (same (vocab, width) shape), equal at the start.
While tied (steps 0..split), each update is the tied model's: the head's gradient plus the embedding's goes to the
head, the head alone takes the optimizer step (in the head's Adam group), and the embedding is set to the head
again after it. After the update of step `split`, the embedding takes a copy of the head's optimizer state; from
then on the two are independent parameters with the same settings. The idea: early on, the embedding's sparse
gradient (only the rows of tokens in the batch) gains from riding on the head's dense one; later the two roles
want different weights.

Keeping two parameters throughout (instead of one shared tensor that later splits) leaves the parameter set, DDP's
buckets, FSDP's shards and the optimizer's groups the same for the whole run; the embedding's gradient is zeroed
in place while tied (so a captured CUDA graph's buffers stay), and its optimizer state before the split is
overwritten at the split. Whether the run is still tied is a function of the step, except that a run whose two
weights already differ (untied before a resume that re-planned the schedule) stays untied.
"""

from __future__ import annotations

import torch
import torch.nn as nn

HEAD_INIT_STD = 0.005  # the tied head/embedding's initial std (the speedrun's)


def split_step(untie_at: float, total_steps: int) -> int:
    """The last tied step: the update of this step is the last one the head and embedding share."""
    return max(0, round(untie_at * total_steps) - 1)


class TiedUntil:
    """Keeps `embedding` equal to `head` through step `split` (see the module docstring), for `optimizer`."""

    def __init__(self, embedding: nn.Parameter, head: nn.Parameter, optimizer: torch.optim.Optimizer, split: int):
        if embedding.shape != head.shape:
            raise ValueError(f"tie-then-untie needs an embedding and a head of one shape, got {tuple(embedding.shape)} "
                             f"and {tuple(head.shape)}")
        self.embedding, self.head, self.optimizer, self.split = embedding, head, optimizer, split
        self.untied: bool | None = None  # read from the weights at the first step (after any resume's load)

    @classmethod
    def for_model(cls, model: nn.Module, optimizer: torch.optim.Optimizer, total_steps: int) -> "TiedUntil | None":
        """The tie of a model whose config has `untie_at` > 0 (the modern family's switch), else None."""
        untie_at = getattr(model.config, "untie_at", 0.0)
        if not untie_at:
            return None
        return cls(model.transformer.wte.weight, model.lm_head.weight, optimizer, split_step(untie_at, total_steps))

    def tied_at(self, step: int) -> bool:
        if self.untied is None:
            with torch.no_grad():
                self.untied = not torch.equal(self.embedding, self.head)
        return not self.untied and step <= self.split

    @torch.no_grad()
    def merge_gradients(self, step: int) -> None:
        """After the backward passes (and the gradients' all-reduce), before clipping and the update: while tied,
        the head's gradient becomes the tied weight's (head + embedding) and the embedding's is zeroed."""
        if self.tied_at(step) and self.embedding.grad is not None:
            if self.head.grad is None:
                self.head.grad = self.embedding.grad.clone()
            else:
                self.head.grad.add_(self.embedding.grad)
            self.embedding.grad.zero_()

    @torch.no_grad()
    def after_update(self, step: int) -> None:
        """After the optimizer step: while tied, the embedding is the head again; at the split step it also takes
        the head's optimizer state, and the two go on independently."""
        if not self.tied_at(step):
            return
        self.embedding.copy_(self.head)
        if step == self.split:
            state = self.optimizer.state.get(self.head, {})
            self.optimizer.state[self.embedding] = {key: value.clone() for key, value in state.items()}
            self.untied = True
