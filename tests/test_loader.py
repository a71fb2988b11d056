"""TokenLoader: llm.c's rank slicing, shard advance and wrap, seeded shuffling, exact resume."""

import numpy as np
import pytest
import torch

from llmpy.data.loader import TokenLoader
from llmpy.data.shards import write_shard
from llmpy.errors import LlmpyError


@pytest.fixture()
def shards(tmp_path):
    """Two shards of distinct consecutive numbers, so every batch says where it came from."""
    write_shard(tmp_path / "s_train_000001.bin", np.arange(0, 100))
    write_shard(tmp_path / "s_train_000002.bin", np.arange(1000, 1050))
    return str(tmp_path / "s_train_*.bin")


def epoch_starts(loader, micro_batches):
    return [loader.next_batch()[0][0, 0].item() for _ in range(micro_batches)]


def test_batches_are_shifted_windows_in_order(shards):
    loader = TokenLoader(shards, batch_size=2, seq_len=4)
    x, y = loader.next_batch()
    assert x.dtype == torch.int64 and x.shape == (2, 4)
    assert x.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert y.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert loader.next_batch()[0][0, 0].item() == 8
    # shard 1: (100-1)//8 = 12 chunks; shard 2: (50-1)//8 = 6 chunks
    assert loader.steps_per_epoch == 18 and loader.tokens_per_epoch == 18 * 8


def test_advance_to_next_shard_and_wrap_to_a_new_epoch(shards):
    loader = TokenLoader(shards, batch_size=2, seq_len=4)
    firsts = epoch_starts(loader, 19)
    assert firsts[11] == 88 and firsts[12] == 1000 and firsts[17] == 1040
    assert firsts[18] == 0 and loader.epoch == 1


def all_tokens_of_one_step(loaders, grad_accum):
    """What every rank reads over one optimizer step (all micro-steps), as one sorted list."""
    return sorted(t for _ in range(grad_accum) for loader in loaders for t in loader.next_batch()[0].flatten().tolist())


