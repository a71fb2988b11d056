"""Every checkpoint file verifies itself (a SHA-256 of its contents, written inside it, recomputed at every load), a
damaged DONE marker is an incomplete checkpoint everywhere, loading a run directory says which checkpoint it used and
why it skipped newer ones, and a --model that is no model says what it is (issue 26, items 3, 4, 5 and part of 9)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import write_random_shards
from llmpy.checkpoint import export_model, load_model, model_path
from llmpy.cli import main
from llmpy.config import ModelConfig, TrainConfig
from llmpy.errors import LlmpyError
from llmpy.model import GPT
from llmpy.train.build import build_trainer

FIXTURE = Path(__file__).parent / "fixtures" / "v0_1_run" / "run"
PROBE = "transformer.h.0.attn.c_attn.weight"  # a tensor whose raw bytes are found in the file and flipped


def digest_by_hand(payload: dict) -> str:
    """The documented digest, computed here from its description: every leaf (keys from the top as repr, list
    indices as [i], tuple indices as (i), joined by '/'), in sorted order of its path; a tensor as
    "path<TAB>tensor<TAB>dtype shape<LF>" and its raw bytes, any other value as "path<TAB>type<TAB>repr<LF>"."""
    leaves = []

    def walk(value, path):
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(item, path + [repr(key)])
        elif isinstance(value, (list, tuple)) and value:
            for index, item in enumerate(value):
                walk(item, path + [f"[{index}]" if isinstance(value, list) else f"({index})"])
        else:
            leaves.append(("/".join(path), value))

    walk({key: value for key, value in payload.items() if key != "sha256"}, [])
    digest = hashlib.sha256()
    for path, value in sorted(leaves, key=lambda leaf: leaf[0]):
        if isinstance(value, torch.Tensor):
            digest.update(f"{path}\ttensor\t{value.dtype} {list(value.shape)}\n".encode())
            digest.update(value.numpy().tobytes())
        else:
            digest.update(f"{path}\t{type(value).__name__}\t{value!r}\n".encode())
    return digest.hexdigest()


def tiny_model(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(n_layer=1, n_head=1, n_embd=16, block_size=16))


@pytest.fixture()
def two_checkpoints(tmp_path, monkeypatch):
    """A run directory with checkpoints 2 and 4 of different weights; returns (run, weights of 2, weights of 4)."""
    monkeypatch.setenv("LLMPY_OFFLINE", "1")
    monkeypatch.setenv("LLMPY_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    models = {step: tiny_model(step) for step in (2, 4)}
    for step, model in models.items():
        export_model(run, model, {}, step=step)
    return run, models[2].state_dict(), models[4].state_dict()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_random_shards(tmp_path_factory.mktemp("data"), "i", {"train_000001": 5000, "val_000000": 2000},
                               seed=5)


@pytest.fixture(scope="module")
def trained_run(data, tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4; tests copy it."""
    run = tmp_path_factory.mktemp("trained") / "run"
    config = TrainConfig(train_data=str(data / "i_train_*.bin"), output_dir=str(run), model="d1w64", batch_size=2,
                         seq_len=16, total_batch_size=64, max_steps=4, checkpoint_every=2, val_every=0,
                         sample_every=0, log_every=0, device="cpu", compile=0, seed=3)
    build_trainer(config, print_fn=lambda *a: None).fit()
    return config


def resume(config: TrainConfig, run: Path) -> tuple[int, list[str]]:
    """-y 1 on `run` with two more steps: (the step it continues at, what it printed)."""
    lines: list[str] = []
    trainer = build_trainer(dataclasses.replace(config, output_dir=str(run), resume=1, max_steps=6),
                            print_fn=lambda *a: lines.append(" ".join(map(str, a))))
    return trainer.start_step, lines


def one_line(err: str) -> str:
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err.strip()


