"""One resolution order for every resource (flag > env var > ./data > cache > download), said when it picks a file,
and errors that name the flag of the command in use (issue 15 item 9)."""

import json

import pytest
import torch
from conftest import write_random_shards

from llmpy import resources
from llmpy.checkpoint import export_model
from llmpy.cli import main
from llmpy.config import ModelConfig
from llmpy.errors import LlmpyError
from llmpy.model import GPT
from llmpy.resources import Resource, find, locate

THING = Resource("test thing", "LLMPY_TEST_THING", "things/thing.txt", "thing.txt", prepared_by="llmpy prepare thing")


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """An empty working directory and cache, downloads off, nothing said yet."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLMPY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LLMPY_OFFLINE", "1")
    monkeypatch.delenv(THING.env_var, raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(resources, "_announced", set())
    return tmp_path


def put(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_order_is_flag_env_data_cache_download(workdir, monkeypatch, capsys):
    fetched = []

    def fetch(target):
        fetched.append(target)
        put(target, "downloaded")
        return True

    monkeypatch.delenv("LLMPY_OFFLINE")
    assert locate(THING, fetchers=(fetch,)) == workdir / "cache" / "thing.txt" and len(fetched) == 1
    put(workdir / "data" / "things" / "thing.txt")
    assert find(THING, fetchers=(fetch,)).as_posix() == "data/things/thing.txt"  # ./data beats the cache
    env_file = put(workdir / "env.txt")
    monkeypatch.setenv(THING.env_var, str(env_file))
    assert find(THING) == env_file
    flag_file = put(workdir / "flag.txt")
    assert find(THING, flag_file, "--thing-file") == flag_file
    assert len(fetched) == 1  # a local copy is never downloaded again
    err = capsys.readouterr().err.splitlines()
    assert err == ["test thing: data/things/thing.txt (from ./data)", f"test thing: {env_file} (from $LLMPY_TEST_THING)",
                   f"test thing: {flag_file} (from --thing-file)"]  # the download is said by its fetcher


def test_each_pick_is_said_once_and_only_by_rank_0(workdir, monkeypatch, capsys):
    cached = put(workdir / "cache" / "thing.txt")
    assert find(THING) == cached and find(THING) == cached
    assert capsys.readouterr().err == f"test thing: {cached} (from the llmpy cache)\n"
    monkeypatch.setattr(resources, "_announced", set())
    monkeypatch.setenv("RANK", "1")
    assert find(THING) == cached and capsys.readouterr().err == ""


def test_a_named_file_that_is_missing_is_an_error_not_skipped(workdir, monkeypatch):
    put(workdir / "cache" / "thing.txt")
    with pytest.raises(LlmpyError, match=r"^nope.txt \(--thing-file\): no such test thing file$"):
        find(THING, "nope.txt", "--thing-file")
    monkeypatch.setenv(THING.env_var, "gone.txt")
    with pytest.raises(LlmpyError, match=r"gone.txt \(\$LLMPY_TEST_THING\): no such test thing file"):
        find(THING)


def test_a_named_directory_stands_for_the_file_in_it(workdir):
    inside = put(workdir / "somewhere" / "thing.txt")
    assert find(THING, workdir / "somewhere", "--thing-file") == inside


def test_not_found_names_the_commands_flag_and_every_other_way(workdir):
    with pytest.raises(LlmpyError) as info:
        locate(THING, flag="--thing-file", fetchers=(lambda target: False,), online="example.org/thing.txt")
    message = str(info.value)
    assert message.startswith("test thing (thing.txt) not found and LLMPY_OFFLINE is set")
    for way in ("pass --thing-file FILE", "set LLMPY_TEST_THING=/path/to/thing.txt", "data/things/thing.txt",
                "`llmpy prepare thing` writes it there", str(workdir / "cache" / "thing.txt"), "example.org/thing.txt"):
        assert way in message, way
    with pytest.raises(LlmpyError) as info:
        locate(THING)  # a command without a flag for it names none
    assert "pass" not in str(info.value)


@pytest.fixture()
def tiny_model(tmp_path):
    torch.manual_seed(0)
    return export_model(tmp_path / "tiny", GPT(ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=64)), {}).parent


def test_prepare_hellaswag_then_eval_finds_it_in_data(workdir, bpe_env, shared_data, tiny_model, capsys):
    official = shared_data / "hellaswag" / "hellaswag_val.jsonl"
    assert main(["prepare", "hellaswag", "--input", str(official)]) == 0
    assert (workdir / "data" / "hellaswag" / "hellaswag_val.jsonl").is_file()
    capsys.readouterr()
    assert main(["eval", "--model", str(tiny_model), "--limit", "4", "--device", "cpu", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["hellaswag_examples"] == 4
    assert "HellaSwag val set: data/hellaswag/hellaswag_val.jsonl (from ./data)" in err.splitlines()


def test_a_missing_hellaswag_names_hellaswag_file_in_eval_and_train(workdir, bpe_env, tiny_model, capsys):
    assert main(["eval", "--model", str(tiny_model), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("llmpy: error: HellaSwag val set (hellaswag_val.jsonl) not found")
    assert "pass --hellaswag-file FILE" in err and "--input" not in err.replace("prepare hellaswag --input", "")
    shards = write_random_shards(workdir / "shards", "c", {"train_000001.bin": 4096, "val_000000.bin": 1024}, seed=0)
    code = main(["train", "-i", str(shards / "c_train_*.bin"), "-j", str(shards / "c_val_*.bin"), "-e", "d2w64",
                 "-b", "2", "-t", "32", "-x", "1", "-h", "1", "-s", "0", "--device", "cpu", "--compile", "0"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "HellaSwag val set (hellaswag_val.jsonl) not found" in err and "--hellaswag-file" in err
