"""Shared fixtures: the GPT-2 BPE, tiny Shakespeare and the corpus, from ../shared/data when it exists, otherwise
through llmpy's own offline resolution (env var / cache). Nothing is ever downloaded by a test."""

import os
import time
from pathlib import Path

import numpy as np

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):  # `-n 2` on 2 cores: one thread per worker, and per process it starts
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

from llmpy.errors import LlmpyError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared corpus directory (only ../shared/data has it)."""
    if not (SHARED_DATA / "corpus").is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def _offline(resolve):
    previous = os.environ.get("LLMPY_OFFLINE")
    os.environ["LLMPY_OFFLINE"] = "1"
    try:
        return resolve()
    except LlmpyError as exc:
        pytest.skip(f"no local copy: {exc}")
    finally:
        if previous is None:
            os.environ.pop("LLMPY_OFFLINE")
        else:
            os.environ["LLMPY_OFFLINE"] = previous


@pytest.fixture(scope="session")
def bpe_file() -> Path:
    if (SHARED_DATA / "gpt2.tiktoken").is_file():
        return SHARED_DATA / "gpt2.tiktoken"
    from llmpy.tokenizer import resolve_bpe_file

    return _offline(resolve_bpe_file)


@pytest.fixture(scope="session")
def shakespeare_file() -> Path:
    if (SHARED_DATA / "tinyshakespeare.txt").is_file():
        return SHARED_DATA / "tinyshakespeare.txt"
    from llmpy.config import default_cache_dir

    cached = default_cache_dir() / "tinyshakespeare.txt"
    if not cached.is_file():
        pytest.skip("no local copy of tiny Shakespeare")
    return cached


@pytest.fixture()
def bpe_env(bpe_file, monkeypatch, tmp_path):
    """Point llmpy at the local GPT-2 BPE and an empty cache, with downloads switched off."""
    monkeypatch.setenv("LLMPY_GPT2_BPE", str(bpe_file))
    monkeypatch.setenv("LLMPY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LLMPY_OFFLINE", "1")
    return bpe_file


def write_random_shards(root: Path, prefix: str, sizes: dict[str, int], seed: int) -> Path:
    """Shards of random GPT-2 token ids ({file suffix: token count}), written with llmpy's shard writer."""
    from llmpy.data.shards import write_shard

    rng = np.random.default_rng(seed)
    for suffix, count in sizes.items():
        write_shard(root / f"{prefix}_{suffix}.bin", rng.integers(0, 50257, count))
    return root


def wait_for(condition, seconds: float = 300) -> bool:
    """Poll until `condition()`, False after `seconds` (generous: a loaded machine makes a process slower, not wrong)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (a supervisor's trainer, torchrun's workers), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def stop_writes_after(monkeypatch, shards: int) -> None:
    """Make prepare's ShardedOutput.write raise KeyboardInterrupt (a Ctrl-C) once `shards` shards are written; undo
    with `monkeypatch.undo()` or a `monkeypatch.context()`."""
    from llmpy.data.pipeline import ShardedOutput

    write = ShardedOutput.write

    def stopping(self, *args, **kwargs):
        if len(self.shards) == shards:
            raise KeyboardInterrupt
        write(self, *args, **kwargs)

    monkeypatch.setattr(ShardedOutput, "write", stopping)


GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@pytest.fixture()
def reference_encoding(bpe_env):
    """A tiktoken Encoding built here from the ranks file, independently of llmpy's tokenizer module."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    return tiktoken.Encoding(name="ref", pat_str=GPT2_PATTERN, mergeable_ranks=load_tiktoken_bpe(str(bpe_env)),
                             special_tokens={"<|endoftext|>": 50256})
