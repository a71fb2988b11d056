"""Files that appear whole or not at all (temp file + rename), and their SHA-256. The one writer every module uses."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: int | None = None) -> Iterator[BinaryIO]:
    """A binary file handle whose contents appear at `path` only when the block ends without an exception.

    Readers see the old file or the new one, never a partial one; a failed write (a full disk, a kill before the
    rename) leaves no temporary file behind. The temporary name is hidden and per process, so two writers of the
    same path never share one. `mode`: the file's permissions (default: what open() gives, 0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            yield handle
        # a writer that reopens the temp file by name (safetensors) may have created it private (0600)
        os.chmod(tmp, _ordinary_file_mode() if mode is None else mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _ordinary_file_mode() -> int:
    """What open() gives a new file: 0666 less the process's umask (which can only be read by setting it)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_open`)."""
    with atomic_open(path) as handle:
        handle.write(data)
