"""Labels people read say what they mean (issue 15 item 13): eval's val-loss token count, bench's step count."""

import pytest
import torch
from conftest import write_random_shards

from llmpy.checkpoint import export_model
from llmpy.cli import main
from llmpy.config import ModelConfig
from llmpy.eval.report import format_table, token_count
from llmpy.model import GPT


@pytest.mark.parametrize("tokens, text", [(4096, "4,096"), (65_536, "65,536"), (999_999, "999,999"),
                                          (1_048_576, "1.0M"), (10_485_760, "10.5M")])
def test_token_counts_are_readable_at_every_size(tokens, text):
    assert token_count(tokens) == text


def test_eval_names_a_small_val_budget_in_tokens(tmp_path, capsys):
    torch.manual_seed(0)
    model = export_model(tmp_path / "tiny", GPT(ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=64)), {})
    shards = write_random_shards(tmp_path, "c", {"val_000000.bin": 8192}, seed=0)
    assert main(["eval", "--model", str(model.parent), "--val-data", str(shards / "c_val_*.bin"), "--val-tokens",
                 "4096", "-b", "4", "-t", "32", "--no-hellaswag", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "val loss (4,096 tok)" in out and "0.0M" not in out


def test_the_table_keeps_the_millions_for_big_budgets():
    results = {"val_loss": 3.3, "val_tokens": 10_485_760}
    table = format_table("d12", ModelConfig.from_descriptor("d12"), 124_000_000, results)
    assert "val loss (10.5M tok)" in table


def test_bench_says_what_its_step_count_and_data_are(capsys):
    assert main(["bench", "--model", "d2w64", "-b", "2", "-t", "32", "-d", "64", "--steps", "2", "--warmup", "1",
                 "--device", "cpu", "--compile", "0"]) == 0
    out = capsys.readouterr().out
    assert ("bench: the 3 steps of 64 tokens are 1 warm-up (compilation, not timed) + 2 timed; the train data is "
            "random tokens, two steps' worth, read again each epoch") in out
