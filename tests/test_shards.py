"""llm.c token shards against files written independently with numpy; clear errors on damaged ones."""

import numpy as np
import pytest

from llmpy.data.shards import expand_shard_pattern, read_shard, write_shard
from llmpy.errors import LlmpyError


def numpy_shard(path, tokens, magic=20240520, version=1, count=None, extra=b""):
    """An llm.c shard built by hand: 256 int32 header then uint16 tokens."""
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1], header[2] = magic, version, len(tokens) if count is None else count
    path.write_bytes(header.tobytes() + np.asarray(tokens, dtype=np.uint16).tobytes() + extra)
    return path


def test_reads_a_numpy_written_shard_and_writes_the_same_bytes(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50257, 1000)
    reference = numpy_shard(tmp_path / "ref.bin", tokens)
    assert np.array_equal(read_shard(reference), tokens)
    assert np.array_equal(read_shard(reference, mmap=False), tokens)
    ours = tmp_path / "ours.bin"
    write_shard(ours, tokens)
    assert ours.read_bytes() == reference.read_bytes()
    assert ours.stat().st_size == 1024 + 2 * 1000 and ours.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left behind


def test_reads_npy_shards(tmp_path):
    tokens = np.arange(0, 50000, 7, dtype=np.uint16)
    np.save(tmp_path / "a.npy", tokens)
    assert np.array_equal(read_shard(tmp_path / "a.npy"), tokens)
    np.save(tmp_path / "b.npy", tokens.astype(np.int32))  # other integer dtypes convert when they fit
    assert read_shard(tmp_path / "b.npy").dtype == np.uint16
    np.save(tmp_path / "c.npy", np.array([1.5, 2.0]))
    with pytest.raises(LlmpyError, match="c.npy"):
        read_shard(tmp_path / "c.npy")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(magic=12345), "bad magic 12345"),
        (dict(magic=20240326), "bad magic 20240326, expected 20240520"),  # an llm.c model file
        (dict(version=2), "unsupported shard version 2"),
        (dict(count=11), "truncated shard: header says 11 tokens"),
        (dict(extra=b"\x00\x00"), "oversized shard"),
        (dict(count=10, extra=b"\x01"), "oversized shard"),
    ],
)
def test_damaged_shards_fail_with_the_file_named(tmp_path, kwargs, message):
    path = numpy_shard(tmp_path / "bad.bin", list(range(10)), **kwargs)
    with pytest.raises(LlmpyError, match=message) as info:
        read_shard(path)
    assert str(path) in str(info.value)


def test_out_of_vocabulary_tokens_and_short_files(tmp_path):
    path = numpy_shard(tmp_path / "oov.bin", [5, 6, 50257, 7])
    with pytest.raises(LlmpyError, match="token id 50257 at position 2"):
        read_shard(path)
    (tmp_path / "tiny.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(LlmpyError, match="tiny.bin: truncated shard"):
        read_shard(tmp_path / "tiny.bin")
    with pytest.raises(LlmpyError, match="missing.bin: no such shard file"):
        read_shard(tmp_path / "missing.bin")
    with pytest.raises(LlmpyError, match=r"token ids must be in \[0, 50257\)"):
        write_shard(tmp_path / "w.bin", [1, 60000])


def test_pattern_expansion(tmp_path):
    for name in ("x_train_000002.bin", "x_train_000001.bin", "y_val_000000.bin"):
        numpy_shard(tmp_path / name, [1, 2])
    assert [p.name for p in expand_shard_pattern(str(tmp_path / "x_train_*.bin"))] == [
        "x_train_000001.bin", "x_train_000002.bin"]
    both = expand_shard_pattern(f"{tmp_path}/y_*.bin,{tmp_path}/x_train_000001.bin")
    assert [p.name for p in both] == ["y_val_000000.bin", "x_train_000001.bin"]
    with pytest.raises(LlmpyError, match="no shard files match"):
        expand_shard_pattern(str(tmp_path / "z_*.bin"))


def test_write_rejects_what_is_not_gpt2_token_ids(tmp_path):
    with pytest.raises(LlmpyError, match=r"w.bin: token ids must be in \[0, 50257\), got 0..50257"):
        write_shard(tmp_path / "w.bin", [0, 50257])
    with pytest.raises(LlmpyError, match="must be integers"):
        write_shard(tmp_path / "w.bin", [1.5, 2.0])
    with pytest.raises(LlmpyError, match="must be 1-D"):
        write_shard(tmp_path / "w.bin", [[1, 2], [3, 4]])
    assert not (tmp_path / "w.bin").exists()
    write_shard(tmp_path / "empty.bin", [])
    assert (tmp_path / "empty.bin").stat().st_size == 1024
    assert read_shard(tmp_path / "empty.bin").size == 0


def test_npy_edge_cases(tmp_path):
    np.save(tmp_path / "big.npy", np.array([1, 70000], dtype=np.int32))  # does not fit uint16
    with pytest.raises(LlmpyError, match="big.npy: .npy shard of dtype int32 does not hold uint16"):
        read_shard(tmp_path / "big.npy")
    np.save(tmp_path / "oov.npy", np.array([1, 60000], dtype=np.uint16))  # fits uint16 but not GPT-2
    with pytest.raises(LlmpyError, match="token id 60000 at position 1"):
        read_shard(tmp_path / "oov.npy")
    np.save(tmp_path / "2d.npy", np.zeros((2, 2), dtype=np.uint16))
    with pytest.raises(LlmpyError, match="must be 1-D"):
        read_shard(tmp_path / "2d.npy")
    np.save(tmp_path / "ok.npy", np.arange(5, dtype=np.uint16))
    assert read_shard(tmp_path / "ok.npy").tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(LlmpyError, match="gone.npy: no such shard file"):
        read_shard(tmp_path / "gone.npy")


def test_negative_count(tmp_path):
    bad = numpy_shard(tmp_path / "neg.bin", [], count=-3)
    with pytest.raises(LlmpyError, match="negative token count -3"):
        read_shard(bad)


def test_overlapping_patterns_list_each_shard_once(tmp_path):
    numpy_shard(tmp_path / "x_train_000001.bin", [1, 2])
    (tmp_path / "x_train_dir.bin").mkdir()  # only files are shards
    files = expand_shard_pattern(f"{tmp_path}/x_*.bin, {tmp_path}/x_train_000001.bin")
    assert [p.name for p in files] == ["x_train_000001.bin"]
