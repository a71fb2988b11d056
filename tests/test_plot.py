"""`llmpy plot`: main.log (ours and llm.c's) and metrics.jsonl parsing, the data on each axis, summary, HTML."""

import argparse
import base64
import json
import re

import pytest

from llmpy import plot
from llmpy.errors import LlmpyError

# A run that crashed mid-line after step 3 and resumed from its step-2 checkpoint: steps 2 and 3 are logged twice.
RESTARTED_MAIN_LOG = """\
s:0 tel:10.900000
s:0 trl:10.950000 lr:0.000100 norm:5.000000
s:1 trl:9.000000 lr:0.000200 norm:4.000000
s:2 tel:8.100000
s:2 trl:8.000000 lr:0.000300 norm:3.000000
s:3 trl:7.500000 lr:0.000400 norm:2.800000
s:4 tr
s:2 tel:8.050000
s:2 trl:7.900000 lr:0.000300 norm:2.500000
s:3 trl:7.000000 lr:0.000400 norm:2.000000
s:4 eval:0.260000
"""

# llm.c's own writer: %.4f, and (older versions) no lr/norm fields.
LLMC_MAIN_LOG = """\
s:0 tel:10.9910
s:0 trl:10.9876
s:1 trl:10.1234
s:2 trl:9.5000
s:2 tel:9.6000
"""

D12_SHAPE = {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "vocab_size": 50257,
             "padded_vocab_size": 50304}


def write_run(root, name, main_log=None, records=None):
    run_dir = root / name
    run_dir.mkdir()
    if main_log is not None:
        (run_dir / "main.log").write_text(main_log)
    if records is not None:
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return run_dir


def jsonl_run_records():
    """A d12-shaped run with 1000 tokens per step, throughput and MFU, re-logging step 1 after a restart."""
    return [
        {"step": 0, "kind": "config", "model_config": D12_SHAPE, "num_parameters": 124475904, "world_size": 1},
        {"step": 0, "kind": "val", "loss": 11.0},
        {"step": 0, "kind": "train", "loss": 10.9, "lr": 1e-4, "grad_norm": 9.0, "tokens_per_sec": 500.0,
         "mfu": 0.1, "tokens": 1000, "step_ms": 2000.0},
        {"step": 1, "kind": "train", "loss": 9.9, "lr": 2e-4, "grad_norm": 8.0, "tokens_per_sec": 2000.0,
         "mfu": 0.4, "tokens": 1000, "step_ms": 500.0},
        {"step": 1, "kind": "train", "loss": 9.123456789, "lr": 2e-4, "grad_norm": 7.0, "tokens_per_sec": 2500.0,
         "mfu": 0.5, "tokens": 1000, "step_ms": 400.0},
        {"step": 2, "kind": "train", "loss": 8.5, "lr": 3e-4, "grad_norm": None, "tokens_per_sec": 2500.0,
         "mfu": 0.5, "tokens": 1000, "step_ms": 400.0, "skipped": True},
        {"step": 2, "kind": "val", "loss": 8.75},
        {"step": 2, "kind": "eval", "accuracy": 0.27, "acc": 0.26},
        {"step": 2, "kind": "sample", "text": "hello"},
    ]


def lines_by_label(axis):
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axis.get_lines()}


def test_restarted_main_log_keeps_the_last_value_per_step(tmp_path):
    run = plot.load_run(write_run(tmp_path, "restarted", RESTARTED_MAIN_LOG))
    assert run.series["train_loss"] == {0: 10.95, 1: 9.0, 2: 7.9, 3: 7.0}
    assert run.series["val_loss"] == {0: 10.9, 2: 8.05}
    assert run.series["grad_norm"] == {0: 5.0, 1: 4.0, 2: 2.5, 3: 2.0}
    assert run.series["hellaswag"] == {4: 0.26}
    assert any("main.log:7" in note for note in run.notes)  # the cut-off line before the restart is skipped

    result = plot.plot_runs([run])
    assert set(result.axes) == {"loss", "hellaswag", "lr", "grad_norm"}  # no throughput or MFU in main.log
    loss = lines_by_label(result.axes["loss"])
    assert loss["train"] == ([0, 1, 2, 3], [10.95, 9.0, 7.9, 7.0])
    assert loss["val"] == ([0, 2], [10.9, 8.05])
    assert result.axes["loss"].get_yscale() == "log"
    assert lines_by_label(result.axes["lr"])["restarted"] == ([0, 1, 2, 3], [1e-4, 2e-4, 3e-4, 4e-4])
    assert lines_by_label(result.axes["hellaswag"])["restarted"] == ([4], [0.26])


