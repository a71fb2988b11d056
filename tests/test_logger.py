"""main.log in llm.c's line layout, strict-JSON metrics.jsonl, resume, rank gating, and parsing after restarts."""

import json
import re
import time

import numpy as np
import pytest
import torch

from llmpy.metrics.logger import RunLogger
from llmpy.metrics.rundata import load_run


def read_jsonl(path):
    """Records, rejecting NaN/Infinity tokens that Python's json accepts but JSON does not."""
    def reject(token):
        raise ValueError(f"invalid JSON constant {token}")

    return [json.loads(line, parse_constant=reject) for line in path.read_text().splitlines()]


def test_main_log_lines_are_llmc_format(tmp_path):
    with RunLogger(tmp_path) as logger:
        logger.log_val(0, 10.960443)
        logger.log_train(0, 10.955969, 6e-4, 17.044373, tokens_per_sec=15335.2)
        logger.log_train(1, float("nan"), 1.2e-4, float("inf"))
        logger.log_eval(250, 0.2945)
        logger.log_event(1, "sample", text="hi")
    assert (tmp_path / "main.log").read_text() == (
        "s:0 tel:10.960443\n"
        "s:0 trl:10.955969 lr:0.000600 norm:17.044373\n"
        "s:1 trl:nan lr:0.000120 norm:inf\n"
        "s:250 eval:0.294500\n"
    )


def test_jsonl_is_strict_json_with_full_precision(tmp_path):
    start = time.time()
    with RunLogger(tmp_path) as logger:
        logger.log_train(0, 10.955969, 6e-4, 17.044373, tokens_per_sec=15335.2, mfu=0.41)
        logger.log_train(1, float("nan"), 1.2e-4, torch.tensor(float("inf")), step_ms=np.float32(12.5))
        logger.log_val(1, 9.5)
        logger.log_eval(1, 0.25, num_examples=10042)
        logger.log_event(1, "config", model={"n_layer": 2, "bad": float("nan")}, shapes=[1, 2.5])
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["kind"] for r in records] == ["train", "train", "val", "eval", "config"]
    assert [r["step"] for r in records] == [0, 1, 1, 1, 1]
    assert all(start <= r["time"] <= time.time() for r in records)
    assert records[0]["lr"] == 6e-4 and records[0]["tokens_per_sec"] == 15335.2 and records[0]["mfu"] == 0.41
    assert records[1]["loss"] is None and records[1]["grad_norm"] is None and records[1]["step_ms"] == 12.5
    assert records[2]["loss"] == 9.5 and records[3]["accuracy"] == 0.25 and records[3]["num_examples"] == 10042
    assert records[4]["model"] == {"n_layer": 2, "bad": None} and records[4]["shapes"] == [1, 2.5]
    assert "tokens_per_sec" not in (tmp_path / "main.log").read_text()


def test_every_line_is_on_disk_before_close(tmp_path):
    logger = RunLogger(tmp_path)
    logger.log_train(3, 1.0, 0.1, 2.0)
    assert (tmp_path / "main.log").read_text() == "s:3 trl:1.000000 lr:0.100000 norm:2.000000\n"
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 1
    logger.close()
    logger.close()  # closing twice is harmless
    logger.log_val(4, 1.0)  # and logging after close is a no-op
    assert (tmp_path / "main.log").read_text().count("\n") == 1


def test_resume_appends_and_a_fresh_run_truncates(tmp_path):
    with RunLogger(tmp_path) as logger:
        logger.log_val(0, 1.0)
    with RunLogger(tmp_path, resume=True) as logger:
        logger.log_val(5, 2.0)
    assert (tmp_path / "main.log").read_text() == "s:0 tel:1.000000\ns:5 tel:2.000000\n"
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [0, 5]
    with RunLogger(tmp_path) as logger:
        logger.log_val(7, 3.0)
    assert (tmp_path / "main.log").read_text() == "s:7 tel:3.000000\n"
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [7]


