"""The output head + cross-entropy, as a component chosen at build time and handed the head explicitly.

Every loss computes the same number: the mean, over targets other than -1, of the softmax cross-entropy over the
real vocabulary, in fp32 even under bf16 autocast (as llm.c's fused classifier does). They differ in how:

- `plain`: the head's matmul writes the padded logits; a -inf mask over the padded columns makes the softmax the
  one over the real vocabulary without a sliced copy; `F.cross_entropy` does the rest.
- `fused`: llmpy.kernels.cross_entropy writes the loss and its gradient in one pass over the logits (training
  only; under no_grad it is the plain path), optionally a block of rows at a time (--loss-chunk-rows), so the
  whole batch's logits never exist at once.

`ModelWithLoss` (model + loss) is what training and the val loss run, and what DDP and torch.compile wrap.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmpy.kernels.cross_entropy import IGNORE_INDEX, head_loss, kernel_launch_config


class CrossEntropyLoss(nn.Module):
    """Head + cross-entropy through PyTorch ops: head(hidden) -> masked fp32 logits -> F.cross_entropy."""

    def __init__(self, vocab_size: int, padded_vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        # added to the logits before the softmax: 0 for real tokens, -inf for the padded rows
        vocab_mask = torch.zeros(padded_vocab_size)
        vocab_mask[vocab_size:] = float("-inf")
        self.register_buffer("vocab_mask", vocab_mask, persistent=False)

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module) -> torch.Tensor:
        """hidden (B, T, C), targets (B, T) with -1 where nothing is predicted -> the mean loss (a scalar)."""
        masked = head(hidden).float() + self.vocab_mask  # (B, T, padded V)
        return F.cross_entropy(masked.view(-1, masked.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX)


class FusedCrossEntropyLoss(CrossEntropyLoss):
    """The same loss with its gradient written in the forward pass by one Triton kernel (PyTorch ops on CPU)."""

    def __init__(self, vocab_size: int, padded_vocab_size: int, chunk_rows: int = 0):
        super().__init__(vocab_size, padded_vocab_size)
        self.launch = kernel_launch_config(padded_vocab_size)  # read once: a bad LLMPY_LOSS_KERNEL fails at build
        self.chunk_rows = chunk_rows  # --loss-chunk-rows: logits of this many rows at a time (0: all at once)

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module) -> torch.Tensor:
        if not torch.is_grad_enabled():  # evaluation: no gradient to write
            return super().forward(hidden, targets, head)
        if type(head) is not nn.Linear or head.bias is not None:  # a swapped head (FP8, hooks) must not be bypassed
            raise TypeError(f"the fused loss reads the head's weight directly; it needs a bias-free nn.Linear head, "
                            f"got {type(head).__name__}")
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        return head_loss(hidden.to(dtype), head.weight.to(dtype), targets, self.vocab_size, self.launch,
                         self.chunk_rows)


LOSSES = {"plain": CrossEntropyLoss, "fused": FusedCrossEntropyLoss}


def build_loss(kind: str, vocab_size: int, padded_vocab_size: int, chunk_rows: int = 0) -> CrossEntropyLoss:
    """The loss component named `kind` (see LOSSES); `chunk_rows` for the fused one (see --loss-chunk-rows)."""
    if kind == "fused":
        return FusedCrossEntropyLoss(vocab_size, padded_vocab_size, chunk_rows)
    return LOSSES[kind](vocab_size, padded_vocab_size)


class ModelWithLoss(nn.Module):
    """A model and its loss: (idx, targets) -> mean loss. The model's output head is passed to the loss."""

    def __init__(self, model: nn.Module, loss: CrossEntropyLoss):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        head = self.model.lm_head
        return self.model(idx, output=lambda hidden: self.loss(hidden, targets, head))
