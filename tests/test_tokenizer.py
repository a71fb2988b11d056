"""GPT-2 BPE: known ids, round trips, and the resolution order of the ranks file."""

import io
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import tiktoken
import torch
from tiktoken.load import load_tiktoken_bpe

import llmpy.tokenizer as tokenizer_module
from llmpy.errors import LlmpyError
from llmpy.tokenizer import get_tokenizer, resolve_bpe_file, serialize_ranks

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


@pytest.fixture(autouse=True)
def _empty_workdir(tmp_path, monkeypatch):
    """No ./data of the caller's working directory takes part in the resolution."""
    monkeypatch.chdir(tmp_path)


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
    local = tmp_path / "data" / "gpt2.tiktoken"
    local.parent.mkdir()
    local.write_bytes(bpe_env.read_bytes())
    assert resolve_bpe_file() == Path("data/gpt2.tiktoken")  # ./data, where a user or `llmpy prepare` puts files
    assert resolve_bpe_file(tmp_path / "data", flag="--tokenizer") == tmp_path / "data" / "gpt2.tiktoken"


def test_errors_name_the_commands_tokenizer_flag(bpe_env, tmp_path, monkeypatch, capsys):
    from llmpy.cli import main

    with pytest.raises(LlmpyError, match=r"missing.tiktoken \(--tokenizer\): no such GPT-2 BPE file"):
        resolve_bpe_file(tmp_path / "missing.tiktoken", flag="--tokenizer")
    monkeypatch.delenv("LLMPY_GPT2_BPE")
    with pytest.raises(LlmpyError, match="not found and LLMPY_OFFLINE is set.*: pass --tokenizer FILE, set LLMPY_GPT2_BPE"):
        resolve_bpe_file(flag="--tokenizer")
    # eval takes --tokenizer too (it used to have none), so its error names it
    from llmpy.checkpoint import export_model
    from llmpy.config import ModelConfig
    from llmpy.model import GPT

    model = export_model(tmp_path / "tiny", GPT(ModelConfig(n_layer=1, n_head=1, n_embd=64, block_size=32)), {})
    hellaswag = tmp_path / "hellaswag_val.jsonl"
    hellaswag.write_text('{"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 0}\n')
    capsys.readouterr()
    assert main(["eval", "--model", str(model.parent), "--hellaswag-file", str(hellaswag), "--device", "cpu",
                 "--tokenizer", str(tmp_path / "gone.tiktoken")]) == 2
    assert capsys.readouterr().err.endswith("gone.tiktoken (--tokenizer): no such GPT-2 BPE file\n")


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


def test_damaged_cache_file_is_named_with_the_fix(bpe_env, tmp_path, monkeypatch):
    monkeypatch.delenv("LLMPY_GPT2_BPE")
    cached = tmp_path / "cache" / "gpt2.tiktoken"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(bpe_env.read_bytes().replace(b" 0\n", b" 9\n", 1))
    with pytest.raises(LlmpyError, match=r"gpt2.tiktoken \(llmpy cache\): SHA-256 differs.*delete it"):
        resolve_bpe_file()


def test_offline_with_an_empty_cache_says_what_to_do(bpe_env, monkeypatch):
    monkeypatch.delenv("LLMPY_GPT2_BPE")
    with pytest.raises(LlmpyError) as info:
        resolve_bpe_file()
    message = str(info.value)
    assert "LLMPY_OFFLINE is set" in message and "LLMPY_GPT2_BPE=" in message and "gpt2.tiktoken" in message


def test_serialized_ranks_are_byte_identical_to_the_file(bpe_file):
    assert serialize_ranks(load_tiktoken_bpe(str(bpe_file))) == bpe_file.read_bytes()


@pytest.fixture()
def online_empty_cache(bpe_env, monkeypatch, tmp_path):
    """No local file, downloads allowed, but every download source replaced by a test double."""
    monkeypatch.delenv("LLMPY_GPT2_BPE")
    monkeypatch.delenv("LLMPY_OFFLINE")

    def no_pip(*args):
        raise AssertionError("pip must not run in tests")

    monkeypatch.setattr(tokenizer_module, "pip_download_sdist", no_pip)
    return tmp_path / "cache" / "gpt2.tiktoken"


def reference_encoding(bpe_file):
    return tiktoken.Encoding(name="gpt2", pat_str=tokenizer_module.GPT2_PATTERN,
                             mergeable_ranks=load_tiktoken_bpe(str(bpe_file)), special_tokens={"<|endoftext|>": 50256})


def test_tiktoken_download_is_cached_in_our_format(online_empty_cache, bpe_env, monkeypatch, capsys):
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: reference_encoding(bpe_env))
    assert resolve_bpe_file() == online_empty_cache
    assert online_empty_cache.read_bytes() == bpe_env.read_bytes()
    assert "downloaded by tiktoken" in capsys.readouterr().err


def test_a_hanging_tiktoken_download_is_abandoned(online_empty_cache, monkeypatch):
    monkeypatch.setattr(tokenizer_module, "TIKTOKEN_DOWNLOAD_TIMEOUT_S", 0.2)
    release, finished = threading.Event(), []

    def hanging_download(name):
        release.wait(300)  # hangs until the test is over
        finished.append(name)
        raise ConnectionError("released")

    monkeypatch.setattr(tiktoken, "get_encoding", hanging_download)
    try:
        with pytest.raises(LlmpyError, match="the downloads failed"):
            resolve_bpe_file()
        assert finished == []  # resolution gave up while the download still hung
    finally:
        release.set()


def fake_whisper_sdist(directory, payload):
    """A stand-in for the openai-whisper sdist that pip would download, holding `payload` as gpt2.tiktoken."""
    sdist = Path(directory) / "openai_whisper-20250625.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        info = tarfile.TarInfo("openai_whisper-20250625/whisper/assets/gpt2.tiktoken")
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))
    return sdist


def test_whisper_sdist_fallback_checks_the_sha(online_empty_cache, bpe_env, monkeypatch, capsys):
    def offline_tiktoken(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline_tiktoken)
    monkeypatch.setattr(tokenizer_module, "pip_download_sdist",
                        lambda requirement, directory: fake_whisper_sdist(directory, bpe_env.read_bytes()))
    assert resolve_bpe_file() == online_empty_cache
    assert online_empty_cache.read_bytes() == bpe_env.read_bytes()
    assert "openai-whisper==20250625 sdist" in capsys.readouterr().err
    online_empty_cache.unlink()
    monkeypatch.setattr(tokenizer_module, "pip_download_sdist",
                        lambda requirement, directory: fake_whisper_sdist(directory, b"not the ranks\n"))
    with pytest.raises(LlmpyError, match="the downloads failed"):
        resolve_bpe_file()
    assert not online_empty_cache.exists()


def test_tokenizer_is_cached_and_decodes_arrays(bpe_env):
    tokenizer = get_tokenizer(bpe_env)
    assert get_tokenizer(bpe_env) is tokenizer and tokenizer.n_vocab == 50257
    ids = [15496, 995]
    assert tokenizer.decode(np.array(ids, dtype=np.uint16)) == tokenizer.decode(torch.tensor(ids)) == "Hello world"
