"""Training batches from token shards: llm.c's rank slicing, seeded shuffling, exact resume.

An epoch is a sequence of *chunks*, each the tokens of one optimizer step: grad_accum * world * B * T (+1 for the
shifted targets). Micro-step m of rank r reads the slice starting at (m * world + r) * B * T. With accumulation 1
this is llm.c's layout (a chunk of world*B*T tokens, rank r takes slice r). Shuffling permutes the order of shards
and of chunks within each shard, per epoch, from (seed, epoch); since a chunk is one -d batch, runs with the same
-d and T read the same tokens at every step whatever their world size and micro-batch. Shards too short for a
chunk are skipped; the tail of a shard shorter than a chunk is not read.

Headers and file sizes of all shards are checked up front; token ids are checked when a shard is first entered, since
scanning every shard at start-up would read the whole data set (hundreds of GB at FineWeb scale) before step 1.
Shards beside a manifest.json of a preparation that did not finish are refused (`refuse_unfinished`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from llmpy.data.manifest import refuse_unfinished
from llmpy.data.shards import expand_shard_pattern, read_shard
from llmpy.errors import LlmpyError


class TokenLoader:
    """(B, T) input/target batches for one rank; `state_dict()` pins exactly the next batch."""

    def __init__(
        self, pattern: str, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1, *,
        grad_accum_steps: int = 1, shuffle: bool = False, seed: int = 0,
    ):
        for name, value in (("batch size", batch_size), ("sequence length", seq_len), ("world size", world_size),
                            ("grad accumulation steps", grad_accum_steps)):
            if value <= 0:
                raise LlmpyError(f"{pattern}: {name} must be positive, got {value}")
        if not 0 <= rank < world_size:
            raise LlmpyError(f"rank {rank} is outside world size {world_size}")
        self.pattern = pattern
        self.batch_size, self.seq_len = batch_size, seq_len
        self.rank, self.world_size, self.grad_accum_steps = rank, world_size, grad_accum_steps
        self.shuffle, self.seed = shuffle, seed
        self.files = expand_shard_pattern(pattern)
        refuse_unfinished(self.files)
        self.micro_tokens = batch_size * seq_len
        self.chunk_tokens = grad_accum_steps * world_size * self.micro_tokens
        # headers and sizes now (a damaged file should fail before step 1); token ids when a shard is entered
        self._shard_tokens = [len(read_shard(f, check_tokens=False)) for f in self.files]
        self._chunks_per_shard = [max(0, (n - 1) // self.chunk_tokens) for n in self._shard_tokens]
        if sum(self._chunks_per_shard) == 0:
            largest = int(np.argmax(self._shard_tokens))
            raise LlmpyError(
                f"{pattern}: no shard holds one step of grad_accum*world*B*T+1 = {self.chunk_tokens + 1} tokens "
                f"(the largest, {self.files[largest]}, has {self._shard_tokens[largest]}); lower -b, -t or -d"
            )
        self._checked_shards: set[int] = set()
        self.data_seconds = 0.0  # host time spent producing batches, for the trainer's data_ms
        self._tokens: np.ndarray | None = None
        self.reset()

    @property
    def steps_per_epoch(self) -> int:
        """Chunks (optimizer steps' worth of tokens) in one pass over all shards."""
        return sum(self._chunks_per_shard)

    @property
    def batches_per_epoch(self) -> int:
        """`next_batch()` calls per epoch on each rank (steps x grad accumulation)."""
        return self.steps_per_epoch * self.grad_accum_steps

    @property
    def tokens_per_epoch(self) -> int:
        """Tokens all ranks together read in one epoch (the unread shard tails excluded)."""
        return self.steps_per_epoch * self.chunk_tokens

    @property
    def skipped_files(self) -> list[Path]:
        """Shards too short for one chunk, which are never read."""
        return [f for f, n in zip(self.files, self._chunks_per_shard) if n == 0]

    def reset(self) -> None:
        """Back to the first batch of epoch 0."""
        self._start_epoch(0)

    def _rng(self, epoch: int, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, salt])

    def _start_epoch(self, epoch: int, shard_position: int = 0, chunk_position: int = 0, micro_step: int = 0) -> None:
        self.epoch = epoch
        order = [i for i, n in enumerate(self._chunks_per_shard) if n > 0]
        if self.shuffle:
            order = [order[i] for i in self._rng(epoch).permutation(len(order))]
        self._shard_order = order
        self._enter_shard(shard_position, chunk_position, micro_step)

    def _enter_shard(self, shard_position: int, chunk_position: int = 0, micro_step: int = 0) -> None:
        self.shard_position = shard_position
        shard = self._shard_order[shard_position]
        self._tokens = read_shard(self.files[shard], check_tokens=shard not in self._checked_shards)
        self._checked_shards.add(shard)
        count = self._chunks_per_shard[shard]
        self._chunk_order = self._rng(self.epoch, 1 + shard).permutation(count) if self.shuffle else np.arange(count)
        self.chunk_position, self.micro_step = chunk_position, micro_step

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y), int64 (B, T) CPU tensors (pinned when CUDA is present); y is x shifted by one."""
        started = time.perf_counter()
        B, T = self.batch_size, self.seq_len
        chunk = int(self._chunk_order[self.chunk_position])
        start = chunk * self.chunk_tokens + (self.micro_step * self.world_size + self.rank) * self.micro_tokens
        window = torch.from_numpy(self._tokens[start: start + B * T + 1].astype(np.int64))
        if torch.cuda.is_available():
            window = window.pin_memory()  # lets the host-to-device copy run asynchronously
        self._advance()
        self.data_seconds += time.perf_counter() - started
        return window[:-1].view(B, T), window[1:].view(B, T)

    def _advance(self) -> None:
        self.micro_step += 1
        if self.micro_step < self.grad_accum_steps:
            return
        self.micro_step, self.chunk_position = 0, self.chunk_position + 1
        if self.chunk_position < len(self._chunk_order):
            return
        if self.shard_position + 1 < len(self._shard_order):
            self._enter_shard(self.shard_position + 1)
        else:
            self._start_epoch(self.epoch + 1)

    def state_dict(self) -> dict:
        """Where the next batch comes from; the permutations are recomputed from (seed, epoch)."""
        return {
            "epoch": self.epoch, "shard_position": self.shard_position, "chunk_position": self.chunk_position,
            "micro_step": self.micro_step, "chunk_tokens": self.chunk_tokens, "shuffle": self.shuffle,
            # how far into the chunk, in tokens: --batch-ramp and --batch-stages end steps inside chunks, and a
            # resume with another -b or world size counts micro-steps in other units
            "chunk_offset": self.micro_step * self.world_size * self.micro_tokens,
            "seed": self.seed,
            # names and sizes, not paths: a run may resume from another directory or with the data moved
            "files": [f.name for f in self.files], "shard_tokens": list(self._shard_tokens),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state` was taken; an error if the data or batch layout differs."""
        mine = self.state_dict()
        for key in ("files", "shard_tokens", "chunk_tokens", "shuffle", "seed"):
            if state.get(key) != mine[key]:
                raise LlmpyError(
                    f"{self.pattern}: loader state was saved with different {key} ({state.get(key)!r} vs "
                    f"{mine[key]!r}); cannot resume with exactly the next batch"
                )
        micro_step = state["micro_step"]
        if "chunk_offset" in state:  # saved by an llmpy that records it; before, steps always ended on a chunk
            per_micro_step = self.world_size * self.micro_tokens
            micro_step, rest = divmod(state["chunk_offset"], per_micro_step)
            if rest:
                raise LlmpyError(
                    f"{self.pattern}: the checkpoint stopped {state['chunk_offset']:,} tokens into a -d batch (a "
                    f"--batch-ramp or --batch-stages step), which is not a whole number of this run's micro-steps "
                    f"({per_micro_step:,} tokens: -b x -t x ranks); resume with the -b and number of ranks it was "
                    "saved with")
        self._start_epoch(state["epoch"], state["shard_position"], state["chunk_position"], micro_step)
