"""main.log in llm.c's format, metrics.jsonl, parsing with restarts; FLOPs and peak table."""

import json

import pytest

from llmpy.config import ModelConfig
from llmpy.metrics.logger import RunLogger, parse_main_log
from llmpy.metrics.mfu import mfu, parameter_count, peak_flops, training_flops_per_token


def test_main_log_lines_are_llmc_format_and_jsonl_is_valid(tmp_path):
    with RunLogger(tmp_path) as logger:
        logger.log_val(0, 10.960443)
        logger.log_train(0, 10.955969, 6e-5, 17.044373, tokens_per_sec=15335.2)
        logger.log_train(1, float("nan"), 1.2e-4, float("inf"))
        logger.log_eval(250, 0.2945)
        logger.log_event(1, "sample", text="hi")
    assert (tmp_path / "main.log").read_text().splitlines() == [
        "s:0 tel:10.960443",
        "s:0 trl:10.955969 lr:0.000060 norm:17.044373",
        "s:1 trl:nan lr:0.000120 norm:inf",
        "s:250 eval:0.294500",
    ]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["val", "train", "train", "eval", "sample"]
    assert records[1]["lr"] == 6e-5 and records[1]["tokens_per_sec"] == 15335.2  # full precision in JSONL
    assert records[2]["loss"] is None and records[2]["grad_norm"] is None


def test_resume_appends_and_disabled_logger_writes_nothing(tmp_path):
    with RunLogger(tmp_path) as logger:
        logger.log_val(0, 1.0)
    with RunLogger(tmp_path, resume=True) as logger:
        logger.log_val(5, 2.0)
    assert (tmp_path / "main.log").read_text() == "s:0 tel:1.000000\ns:5 tel:2.000000\n"
    with RunLogger(tmp_path / "other", enabled=False) as logger:
        logger.log_val(0, 1.0)
    assert not (tmp_path / "other").exists()


def test_parse_keeps_last_value_per_step_after_a_restart(tmp_path):
    log = tmp_path / "main.log"
    log.write_text(
        "s:0 tel:10.9\n"
        "s:0 trl:10.95 lr:0.000060 norm:17.0\n"
        "s:1 trl:10.03 lr:0.000120 norm:7.19\n"
        "s:2 trl:9.71 lr:0.000180 norm:3.29\n"
        "s:2 trl:9.7"  # cut off by a crash
        "\n"
        "s:1 trl:10.01 lr:0.000120 norm:7.00\n"  # restarted from step 1
        "s:2 trl:9.70 lr:0.000180 norm:3.20\n"
        "garbage line\n"
        "s:2 tel:9.8\n"
    )
    series = parse_main_log(log)
    assert series["trl"] == {0: 10.95, 1: 10.01, 2: 9.70}
    assert series["norm"] == {0: 17.0, 1: 7.0, 2: 3.2}
    assert series["tel"] == {0: 10.9, 2: 9.8}


def test_flops_per_token_by_hand():
    cfg = ModelConfig.from_descriptor("d12")
    assert parameter_count(cfg) == 124_475_904
    # 6 * 124,475,904 + 6 * 12 * 768 * 1024 = 746,855,424 + 56,623,104
    assert training_flops_per_token(cfg, 1024) == 803_478_528
    assert mfu(444_000, 803_478_528, 989e12) == pytest.approx(0.3607, abs=1e-4)
    assert mfu(444_000, 803_478_528, None) is None


@pytest.mark.parametrize(
    "name, precision, peak",
    [("NVIDIA H100 80GB HBM3", "bf16", 989e12), ("NVIDIA H100 PCIe", "bf16", 756e12), ("NVIDIA H200", "bf16", 989e12),
     ("NVIDIA A100-SXM4-80GB", "bf16", 312e12), ("NVIDIA A100-SXM4-80GB", "fp32", 156e12),
     ("NVIDIA A10G", "bf16", 125e12), ("cpu", "bf16", None), ("Some Future GPU", "bf16", None)],
)
def test_peak_table(name, precision, peak):
    assert peak_flops(name, precision) == peak