def test_llmc_line_format_with_missing_fields(tmp_path):
    run = plot.load_run(write_run(tmp_path, "llmc_run", LLMC_MAIN_LOG))
    result = plot.plot_runs([run], reference="d12")  # llm.c writes no config: the flag names the size
    assert set(result.axes) == {"loss"}  # no lr / norm / eval lines: those panels are left out
    loss = lines_by_label(result.axes["loss"])
    assert loss["train"] == ([0, 1, 2], [10.9876, 10.1234, 9.5])
    assert loss["val"] == ([0, 2], [10.991, 9.6])
    assert loss["GPT-2 124M val loss (3.425)"][1] == [3.425, 3.425]


def test_jsonl_adds_throughput_mfu_tokens_axis_and_gpt2_baselines(tmp_path):
    main_log = "s:0 tel:11.000000\ns:1 trl:9.123457 lr:0.000200 norm:7.000000\n"
    run = plot.load_run(write_run(tmp_path, "d12run", main_log, jsonl_run_records()))
    assert run.series["train_loss"][1] == 9.123456789  # full precision from metrics.jsonl wins over main.log
    assert run.series["grad_norm"] == {0: 9.0, 1: 7.0}  # null (a non-finite norm) is left out
    assert run.tokens_per_step() == 1000

    result = plot.plot_runs([run], x_axis="tokens")
    assert result.x_axis == "tokens"
    loss = lines_by_label(result.axes["loss"])
    assert loss["train"] == ([0, 1000, 2000], [10.9, 9.123456789, 8.5])
    assert loss["val"] == ([0, 2000], [11.0, 8.75])
    assert loss["GPT-2 124M val loss (3.425)"][1] == [3.425, 3.425]
    hellaswag = lines_by_label(result.axes["hellaswag"])
    assert hellaswag["d12run"] == ([2000], [0.27])
    assert hellaswag["GPT-2 124M (0.294)"][1] == [0.2945, 0.2945]
    assert hellaswag["GPT-3 124M (0.337)"][1] == [0.337, 0.337]
    # the first step (compilation: 500 tok/s, a fifth of the rest) is left out of the speed panels, not the data
    assert lines_by_label(result.axes["tokens_per_sec"])["d12run"] == ([1000, 2000], [2500.0, 2500.0])
    assert lines_by_label(result.axes["mfu"])["d12run"][1] == pytest.approx([50.0, 50.0])  # percent
    assert run.series["tokens_per_sec"][0] == 500.0
    assert result.axes["tokens_per_sec"].get_ylim()[0] == 0
    assert result.axes["loss"].get_xlabel() == "tokens trained"


