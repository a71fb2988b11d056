"""Atomic writes: the file appears whole or not at all, a failed write leaves nothing behind, the mode is an
ordinary file's (0666 less the umask), not a private temp file's; a full disk is one line with what is needed and
free, however the writer reports it."""

import errno
import io
import os

import pytest
import torch

from llmpy import atomic
from llmpy.atomic import atomic_open, atomic_write_bytes, sha256_of
from llmpy.errors import DiskFullError


class DiskFull(Exception):
    pass


def test_failed_write_leaves_neither_target_nor_temp_file(tmp_path):
    with pytest.raises(DiskFull):
        with atomic_open(tmp_path / "out.bin") as handle:
            handle.write(b"half of it")
            raise DiskFull
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_contents(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(DiskFull):
        with atomic_open(target) as handle:
            handle.write(b"new, but cut short")
            raise DiskFull
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_file_replaces_the_old_one_with_the_mode_of_an_ordinary_file(tmp_path, umask, mode):
    target = tmp_path / "sub" / "out.bin"  # missing directories are made
    atomic_write_bytes(target, b"first")
    os.chmod(target, 0o400)  # the old file's mode does not carry over
    previous_umask = os.umask(umask)  # the user's umask decides, as for any file open() creates
    try:
        with atomic_open(target) as handle:
            handle.write(b"second")
    finally:
        os.umask(previous_umask)
    assert target.read_bytes() == b"second"
    assert target.stat().st_mode & 0o777 == mode
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]


def test_sha256_of_matches_a_known_digest(tmp_path):
    atomic_write_bytes(tmp_path / "abc", b"abc")  # FIPS 180-2's first example message
    assert sha256_of(tmp_path / "abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def disk_with_room(monkeypatch, directory, room: int):
    """A disk with `room` bytes free for new files in `directory`: a write beyond them fails as on a full disk (the
    kernel writes what fits, then ENOSPC), and the free space reported shrinks as the files grow."""
    before = sum(p.stat().st_size for p in directory.iterdir())

    def free_bytes(_):
        return room - (sum(p.stat().st_size for p in directory.iterdir()) - before)

    class FillingFile(io.FileIO):
        def write(self, data):
            data = bytes(data)
            if len(data) > free_bytes(directory):
                super().write(data[:free_bytes(directory)])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(data)

    monkeypatch.setattr(atomic, "open", lambda path, mode: FillingFile(path, "w"), raising=False)
    monkeypatch.setattr(atomic, "free_bytes", free_bytes)


@pytest.mark.parametrize("size, needs", [(3_000_000, "needs 3.0 MB"), (2_000_000, "needs more than 2.5 MB"),
                                         (None, "needs more than 2.5 MB")])
def test_a_write_that_fills_the_disk_is_one_line_with_the_sizes_and_keeps_the_old_file(tmp_path, monkeypatch, size,
                                                                                       needs):
    # no check before the write: the disk fills up during it (another writer, or a size told too small)
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    disk_with_room(monkeypatch, tmp_path, room=2_500_000)
    monkeypatch.setattr(atomic, "check_free_space", lambda *args: None)
    with pytest.raises(DiskFullError) as error:
        with atomic_open(target, size=size) as handle:
            handle.write(b"x" * 3_000_000)
    assert str(error.value) == f"no space left on device writing {target} ({needs}, 2.5 MB free)"
    assert isinstance(error.value.__cause__, OSError) and error.value.__cause__.errno == errno.ENOSPC
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_torch_save_on_a_full_disk_is_reported_as_one(tmp_path, monkeypatch):
    # torch's zip writer turns the OSError into "RuntimeError: ... unexpected pos"; the free space tells
    disk_with_room(monkeypatch, tmp_path, room=300_000)
    with pytest.raises(DiskFullError, match=r"^no space left on device writing .*model\.pt \(needs more than "
                                            r"\d{3}\.\d KB, 300\.0 KB free\)$"):
        with atomic_open(tmp_path / "model.pt") as handle:
            torch.save({"weights": torch.zeros(1_000_000)}, handle)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("free, full", [(0, True), (10 ** 9, False)])
def test_a_writers_runtime_error_is_a_full_disk_only_when_the_disk_is_full(tmp_path, monkeypatch, free, full):
    monkeypatch.setattr(atomic, "free_bytes", lambda directory: free)
    monkeypatch.setattr(atomic, "check_free_space", lambda *args: None)
    with pytest.raises(DiskFullError if full else RuntimeError, match="no space left" if full else "^bad tensor$"):
        with atomic_open(tmp_path / "out.bin", size=100) as handle:
            handle.write(b"half")
            raise RuntimeError("bad tensor")  # nothing in its chain says ENOSPC
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("size, free, sizes", [(87, 0, "needs 87 bytes, 0 bytes free"),
                                              (1, 0, "needs 1 byte, 0 bytes free"),
                                              (12_345, 4_096, "needs 12.3 KB, 4.1 KB free"),
                                              (999_960, 1_000, "needs 1.0 MB, 1.0 KB free"),
                                              (2_500_000_000, 41_000_000, "needs 2.5 GB, 41.0 MB free")])
def test_sizes_in_a_disk_full_message_are_readable_however_small(tmp_path, monkeypatch, size, free, sizes):
    # a small file (config.json, a log line) on a nearly full disk was "needs 0.0 MB, 0.0 MB free"
    monkeypatch.setattr(atomic, "free_bytes", lambda directory: free)
    with pytest.raises(DiskFullError) as error:
        with atomic_open(tmp_path / "config.json", size=size):
            pytest.fail("the block ran")
    assert str(error.value) == f"no space left on device writing {tmp_path / 'config.json'} ({sizes})"


def test_a_write_known_not_to_fit_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "free_bytes", lambda directory: 1_200_000)
    with pytest.raises(DiskFullError, match=r"writing .*out\.bin \(needs 5\.0 MB, 1\.2 MB free\)$"):
        with atomic_open(tmp_path / "out.bin", size=5_000_000):
            pytest.fail("the block ran")
    assert list(tmp_path.iterdir()) == []
