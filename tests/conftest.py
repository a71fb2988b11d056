"""Shared fixtures: local copies of the GPT-2 BPE, tiny Shakespeare and the corpus from ../shared/data."""

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "gpt2.tiktoken").is_file():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture()
def bpe_env(shared_data, monkeypatch, tmp_path):
    """Point llmpy at the local GPT-2 BPE and an empty cache; no downloads possible."""
    monkeypatch.setenv("LLMPY_GPT2_BPE", str(shared_data / "gpt2.tiktoken"))
    monkeypatch.setenv("LLMPY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LLMPY_OFFLINE", "1")
    return shared_data / "gpt2.tiktoken"
