"""FineWeb-scale prepare through `datasets`: counts, EOT placement, splits, worker-count determinism, resume after
a real SIGKILL, and --verify."""

import gzip
import itertools
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from llmpy.cli import main
from llmpy.data.pipeline import verify_output
from llmpy.data.prepare import prepare_stream
from llmpy.data.shards import read_shard
from llmpy.data.sources import fineweb_spec

pytest.importorskip("datasets")
SPEC = fineweb_spec("classic", "10B")


@pytest.fixture()
def docs(shared_data, tmp_path):
    """About 0.7M tokens of the shared corpus (a few MB of FineWeb-like jsonl.gz), plus the texts."""
    with gzip.open(shared_data / "corpus" / "train_00.jsonl.gz", "rt", encoding="utf-8") as handle:
        lines = list(itertools.islice(handle, 200))
    path = tmp_path / "piece.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(lines)
    return path, [json.loads(line)["text"] for line in lines]


def read_all(out, pattern):
    return np.concatenate([read_shard(f) for f in sorted(out.glob(pattern))])


def test_counts_eot_and_llmc_layout(docs, bpe_env, tmp_path):
    from llmpy.tokenizer import get_tokenizer

    path, texts = docs
    out = tmp_path / "out"
    manifest = prepare_stream(SPEC, out, inputs=[str(path)], shard_size=100_000, workers=1, quiet=True)
    tokenizer = get_tokenizer()
    expected = np.array([t for text in texts for t in [50256, *tokenizer.encode(text)]], dtype=np.uint16)
    val, train = read_shard(out / "fineweb_val_000000.bin"), read_all(out, "fineweb_train_*.bin")
    assert len(val) == 100_000  # shard 0 = val = the first shard_size tokens, as llm.c does
    assert np.array_equal(np.concatenate([val, train]), expected)
    assert int((expected == 50256).sum()) == len(texts) and val[0] == 50256
    names = sorted(s["file"] for s in manifest["shards"])
    assert names[0] == "fineweb_train_000001.bin" and names[-1] == "fineweb_val_000000.bin"
    assert manifest["complete"] and manifest["total_tokens"]["train"] == len(train)
    assert verify_output(out) == []


def test_one_and_two_workers_give_identical_shards_and_parquet_equals_jsonl(docs, bpe_env, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path, texts = docs
    prepare_stream(SPEC, tmp_path / "w1", inputs=[str(path)], shard_size=150_000, workers=1, quiet=True)
    prepare_stream(SPEC, tmp_path / "w2", inputs=[str(path)], shard_size=150_000, workers=2, quiet=True)
    files = sorted(p.name for p in (tmp_path / "w1").glob("*.bin"))
    assert files == sorted(p.name for p in (tmp_path / "w2").glob("*.bin")) and len(files) >= 4
    for name in files:
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()
    parquet = tmp_path / "piece.parquet"
    pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), parquet)
    prepare_stream(SPEC, tmp_path / "pq", inputs=[str(parquet)], shard_size=150_000, workers=1, quiet=True)
    assert np.array_equal(read_all(tmp_path / "pq", "*.bin"), read_all(tmp_path / "w1", "*.bin"))


def test_separate_val_inputs_and_max_tokens(docs, bpe_env, tmp_path):
    path, texts = docs
    val_path = tmp_path / "val.jsonl"
    val_path.write_text(json.dumps({"text": "A short val document."}) + "\n")
    prepare_stream(SPEC, tmp_path / "o", inputs=[str(path)], val_inputs=[str(val_path)], shard_size=100_000,
                   max_tokens=250_000, workers=1, quiet=True)
    assert read_shard(tmp_path / "o" / "fineweb_val_000000.bin").tolist()[0] == 50256
    train = sorted((tmp_path / "o").glob("fineweb_train_*.bin"))
    assert [len(read_shard(f)) for f in train] == [100_000, 100_000, 50_000 - 6]  # the val shard counts too


def test_killed_run_resumes_to_identical_output(shared_data, bpe_env, tmp_path):
    inputs = [str(shared_data / "corpus" / f"train_0{i}.jsonl.gz") for i in range(2)]  # the resume crosses a file
    command = [sys.executable, "-m", "llmpy", "prepare", "fineweb", "--input", *inputs, "--shard-size", "20000",
               "--workers", "1", "--quiet"]
    reference = tmp_path / "reference"
    assert main(command[3:] + ["--out", str(reference)]) == 0

    killed = tmp_path / "killed"
    process = subprocess.Popen(command + ["--out", str(killed)], env=dict(os.environ),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        manifest = killed / "manifest.json"
        if manifest.is_file() and len(json.loads(manifest.read_text())["shards"]) >= 5:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    state = json.loads((killed / "manifest.json").read_text())
    assert not state["complete"] and state["position"]["next_document"] > 0  # really stopped mid-way
    assert verify_output(killed)[-1].endswith("re-run the same prepare command to complete it")

    assert main(command[3:] + ["--out", str(killed)]) == 0
    names = sorted(p.name for p in reference.glob("*.bin"))
    assert names == sorted(p.name for p in killed.glob("*.bin"))
    for name in names:
        assert (reference / name).read_bytes() == (killed / name).read_bytes(), name
    assert verify_output(killed) == []


def test_verify_catches_a_flipped_byte_and_settings_mismatch(docs, bpe_env, tmp_path, capsys):
    path, _ = docs
    out = tmp_path / "out"
    prepare_stream(SPEC, out, inputs=[str(path)], shard_size=200_000, workers=1, quiet=True)
    shard = out / "fineweb_train_000001.bin"
    data = bytearray(shard.read_bytes())
    data[5000] ^= 0x01
    shard.write_bytes(bytes(data))
    assert main(["prepare", "--verify", str(out)]) == 1
    assert "fineweb_train_000001.bin: SHA-256 differs" in capsys.readouterr().err
    from llmpy.errors import LlmpyError

    with pytest.raises(LlmpyError, match="prepared with other settings"):
        prepare_stream(SPEC, out, inputs=[str(path)], shard_size=100_000, workers=1, quiet=True)
