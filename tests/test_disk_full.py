"""A full disk while writing a checkpoint (issue 15 item 4): one line naming the files with the MB needed and free,
none of the failed checkpoint's files left, every earlier checkpoint kept (rotation does not run after the failure),
and -y 1 continues from the last complete one. Faked with writes that fail with ENOSPC, and for real on a small
tmpfs when the tests run as root on Linux."""

import contextlib
import dataclasses
import errno
import io
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import write_random_shards
from llmpy import atomic, checkpoint
from llmpy.checkpoint import checkpoint_is_complete, completed_steps, load_model
from llmpy.cli import main
from llmpy.config import TrainConfig
from llmpy.errors import DiskFullError
from llmpy.train.build import build_trainer

MB = 1e6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_random_shards(tmp_path_factory.mktemp("data"), "f", {"train_000001": 5000}, seed=5)


def files_of_step(run, step: int) -> list[str]:
    """Every file in `run` that belongs to the checkpoint of `step`, temporary ones included."""
    return sorted(p.name for p in run.iterdir() if f"_{step:08d}" in p.name)


def checkpoint_mb(run, step: int) -> float:
    """The size of a complete checkpoint on disk, in MB: what the next one of the same run needs too."""
    return sum((run / name).stat().st_size for name in files_of_step(run, step)) / MB


SIZE = r"(\d+(?:\.\d)?) (bytes?|KB|MB|GB)"
UNITS = {"byte": 1, "bytes": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}


def message_numbers(text: str, run, step: int) -> tuple[float, float]:
    """(MB needed, MB free) from the one-line disk-full message for checkpoint `step` in `run`."""
    match = re.fullmatch(rf"no space left on device writing checkpoint {step}: {re.escape(str(run))}/model_{step:08d}"
                         rf"\.pt and state_{step:08d}_00000\.pt \(needs {SIZE}, {SIZE} free\)", text)
    assert match, text
    number, unit, free, free_unit = match.groups()
    return float(number) * UNITS[unit] / MB, float(free) * UNITS[free_unit] / MB


def full_disk_at(monkeypatch, step: int, before_writing: bool) -> list[str]:
    """The disk fills up at checkpoint `step`: its state file's writes fail with ENOSPC after 1 MB, or (when
    `before_writing`) only 30 MB are free once the checkpoint before it is complete. Returns the names of the files opened for writing."""
    opened, real_open, real_free = [], open, atomic.free_bytes

    class FullDisk(io.FileIO):
        def write(self, data):
            if self.tell() + len(data) > 1_000_000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(data)

    def fake_open(path, mode):
        opened.append(os.path.basename(path))
        return FullDisk(path, "w") if f".state_{step:08d}" in str(path) and not before_writing else real_open(path, mode)

    def fake_free(directory):
        reached = before_writing and checkpoint.done_path(directory, step - 2).exists()
        return 30_000_000 if reached else real_free(directory)

    monkeypatch.setattr(atomic, "open", fake_open, raising=False)
    monkeypatch.setattr(atomic, "free_bytes", fake_free)
    return opened


@pytest.mark.parametrize("before_writing", [False, True], ids=["fails-mid-write", "refused-before-writing"])
def test_a_checkpoint_that_does_not_fit_leaves_nothing_and_keeps_the_one_before(data, tmp_path, monkeypatch,
                                                                                before_writing):
    run = tmp_path / "run"
    config = TrainConfig(train_data=str(data / "f_train_*.bin"), output_dir=str(run), model="d2w64", batch_size=2,
                         seq_len=32, total_batch_size=128, max_steps=4, checkpoint_every=2, checkpoint_keep=1,
                         val_every=0, sample_every=0, log_every=0, device="cpu", compile=0)
    opened = full_disk_at(monkeypatch, 4, before_writing)
    with pytest.raises(DiskFullError) as error:
        build_trainer(config, print_fn=lambda *a: None).fit()
    needed, free = message_numbers(str(error.value), run, 4)
    assert needed == pytest.approx(checkpoint_mb(run, 2), rel=0.01)  # checkpoint 4 is as large as checkpoint 2
    if before_writing:
        assert free == 30.0 and not [name for name in opened if "_00000004" in name]
    else:
        assert free == pytest.approx(shutil.disk_usage(run).free / MB, abs=max(50, 0.05 * free))
    assert files_of_step(run, 4) == []  # no model file, no state file, no temporary file, no DONE marker
    assert completed_steps(run, with_state=True) == [2]  # -nk 1 did not prune it: nothing replaced it
    assert load_model(run)[1]["step"] == 2  # its checksums still hold

    monkeypatch.undo()  # space was freed: -y 1 continues from step 2
    trainer = build_trainer(dataclasses.replace(config, resume=1), print_fn=lambda *a: None)
    assert trainer.start_step == 2
    trainer.fit()
    assert completed_steps(run, with_state=True) == [4]