@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("shuffle", [False, True])
def test_ranks_cover_every_chunk_exactly_once_per_epoch(shards, world, shuffle):
    B, T = 1, 2
    loaders = [TokenLoader(shards, B, T, rank, world, shuffle=shuffle, seed=3) for rank in range(world)]
    seen = []
    for _ in range(loaders[0].steps_per_epoch):
        for loader in loaders:
            x, y = loader.next_batch()
            assert torch.equal(y[:, :-1], x[:, 1:])
            seen.extend(x.flatten().tolist())
    chunk = world * B * T
    expected = [t for base, n in ((0, 100), (1000, 50)) for t in range(base, base + (n - 1) // chunk * chunk)]
    assert sorted(seen) == expected  # every chunk once, nothing twice
    assert all(loader.epoch == 1 for loader in loaders)


def test_same_tokens_per_step_for_any_world_and_micro_batch(shards):
    """-d fixed at 8 tokens, T=2: (world 1, B 4), (world 2, B 1, accum 2), (world 4, B 1) read the same per step."""
    layouts = [(1, 4, 1), (2, 1, 2), (4, 1, 1), (1, 1, 4)]
    per_layout = []
    for world, B, accum in layouts:
        loaders = [TokenLoader(shards, B, 2, r, world, grad_accum_steps=accum, shuffle=True, seed=11)
                   for r in range(world)]
        per_layout.append([all_tokens_of_one_step(loaders, accum) for _ in range(20)])
    assert all(steps == per_layout[0] for steps in per_layout[1:])


def test_shuffle_is_seeded_and_differs_across_epochs(shards):
    def two_epochs(seed):
        loader = TokenLoader(shards, 2, 4, shuffle=True, seed=seed)
        return epoch_starts(loader, 18), epoch_starts(loader, 18)

    first, second = two_epochs(5)
    assert (first, second) == two_epochs(5)  # same seed, same order
    assert first != second and sorted(first) == sorted(second)  # reshuffled each epoch, same chunks
    assert two_epochs(6)[0] != first
    assert first != epoch_starts(TokenLoader(shards, 2, 4), 18)


@pytest.mark.parametrize("shuffle", [False, True])
def test_state_dict_resumes_with_exactly_the_next_batch(shards, shuffle):
    loader = TokenLoader(shards, 2, 2, grad_accum_steps=2, shuffle=shuffle, seed=1)
    for _ in range(27):  # mid-step, mid-shard
        loader.next_batch()
    state = loader.state_dict()
    expected = [loader.next_batch()[0] for _ in range(60)]  # runs into the next epoch
    resumed = TokenLoader(shards, 2, 2, grad_accum_steps=2, shuffle=shuffle, seed=1)
    resumed.load_state_dict(state)
    for batch in expected:
        assert torch.equal(resumed.next_batch()[0], batch)
    with pytest.raises(LlmpyError, match="different chunk_tokens"):
        TokenLoader(shards, 1, 4).load_state_dict(state)
    with pytest.raises(LlmpyError, match="different seed"):
        TokenLoader(shards, 2, 2, grad_accum_steps=2, shuffle=shuffle, seed=2).load_state_dict(state)


def test_shards_too_small_and_bad_ranks(shards):
    with pytest.raises(LlmpyError, match="no shard holds one step"):
        TokenLoader(shards, batch_size=16, seq_len=8)
    small = TokenLoader(shards, batch_size=8, seq_len=8)  # 65 tokens: shard 2 (50) is skipped
    assert small.steps_per_epoch == 1
    assert epoch_starts(small, 3) == [0, 0, 0]
    with pytest.raises(LlmpyError, match="rank 2 is outside world size 2"):
        TokenLoader(shards, 1, 4, rank=2, world_size=2)


def test_rank_slices_at_hand_computed_offsets(shards):
    """llm.c: step s, rank r reads tokens [s*world*B*T + r*B*T, ... + B*T + 1) of the current shard."""
    B, T, world = 2, 3, 2
    ranks = [TokenLoader(shards, B, T, rank, world) for rank in range(world)]
    for step in range(3):
        for rank, loader in enumerate(ranks):
            start = step * world * B * T + rank * B * T
            x, y = loader.next_batch()
            assert x.flatten().tolist() == list(range(start, start + B * T))
            assert y.flatten().tolist() == list(range(start + 1, start + B * T + 1))


def test_epoch_sizes_count_full_global_batches(shards):
    loader = TokenLoader(shards, batch_size=2, seq_len=4, world_size=2, grad_accum_steps=2)
    # chunk = 2 * 2 * 2 * 4 = 32 tokens: shard 1 holds (100-1)//32 = 3, shard 2 (50-1)//32 = 1
    assert loader.steps_per_epoch == 4 and loader.batches_per_epoch == 8 and loader.tokens_per_epoch == 128
    assert TokenLoader(shards, 8, 8).skipped_files[0].name == "s_train_000002.bin"


def test_resume_survives_moving_the_data(shards, tmp_path):
    loader = TokenLoader(shards, 2, 4)
    for _ in range(13):
        loader.next_batch()
    state = loader.state_dict()
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("s_train_000001.bin", "s_train_000002.bin"):
        (tmp_path / name).rename(moved / name)
    resumed = TokenLoader(str(moved / "s_train_*.bin"), 2, 4)
    resumed.load_state_dict(state)
    assert resumed.next_batch()[0][0, 0].item() == 1008


def test_bad_token_ids_are_reported_when_the_shard_is_reached(tmp_path):
    write_shard(tmp_path / "a_000001.bin", np.arange(0, 20))
    tokens = np.arange(0, 20, dtype=np.uint16)
    tokens[5] = 60000  # written by hand: write_shard refuses ids outside the vocabulary
    header = np.zeros(256, dtype=np.int32)
    header[:3] = 20240520, 1, tokens.size
    (tmp_path / "a_000002.bin").write_bytes(header.tobytes() + tokens.tobytes())
    loader = TokenLoader(str(tmp_path / "a_*.bin"), 1, 4)  # headers are fine: no full scan at start-up
    for _ in range(3):
        loader.next_batch()
    with pytest.raises(LlmpyError, match="a_000002.bin: token id 60000 at position 5"):
        for _ in range(2):  # the loader opens the next shard as it hands out the last batch of this one
            loader.next_batch()


def test_bad_sizes_are_refused(shards):
    with pytest.raises(LlmpyError, match="batch size must be positive"):
        TokenLoader(shards, 0, 4)
    with pytest.raises(LlmpyError, match=r"s_train_000001.bin, has 100\)"):
        TokenLoader(shards, 16, 8)
