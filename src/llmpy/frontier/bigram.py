"""Bigram hash embedding with the sign trick (modded-nanogpt records of 2026-01-19, "BigramHashEmbedding", and
2026-05-20, "BigramsSignTrick"; docs/frontier_research.md §3.9).

Every position t gets an embedding of the pair (x_{t-1}, x_t), looked up in a table of R rows by a hash:

    h_t = ((36313 * x_t) XOR (27191 * x_{t-1})) mod (R - 1),   h = R - 1 (a reserved row) where there is no x_{t-1}

and multiplied, elementwise, by a fixed +-1 pattern chosen by the pair, s_t = SIGNS[(x_{t-1} XOR x_t) mod 8192], so
that two bigrams sharing a row (a hash collision) write it with different sign patterns and mostly cancel each
other's interference. The result b_t (dimension d <= C) is added to the first d dims of the residual stream with
learned weights: before the first block and after every attention sub-layer. The table starts at zero, so the model
begins as without it. The products fit in 31 bits for any 16-bit token id, so the hash is the same in int32 or int64.

The sign patterns are a pure function of (row, column) (`sign_patterns`), not random state: nothing to checkpoint,
and an exporter reproduces them from the formula.
"""

from __future__ import annotations

import torch
import torch.nn as nn

HASH_CURRENT, HASH_PREVIOUS = 36313, 27191
SIGN_ROWS = 8192
INITIAL_WEIGHT = 0.05  # of each injection point's learned weight


def table_rows(multiple: float, padded_vocab_size: int) -> int:
    """The table's rows for `--arch bigram=multiple`: that many times the padded vocabulary (at least 2)."""
    return max(2, round(multiple * padded_vocab_size))


def bigram_rows(tokens: torch.Tensor, previous: torch.Tensor, rows: int) -> torch.Tensor:
    """Table rows of the pairs (previous, tokens), elementwise; previous < 0 means "no previous token"."""
    t, p = tokens.long(), previous.long()
    hashed = torch.bitwise_xor(HASH_CURRENT * t, HASH_PREVIOUS * p.clamp_min(0)) % (rows - 1)
    return torch.where(p >= 0, hashed, rows - 1)


def sign_rows(tokens: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Sign-pattern rows of the pairs: (previous XOR token) mod 8192, row 0 where there is no previous token."""
    p = previous.long()
    return torch.where(p >= 0, torch.bitwise_xor(tokens.long(), p.clamp_min(0)) % SIGN_ROWS, 0)


def sign_patterns(rows: int, dim: int) -> torch.Tensor:
    """(rows, dim) of +-1: one bit of a 32-bit integer mix of the entry's index row * dim + column (constants below
    2^31 and operands below 2^32, so no product leaves int64), a fixed pseudo-random pattern per row."""
    h = torch.arange(rows * dim, dtype=torch.int64).view(rows, dim)
    for shift, multiplier in ((16, 0x7FEB352D), (15, 0x5BD1E995)):
        h = (torch.bitwise_xor(h, h >> shift) * multiplier) & 0xFFFFFFFF
    h = torch.bitwise_xor(h, h >> 16)
    return 1.0 - 2.0 * ((h >> 7) & 1).float()


class BigramEmbedding(nn.Module):
    """The hashed bigram table (rows x dim) and its sign patterns; forward gives b (B, T, dim)."""

    def __init__(self, rows: int, dim: int):
        super().__init__()
        self.rows, self.dim = rows, dim
        self.table = nn.Embedding(rows, dim)
        self.register_buffer("signs", sign_patterns(SIGN_ROWS, dim), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.table.weight.zero_()

    def forward(self, idx: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) token ids; previous (B,): the token before idx[:, 0] (None: none, the reserved row)."""
        first = torch.full_like(idx[:, :1], -1) if previous is None else previous[:, None].to(idx.dtype)
        before = torch.cat([first, idx[:, :-1]], dim=1)
        return self.table(bigram_rows(idx, before, self.rows)) * self.signs[sign_rows(idx, before)]
