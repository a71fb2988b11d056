"""TokenLoader: llm.c's rank slicing, shard advance and wrap, exact resume."""

import numpy as np
import pytest
import torch

from llmpy.data.loader import TokenLoader
from llmpy.data.shards import write_shard
from llmpy.errors import LlmpyError


@pytest.fixture()
def shards(tmp_path):
    """Two shards of consecutive numbers, so every batch says where it came from."""
    write_shard(tmp_path / "s_train_000001.bin", np.arange(0, 100))
    write_shard(tmp_path / "s_train_000002.bin", np.arange(1000, 1050))
    return str(tmp_path / "s_train_*.bin")


def test_batches_are_shifted_windows_in_order(shards):
    loader = TokenLoader(shards, batch_size=2, seq_len=4)
    x, y = loader.next_batch()
    assert x.dtype == torch.int64 and x.shape == (2, 4)
    assert x.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert y.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert loader.next_batch()[0][0, 0].item() == 8
    # shard 1: (100-1)//8 = 12 chunks; shard 2: (50-1)//8 = 6 chunks
    assert loader.batches_per_epoch == 18 and loader.tokens_per_epoch == 18 * 8


def test_advance_to_next_shard_and_wrap_to_a_new_epoch(shards):
    loader = TokenLoader(shards, batch_size=2, seq_len=4)
    firsts = [loader.next_batch()[0][0, 0].item() for _ in range(19)]
    assert firsts[11] == 88 and firsts[12] == 1000 and firsts[17] == 1040
    assert firsts[18] == 0 and loader.epoch == 1


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_read_disjoint_slices_that_cover_each_chunk_once(shards, world):
    B, T = 1, 4
    loaders = [TokenLoader(shards, B, T, rank, world) for rank in range(world)]
    steps = loaders[0].batches_per_epoch
    seen = []
    for _ in range(steps):
        for rank, loader in enumerate(loaders):
            x, y = loader.next_batch()
            seen.extend(x.flatten().tolist())
            assert torch.equal(y[:, :-1], x[:, 1:])
    single = TokenLoader(shards, B * world, T, 0, 1)  # one rank with a world-times larger batch
    expected = [t for _ in range(steps) for t in single.next_batch()[0].flatten().tolist()]
    assert seen == expected and len(set(seen)) == len(seen)


def test_state_dict_resumes_with_exactly_the_next_batch(shards):
    loader = TokenLoader(shards, batch_size=2, seq_len=4)
    for _ in range(14):
        loader.next_batch()
    state = loader.state_dict()
    expected = [loader.next_batch()[0] for _ in range(10)]
    resumed = TokenLoader(shards, batch_size=2, seq_len=4)
    resumed.load_state_dict(state)
    for batch in expected:
        assert torch.equal(resumed.next_batch()[0], batch)
    with pytest.raises(LlmpyError, match="cannot resume exactly"):
        TokenLoader(shards, batch_size=1, seq_len=4).load_state_dict(state)


def test_shards_too_small_and_bad_ranks(shards, tmp_path):
    with pytest.raises(LlmpyError, match="no shard holds one batch"):
        TokenLoader(shards, batch_size=16, seq_len=8)
    small = TokenLoader(shards, batch_size=8, seq_len=8)  # 65 tokens: shard 2 (50) is skipped
    assert small.batches_per_epoch == 1
    with pytest.raises(LlmpyError, match="rank 2 is outside world size 2"):
        TokenLoader(shards, 1, 4, rank=2, world_size=2)
