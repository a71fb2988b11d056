"""Auxiliary training losses of the speedrun (modded-nanogpt; docs/frontier_research.md §3.13, §3.15): more targets
for the same logits, no new parameters, for any model family (they need only the hidden states, the head and the
targets). Both are training-only and fade out: their weights fall linearly from the given values at step 0 to 0 at
a fraction `until` of the LR schedule's steps (--aux-loss-until), after which training is plain next-token loss.

- Multi-token prediction (#53, --mtp-weights w2,w3,...): with targets y_i = x_{i+1} and logits z_i of position i,
  the terms w_{k+1} * CE(z_i, y_{i+k}) for k = 1, 2, ...: the token 2, 3, ... positions ahead from the same z_i.
  Terms past the row's end are dropped; there is no document masking (y_{i+k} may be in the next document).
- Prefix-token prediction (#88, --prefix-loss w_p): the term w_p * CE(z_i, P[y_i]), P[t] the token whose bytes are
  the longest proper prefix of t's bytes that is itself a token (`prefix_table`, from the tokenizer's ranks).

Each term is a mean over its own valid positions (targets other than -1), as the main loss is, and the terms add:
loss = main + sum_j w_j * term_j (not divided by sum w).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmpy.kernels.cross_entropy import IGNORE_INDEX
from llmpy.loss import CrossEntropyLoss


def weight_scale(progress: float, until: float) -> float:
    """The schedule: the fraction of their initial values the weights have at training progress `progress` (step /
    the LR schedule's steps): 1 at 0, falling linearly to 0 at `until`, 0 after."""
    return max(0.0, 1.0 - progress / until)


def prefix_table(ranks: Mapping[bytes, int], size: int) -> torch.Tensor:
    """(size,) int64: token id -> the id of the longest proper prefix of its bytes that is a token, -1 where there is
    none (single bytes) and for ids with no bytes in `ranks` (EOT, padding)."""
    table = [IGNORE_INDEX] * size
    for token, rank in ranks.items():
        if rank >= size:
            continue
        for end in range(len(token) - 1, 0, -1):
            prefix = ranks.get(token[:end])
            if prefix is not None:
                table[rank] = prefix
                break
    return torch.tensor(table, dtype=torch.long)


@functools.lru_cache(maxsize=2)
def gpt2_prefix_table(bpe_file: Path, size: int) -> torch.Tensor:
    """`prefix_table` of a ranks file (gpt2.tiktoken, resolved by llmpy.tokenizer), built once per file and size
    (about 0.1 s for GPT-2's 50,256 ranks)."""
    from tiktoken.load import load_tiktoken_bpe

    return prefix_table(load_tiktoken_bpe(str(bpe_file)), size)


class AuxiliaryLoss(CrossEntropyLoss):
    """The plain head + cross-entropy, plus the multi-token and prefix-token terms while training.

    The number it returns is the main next-token CE alone, so the train loss stays comparable with the val loss,
    with runs without the terms, and with -sl's window: it returns main + (aux - aux.detach()), whose value is main
    (aux - aux is exactly 0) and whose gradient is that of main + aux. Under no_grad (val loss, evaluation) only the
    main CE is computed, exactly as CrossEntropyLoss computes it.

    The weights now are a buffer (`weights`) that `schedule_weights` fills in place each step, so compiled code and
    captured graphs read the new values without recompiling. The terms are computed from one log-softmax of the
    logits with one gather, also once their weights are 0 (a shape that never changes is one compiled graph)."""

    def __init__(self, vocab_size: int, padded_vocab_size: int, mtp_weights: Sequence[float] = (),
                 prefix_weight: float = 0.0, prefix_of: torch.Tensor | None = None, until: float = 1.0):
        super().__init__(vocab_size, padded_vocab_size)
        if prefix_weight and prefix_of is None:
            raise ValueError("a prefix-token weight needs the prefix table (prefix_of)")
        self.offsets = len(mtp_weights)  # the terms for the tokens 2 .. offsets + 1 ahead
        self.until = until
        initial = [float(w) for w in mtp_weights] + ([float(prefix_weight)] if prefix_weight else [])
        self.register_buffer("initial_weights", torch.tensor(initial, dtype=torch.float32), persistent=False)
        self.register_buffer("weights", self.initial_weights.clone(), persistent=False)
        self.register_buffer("prefix_of", prefix_of if prefix_weight else None, persistent=False)

    def schedule_weights(self, progress: float) -> float:
        """Set the weights for training progress `progress` (step / steps); returns their scale (see weight_scale)."""
        scale = weight_scale(progress, self.until)
        torch.mul(self.initial_weights, scale, out=self.weights)
        return scale

    def aux_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """(B, T) targets -> (B, T, terms): column k - 1 holds y_{i+k} (-1 past the row's end), the last P[y_i]."""
        T = targets.size(1)
        columns = [F.pad(targets[:, k:], (0, min(k, T)), value=IGNORE_INDEX) for k in range(1, self.offsets + 1)]
        if self.prefix_of is not None:
            columns.append(torch.where(targets >= 0, self.prefix_of[targets.clamp(min=0)], IGNORE_INDEX))
        return torch.stack(columns, dim=-1)

    def aux_terms(self, log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(terms,): each term's mean CE over its valid positions (0 for a term with none), from (B, T, V) log-probs."""
        wanted = self.aux_targets(targets)
        valid = wanted != IGNORE_INDEX
        picked = log_probs.gather(-1, wanted.clamp(min=0))  # (B, T, terms)
        total = torch.where(valid, picked, 0.0).sum(dim=(0, 1))
        return -total / valid.sum(dim=(0, 1)).clamp(min=1)

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module) -> torch.Tensor:
        if not torch.is_grad_enabled():  # evaluation: the next-token loss only
            return super().forward(hidden, targets, head)
        masked = head(hidden).float() + self.vocab_mask  # (B, T, padded V)
        log_probs = F.log_softmax(masked, dim=-1)
        main = F.nll_loss(log_probs.view(-1, log_probs.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        aux = (self.weights * self.aux_terms(log_probs, targets)).sum()
        return main + (aux - aux.detach())  # the value of main, the gradient of main + aux