# ------------------------------------------------------------------------------------- a real full disk (root)


@contextlib.contextmanager
def tmpfs(directory, size: str):
    """A tmpfs of `size` on `directory` for the block, unmounted after it whatever happens. Root on Linux only."""
    if sys.platform != "linux" or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root on Linux")
    directory.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], check=False,
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=False, capture_output=True)  # still busy: detach it


@pytest.fixture()
def small_disk(tmp_path):
    """A 60 MB tmpfs: room for one checkpoint of d2w64 (41 MB) and the logs, not for two."""
    with tmpfs(tmp_path / "disk", "60M") as disk:
        yield disk


def test_a_full_disk_while_logging_is_one_line(data, tmp_path, capsys):
    # 12 KB: config.json and the first pages of main.log and metrics.jsonl fit, a few steps' lines do not. The
    # failed line stays in the file's buffer, and closing the log retried it: a second ENOSPC hid the first
    with tmpfs(tmp_path / "disk", "12k") as disk:
        run = disk / "run"
        code = main(["train", "-i", str(data / "f_train_*.bin"), "-o", str(run), "-e", "d2w64", "-b", "2", "-t", "32",
                     "-d", "64", "-x", "200", "-n", "0", "-v", "0", "-s", "0", "--device", "cpu", "--compile", "0",
                     "--log-every", "0"])
        err = capsys.readouterr().err
    assert code == 2, err
    assert re.fullmatch(rf"llmpy: error: no space left on device writing {re.escape(str(run))}/"
                        r"(main\.log|metrics\.jsonl) \(needs more than \d+ bytes, \d+ bytes free\)\n", err), err


@pytest.mark.parametrize("before_writing", [False, True], ids=["fails-mid-write", "refused-before-writing"])
def test_a_real_full_disk_is_one_line_and_the_run_resumes_once_there_is_room(data, small_disk, capsys, monkeypatch,
                                                                              before_writing):
    run = small_disk / "run"
    args = ["train", "-i", str(data / "f_train_*.bin"), "-o", str(run), "-e", "d2w64", "-b", "2", "-t", "32",
            "-d", "128", "-x", "4", "-n", "2", "-v", "0", "-s", "0", "--device", "cpu", "--compile", "0",
            "--log-every", "0"]
    if not before_writing:  # no estimate: torch's own zip writer meets the full disk ("unexpected pos ...")
        monkeypatch.setattr(checkpoint, "check_free_space", lambda *a: None)
        monkeypatch.setattr(atomic, "check_free_space", lambda *a: None)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmpy: error: ") and err.count("\n") == 1, err
    needed, free = message_numbers(err.removeprefix("llmpy: error: ").strip(), run, 4)
    assert needed == pytest.approx(checkpoint_mb(run, 2), rel=0.01)
    assert free == pytest.approx(shutil.disk_usage(run).free / MB, abs=0.2) and free < needed
    assert files_of_step(run, 4) == []
    assert completed_steps(run, with_state=True) == [2] and checkpoint_is_complete(run, 2, with_state=True)
    assert load_model(run)[1]["step"] == 2

    monkeypatch.undo()
    subprocess.run(["mount", "-o", "remount,size=120M", str(small_disk)], check=True)  # the user makes room
    assert main([*args, "-y", "1"]) == 0
    assert "resuming from the checkpoint at step 2" in capsys.readouterr().out
    assert completed_steps(run, with_state=True) == [2, 4]
