"""llm.c token shards: a 256 x int32 header (magic 20240520, version 1, token count) then uint16 tokens.

Also reads build-nanogpt's `.npy` shards (a 1-D array of token ids).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from llmpy.atomic import atomic_open
from llmpy.errors import LlmpyError
from llmpy.gpt2 import VOCAB_SIZE

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_SHARD_TOKENS = 2**31 - 1  # the header stores the count as int32


def _as_token_array(path: Path, tokens: ArrayLike) -> np.ndarray:
    array = np.asarray(tokens)
    if array.size == 0:
        return np.zeros(0, dtype="<u2")
    if array.ndim != 1:
        raise LlmpyError(f"{path}: tokens must be 1-D, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise LlmpyError(f"{path}: token ids must be integers, got dtype {array.dtype}")
    if array.min() < 0 or array.max() >= VOCAB_SIZE:
        raise LlmpyError(f"{path}: token ids must be in [0, {VOCAB_SIZE}), got {array.min()}..{array.max()}")
    if array.size > MAX_SHARD_TOKENS:
        raise LlmpyError(f"{path}: {array.size} tokens do not fit the header's int32 count; write smaller shards")
    return array.astype("<u2", copy=False)


def write_shard(path: str | Path, tokens: ArrayLike) -> None:
    """Write GPT-2 token ids as an llm.c shard; the file appears complete or not at all."""
    path = Path(path)
    array = _as_token_array(path, tokens)
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, array.size)
    with atomic_open(path) as handle:
        handle.write(header.tobytes())
        handle.write(array.tobytes())
        handle.flush()
        os.fsync(handle.fileno())  # on disk before the manifest that prepare writes next vouches for it


def _read_header(path: Path) -> np.ndarray:
    if not path.is_file():
        raise LlmpyError(f"{path}: no such shard file")
    with open(path, "rb") as handle:
        raw = handle.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise LlmpyError(f"{path}: truncated shard ({len(raw)} bytes, the header alone is {HEADER_BYTES})")
    header = np.frombuffer(raw, dtype="<i4")
    if header[0] != SHARD_MAGIC:
        raise LlmpyError(f"{path}: bad magic {header[0]}, expected {SHARD_MAGIC}: not an llm.c token shard")
    if header[1] != SHARD_VERSION:
        raise LlmpyError(f"{path}: unsupported shard version {header[1]}, expected {SHARD_VERSION}")
    if header[2] < 0:
        raise LlmpyError(f"{path}: corrupt header, negative token count {header[2]}")
    return header


def _check_tokens(path: Path, tokens: np.ndarray) -> None:
    if tokens.size and int(tokens.max()) >= VOCAB_SIZE:
        position = int(np.argmax(tokens >= VOCAB_SIZE))
        raise LlmpyError(
            f"{path}: token id {int(tokens[position])} at position {position} is outside GPT-2's vocabulary "
            f"(< {VOCAB_SIZE}); the shard is corrupt or was made with another tokenizer"
        )


def _read_npy(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise LlmpyError(f"{path}: no such shard file")
    try:
        tokens = np.load(path, mmap_mode="r" if mmap else None)
    except Exception as exc:  # not an .npy file at all, or cut short
        raise LlmpyError(f"{path}: cannot read as a .npy token shard ({exc})") from None
    if tokens.ndim != 1:
        raise LlmpyError(f"{path}: a .npy shard must be 1-D, got shape {tokens.shape}")
    if tokens.dtype != np.uint16:
        if not np.issubdtype(tokens.dtype, np.integer) or (tokens.size and (tokens.min() < 0 or tokens.max() > 65535)):
            raise LlmpyError(f"{path}: .npy shard of dtype {tokens.dtype} does not hold uint16 token ids")
        tokens = tokens.astype(np.uint16)
    return tokens


def _read_bin(path: Path, mmap: bool) -> np.ndarray:
    count = int(_read_header(path)[2])
    expected = HEADER_BYTES + 2 * count
    actual = path.stat().st_size
    if actual < expected:
        raise LlmpyError(f"{path}: truncated shard: header says {count} tokens ({expected} bytes), file has {actual}")
    if actual > expected:
        raise LlmpyError(f"{path}: oversized shard: header says {count} tokens ({expected} bytes), file has {actual}")
    if mmap and count:
        return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(count,))
    with open(path, "rb") as handle:
        handle.seek(HEADER_BYTES)
        return np.frombuffer(handle.read(), dtype="<u2")


def read_shard(path: str | Path, *, mmap: bool = True, check_tokens: bool = True) -> np.ndarray:
    """The tokens of an llm.c `.bin` or a `.npy` shard as uint16, memory-mapped by default, after validation."""
    path = Path(path)
    tokens = _read_npy(path, mmap) if path.suffix == ".npy" else _read_bin(path, mmap)
    if check_tokens:
        _check_tokens(path, tokens)
    return tokens


def expand_shard_pattern(pattern: str) -> list[Path]:
    """Shard files matching a glob (several may be comma-separated), sorted; an error naming it if none match."""
    files: list[Path] = []
    for part in (p.strip() for p in pattern.split(",")):
        if part:
            files.extend(Path(f) for f in sorted(glob.glob(os.path.expanduser(part))) if os.path.isfile(f))
    if not files:
        raise LlmpyError(f"no shard files match {pattern!r}")
    return list(dict.fromkeys(files))  # overlapping patterns must not read a shard twice
