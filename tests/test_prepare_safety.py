"""prepare never destroys a data set, nothing trains on an unfinished one, and text that is not text is refused
(issue 26, items 2, 6 and 7): a failed or SIGKILLed re-run leaves the earlier data set byte-identical, `train` refuses
a manifest marked incomplete, and input that does not decode (or is binary) is one line naming the byte offset."""

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from llmpy.cli import main
from llmpy.data.loader import TokenLoader
from llmpy.data.pipeline import verify_output
from llmpy.data.prepare import prepare_stream
from llmpy.data.shards import read_shard
from llmpy.data.sources import fineweb_spec
from llmpy.errors import LlmpyError

from conftest import stop_writes_after, write_random_shards

LATIN1_TEXT = "Plain words first, then a caf\u00e9 cr\u00e8me br\u00fbl\u00e9e and na\u00efve \u00e9l\u00e8ves. " * 40


def snapshot(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under `directory`, by relative path (hidden ones included)."""
    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def write_jsonl(path: Path, texts: list[str], encoding: str = "utf-8") -> Path:
    data = "".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in texts).encode(encoding)
    with (gzip.open if path.name.endswith(".gz") else open)(path, "wb") as handle:
        handle.write(data)
    return path


def error_line(capsys) -> str:
    """The one line an error prints (after any earlier lines of the command), with no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("llmpy: error: ")
    return last


def first_non_ascii(data: bytes) -> int:
    return next(i for i, byte in enumerate(data) if byte >= 0x80)


@pytest.fixture()
def good_data_set(bpe_env, tmp_path, capsys):
    """P: a complete `prepare text` data set of 60 short documents, and the SHA-256 of each of its files."""
    good = write_jsonl(tmp_path / "good.jsonl", [f"Good document {i} is here." for i in range(60)])
    out = tmp_path / "P"
    assert main(["prepare", "text", "--input", str(good), "--out", str(out), "--shard-size", "100", "--quiet"]) == 0
    capsys.readouterr()
    before = snapshot(out)
    assert len(before) >= 4 and verify_output(out) == []
    return out, before


# ------------------------------------------------------------------ item 2: prepare never destroys a data set

def bad_json_after_good_lines(path: Path) -> Path:
    write_jsonl(path, [f"Fine line {i}." for i in range(300)])
    with open(path, "a") as handle:
        handle.write('{"text": "cut short\n')
    return path


def no_text_field(path: Path) -> Path:
    path.write_text("".join(json.dumps({"body": f"no text {i}"}) + "\n" for i in range(50)))
    return path


def latin1_late(path: Path) -> Path:
    """UTF-8 for 300 lines, then one Latin-1 line: past what is checked before the output is touched."""
    write_jsonl(path, [f"Fine line {i}." for i in range(300)])
    with open(path, "ab") as handle:
        handle.write(json.dumps({"text": "caf\u00e9"}, ensure_ascii=False).encode("latin-1") + b"\n")
    return path


@pytest.mark.parametrize("make_bad, problem", [
    (bad_json_after_good_lines, "bad.jsonl:301: not valid JSON"),
    (no_text_field, "none of the 50 records has a string 'text' field"),
    (latin1_late, "not valid utf-8 text"),
])
def test_a_failed_rerun_leaves_the_earlier_data_set_byte_identical(good_data_set, tmp_path, capsys, monkeypatch,
                                                                   make_bad, problem):
    out, before = good_data_set
    # the late Latin-1 line is met while tokenizing, past the check of each input's first bytes
    monkeypatch.setattr("llmpy.data.textfiles.SNIFF_BYTES", 4096, raising=False)
    bad = make_bad(tmp_path / "bad.jsonl")
    assert main(["prepare", "text", "--input", str(bad), "--out", str(out), "--shard-size", "100", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert problem in err.strip().splitlines()[-1] and "Traceback" not in err
    assert "removed" not in err
    assert snapshot(out) == before  # every file, byte for byte, and nothing left beside them
    assert verify_output(out) == []


def test_inputs_are_checked_before_the_output_is_touched(bpe_env, good_data_set, shakespeare_file, tmp_path, capsys):
    """A missing or undecodable input is refused before --out is created or changed (every source)."""
    pytest.importorskip("datasets")
    out, before = good_data_set
    latin1 = tmp_path / "latin1.jsonl"
    write_jsonl(latin1, ["caf\u00e9"] * 5, encoding="latin-1")
    offset = first_non_ascii(latin1.read_bytes())
    fresh = tmp_path / "fresh"
    for command in (["prepare", "text", "--input", str(latin1)],
                    ["prepare", "tinyshakespeare", "--input", str(latin1)],
                    ["prepare", "fineweb", "--input", str(latin1), "--workers", "1"],
                    ["prepare", "fineweb", "--input", str(tmp_path / "missing.jsonl"), "--workers", "1"],
                    ["prepare", "tinystories", "--input", str(latin1), "--workers", "1"],
                    ["prepare", "hellaswag", "--input", str(latin1)]):
        for target in (out, fresh):
            assert main(command + ["--out", str(target), "--quiet"]) == 2, command
            line = error_line(capsys)
            assert f"{latin1}: not valid utf-8 text: byte offset {offset} " in line or "missing.jsonl" in line, line
            assert not fresh.exists(), command
            assert snapshot(out) == before, command


def test_tinyshakespeare_is_replaced_only_by_a_complete_preparation(bpe_env, shakespeare_file, tmp_path, capsys):
    out = tmp_path / "ts"
    assert main(["prepare", "tinyshakespeare", "--input", str(shakespeare_file), "--out", str(out)]) == 0
    before = snapshot(out)
    short = tmp_path / "short.txt"
    short.write_text("Too short for the 32,768-token val split.\n\nReally.\n")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(LATIN1_TEXT.encode("latin-1"))
    for text in (short, bad):
        assert main(["prepare", "tinyshakespeare", "--input", str(text), "--out", str(out)]) == 2
        assert str(text) in error_line(capsys)
        assert snapshot(out) == before


def test_a_complete_rerun_replaces_the_data_set_and_says_so(good_data_set, tmp_path, capsys):
    out, before = good_data_set
    other = write_jsonl(tmp_path / "other.jsonl", [f"Another text, number {i}." for i in range(40)])
    assert main(["prepare", "text", "--input", str(other), "--out", str(out), "--shard-size", "100000",
                 "--quiet"]) == 0
    assert f"replaced the earlier data set in {out}" in capsys.readouterr().err
    assert sorted(snapshot(out)) == ["manifest.json", "text_train_000001.bin", "text_val_000000.bin"]
    assert verify_output(out) == []


def test_a_sigkilled_rerun_leaves_the_earlier_data_set_intact(good_data_set, shared_data, tmp_path, capsys):
    """A real process, killed once its first new shard is on disk (long before it could finish)."""
    out, before = good_data_set
    big = [str(shared_data / "corpus" / f"train_{i:02d}.jsonl.gz") for i in range(8)]  # millions of tokens
    command = [sys.executable, "-m", "llmpy", "prepare", "text", "--input", *big, "--out", str(out),
               "--shard-size", "20000", "--quiet"]
    original = {p: p.stat().st_ino for p in out.rglob("*.bin")}

    def new_shard_written() -> bool:
        for path in out.rglob("*.bin"):
            try:
                if path not in original or path.stat().st_ino != original[path]:
                    return True
            except FileNotFoundError:  # renamed or removed between the listing and the look
                continue
        return False

    process = subprocess.Popen(command, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while process.poll() is None and not new_shard_written():
            time.sleep(0.01)
        assert process.poll() is None, process.stderr.read().decode()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()
    visible = {name: digest for name, digest in snapshot(out).items() if not name.startswith(".")}
    assert visible == before
    assert verify_output(out) == []
    assert TokenLoader(str(out / "text_train_*.bin"), 1, 8).steps_per_epoch > 0  # as train reads it
    # the next prepare clears what the killed one left, and replaces the data set once its own is complete
    small = write_jsonl(tmp_path / "small.jsonl", [f"Small text {i}." for i in range(30)])
    assert main(["prepare", "text", "--input", str(small), "--out", str(out), "--quiet"]) == 0
    assert sorted(snapshot(out)) == ["manifest.json", "text_train_000001.bin", "text_val_000000.bin"]


def test_a_kill_while_moving_the_new_data_set_into_place_is_finished_by_the_next_prepare(good_data_set, tmp_path,
                                                                                         capsys, monkeypatch):
    out, before = good_data_set
    other = write_jsonl(tmp_path / "other.jsonl", [f"Another text, number {i}." for i in range(40)])
    replace = os.replace
    moved = []

    def killed_after_one_shard(source, target):
        if str(source).endswith(".bin"):  # a finished shard moving into place (temp files end in .tmpPID)
            if moved:
                raise KeyboardInterrupt  # as a kill between two renames would leave it
            moved.append(target)
        replace(source, target)

    monkeypatch.setattr(os, "replace", killed_after_one_shard)
    args = ["prepare", "text", "--input", str(other), "--out", str(out), "--shard-size", "100", "--quiet"]
    assert main(args) == 130
    monkeypatch.setattr(os, "replace", replace)
    capsys.readouterr()
    # neither the old data set nor the new one: nothing may train on it
    assert main(["train", "-i", str(out / "text_train_*.bin"), "-e", "d1w64", "-b", "1", "-t", "8", "-x", "1",
                 "--device", "cpu"]) == 2
    assert "re-run the same prepare command" in error_line(capsys)
    assert main(["prepare", "text", "--input", str(other), "--out", str(out), "--shard-size", "100", "--quiet"]) == 0
    assert "finished moving the data set" in capsys.readouterr().err
    assert verify_output(out) == []
    reference = tmp_path / "reference"
    assert main(args[:5] + [str(reference)] + args[6:]) == 0
    assert {k: v for k, v in snapshot(out).items() if k != "manifest.json"} == {
        k: v for k, v in snapshot(reference).items() if k != "manifest.json"}


# ------------------------------------------------------------------ item 6: no training on an unfinished preparation

@pytest.fixture()
def unfinished(bpe_env, tmp_path, monkeypatch):
    """A FineWeb-style preparation stopped (as by Ctrl-C or a kill) after 3 of its shards."""
    pytest.importorskip("datasets")
    source = write_jsonl(tmp_path / "docs.jsonl", [f"Document {i} has some words in it." for i in range(200)])
    out = tmp_path / "U"
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        stop_writes_after(patch, 3)
        prepare_stream(fineweb_spec(), out, inputs=[str(source)], shard_size=100, workers=1, quiet=True)
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    return out


def test_training_on_an_unfinished_preparation_is_refused_in_one_line(unfinished, tmp_path, capsys):
    manifest = unfinished / "manifest.json"
    tiny = ["-e", "d1w64", "-b", "1", "-t", "8", "-x", "1", "--device", "cpu"]
    assert main(["train", "-i", str(unfinished / "fineweb_train_*.bin"), *tiny]) == 2
    line = error_line(capsys)
    assert line.startswith(f"llmpy: error: {manifest}: ") and "re-run the same prepare command" in line
    complete = write_random_shards(tmp_path, "c", {"train_000001": 4096}, seed=1)  # llm.c's own: no manifest
    assert main(["train", "-i", str(complete / "c_train_*.bin"), "-j", str(unfinished / "fineweb_val_*.bin"),
                 *tiny]) == 2
    assert error_line(capsys).startswith(f"llmpy: error: {manifest}: ")
    with pytest.raises(LlmpyError, match="re-run the same prepare command"):
        TokenLoader(str(unfinished / "*.bin"), 1, 8)  # eval --val-data reads through the same loader
    assert TokenLoader(str(complete / "c_train_*.bin"), 1, 8).steps_per_epoch > 0  # shards of no manifest: as before


# ------------------------------------------------------------------ item 7: text that is not UTF-8 text

@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".jsonl.gz"])
def test_latin1_is_refused_at_its_byte_offset_and_read_with_encoding(reference_encoding, tmp_path, capsys, suffix):
    path = tmp_path / f"latin1{suffix}"
    if suffix == ".txt":
        path.write_bytes(LATIN1_TEXT.encode("latin-1"))
        texts = [LATIN1_TEXT]
        data = path.read_bytes()
    else:
        texts = [LATIN1_TEXT[i:] for i in range(0, 400, 20)]
        write_jsonl(path, texts, encoding="latin-1")
        data = gzip.decompress(path.read_bytes()) if suffix.endswith(".gz") else path.read_bytes()
    offset = first_non_ascii(data)
    out = tmp_path / "out"
    assert main(["prepare", "text", "--input", str(path), "--out", str(out), "--quiet"]) == 2
    line = error_line(capsys)
    assert line.startswith(f"llmpy: error: {path}: ") and f"byte offset {offset} " in line and "--encoding" in line
    assert not out.exists()
    assert main(["prepare", "text", "--input", str(path), "--out", str(out), "--encoding", "latin-1", "--quiet"]) == 0
    files = sorted(out.glob("*.bin"), key=lambda p: "_train_" in p.name)  # val first, as the tokens came
    tokens = np.concatenate([read_shard(f) for f in files]).tolist()
    # one .txt document: val is its first tokens; 20 records: val is the first (every 20th): either way, in order
    assert tokens == [t for text in texts for t in [50256, *reference_encoding.encode_ordinary(text)]]


def test_a_utf8_byte_order_mark_is_not_text(reference_encoding, tmp_path):
    """A .txt that opens with a UTF-8 BOM (as Windows editors write it) gives the tokens of its text alone."""
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf" + LATIN1_TEXT.encode())
    out = tmp_path / "out"
    assert main(["prepare", "text", "--input", str(path), "--out", str(out), "--quiet"]) == 0
    files = sorted(out.glob("*.bin"), key=lambda p: "_train_" in p.name)  # val first, as the tokens came
    tokens = np.concatenate([read_shard(f) for f in files]).tolist()
    assert tokens == [50256, *reference_encoding.encode_ordinary(LATIN1_TEXT)]


def test_random_bytes_are_refused_with_or_without_an_encoding(bpe_env, tmp_path, capsys):
    noise = tmp_path / "noise.txt"
    data = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    noise.write_bytes(data)
    out = tmp_path / "out"
    assert main(["prepare", "text", "--input", str(noise), "--out", str(out), "--quiet"]) == 2
    line = error_line(capsys)
    assert line.startswith(f"llmpy: error: {noise}: ") and "byte offset" in line
    assert main(["prepare", "text", "--input", str(noise), "--out", str(out), "--encoding", "latin-1"]) == 2
    assert f"byte offset {data.index(0)} " in error_line(capsys)  # every byte is Latin-1, but a NUL is not text
    assert not out.exists()
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"Text, then a NUL\x00 in the middle.")
    assert main(["prepare", "text", "--input", str(nul), "--out", str(out), "--quiet"]) == 2
    assert "byte offset 16 " in error_line(capsys)
    assert main(["prepare", "text", "--input", str(nul), "--out", str(out), "--encoding", "no-such-codec"]) == 2
    assert error_line(capsys).startswith("llmpy: error: --encoding 'no-such-codec': not a text encoding Python knows")


def test_a_stream_of_latin1_jsonl_is_refused_at_its_offset_and_read_with_encoding(reference_encoding, tmp_path,
                                                                                   capsys, monkeypatch):
    pytest.importorskip("datasets")
    texts = [f"Line {i}: caf\u00e9 and cr\u00e8me br\u00fbl\u00e9e." for i in range(30)]
    path = write_jsonl(tmp_path / "latin1.jsonl", texts, encoding="latin-1")
    offset = first_non_ascii(path.read_bytes())
    args = ["prepare", "fineweb", "--input", str(path), "--workers", "1", "--shard-size", "100", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 2
    assert f"byte offset {offset} " in error_line(capsys)
    with monkeypatch.context() as patch:
        patch.setattr("llmpy.data.textfiles.SNIFF_BYTES", 16)  # met by `datasets` mid-stream, not by the check
        assert main(args + ["--out", str(tmp_path / "b")]) == 2
    assert f"{path}: " in (line := error_line(capsys)) and f"byte offset {offset} " in line
    assert main(args + ["--out", str(tmp_path / "c"), "--encoding", "latin-1"]) == 0
    files = sorted((tmp_path / "c").glob("*.bin"), key=lambda p: ("_train_" in p.name, p.name))
    assert np.concatenate([read_shard(f) for f in files]).tolist() == [
        t for text in texts for t in [50256, *reference_encoding.encode_ordinary(text)]]


# ------------------------------------------------------------------ one prepare at a time in a directory

HOLD_PREPARE_LOCK = """
import sys
from llmpy.runlock import RunLock
lock = RunLock.acquire(sys.argv[1], kind="prepare")
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_second_prepare_into_a_directory_in_use_is_refused_and_touches_nothing(good_data_set, tmp_path, capsys):
    """Another prepare (a real process) holds P: a text rerun and a stream into P are refused in one line naming its
    pid, and P stays byte-identical; once the holder is killed (-9) the next prepare takes the stale lock over."""
    out, before = good_data_set
    holder = subprocess.Popen([sys.executable, "-c", HOLD_PREPARE_LOCK, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"  # a blocking read: no timeout to race
        other = write_jsonl(tmp_path / "other.jsonl", [f"Other text {i}." for i in range(40)])
        for command in (["prepare", "text", "--input", str(other), "--out", str(out), "--quiet"],
                        ["prepare", "fineweb", "--input", str(other), "--out", str(out), "--quiet"]):
            assert main(command) == 2
            line = error_line(capsys)
            assert f"data directory {out} is in use by another prepare: pid {holder.pid}" in line
            assert {n: d for n, d in snapshot(out).items() if n != ".prepare.lock"} == before
    finally:
        holder.kill()
        holder.wait()
    assert main(["prepare", "text", "--input", str(other), "--out", str(out), "--quiet"]) == 0
    assert f"took over a stale lock from pid {holder.pid}" in capsys.readouterr().err
    assert not (out / ".prepare.lock").exists() and verify_output(out) == []