def test_smoothing_and_several_runs_overlay(tmp_path):
    first = plot.load_run(write_run(tmp_path, "first", RESTARTED_MAIN_LOG))
    second = plot.load_run(write_run(tmp_path, "second", LLMC_MAIN_LOG))
    assert plot.moving_average([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    result = plot.plot_runs([first, second], smooth=2)
    loss = lines_by_label(result.axes["loss"])
    assert loss["first train (raw)"][1] == [10.95, 9.0, 7.9, 7.0]
    assert loss["first train (avg 2)"][1] == pytest.approx([10.95, 9.975, 8.45, 7.45])
    assert loss["second train (avg 2)"][1] == pytest.approx([10.9876, 10.5555, 9.8117])
    assert loss["second val"][0] == [0, 2]
    legend = [text.get_text() for text in result.axes["loss"].get_legend().get_texts()]
    assert "first val" in legend and "second val" in legend


def test_tokens_axis_falls_back_to_steps_without_tokens_per_step(tmp_path):
    run = plot.load_run(write_run(tmp_path, "llmc_run", LLMC_MAIN_LOG))
    result = plot.plot_runs([run], x_axis="tokens")
    assert result.x_axis == "steps"
    assert lines_by_label(result.axes["loss"])["train"][0] == [0, 1, 2]


def test_summary(tmp_path):
    run = plot.load_run(write_run(tmp_path, "d12run", None, jsonl_run_records()))
    summary = plot.summarize(run)
    assert summary.min_train_loss == (8.5, 2)
    assert summary.min_val_loss == (8.75, 2)
    assert summary.max_hellaswag == (0.27, 2)
    assert summary.tokens_seen == 3000  # steps 0, 1, 2 once each, though step 1 was logged twice
    assert summary.train_seconds == pytest.approx((2000 + 400 + 400) / 1000)
    assert summary.last_step == 2
    text = plot.format_summary([summary])
    assert "8.5000 (step 2)" in text and "2.8 s" in text


def test_bad_input_names_file_and_line(tmp_path):
    with pytest.raises(LlmpyError, match="no such run directory"):
        plot.load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LlmpyError, match="no main.log or metrics.jsonl"):
        plot.load_run(tmp_path / "empty")
    garbled = "s:0 trl:10.0 lr:0.1 norm:1.0\nloss is 9.5 at step 1\ns:2 trl:9.0\n"
    with pytest.raises(LlmpyError, match=r"main\.log:2: cannot parse"):
        plot.load_run(write_run(tmp_path, "garbled", garbled))
    records = '{"step": 0, "kind": "train", "loss": 1.0}\nnot json\n{"step": 1, "kind": "train", "loss": 0.5}\n'
    bad_jsonl = tmp_path / "bad_jsonl"
    bad_jsonl.mkdir()
    (bad_jsonl / "metrics.jsonl").write_text(records)
    with pytest.raises(LlmpyError, match=r"metrics\.jsonl:2: not a metrics record"):
        plot.load_run(bad_jsonl)


def run_cli(argv):
    parser = argparse.ArgumentParser()
    plot.add_arguments(parser)
    return plot.run(parser.parse_args(argv))


def test_cli_writes_png_and_self_contained_html(tmp_path, capsys):
    run_dir = write_run(tmp_path, "d12run", None, jsonl_run_records())
    out, report = tmp_path / "curves.png", tmp_path / "report.html"
    assert run_cli([str(run_dir), "--out", str(out), "--html", str(report), "--x", "tokens", "--dpi", "60"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = report.read_text()
    assert "data:image/png;base64," in page
    encoded = re.search(r'data:image/png;base64,([A-Za-z0-9+/=]+)"', page).group(1)
    assert base64.b64decode(encoded)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<td>d12run</td>" in page and "8.7500 (step 2)" in page
    printed = capsys.readouterr().out
    assert "min val loss" in printed and "8.7500 (step 2)" in printed


def test_cli_errors(tmp_path, capsys):
    run_dir = write_run(tmp_path, "llmc_run", LLMC_MAIN_LOG)
    with pytest.raises(SystemExit):  # argparse's one line: "argument --smooth: must be an integer >= 0"
        run_cli([str(run_dir), "--smooth", "-1"])
    with pytest.raises(LlmpyError, match="--dpi 99999: the figure would be 1,099,989 x"):
        run_cli([str(run_dir), "--dpi", "99999"])
    with pytest.raises(LlmpyError, match="no such run directory"):
        run_cli([str(tmp_path / "nope")])
    assert run_cli([str(run_dir), "--x", "tokens", "--out", str(tmp_path / "a.png"), "--dpi", "40"]) == 0
    assert "plotting against steps" in capsys.readouterr().out
