"""Training batches from token shards with llm.c's semantics, resumable from a small state dict.

Each optimizer micro-step consumes one global chunk of world_size * B * T tokens from the current shard; rank r
takes the r-th B*T slice of it (plus one token for the shifted targets). So N ranks together read every chunk
once per epoch, exactly like one rank with an N times larger batch. Shards too short for a chunk are skipped.
"""

from __future__ import annotations

import numpy as np
import torch

from llmpy.data.shards import expand_shard_pattern, read_shard
from llmpy.errors import LlmpyError


class TokenLoader:
    """Sequential (B, T) input/target batches over a shard glob; `state_dict()` pins the exact next batch."""

    def __init__(self, pattern: str, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise LlmpyError(f"rank {rank} is outside world size {world_size}")
        self.pattern = pattern
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.rank = rank
        self.world_size = world_size
        self.files = expand_shard_pattern(pattern)
        self.chunk_tokens = world_size * batch_size * seq_len
        # validate every shard up front: a bad file should fail now, not hours into a run
        self._chunks_per_shard = [self._chunks_in(len(read_shard(f))) for f in self.files]
        if sum(self._chunks_per_shard) == 0:
            raise LlmpyError(
                f"{pattern}: no shard holds one batch of world*B*T+1 = {self.chunk_tokens + 1} tokens "
                f"(largest has {max(len(read_shard(f, check_tokens=False)) for f in self.files)}); lower -b or -t"
            )
        self._tokens: np.ndarray | None = None
        self.reset()

    def _chunks_in(self, num_tokens: int) -> int:
        return max(0, (num_tokens - 1) // self.chunk_tokens)

    @property
    def batches_per_epoch(self) -> int:
        """Global chunks (= micro-batches per rank) in one pass over all shards."""
        return sum(self._chunks_per_shard)

    @property
    def tokens_per_epoch(self) -> int:
        return self.batches_per_epoch * self.chunk_tokens

    def reset(self) -> None:
        """Back to the first chunk of the first shard, epoch 0."""
        self.epoch = 0
        self._load_shard(self._next_nonempty(0))
        self.chunk = 0

    def _next_nonempty(self, index: int) -> int:
        while self._chunks_per_shard[index % len(self.files)] == 0:
            index += 1
        return index % len(self.files)

    def _load_shard(self, index: int) -> None:
        self.shard = index
        self._tokens = read_shard(self.files[index], check_tokens=False)  # checked in __init__

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y) pair, int64 (B, T) on the CPU; y is x shifted left by one token."""
        B, T = self.batch_size, self.seq_len
        start = self.chunk * self.chunk_tokens + self.rank * B * T
        window = torch.from_numpy(self._tokens[start: start + B * T + 1].astype(np.int64))
        x = window[:-1].view(B, T)
        y = window[1:].view(B, T)
        self._advance()
        return x, y

    def _advance(self) -> None:
        self.chunk += 1
        if self.chunk >= self._chunks_per_shard[self.shard]:
            following = self._next_nonempty(self.shard + 1)
            if following <= self.shard:
                self.epoch += 1  # wrapped around: a new epoch
            self._load_shard(following)
            self.chunk = 0

    def state_dict(self) -> dict:
        """Where the next batch comes from: enough to resume with exactly that batch."""
        return {"epoch": self.epoch, "shard": self.shard, "chunk": self.chunk, "files": [str(f) for f in self.files],
                "chunk_tokens": self.chunk_tokens}

    def load_state_dict(self, state: dict) -> None:
        if state.get("files") != [str(f) for f in self.files] or state.get("chunk_tokens") != self.chunk_tokens:
            raise LlmpyError(
                f"{self.pattern}: loader state was saved for other shards or another world*B*T; cannot resume exactly"
            )
        self.epoch = state["epoch"]
        self._load_shard(state["shard"])
        self.chunk = state["chunk"]