@pytest.mark.parametrize("out_dir, enabled", [("run", False), (None, True), ("", True)])
def test_disabled_logger_writes_nothing(tmp_path, monkeypatch, out_dir, enabled):
    monkeypatch.chdir(tmp_path)
    with RunLogger(out_dir, enabled=enabled) as logger:
        logger.log_train(0, 1.0, 0.1, 1.0)
        logger.log_val(0, 1.0)
        logger.log_eval(0, 0.5)
        logger.log_event(0, "sample", text="x")
    assert list(tmp_path.iterdir()) == []


def test_resume_after_a_line_cut_off_by_a_crash_starts_a_new_line(tmp_path):
    (tmp_path / "main.log").write_text("s:0 trl:3.000000 lr:0.000100 norm:1.000000\ns:1 trl:2.9")
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "kind": "train"}\n{"step": 1, "ki')
    with RunLogger(tmp_path, resume=True) as logger:
        logger.log_train(1, 2.5, 1e-4, 1.0)
    assert (tmp_path / "main.log").read_text().splitlines() == [
        "s:0 trl:3.000000 lr:0.000100 norm:1.000000", "s:1 trl:2.9", "s:1 trl:2.500000 lr:0.000100 norm:1.000000"]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["loss"] == 2.5


def test_plot_reads_what_the_logger_writes_to_main_log(tmp_path):
    with RunLogger(tmp_path) as logger:
        logger.log_train(0, 3.25, 6e-4, 1.5)
        logger.log_val(0, 3.5)
        logger.log_eval(0, 0.25)
    (tmp_path / "metrics.jsonl").unlink()  # main.log alone, as llm.c's tools see it
    series = load_run(tmp_path).series
    assert (series["train_loss"], series["lr"], series["grad_norm"]) == ({0: 3.25}, {0: 0.0006}, {0: 1.5})
    assert (series["val_loss"], series["hellaswag"]) == ({0: 3.5}, {0: 0.25})


def test_a_log_line_on_a_full_disk_is_the_one_line_disk_full_error(tmp_path, monkeypatch):
    import errno

    from llmpy.errors import DiskFullError

    logger = RunLogger(tmp_path, enabled=True)
    original = logger._main.write

    def full(text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(logger._main, "write", full)
    with pytest.raises(DiskFullError, match=r"no space left on device writing .*main\.log \(needs more than \d+ bytes"):
        logger.log_train(1, loss=1.0, lr=1e-3, grad_norm=1.0)
    monkeypatch.setattr(logger._main, "write", original)
    logger.close()


def full_disk_log(path):
    """A text log on a disk with no room: every flush of its buffer fails with ENOSPC, as on a full tmpfs."""
    import errno
    import io
    import os

    class FullDisk(io.FileIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return io.TextIOWrapper(io.BufferedWriter(FullDisk(path, "w")), encoding="utf-8")


def test_closing_after_a_failed_write_does_not_hide_its_error(tmp_path):
    # the line that did not fit stays in the file's buffer; close() flushed it again and raised a bare ENOSPC
    # over the one-line error (issue D2: three chained tracebacks instead of one line)
    from llmpy.errors import DiskFullError

    logger = RunLogger(tmp_path)
    logger._main.close()
    logger._main = full_disk_log(tmp_path / "main.log")
    with pytest.raises(DiskFullError, match=r"no space left on device writing .*main\.log \("):
        logger.log_train(1, loss=1.0, lr=1e-3, grad_norm=1.0)
    logger.close()  # nothing raised: the write's error was the one
    assert logger._main is None and logger._jsonl is None


def test_a_full_disk_met_by_close_itself_is_the_one_line_error(tmp_path):
    from llmpy.errors import DiskFullError

    logger = RunLogger(tmp_path)
    logger._main.close()
    logger._main = full_disk_log(tmp_path / "main.log")
    logger._main.write("s:0 trl:1.0\n")  # buffered, not yet flushed: as after a resume's newline
    with pytest.raises(DiskFullError) as error:
        logger.close()
    assert re.fullmatch(rf"no space left on device writing {re.escape(str(tmp_path / 'main.log'))} "
                        r"\(\d+(\.\d)? (bytes|KB|MB|GB) free\)", str(error.value)), str(error.value)
    assert logger._jsonl is None  # the other file was closed all the same
