"""GPT-2 BPE: known ids, round trips, and the resolution order of the ranks file."""

import pytest

from llmpy.errors import LlmpyError
from llmpy.tokenizer import get_tokenizer, resolve_bpe_file

KNOWN_IDS = {
    "Hello world": [15496, 995],
    "Hello, world!": [15496, 11, 995, 0],
    " the": [262],
    "\n": [198],
    "The quick brown fox jumps over the lazy dog.": [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13],
    "I'm": [40, 1101],
    " 2024": [48609],
    "First Citizen:": [5962, 22307, 25],
}


def test_known_ids_and_round_trip(bpe_env):
    tokenizer = get_tokenizer()
    for text, ids in KNOWN_IDS.items():
        assert tokenizer.encode(text) == ids, text
        assert tokenizer.decode(ids) == text
    assert tokenizer.encode_batch(["Hello world", "I'm"]) == [[15496, 995], [40, 1101]]
    assert tokenizer.eot_token == 50256 and tokenizer.decode([50256]) == "<|endoftext|>"
    mixed = "naïve café — 東京 🙂\tend"
    assert tokenizer.decode(tokenizer.encode(mixed)) == mixed
    # ordinary encoding: a literal special-token string in user text is just text
    assert 50256 not in tokenizer.encode("<|endoftext|>")


def test_resolution_order(bpe_env, tmp_path, monkeypatch):
    explicit = tmp_path / "explicit.tiktoken"
    explicit.write_bytes(bpe_env.read_bytes())
    assert resolve_bpe_file(explicit) == explicit  # an explicit path wins over the environment
    assert resolve_bpe_file() == bpe_env  # $LLMPY_GPT2_BPE
    monkeypatch.delenv("LLMPY_GPT2_BPE")
    cached = tmp_path / "cache" / "gpt2.tiktoken"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(bpe_env.read_bytes())
    assert resolve_bpe_file() == cached  # the cache


def test_damaged_or_missing_files_are_named(bpe_env, tmp_path, monkeypatch):
    bad = tmp_path / "gpt2.tiktoken"
    bad.write_bytes(bpe_env.read_bytes()[:-10])
    with pytest.raises(LlmpyError, match="SHA-256 differs"):
        resolve_bpe_file(bad)
    with pytest.raises(LlmpyError, match="no such GPT-2 BPE file"):
        resolve_bpe_file(tmp_path / "missing.tiktoken")
    monkeypatch.delenv("LLMPY_GPT2_BPE")
    with pytest.raises(LlmpyError, match="set LLMPY_GPT2_BPE"):  # offline, empty cache: what to do
        resolve_bpe_file()