def flip_tensor_byte(file: Path, name: str = PROBE) -> None:
    """Flip the exponent byte of one float of tensor `name` where its raw bytes lie in `file`: the file still
    unpickles, and one weight is off by a factor of 2**128 (or 2**-128)."""
    raw = torch.load(file, weights_only=True)["model"][name].numpy().tobytes()
    data = bytearray(file.read_bytes())
    at = data.find(raw)
    assert at > 0 and data.find(raw, at + 1) < 0
    data[at + len(raw) // 2 + 3] ^= 0x40  # little-endian float32: byte 3 holds the exponent's top bits
    file.write_bytes(bytes(data))


def flip_pickle_byte(file: Path) -> None:
    """Flip a byte of the pickled dict (the first letter of a key): torch.load fails."""
    data = bytearray(file.read_bytes())
    data[data.index(b"model_config")] ^= 0xFF
    file.write_bytes(bytes(data))


# --------------------------------------------------------------------------------------- item 3: the digest


def test_every_file_carries_the_sha256_of_its_contents(two_checkpoints, trained_run):
    run, weights, _ = two_checkpoints
    payload = torch.load(model_path(run, 2), weights_only=True)
    assert payload["sha256"] == digest_by_hand(payload)
    assert payload["model"][PROBE].equal(weights[PROBE])
    trained = Path(trained_run.output_dir)
    for name in ("model_00000004.pt", "state_00000004_00000.pt"):
        payload = torch.load(trained / name, weights_only=True)
        assert payload["sha256"] == digest_by_hand(payload), name


def copied_out(run: Path, damage, tmp_path: Path) -> Path:
    file = tmp_path / "copy.pt"
    shutil.copyfile(model_path(run, 4), file)
    damage(file)
    return file


@pytest.mark.parametrize("damage, wanted", [
    (flip_tensor_byte, "is damaged: its contents do not match the digest it was written with"),
    (flip_pickle_byte, "is damaged, or not an llmpy checkpoint: torch.load cannot read it (UnicodeDecodeError"),
], ids=["tensor-byte", "pickle-byte"])
@pytest.mark.parametrize("command", ["sample", "convert", "train -e"])
def test_a_damaged_model_file_out_of_its_run_is_refused(two_checkpoints, data, request, tmp_path, capsys, damage,
                                                        wanted, command):
    if command == "sample":
        request.getfixturevalue("bpe_env")
    file = copied_out(two_checkpoints[0], damage, tmp_path)
    args = {"sample": ["sample", "--model", str(file), "--max-new-tokens", "2", "--device", "cpu"],
            "convert": ["convert", "--model", str(file), "--to", "llmpy", "--out", str(tmp_path / "out")],
            "train -e": ["train", "-e", str(file), "-i", str(data / "i_train_*.bin"), "-b", "1", "-t", "8", "-x", "1",
                         "--device", "cpu", "--compile", "0"]}[command]
    assert main(args) == 2
    assert one_line(capsys.readouterr().err).startswith(f"llmpy: error: {file} {wanted}")
    assert not (tmp_path / "out").exists()


def test_a_model_file_whose_done_marker_was_deleted_is_still_verified(two_checkpoints, capsys):
    run = two_checkpoints[0]
    flip_tensor_byte(model_path(run, 4))
    (run / "DONE_00000004").unlink()
    with pytest.raises(LlmpyError, match="model_00000004.pt is damaged: its contents do not match the digest"):
        load_model(model_path(run, 4))
    assert main(["convert", "--model", str(model_path(run, 4)), "--to", "llmpy", "--out", str(run.parent / "o")]) == 2
    assert "is damaged" in one_line(capsys.readouterr().err)


def drop_marker_checksums(run: Path, step: int) -> None:
    """Rewrite the DONE marker as llmpy 0.1 wrote it (sizes only), so that only the files' own digests can tell."""
    marker = run / f"DONE_{step:08d}"
    entries = json.loads(marker.read_text())
    marker.write_text(json.dumps({name: entry["size"] for name, entry in entries.items()}))


def test_resume_verifies_the_state_file_by_its_own_digest(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run.output_dir, run)
    drop_marker_checksums(run, 4)
    state = run / "state_00000004_00000.pt"
    raw = torch.load(state, weights_only=True)["optimizer"]["state"]["transformer.wte.weight"]["exp_avg"]
    raw = raw.numpy().tobytes()
    data = bytearray(state.read_bytes())
    data[data.index(raw) + len(raw) // 2 + 3] ^= 0x40  # an AdamW moment off by 2**±128; it unpickles
    state.write_bytes(bytes(data))
    step, lines = resume(trained_run, run)
    assert step == 2
    assert any("skipped the newer checkpoint 4" in line and "state_00000004_00000.pt is damaged" in line
               for line in lines), lines


def test_a_checkpoint_of_llmpy_0_1_loads_with_a_note(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    lines: list[str] = []
    model, payload = load_model(run, say=lines.append)
    assert payload["step"] == 2
    assert lines == [f"note: {run / 'model_00000002.pt'} carries no digest (written by an earlier llmpy): trusted "
                     "as is (its DONE_00000002 marker records its size only)",
                     f"using {run / 'model_00000002.pt'} (step 2, the newest complete checkpoint in {run})"]
    assert main(["convert", "--model", str(run), "--to", "llmpy", "--out", str(tmp_path / "out")]) == 0
    assert "carries no digest" in capsys.readouterr().err
    converted = torch.load(tmp_path / "out" / "model_00000000.pt", weights_only=True)
    assert converted["sha256"] == digest_by_hand(converted)  # the converted copy carries one


def test_a_file_without_digest_vouched_for_by_its_marker_says_so(tmp_path):
    from llmpy.checkpoint import write_marker

    run = tmp_path / "run"
    run.mkdir()
    payload = torch.load(FIXTURE / "model_00000002.pt", weights_only=True)
    torch.save(payload, model_path(run, 2))  # an earlier llmpy's file, with a marker of today (sizes and SHA-256s)
    write_marker(run, 2, [model_path(run, 2)])
    lines: list[str] = []
    load_model(model_path(run, 2), say=lines.append)
    assert lines == [f"note: {model_path(run, 2)} carries no digest (written by an earlier llmpy): the SHA-256 in "
                     "its DONE_00000002 marker vouches for it"]


# ------------------------------------------------------------------------------ item 4: damaged DONE markers


def flip_marker_byte(text: str) -> bytes:
    data = bytearray(text.encode())
    data[5] ^= 0xFF
    return bytes(data)


def _entries(text: str, change) -> bytes:
    return json.dumps({name: change(entry) for name, entry in json.loads(text).items()}).encode()


MARKER_DAMAGE = {  # kind: (damage, what the warning says)
    "flipped-byte": (flip_marker_byte, "not UTF-8 text"),
    "not-json": (lambda text: text.replace("{", "[", 1).encode(), "not JSON"),
    "size-as-string": (lambda text: _entries(text, lambda entry: dict(entry, size=str(entry["size"]))),
                       "the size of model_00000004.pt is the text '"),
    "list-not-dict": (lambda text: json.dumps(list(json.loads(text))).encode(), "a list of 1, not a table of files"),
    "entry-a-list": (lambda text: _entries(text, lambda entry: list(entry.values())),
                     "the size of model_00000004.pt is a list of 2, not a number of bytes"),
    "sha256-a-number": (lambda text: _entries(text, lambda entry: dict(entry, sha256=12)),
                        "the SHA-256 of model_00000004.pt is 12, not a SHA-256"),
}


def damage_marker(run: Path, step: int, kind: str) -> str:
    damage, _ = MARKER_DAMAGE[kind]
    marker = run / f"DONE_{step:08d}"
    marker.write_bytes(damage(marker.read_text()))
    return MARKER_DAMAGE[kind][1]


@pytest.mark.parametrize("kind", sorted(MARKER_DAMAGE))
def test_convert_falls_back_from_a_damaged_marker_with_a_warning(two_checkpoints, tmp_path, capsys, kind):
    run, weights_2, _ = two_checkpoints
    reason = damage_marker(run, 4, kind)
    assert main(["convert", "--model", str(run), "--to", "llmpy", "--out", str(tmp_path / "out")]) == 0
    warning = one_line(capsys.readouterr().err)
    assert warning.startswith(f"warning: using {model_path(run, 2)} (step 2); skipped the newer checkpoint 4 "
                              f"(DONE_00000004 is damaged: "), warning
    assert reason in warning
    converted = torch.load(tmp_path / "out" / "model_00000000.pt", weights_only=True)["model"]
    assert converted[PROBE].equal(weights_2[PROBE])


def test_sample_and_eval_fall_back_from_a_damaged_marker(two_checkpoints, data, bpe_env, capsys):
    run = two_checkpoints[0]
    damage_marker(run, 4, "flipped-byte")
    assert main(["sample", "--model", str(run), "--max-new-tokens", "2", "--device", "cpu"]) == 0
    assert "skipped the newer checkpoint 4 (DONE_00000004 is damaged" in capsys.readouterr().err
    assert main(["eval", "--model", str(run), "--val-data", str(data / "i_val_*.bin"), "--val-tokens", "64", "-b",
                 "1", "-t", "16", "--no-hellaswag", "--device", "cpu"]) == 0
    assert "skipped the newer checkpoint 4 (DONE_00000004 is damaged" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["flipped-byte", "size-as-string"])
def test_resume_falls_back_from_a_damaged_marker(trained_run, tmp_path, kind):
    run = tmp_path / "run"
    shutil.copytree(trained_run.output_dir, run)
    reason = damage_marker(run, 4, kind)
    step, lines = resume(trained_run, run)
    assert step == 2
    said = [line for line in lines if "resuming from" in line]
    assert len(said) == 1 and said[0].startswith("warning: resuming from the checkpoint at step 2 of 6 in "), lines
    assert f"({model_path(run, 2).name}); skipped the newer checkpoint 4 (DONE_00000004 is damaged: " in said[0]
    assert reason in said[0]


# --------------------------------------------------------------- item 5: which checkpoint, and why not a newer one


def test_convert_says_which_checkpoint_it_used_and_why_not_the_newest(two_checkpoints, tmp_path, capsys):
    run, weights_2, _ = two_checkpoints
    newest = model_path(run, 4)
    size = newest.stat().st_size
    newest.write_bytes(newest.read_bytes()[:1000])
    assert main(["convert", "--model", str(run), "--to", "llmpy", "--out", str(tmp_path / "out")]) == 0
    assert one_line(capsys.readouterr().err) == (
        f"warning: using {model_path(run, 2)} (step 2); skipped the newer checkpoint 4 (model_00000004.pt is "
        f"truncated: 1000 bytes, its DONE_00000004 marker records {size})")
    (run / "DONE_00000004").unlink()
    newest.unlink()
    assert main(["convert", "--model", str(run), "--to", "llmpy", "--out", str(tmp_path / "out")]) == 0
    assert one_line(capsys.readouterr().err) == (
        f"using {model_path(run, 2)} (step 2, the newest complete checkpoint in {run})")


def test_a_run_with_no_usable_checkpoint_names_each_reason(two_checkpoints):
    run = two_checkpoints[0]
    flip_tensor_byte(model_path(run, 2))
    drop_marker_checksums(run, 2)
    model_path(run, 4).unlink()
    with pytest.raises(LlmpyError) as error:
        load_model(run, say=lambda line: None)
    assert str(error.value) == (f"{run}: no usable checkpoint: checkpoint 4 (model_00000004.pt is missing); "
                                f"checkpoint 2 ({model_path(run, 2)} is damaged: its contents do not match the "
                                "digest it was written with)")


# ------------------------------------------------------------------- item 9: a --model that is not a model


def test_a_hugging_face_directory_without_weights_says_so(tmp_path, capsys):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    assert main(["convert", "--model", str(hf), "--to", "llmpy", "--out", str(tmp_path / "out")]) == 2
    assert one_line(capsys.readouterr().err) == (
        f"llmpy: error: --model {hf}: a Hugging Face model directory (it has config.json) without its weights: "
        "neither model.safetensors nor pytorch_model.bin is in it")


@pytest.mark.parametrize("name, contents, what", [
    ("main.log", b"step 1/20 | loss 10.9\nstep 2/20 | loss 10.1\n", "a text file (first line: 'step 1/20 | loss 10.9')"),
    ("notes.txt", "caf\u00e9 au lait\n".encode(), "a text file (first line: 'caf\u00e9 au lait')"),
    ("empty.pt", b"", "an empty file"),
    ("config.json", b'{"train": {"model": "d12"}}\n', "a JSON file"),
    ("random.bin", bytes(range(7, 71)), "binary data (64 bytes, starting 07 08 09 0a 0b 0c 0d 0e)"),
], ids=["log", "utf8-text", "empty", "json", "binary"])
def test_a_file_that_is_no_model_says_what_it_is(data, tmp_path, capsys, name, contents, what):
    file = tmp_path / name
    file.write_bytes(contents)
    for command in (["convert", "--model", str(file), "--to", "llmpy", "--out", str(tmp_path / "out")],
                    ["train", "-e", str(file), "-i", str(data / "i_train_*.bin"), "-x", "1", "--device", "cpu"]):
        assert main(command) == 2
        flag = "--model" if command[0] == "convert" else "-e/--model"
        assert one_line(capsys.readouterr().err) == (
            f"llmpy: error: {flag} {file}: not an llmpy checkpoint, an llm.c model .bin or a Hugging Face directory: "
            f"it is {what}")
