"""Atomic writes: the file appears whole or not at all, a failed write leaves nothing behind, the mode is an
ordinary file's (0666 less the umask), not a private temp file's."""

import os

import pytest

from llmpy.atomic import atomic_open, atomic_write_bytes, sha256_of


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
